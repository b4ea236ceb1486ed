"""Tests of the one config schema: defaults, layering, file validation messages, round trips."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llm_dit import constants
from llm_dit.config import (
    CLI_FLAGS,
    SETTING_KEYS,
    ConditioningSettings,
    EncoderSettings,
    GenerationSettings,
    LimitsSettings,
    MetricsSettings,
    PipelineSettings,
    Settings,
    SourceModelSettings,
    check_limits,
    list_profiles,
    load_settings,
    render_settings,
    split_assignment,
)
from llm_dit.errors import ConfigError, LlmDitError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.toml.example"
CONFIG_DIR = REPO / "src" / "llm_dit" / "config"


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write config.toml in a temp dir (cwd), so messages read 'config.toml:LINE: ...'."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str, name: str = "config.toml") -> str:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return name

    return _write


def config_error(path: str | None, profile: str | None = None, overrides: Any = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, profile, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults_are_the_official_recipe() -> None:
    s = load_settings().settings
    assert s == Settings()
    assert s.model_path is None  # built-in tiny model
    assert s.generation.steps == 8
    assert s.generation.shift is None  # unset until a checkpoint is known: its scheduler's shift (Turbo: 3.0)
    assert s.generation.guidance_scale == 0.0
    assert (s.generation.cfg_normalization, s.generation.cfg_truncation) == (False, 1.0)  # diffusers' defaults
    assert s.generation.sigmas is None
    assert (s.generation.width, s.generation.height) == (1024, 1024)
    assert s.encoder.hidden_layer == -2
    assert s.encoder.think_block == "none"
    assert s.encoder.think_content is None  # NO think block, not an empty one
    assert s.encoder.system_prompt is None
    assert s.encoder.layer_weights is None
    assert s.encoder.max_text_tokens == constants.HARD_MAX_TEXT_TOKENS
    assert s.encoder.long_prompt_mode == "truncate"
    assert s.generation.refiner == "default"


def test_all_sources_default_without_file() -> None:
    r = load_settings()
    assert set(r.sources) == set(SETTING_KEYS)
    assert set(r.sources.values()) == {"default"}
    assert r.profile == "default"
    assert r.config_path is None
    assert r.notes == ()


def test_setting_keys_and_cli_flags_cover_every_field() -> None:
    fields = {"model_path"}
    for section, model in (
        ("encoder", EncoderSettings),
        ("conditioning", ConditioningSettings),
        ("vl", SourceModelSettings),
        ("embedding", SourceModelSettings),
        ("pipeline", PipelineSettings),
        ("generation", GenerationSettings),
        ("metrics", MetricsSettings),
        ("limits", LimitsSettings),
    ):
        fields |= {f"{section}.{name}" for name in model.model_fields}
    assert set(SETTING_KEYS) == fields
    # Every generation-side setting has a flag; metric weights, limits and the source checkpoints are config-only,
    # and the conditioning parameters are reached with --set NAME=VALUE (one flag each would be 24 more flags).
    config_only = ("metrics.", "limits.", "vl.", "embedding.", "conditioning.")
    assert set(CLI_FLAGS) == {key for key in SETTING_KEYS if not key.startswith(config_only)}
    assert len(set(CLI_FLAGS.values())) == len(CLI_FLAGS)
    assert all(flag.startswith("--") for flag in CLI_FLAGS.values())
    assert CLI_FLAGS["encoder.hidden_layer"] == "--hidden-layer"
    assert CLI_FLAGS["pipeline.device"] == "--dit-device"


def test_config_module_imports_nothing_heavy() -> None:
    allowed = {"__future__", "contextlib", "difflib", "math", "re", "shlex", "tomllib", "collections", "dataclasses"}
    allowed |= {"pathlib", "typing", "pydantic", "llm_dit"}
    imported = set()
    for node in (n for path in CONFIG_DIR.glob("*.py") for n in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= allowed, imported - allowed


def test_settings_are_frozen_and_json_serialisable() -> None:
    s = Settings().with_overrides({"encoder.layer_weights": "-2:0.7,-5:0.3", "generation.sigmas": [1.0, 0.5, 0.0]})
    with pytest.raises(ValidationError):
        s.generation.steps = 3  # type: ignore[misc]
    dumped = json.dumps(s.model_dump())
    assert Settings.model_validate(json.loads(dumped)) == s


def test_models_forbid_extra_keys() -> None:
    with pytest.raises(ValidationError):
        EncoderSettings(hiden_layer=-3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(pytorch={})  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------- layering

LAYERED = """\
[default]
model_path = "/models/z-image-turbo"

[default.encoder]
hidden_layer = -3
think_block = "empty"

[default.generation]
steps = 10
seed = 7

[fast]
[fast.generation]
steps = 4
width = 768
"""


def test_precedence_and_sources(write) -> None:
    path = write(LAYERED)
    r = load_settings(path, "fast", {"generation.seed": 123, "encoder.hidden_layer": None})
    s = r.settings
    assert s.generation.seed == 123  # override > everything
    assert s.generation.steps == 4  # profile > [default]
    assert s.generation.width == 768
    assert s.encoder.hidden_layer == -3  # inherited from [default]; None override = not given
    assert s.encoder.think_block == "empty"
    assert s.model_path == "/models/z-image-turbo"
    assert s.generation.shift is None  # built-in: the checkpoint's
    assert r.sources["generation.seed"] == "override"
    assert r.sources["generation.steps"] == "config.toml:[fast]"
    assert r.sources["generation.width"] == "config.toml:[fast]"
    assert r.sources["encoder.hidden_layer"] == "config.toml:[default]"
    assert r.sources["model_path"] == "config.toml:[default]"
    assert r.sources["generation.shift"] == "default"
    assert r.profile == "fast"
    assert r.config_path == Path(path)


def test_default_profile_when_none(write) -> None:
    path = write(LAYERED)
    r = load_settings(path)
    assert r.profile == "default"
    assert r.settings.generation.steps == 10
    assert r.settings.generation.width == 1024
    assert load_settings(path, "default").settings == r.settings


def test_file_without_default_profile(write) -> None:
    path = write('[gpu.pipeline]\ndevice = "cuda:1"\n')
    assert load_settings(path).settings == Settings()
    r = load_settings(path, "gpu")
    assert r.settings.pipeline.device == "cuda:1"
    assert r.sources["pipeline.device"] == "config.toml:[gpu]"


def test_unknown_profile_lists_profiles(write) -> None:
    path = write(LAYERED)
    msg = config_error(path, "fsat")
    assert "profile 'fsat' not found in config.toml" in msg
    assert "did you mean 'fast'?" in msg
    assert "default, fast" in msg


def test_profile_without_file_is_an_error() -> None:
    assert "no config file" in config_error(None, "rtx4090")


def test_with_overrides_validates() -> None:
    s = Settings().with_overrides({"generation.steps": 4, "encoder.think_block": "a thought"})
    assert s.generation.steps == 4
    assert s.encoder.think_content == "a thought"
    with pytest.raises(ConfigError, match=r"^--shift -1: shift must be > 0"):
        s.with_overrides({"generation.shift": -1})


# ---------------------------------------------------------------------------------------------- file errors


def test_unknown_key_suggests_nearest(write) -> None:
    path = write("[default]\n\n[default.encoder]\ndevice = 'cpu'\n\nhiden_layer = -2\n")
    msg = config_error(path)
    assert msg == ("config.toml:6: unknown key 'hiden_layer' in [default.encoder]; did you mean 'hidden_layer'?")


def test_unknown_key_without_close_match_lists_valid_keys(write) -> None:
    msg = config_error(write("[default.pipeline]\nqqqqzzzz = 1\n"))
    assert msg.startswith("config.toml:2: unknown key 'qqqqzzzz' in [default.pipeline]; valid keys: ")
    assert "vae_device" in msg


@pytest.mark.parametrize("key", ["enable_thinking", "force_think_block", "thinking_content"])
def test_seed_think_keys_point_to_think_block(write, key: str) -> None:
    path = write(f"[default]\n[default.generation]\nsteps = 8\n{key} = true\n")
    msg = config_error(path)
    assert msg.startswith(f"config.toml:4: unknown key '{key}' in [default.generation]; ")
    assert 'use think_block = "none" | "empty" | "<text>" in [default.encoder]' in msg
    assert "enable_thinking=true in Qwen3's template means NO think block" in msg


def test_key_in_wrong_section(write) -> None:
    path = write("[default.encoder]\nsteps = 4\n[default.generation]\n# a comment\nlong_prompt_mode = 'pool'\n")
    lines = config_error(path).splitlines()
    assert lines == [
        "config.toml:2: unknown key 'steps' in [default.encoder]; 'steps' belongs in [default.generation]",
        "config.toml:5: unknown key 'long_prompt_mode' in [default.generation]; "
        "'long_prompt_mode' belongs in [default.encoder]",
    ]


def test_section_key_at_profile_level(write) -> None:
    msg = config_error(write("[rtx]\nhidden_layer = -3\n"))
    assert msg == ("config.toml:2: unknown key 'hidden_layer' in [rtx]; 'hidden_layer' belongs in [rtx.encoder]")


def test_seed_pytorch_section(write) -> None:
    path = write('[default]\nmodel_path = "tiny"\n\n[default.pytorch]\nlong_prompt_mode = "interpolate"\n')
    msg = config_error(path)
    assert msg.startswith("config.toml:4: unknown section [default.pytorch]; ")
    assert "'long_prompt_mode' belongs in [default.encoder]" in msg
    assert len(msg.splitlines()) == 1


def test_unknown_section_suggests_nearest(write) -> None:
    msg = config_error(write("[default]\n[default.genration]\nsteps = 4\n"))
    assert msg.startswith("config.toml:2: unknown section [default.genration]; did you mean [default.generation]?")


def test_section_outside_profile(write) -> None:
    msg = config_error(write("[encoder]\nhidden_layer = -2\n"))
    assert msg == "config.toml:1: section [encoder] must be inside a profile; use [default.encoder]"


def test_key_outside_any_profile(write) -> None:
    msg = config_error(write('model_path = "x"\n[default]\n'))
    assert msg.startswith("config.toml:1: 'model_path' is outside any profile")


def test_bad_value_names_file_line_section_key(write) -> None:
    path = write(
        "# comment\n[default]\n\n[default.encoder]\nhidden_layer = -2\n\n"
        "[default.generation]\nwidth = 1024\nsteps = 0\n"
    )
    assert config_error(path) == "config.toml:9: [default.generation] steps = 0: steps must be >= 1"


def test_bad_values_in_unused_profile_are_reported(write) -> None:
    # A typo anywhere in the file is an error, not something that waits for the day the profile is used.
    path = write("[default]\n[other.generation]\nwidth = 1000\n")
    msg = config_error(path)
    assert msg == (
        "config.toml:3: [other.generation] width = 1000: width 1000 is not a multiple of 16; use 992 or 1008"
    )


def test_all_errors_reported_sorted_by_line(write) -> None:
    path = write("[default.generation]\nsteps = 0\nstpes = 3\nshift = 0\n")
    lines = config_error(path).splitlines()
    assert [ln.split(":")[1] for ln in lines] == ["2", "3", "4"]
    assert "did you mean 'steps'?" in lines[1]
    assert "shift must be > 0" in lines[2]


def test_dotted_and_inline_table_keys_get_their_line(write) -> None:
    path = write(
        "[default]\n"
        'model_path = "tiny"\n'
        "generation.steps = 8\n"
        "generation.guidance_scale = -1\n"
        "encoder = { hidden_layer = -2, think_block = 'none', max_text_tokens = 0 }\n"
    )
    lines = config_error(path).splitlines()
    assert lines[0].startswith("config.toml:4: [default.generation] guidance_scale = -1: guidance_scale")
    assert lines[1].startswith("config.toml:5: [default.encoder] max_text_tokens = 0: max_text_tokens")


def test_multiline_string_does_not_confuse_line_numbers(write) -> None:
    path = write(
        '[default.encoder]\nsystem_prompt = """\nsteps = 3\nwidth = 5\n"""\n[default.generation]\nwidth = 17\n'
    )
    assert config_error(path).startswith("config.toml:7: [default.generation] width = 17: ")


def test_multiline_array_does_not_confuse_line_numbers(write) -> None:
    path = write(
        '[default.generation]\nsigmas = [  # a schedule [sic]\n  1.0,\n  0.5,\n]\nnegative_prompt = "[x"\nwidth = 17\n'
    )
    assert config_error(path).startswith("config.toml:7: [default.generation] width = 17: ")


def test_toml_syntax_error_names_line(write) -> None:
    msg = config_error(write("[default]\nseed = 1\nsteps = = 2\n"))
    assert msg.startswith("config.toml:3: TOML syntax error: ")
    assert "line 3" in msg


def test_missing_file(write) -> None:
    msg = config_error("does_not_exist.toml")
    assert "config file 'does_not_exist.toml' not found" in msg


def test_errors_are_llm_dit_errors(write) -> None:
    with pytest.raises(LlmDitError):
        load_settings(write("[default.encoder]\nhidden_layer = 99\n"))


# ---------------------------------------------------------------------------------------------- overrides


def test_override_errors_name_the_cli_flag() -> None:
    assert config_error(None, overrides={"generation.steps": 0}) == "--steps 0: steps must be >= 1"
    msg = config_error(None, overrides={"encoder.long_prompt_mode": "squash"})
    assert msg.startswith("--long-prompt-mode squash: long_prompt_mode 'squash' is not valid; use one of: ")
    assert "truncate, interpolate, pool, attention_pool, none" in msg
    msg = config_error(None, overrides={"encoder.think_block": ""})
    assert msg.startswith("--think-block '': think_block \"\" is ambiguous")


def test_unknown_override_key() -> None:
    msg = config_error(None, overrides={"encoder.hiden_layer": 3})
    assert msg == "unknown setting 'encoder.hiden_layer'; did you mean 'encoder.hidden_layer'?"
    assert "did you mean 'generation.steps'?" in config_error(None, overrides={"steps": 3})


def test_override_error_over_a_file(write) -> None:
    path = write("[default.generation]\nsigmas = [1.0, 0.75, 0.5, 0.0]\n")
    msg = config_error(path, overrides={"generation.steps": 8})
    assert msg.startswith("--steps 8: steps 8 conflicts with sigmas (3 non-zero values)")


# ---------------------------------------------------------------------------------------------- values


def test_layer_weights_both_syntaxes(write) -> None:
    table = load_settings(write('[default.encoder]\nlayer_weights = { "-2" = 0.7, "-5" = 0.3 }\n'))
    text = load_settings(write('[default.encoder]\nlayer_weights = "-2:0.7, -5:0.3"\n'))
    assert table.settings.encoder.layer_weights == {-2: 0.7, -5: 0.3}
    assert text.settings.encoder.layer_weights == {-2: 0.7, -5: 0.3}
    dotted = load_settings(write('[default.encoder.layer_weights]\n"-2" = 1\n"0" = 1\n'))
    assert dotted.settings.encoder.layer_weights == {-2: 1.0, 0: 1.0}
    cli = load_settings(overrides={"encoder.layer_weights": "-2:0.5,-3:0.5"})
    assert cli.settings.encoder.layer_weights == {-2: 0.5, -3: 0.5}
    assert load_settings(overrides={"encoder.layer_weights": ""}).settings.encoder.layer_weights is None


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{}", "must not be empty"),
        ('"-2:1,-3:-1"', "sum to 0"),
        ('{ "-40" = 1.0 }', "out of range -37..36"),
        ('{ "37" = 1.0 }', "out of range -37..36"),
        ('"-2:0.5,35:0.5"', "-2 and 35 name the same hidden state"),
        ('"-2=0.5"', "is not 'layer:weight'"),
        ('{ "x" = 1.0 }', "layer_weights key must be an integer"),
        ('{ "-2" = nan }', "must be a finite number"),
    ],
)
def test_layer_weights_errors(write, value: str, needle: str) -> None:
    msg = config_error(write(f"[default.encoder]\n\nlayer_weights = {value}\n"))
    assert msg.startswith("config.toml:3: [default.encoder] layer_weights = ")
    assert needle in msg


def test_sigmas_rules() -> None:
    official = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
    g = GenerationSettings(sigmas=official)
    assert g.sigmas == official  # verbatim
    assert g.steps == 8  # non-zero count
    assert GenerationSettings(sigmas=[0.8, 0.4]).steps == 2  # final 0 optional
    assert GenerationSettings(sigmas="1, 0.5, 0").sigmas == [1.0, 0.5, 0.0]
    assert GenerationSettings(sigmas=[1.0, 0.5], steps=2).steps == 2  # consistent explicit steps: fine
    assert GenerationSettings(sigmas="").sigmas is None


@pytest.mark.parametrize(
    ("sigmas", "needle"),
    [
        ("[1.0, 0.5, 0.6]", "strictly decreasing"),
        ("[1.0, 0.5, 0.5]", "strictly decreasing"),
        ("[1.2, 0.5]", "values must be in (0, 1]"),
        ("[1.0, -0.5]", "values must be in (0, 1]"),
        ("[1.0, 0.0, 0.5]", "0 may only be the final value"),
        ("[0.0]", "at least one non-zero value"),
        ("[]", "must not be empty"),
        ("[1.0, inf]", "finite"),
    ],
)
def test_sigmas_errors(write, sigmas: str, needle: str) -> None:
    msg = config_error(write(f"[default.generation]\nsigmas = {sigmas}\n"))
    assert msg.startswith("config.toml:2: [default.generation] sigmas = ")
    assert needle in msg


def test_sigmas_set_steps_across_layers(write) -> None:
    path = write("[default.generation]\nsteps = 9\n[custom.generation]\nsigmas = [1.0, 0.5, 0.0]\n")
    # A lower layer's steps is superseded by a higher layer's sigmas; steps' source is the sigmas'.
    r = load_settings(path, "custom")
    assert r.settings.generation.steps == 2
    assert r.sources["generation.steps"] == "config.toml:[custom]"
    # In the same section they must agree.
    clash = write("[clash.generation]\nsigmas = [1.0, 0.5]\n\nsteps = 5\n")
    with pytest.raises(ConfigError, match=r"^config\.toml:4: \[clash\.generation\] steps = 5: steps 5 conflicts"):
        load_settings(clash, "clash")


def test_sigmas_cleared_by_later_layer(write) -> None:
    path = write('[default.generation]\nsigmas = [1.0, 0.5]\n[plain.generation]\nsigmas = ""\nsteps = 8\n')
    assert load_settings(path).settings.generation.steps == 2
    s = load_settings(path, "plain").settings.generation
    assert (s.sigmas, s.steps) == (None, 8)


@pytest.mark.parametrize("key", ["encoder.torch_dtype", "pipeline.torch_dtype", "pipeline.vae_dtype"])
@pytest.mark.parametrize("name", ["float16", "fp16", "half", "FP16"])
def test_fp16_refused(key: str, name: str) -> None:
    msg = config_error(None, overrides={key: name})
    assert msg.startswith(f"{CLI_FLAGS[key]} {name}: ")
    assert "Z-Image overflows in float16 (NaN / black images); use bfloat16" in msg


def test_fp16_refused_in_file(write) -> None:
    msg = config_error(write('[default.pipeline]\ndevice = "cuda"\ntorch_dtype = "float16"\n'))
    assert msg.startswith('config.toml:3: [default.pipeline] torch_dtype = "float16": ')
    assert "use bfloat16" in msg


def test_dtype_and_device_names() -> None:
    p = PipelineSettings(torch_dtype="bf16", vae_dtype="fp32", device="CUDA:1", vae_device="")
    assert (p.torch_dtype, p.vae_dtype, p.device, p.vae_device) == ("bfloat16", "float32", "cuda:1", None)
    assert "use auto, cpu, cuda or cuda:N" in config_error(None, overrides={"encoder.device": "gpu"})
    assert "use auto, bfloat16" in config_error(None, overrides={"pipeline.torch_dtype": "int8"})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"generation.width": 1000}, "--width 1000: width 1000 is not a multiple of 16; use 992 or 1008"),
        ({"generation.height": 8}, "--height 8: height 8 is not a multiple of 16; use 16"),
        ({"generation.width": 0}, "--width 0: width must be a positive multiple of 16 (got 0)"),
        ({"generation.steps": -1}, "--steps -1: steps must be >= 1"),
        ({"generation.steps": 2.5}, "--steps 2.5: steps must be an integer (got 2.5)"),
        ({"generation.steps": True}, "--steps True: steps must be an integer, not a boolean"),
        ({"generation.shift": 0}, "--shift 0: shift must be > 0 (got 0.0; official: 3.0)"),
        ({"generation.shift": float("inf")}, "--shift inf: shift must be a finite number (got inf)"),
        ({"generation.seed": -1}, "--seed -1: seed must be in 0..9223372036854775807 (got -1)"),
        ({"generation.seed": 2**63}, "--seed 9223372036854775808: seed must be in 0..9223372036854775807"),
        ({"encoder.hidden_layer": -38}, "--hidden-layer -38: hidden_layer -38 is out of range -37..36"),
        ({"encoder.hidden_layer": 37}, "--hidden-layer 37: hidden_layer 37 is out of range -37..36"),
        ({"encoder.max_text_tokens": 1505}, "--max-text-tokens 1505: max_text_tokens must be in 1..1504"),
        ({"encoder.max_text_tokens": 0}, "--max-text-tokens 0: max_text_tokens must be in 1..1504"),
        ({"generation.refiner": "tripple"}, "--refiner tripple: refiner 'tripple' is not valid; use one of"),
        ({"generation.guidance_scale": -0.5}, "--guidance-scale -0.5: guidance_scale must be >= 0"),
        ({"generation.cfg_truncation": 1.5}, "--cfg-truncation 1.5: cfg_truncation must be in 0..1 (got 1.5)"),
        ({"generation.cfg_truncation": -0.1}, "--cfg-truncation -0.1: cfg_truncation must be in 0..1"),
        ({"generation.cfg_truncation": "x"}, "--cfg-truncation x: cfg_truncation must be a number"),
        ({"generation.cfg_normalization": 1}, "--cfg-normalization 1: cfg_normalization must be true or false"),
        ({"generation.cfg_normalization": "yes"}, "--cfg-normalization yes: cfg_normalization must be true or"),
        ({"model_path": 3}, "--model-path 3: model_path must be a string"),
    ],
)
def test_value_errors(overrides: dict[str, Any], expected: str) -> None:
    assert config_error(None, overrides=overrides).startswith(expected)


def test_valid_edge_values() -> None:
    s = load_settings(
        overrides={
            "encoder.hidden_layer": -37,
            "encoder.max_text_tokens": 512,
            "generation.seed": 2**63 - 1,
            "generation.width": 16,
            "generation.steps": "12",
            "generation.shift": 1,
            "model_path": "tiny",
            "encoder.system_prompt": "",
        }
    ).settings
    assert s.encoder.hidden_layer == -37
    assert s.generation.steps == 12
    assert isinstance(s.generation.shift, float)
    assert s.model_path is None
    assert s.encoder.system_prompt is None


def test_think_block_values() -> None:
    assert EncoderSettings().think_content is None
    assert EncoderSettings(think_block="EMPTY").think_block == "empty"
    assert EncoderSettings(think_block="empty").think_content == ""
    assert EncoderSettings(think_block="Let me picture it.").think_content == "Let me picture it."
    with pytest.raises(ValidationError, match="ambiguous"):
        EncoderSettings(think_block="")
    with pytest.raises(ValidationError, match="must be a string"):
        EncoderSettings(think_block=True)  # type: ignore[arg-type]


def test_notes_for_inert_settings(write) -> None:
    path = write('[default.generation]\nsigmas = [1.0, 0.5]\nshift = 2.0\nnegative_prompt = "blur"\n')
    notes = load_settings(path, overrides={"encoder.layer_weights": "-2:1", "encoder.hidden_layer": -3}).notes
    assert any("shift 2.0 is not applied" in n for n in notes)
    assert any("negative_prompt has no effect" in n for n in notes)
    assert any("hidden_layer -3 is not used" in n for n in notes)


def test_cfg_refinements_without_cfg_are_noted(write) -> None:
    path = write("[default.generation]\ncfg_truncation = 0.5\n")
    notes = load_settings(path, overrides={"generation.cfg_normalization": True}).notes
    assert "cfg_truncation has no effect: guidance_scale is 0 (CFG off)" in notes
    assert "cfg_normalization has no effect: guidance_scale is 0 (CFG off)" in notes
    cfg = load_settings(path, overrides={"generation.guidance_scale": 2.0, "generation.cfg_normalization": True})
    assert not [n for n in cfg.notes if "cfg_" in n]
    assert (cfg.settings.generation.cfg_normalization, cfg.settings.generation.cfg_truncation) == (True, 0.5)


def test_shift_can_be_unset_again(write) -> None:
    """An empty string in a later layer clears a shift set below (back to the checkpoint's), as for sigmas."""
    path = write('[default.generation]\nshift = 2.0\n[exp.generation]\nshift = ""\n')
    assert load_settings(path).settings.generation.shift == 2.0
    assert load_settings(path, "exp").settings.generation.shift is None


def test_set_overrides_name_their_flag_and_conflict_with_a_flag() -> None:
    assert load_settings(set_overrides={"generation.steps": 3}).sources["generation.steps"] == "override"
    with pytest.raises(ConfigError, match=r"^--set steps=0: steps must be >= 1$"):
        load_settings(set_overrides={"generation.steps": 0})
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"generation.steps": 3}, set_overrides={"generation.steps": 4})
    assert str(info.value) == "--steps 3 and --set steps=4 both set generation.steps: give it once"
    # the same key unset (None) as a flag is no conflict
    assert load_settings(overrides={"generation.steps": None}, set_overrides={"generation.steps": 4}).settings


def test_removed_output_dir_key_points_to_the_flags(write) -> None:
    path = write('[default.generation]\noutput_dir = "outputs"\n')
    message = config_error(path)
    assert message.startswith("config.toml:2: unknown key 'output_dir' in [default.generation]; output_dir was removed")
    assert "generate -o FILE or --output-dir DIR" in message
    assert "output_dir" not in {key.rpartition(".")[2] for key in SETTING_KEYS}


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (
            {"steps": 201, "width": 64, "height": 64},
            "steps 201 is above the limit of 200 (limits.max_steps); if you mean it, raise it in the config file: "
            "[default.limits] max_steps = 201",
        ),
        (
            {"steps": 201, "width": 64, "height": 64, "sigmas": [0.5] * 201},
            "sigmas has 201 non-zero values (steps) is above the limit of 200 (limits.max_steps)",
        ),
        ({"steps": 8, "width": 4112, "height": 64}, "width 4112 is above the limit of 4096 (limits.max_image_side)"),
        ({"steps": 8, "width": 64, "height": 4112}, "height 4112 is above the limit of 4096 (limits.max_image_side)"),
    ],
)
def test_limits_refuse_with_the_key_to_raise(run: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_limits(LimitsSettings(), run)
    assert str(info.value).startswith(expected)
    # at the limit passes; a raised limit lets the run through
    check_limits(LimitsSettings(), {**run, "steps": 200, "width": min(run["width"], 4096), "height": 64})
    check_limits(LimitsSettings(max_steps=201, max_image_side=4112), run)


# ---------------------------------------------------------------------------------------------- render


def test_render_round_trip(write) -> None:
    path = write(
        '[default]\nmodel_path = "/ckpt/z"\n'
        '[default.encoder]\nsystem_prompt = "Say \\"hi\\"\\n\\tthen \\\\ stop"\nthink_block = "empty"\n'
        '[exp.encoder]\nlayer_weights = "-2:0.7,-5:0.3"\n'
        '[exp.pipeline]\nvae_device = "cpu"\ntorch_dtype = "bf16"\n'
    )
    resolved = load_settings(
        path, "exp", {"generation.sigmas": [1.0, 0.75, 0.5, 0.0], "generation.negative_prompt": "ünïcode"}
    )
    text = render_settings(resolved)
    parsed = tomllib.loads(text)
    assert list(parsed) == ["default"]
    assert Settings.model_validate(parsed["default"]) == resolved.settings
    again = load_settings(write(text, "shown.toml"))
    assert again.settings == resolved.settings
    # Every value line names its source.
    assert 'vae_device = "cpu"  # config.toml:[exp]' in text
    assert "steps = 3  # override" in text
    assert 'think_block = "empty"  # config.toml:[default]' in text
    assert "# shift is unset (the checkpoint's scheduler_config.json shift)  # default" in text


def test_render_round_trip_defaults() -> None:
    resolved = load_settings()
    parsed = tomllib.loads(render_settings(resolved))
    assert Settings.model_validate(parsed["default"]) == Settings()


# ---------------------------------------------------------------------------------------------- example


def test_example_file_validates_every_profile() -> None:
    profiles = list_profiles(EXAMPLE)
    assert {"default", "rtx4090", "diffusers_compat"} <= set(profiles)
    for name in profiles:
        load_settings(EXAMPLE, name)
    # Its [default] shows the built-in defaults, so it must equal them exactly.
    assert load_settings(EXAMPLE).settings == Settings()
    rtx = load_settings(EXAMPLE, "rtx4090").settings
    assert rtx.encoder.device == "cpu"
    assert (rtx.pipeline.device, rtx.pipeline.torch_dtype) == ("cuda", "bfloat16")
    assert load_settings(EXAMPLE, "diffusers_compat").settings.encoder.max_text_tokens == 512


def test_example_file_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    assert "model_path" in data["default"]
    for key in SETTING_KEYS:
        sec, _, name = key.rpartition(".")
        if not sec:
            continue
        # Optional keys with no TOML null may be shown commented out.
        shown = name in data["default"][sec] or f"# {name} = " in text
        assert shown, key


def test_metrics_section_paths_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[default.metrics]\nsiglip_path = "/w/siglip2"\nbatch_size = 4\n[fast.metrics]\nsiglip_path = ""\n')
    settings = load_settings(cfg, None).settings
    assert settings.metrics.siglip_path == "/w/siglip2" and settings.metrics.batch_size == 4
    assert settings.metrics.clip_path is None
    assert load_settings(cfg, "fast").settings.metrics.siglip_path is None  # "" unsets the inherited path
    cfg.write_text("[default.metrics]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_settings(cfg, None)
    cfg.write_text('[default.metrics]\nimage_reward_path = "/w/ir"\n')
    with pytest.raises(ConfigError, match="ImageReward is not supported"):
        load_settings(cfg, None)
    cfg.write_text('[default.metrics]\nlpips_net = "squeeze"\n')
    with pytest.raises(ConfigError, match="lpips_net"):
        load_settings(cfg, None)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("steps=4", ("steps", "4")),
        (" shift =2.5", ("shift", "2.5")),
        ("label=a=b, c", ("label", "a=b, c")),
        ("k=", ("k", "")),
    ],
)
def test_split_assignment_keeps_the_value_verbatim(item: str, expected: tuple[str, str]) -> None:
    assert split_assignment(item, "--set", "key=value") == expected


@pytest.mark.parametrize("item", ["steps", "=4", "  =4", ""])
def test_split_assignment_refuses_a_missing_key_or_equals_sign(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_assignment(item, "--reference", "AXIS=LABEL, e.g. --reference hidden_layer=-2")
    assert str(info.value) == f"--reference {item!r}: expected AXIS=LABEL, e.g. --reference hidden_layer=-2"


@pytest.mark.parametrize(
    ("values", "blamed", "fix"),
    [
        ({"vl_alpha": 0.5}, "vl_alpha", "conditioning=vl or conditioning=embedding"),
        ({"vl_blend": "adain"}, "vl_blend", "conditioning=vl or conditioning=embedding"),
        ({"outlier_mask": "zero"}, "outlier_mask", "conditioning=vl or conditioning=embedding"),
        ({"vl_image": ["a.png"]}, "vl_image", "conditioning=vl"),
        ({"conditioning": "embedding", "vl_layer": -5}, "vl_layer", "conditioning=vl"),
        ({"conditioning": "embedding", "style_image": "s.png"}, "style_image", "conditioning=vl"),
        ({"conditioning": "vl", "vl_image": ["a.png"], "embedding_layer": 3}, "embedding_layer", "=embedding"),
        ({"conditioning": "vl", "vl_image": ["a.png"], "vl_blend_curve": "ease_in"}, "vl_blend_curve", "graduated"),
        ({"conditioning": "vl", "vl_image": ["a.png"], "vl_target_std": 50}, "vl_target_std", "global or hybrid"),
        (
            {"conditioning": "vl", "vl_image": ["a.png"], "vl_normalize": "global", "vl_hybrid_weight": 0.2},
            "vl_hybrid_weight",
            "vl_normalize=hybrid",
        ),
        ({"conditioning": "vl", "vl_image": ["a.png"], "outlier_threshold": 5}, "outlier_threshold", "outlier_mask"),
        ({"conditioning": "vl", "vl_image": ["a.png"], "neutral_image": "n.png"}, "neutral_image", "style_image"),
        ({"conditioning": "embedding", "embedding_instruction": "x"}, "embedding_instruction", "instruction"),
        ({"fill_mode": "pad_end_zero"}, "fill_mode", "target_length"),
        ({"conditioning": "vl"}, "conditioning", "vl_image"),
        (
            {"conditioning": "vl", "vl_image": ["a.png", "b.png"], "vl_image_weights": [1, 1], "intra_vl_ratio": 0.5},
            "intra_vl_ratio",
            "drop vl_image_weights",
        ),
        ({"conditioning": "vl", "style_image": "s.png", "intra_vl_ratio": 0.5}, "intra_vl_ratio", "drop style_image"),
        ({"conditioning": "vl", "vl_image": ["a.png"], "vl_image_weights": [1, 2]}, "vl_image_weights", "1 vl_image"),
    ],
)
def test_conditioning_settings_that_would_do_nothing_are_refused(values: dict, blamed: str, fix: str) -> None:
    """A conditioning value the run would never read is refused naming it and where it is read, never ignored."""
    from llm_dit.config import ConditioningSettings, conditioning_problem

    problem = conditioning_problem(ConditioningSettings(**values))
    assert problem is not None and problem[0] == blamed, problem
    assert fix in problem[1] and "\n" not in problem[1]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"fill_mode": "pad_end_zero", "target_length": 40},
        {"conditioning": "vl", "vl_image": ["a.png"], "vl_normalize": "global", "vl_target_std": 50},
        {"conditioning": "vl", "vl_image": ["a.png"], "vl_blend": "graduated", "vl_blend_curve": "ease_in"},
        {"conditioning": "vl", "style_image": "s.png", "neutral_image": "n.png", "vl_alpha": 0.4},
        {"conditioning": "embedding", "embedding_format": "instruction", "embedding_instruction": "x"},
        {"conditioning": "embedding", "outlier_mask": "clamp", "outlier_threshold": 5, "vl_alpha": 0.3},
        # A blend where no blend runs (alpha 0 or 1, a style delta) is inert but passes: alpha x blend grids run whole.
        {"conditioning": "vl", "vl_image": ["a.png"], "vl_blend": "graduated", "vl_blend_curve": "ease_in"},
        {"conditioning": "vl", "vl_image": ["a.png"], "vl_blend": "adain", "vl_alpha": 0},
        # A value equal to the default is no choice: it passes even where it is not read.
        {"vl_blend": "linear", "vl_layer": -2, "embedding_format": "chat"},
    ],
)
def test_consistent_conditioning_settings_pass(values: dict) -> None:
    from llm_dit.config import ConditioningSettings, conditioning_problem

    assert conditioning_problem(ConditioningSettings(**values)) is None


def test_a_blend_where_none_runs_is_recorded_as_null() -> None:
    """At vl_alpha 0 or 1, or with a style delta, the blend changes nothing: null in the record and the run id."""
    from llm_dit.config import ConditioningSettings, conditioning_params

    for extra in ({}, {"vl_alpha": 0}, {"vl_alpha": 1}):
        c = ConditioningSettings(conditioning="vl", vl_image=["a.png"], vl_blend="interpolate", **extra)
        assert conditioning_params(c)["vl_blend"] is None, extra
    mixed = ConditioningSettings(conditioning="vl", vl_image=["a.png"], vl_blend="interpolate", vl_alpha=0.5)
    assert conditioning_params(mixed)["vl_blend"] == "interpolate"
    style = ConditioningSettings(conditioning="vl", style_image="s.png", vl_blend="adain", vl_alpha=0.5)
    assert conditioning_params(style)["vl_blend"] is None
