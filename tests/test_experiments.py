"""Experiments as data: built-ins, strict loading, planning, precedence, run ids and image names.

No model is involved: planning and validation must work before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from llm_dit.config import Settings
from llm_dit.errors import ConfigError, LlmDitError
from llm_dit.experiments.loader import builtin_experiments, get_experiment, load_experiment_file
from llm_dit.experiments.model import PARAMETERS, AxisValue, Experiment
from llm_dit.experiments.planner import compute_run_id, plan, swept_overrides
from llm_dit.experiments.prompts import Prompt

ROOT = Path(__file__).resolve().parents[1]
FP = "fp-test"

CAT = Prompt(
    id="animal_001",
    text="A fluffy orange cat sleeping on a red velvet couch",
    category="animals",
    subjects=("cat", "couch"),
    descriptors=("fluffy", "orange", "red", "velvet"),
)
CASTLE = Prompt(
    id="complex_001",
    text="An ancient stone castle on a misty green hillside",
    category="complex",
    subjects=("castle", "hillside"),
    descriptors=("ancient", "stone", "misty", "green"),
)
PROMPTS = [CAT, CASTLE]

# Runs per prompt per seed, and default seeds, of every built-in.
EXPECTED = {
    "context_refiner": (4, 2),
    # Qwen3-Embedding-4B (seed 000), each with the pure Qwen3-4B baseline: tests/test_embedding_builtins.py
    "embedding_generation": (2, 2),
    "embedding_instructions": (5, 2),
    "embedding_layers": (6, 2),
    "guidance_grid": (12, 2),
    "hidden_layer": (6, 2),
    "hidden_layer_blend": (9, 2),
    "hidden_layer_deep": (36, 1),
    "long_prompt_mode": (4, 2),
    # the speed studies, each with its converged 50-step reference (tests/test_speed_reference.py)
    "shift_steps_grid": (31, 1),
    "shift_sweep": (7, 2),
    "steps_only": (9, 2),
    "system_prompt": (5, 2),
    "think_block": (6, 2),
    "token_importance": (8, 2),
    # Qwen3-VL (seed 004), each with the pure Qwen3-4B run (a baseline or an axis value): tests/test_vl_builtins.py
    "vl_adain": (13, 2),
    "vl_alpha": (6, 2),
    "vl_blend_comparison": (8, 2),
    "vl_cross_normalization": (7, 2),
    "vl_full_grid": (19, 2),
    "vl_intra_blend": (7, 2),
    "vl_layer": (8, 2),
    "vl_layer_by_token": (11, 2),
    "vl_multi_reference": (7, 2),
    "vl_normalization": (5, 2),
    "vl_only_vs_qwen3": (4, 2),
    "vl_outlier_masking": (5, 2),
    "vl_style_delta": (6, 2),
    "vl_style_transfer": (15, 2),
    "vl_think_comparison": (4, 2),
    "vl_timestep_alpha": (5, 2),
    "vl_token_mode": (5, 2),
}


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Experiment:
    return load_experiment_file(write(tmp_path, text))


def plan_one(exp: Experiment, settings: Settings | None = None, **kwargs) -> list:
    kwargs.setdefault("model_fingerprint", FP)
    return plan(exp, [CAT], [42], settings or Settings(), **kwargs)


def by_label(runs: list, axis: str) -> dict:
    return {run.variables[axis]: run for run in runs}


# -------------------------------------------------------------------------------------------- built-ins


def test_builtin_set_is_complete() -> None:
    assert sorted(builtin_experiments()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_loads_and_plans(name: str) -> None:
    exp = get_experiment(name)
    per, n_seeds = EXPECTED[name]
    assert exp.name == name and exp.source == "built-in"
    assert exp.description and ((exp.prompt_category and exp.max_prompts) or exp.prompt_ids)
    assert len(exp.seeds) == n_seeds and exp.seeds[0] == 42
    assert exp.runs_per_prompt_seed() == per
    runs = plan(exp, PROMPTS, exp.seeds, Settings(), model_fingerprint=FP)
    assert len(runs) == per * len(PROMPTS) * n_seeds
    assert len({r.image_name for r in runs}) == len(runs)
    extra = {"shift_source", "input_sha256", "source_model", "source_numerics"}
    assert all(set(r.params) == {*PARAMETERS, *extra} for r in runs)
    assert all(list(r.variables) == exp.variables() for r in runs)
    json.dumps(exp.to_dict())  # stored with the results


def test_shift_sweep_run_count_and_labels() -> None:
    exp = get_experiment("shift_sweep")
    runs = plan(exp, PROMPTS, [42, 123], Settings(), model_fingerprint=FP)
    assert len(runs) == 28  # (the converged reference + 6 values) x 2 prompts x 2 seeds
    assert [r.variables["shift"] for r in runs[:14:2]] == ["converged_50", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0"]
    assert "__shift=3.0__" in runs[6].image_name
    assert "__hidden_layer=-2__" in plan_one(get_experiment("hidden_layer"))[1].image_name


def test_listing_facts() -> None:
    exp = get_experiment("shift_steps_grid")
    assert exp.name == "shift_steps_grid"
    assert exp.variables() == ["shift", "steps"]
    assert exp.runs_per_prompt_seed() == 31  # 5 shifts x 6 step counts + the converged reference
    assert exp.description.startswith("Where is the quality")


def test_think_block_default_is_none_and_official_runs_share_one_id() -> None:
    # The official recipe has NO think block; its run is the same image in every experiment.
    official = plan_one(get_experiment("think_block"))[0]
    assert official.variables == {"think": "none"} and official.params["think_block"] == "none"
    same = [
        by_label(plan_one(get_experiment("system_prompt")), "system")["none"],
        by_label(plan_one(get_experiment("hidden_layer_blend")), "layers")["L-2"],
        by_label(plan_one(get_experiment("token_importance")), "token_manipulation")["baseline"],
        by_label(plan_one(get_experiment("shift_sweep")), "shift")["3.0"],
        by_label(plan_one(get_experiment("steps_only")), "steps")["8"],
        by_label(plan_one(get_experiment("context_refiner")), "refiner")["default"],
    ]
    assert {r.run_id for r in same} == {official.run_id}


def test_hidden_layer_deep_uses_depth_indices() -> None:
    axis = get_experiment("hidden_layer_deep").axes[0]
    assert [v.params["hidden_layer"] for v in axis.values] == list(range(1, 37))


def test_blend_runs_carry_no_stale_hidden_layer() -> None:
    runs = by_label(plan_one(get_experiment("hidden_layer_blend")), "layers")
    assert runs["L-5"].params["hidden_layer"] == -5 and runs["L-5"].params["layer_weights"] is None
    blend = runs["blend_-2_-8_w70-30"]
    assert blend.params["hidden_layer"] is None and blend.params["layer_weights"] == {-2: 0.7, -8: 0.3}
    assert "hidden_layer" not in blend.encoder_params()
    assert blend.encoder_params()["layer_weights"] == {-2: 0.7, -8: 0.3}


def test_token_importance_uses_manipulated_text() -> None:
    runs = by_label(plan_one(get_experiment("token_importance")), "token_manipulation")
    assert runs["baseline"].prompt_text == CAT.text
    assert runs["remove_nouns"].prompt_text != CAT.text
    assert "cat" not in runs["remove_nouns"].prompt_text.split()
    assert runs["remove_nouns"].params["token_manipulation"] == "remove_nouns"
    assert len({r.run_id for r in runs.values()}) == 8
    # The text is what the id hashes: a manipulation that changes nothing gives the plain run's id.
    plain = plan_one(get_experiment("context_refiner"))[2]
    assert runs["baseline"].run_id == plain.run_id


def test_long_prompt_mode_sweeps_modes_at_the_profile_cap() -> None:
    runs = plan_one(get_experiment("long_prompt_mode"), Settings().with_overrides({"encoder.max_text_tokens": 512}))
    assert {r.params["max_text_tokens"] for r in runs} == {512}
    assert [r.params["long_prompt_mode"] for r in runs] == ["truncate", "interpolate", "pool", "attention_pool"]


def test_package_data_ships_experiment_files() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/experiments/*.toml" in data["tool"]["setuptools"]["package-data"]["llm_dit"]
    assert "data/inputs/*.png" in data["tool"]["setuptools"]["package-data"]["llm_dit"]  # the VL built-ins' images


# ------------------------------------------------------------------------------------- grid, zip, order

GRID = """
name = "grid"
[[axes]]
name = "shift"
values = [1.0, 2.0]
[[axes]]
name = "steps"
values = [4, 8, 12]
"""


def test_grid_order_first_axis_slowest(tmp_path: Path) -> None:
    exp = load(tmp_path, GRID)
    combos = [tuple(v.label for v in c) for c in exp.combinations()]
    assert combos == [("1.0", "4"), ("1.0", "8"), ("1.0", "12"), ("2.0", "4"), ("2.0", "8"), ("2.0", "12")]
    runs = plan(exp, PROMPTS, [7, 8], Settings(), model_fingerprint=FP)
    # prompts x combinations x seeds
    keys = [(r.prompt.id, r.variables["shift"], r.variables["steps"], r.seed) for r in runs]
    assert keys[:3] == [("animal_001", "1.0", "4", 7), ("animal_001", "1.0", "4", 8), ("animal_001", "1.0", "8", 7)]
    assert keys[12] == ("complex_001", "1.0", "4", 7)
    assert len(runs) == 24


def test_zip_axes_vary_together(tmp_path: Path) -> None:
    exp = load(
        tmp_path,
        """
name = "zipped"
[[axes]]
name = "shift"
values = [1.0, 2.0, 3.0]
zip = "a"
[[axes]]
name = "refiner"
values = ["skip", "default"]
[[axes]]
name = "steps"
values = [4, 8, 12]
zip = "a"
""",
    )
    combos = [tuple(v.label for v in c) for c in exp.combinations()]
    assert combos == [
        ("1.0", "skip", "4"),
        ("1.0", "default", "4"),
        ("2.0", "skip", "8"),
        ("2.0", "default", "8"),
        ("3.0", "skip", "12"),
        ("3.0", "default", "12"),
    ]
    assert exp.runs_per_prompt_seed() == 6


# ------------------------------------------------------------------------------------------- precedence


def test_precedence_settings_base_overrides_axis(tmp_path: Path) -> None:
    exp = load(
        tmp_path,
        """
name = "prec"
[base]
steps = 6
hidden_layer = -3
refiner = "single"
[[axes]]
name = "shift"
values = [1.5, 2.5]
""",
    )
    settings = Settings().with_overrides(
        {"generation.width": 512, "generation.steps": 10, "generation.shift": 4.0, "encoder.hidden_layer": -7}
    )
    overrides = {"hidden_layer": -4, "shift": 9.0, "think_block": None}
    runs = plan_one(exp, settings, overrides=overrides)
    p = runs[0].params
    assert p["width"] == 512  # settings
    assert p["steps"] == 6  # base over settings
    assert p["refiner"] == "single"  # base
    assert p["hidden_layer"] == -4  # override over base
    assert p["think_block"] == "none"  # a None override is unset
    assert [r.params["shift"] for r in runs] == [1.5, 2.5]  # axis over override: the override is ignored
    assert swept_overrides(exp, overrides) == ["shift"]
    assert swept_overrides(exp, {"steps": 4}) == []
    assert runs[0].generation_params()["shift"] == 1.5 and runs[0].generation_params()["seed"] == 42


def test_replacing_parameters_do_not_leave_stale_values(tmp_path: Path) -> None:
    exp = load(
        tmp_path,
        """
name = "replace"
[[axes]]
name = "steps"
values = [4]
""",
    )
    # Explicit sigmas from the profile give way to a swept steps value.
    settings = Settings().with_overrides(
        {"generation.sigmas": [1.0, 0.5, 0.0], "encoder.layer_weights": "-2:0.5,-5:0.5"}
    )
    run = plan_one(exp, settings, overrides={"hidden_layer": -6})[0]
    assert run.params["steps"] == 4 and run.params["sigmas"] is None and run.params["shift"] == 3.0
    # A hidden_layer override clears the profile's blend.
    assert run.params["hidden_layer"] == -6 and run.params["layer_weights"] is None
    assert swept_overrides(exp, {"sigmas": [1.0, 0.0], "shift": 2.0}) == ["sigmas"]

    sig = load(
        tmp_path,
        """
name = "sig"
[base]
sigmas = [1.0, 0.75, 0.5, 0.0]
guidance_scale = 0
negative_prompt = "blurry"
[[axes]]
name = "refiner"
values = ["skip"]
""",
    )
    run = plan_one(sig, Settings().with_overrides({"generation.steps": 12}))[0]
    assert run.params["steps"] == 3  # derived from the sigmas, not the profile's 12
    assert run.params["shift"] is None  # not applied with explicit sigmas
    assert run.params["negative_prompt"] is None  # CFG off
    assert run.generation_params()["sigmas"] == [1.0, 0.75, 0.5, 0.0]
    assert swept_overrides(get_experiment("hidden_layer_blend"), {"layer_weights": "-2:1", "hidden_layer": -3}) == [
        "layer_weights",
        "hidden_layer",
    ]


# ---------------------------------------------------------------------------------------------- run ids


def test_run_id_is_sha256_of_canonical_json() -> None:
    run = by_label(plan_one(get_experiment("shift_sweep"), numerics={"dit_dtype": "bfloat16"}), "shift")["2.0"]
    # Written out by hand: the canonical JSON (sorted keys, no whitespace) of what affects pixels.
    canonical = (
        '{"model":"fp-test","numerics":{"dit_dtype":"bfloat16"},"params":{"guidance_scale":0.0,'
        '"height":1024,"hidden_layer":-2,"layer_weights":null,"long_prompt_mode":"truncate",'
        '"max_text_tokens":1504,"negative_prompt":null,"padding":"diffusers","refiner":"default",'
        '"shift":2.0,"sigmas":null,"steps":8,"system_prompt":null,"think_block":"none","width":1024},'
        '"prompt":"A fluffy orange cat sleeping on a red velvet couch","seed":42}'
    )
    expected = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    assert expected == "631a7bc95bf80ae2"  # computed once; a change here breaks resume of every store
    assert run.run_id == expected
    assert run.image_name == "animal_001__shift=2.0__seed42__631a7bc9.png"


def test_run_id_changes_with_anything_that_affects_pixels() -> None:
    run = plan_one(get_experiment("shift_sweep"))[2]
    args = (run.prompt_text, run.seed, run.params, FP, {"device": "cuda"})
    base = compute_run_id(*args)
    changes = {
        "shift": 2.9,
        "steps": 9,
        "width": 512,
        "hidden_layer": -3,
        "think_block": "empty",
        "system_prompt": "x",
        "padding": "longest",
        "max_text_tokens": 512,
        "refiner": "skip",
        "guidance_scale": 1.5,
        "layer_weights": {-2: 0.5, -5: 0.5},
        "cfg_normalization": True,
        "cfg_truncation": 0.5,
    }
    ids = {base}
    for key, value in changes.items():
        ids.add(compute_run_id(run.prompt_text, run.seed, {**run.params, key: value}, FP, {"device": "cuda"}))
    ids.add(compute_run_id(run.prompt_text + ".", run.seed, run.params, FP, {"device": "cuda"}))
    ids.add(compute_run_id(run.prompt_text, 43, run.params, FP, {"device": "cuda"}))
    ids.add(compute_run_id(run.prompt_text, run.seed, run.params, "other-weights", {"device": "cuda"}))
    ids.add(compute_run_id(run.prompt_text, run.seed, run.params, FP, {"device": "cpu"}))
    assert len(ids) == len(changes) + 5
    # Labels, prompt ids, experiment names and output_dir are not pixels.
    assert compute_run_id(run.prompt_text, run.seed, {**run.params, "output_dir": "x"}, FP, {"device": "cuda"}) == base
    # Where the shift came from is not pixels either; the CFG refinements at their neutral values are not either.
    for key, value in (("shift_source", "config file"), ("cfg_normalization", False), ("cfg_truncation", 1.0)):
        assert compute_run_id(run.prompt_text, run.seed, {**run.params, key: value}, FP, {"device": "cuda"}) == base
    renamed = plan(
        dataclasses.replace(get_experiment("shift_sweep"), name="other"),
        [dataclasses.replace(CAT, id="renamed")],
        [42],
        Settings(),
        model_fingerprint=FP,
    )[2]
    assert renamed.run_id == run.run_id


def test_run_id_stable_across_processes() -> None:
    code = (
        "from llm_dit.config import Settings; from llm_dit.experiments.loader import get_experiment;"
        "from llm_dit.experiments.planner import plan;"
        "from llm_dit.experiments.prompts import Prompt;"
        "print(plan(get_experiment('shift_sweep'), [Prompt('a', 'A cat')], [42], Settings(),"
        " model_fingerprint='fp')[3].run_id)"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": s},
        ).stdout.strip()
        for s in ("1", "2")
    }
    local = plan(get_experiment("shift_sweep"), [Prompt("a", "A cat")], [42], Settings(), model_fingerprint="fp")
    assert out == {local[3].run_id}


# ------------------------------------------------------------------------------------------ image names

SENTENCE = "High detail, sharp focus, correct anatomy, and a great deal more text than fits in a name"


def test_image_names_are_sanitised_bounded_and_unique(tmp_path: Path) -> None:
    exp = load(
        tmp_path,
        f"""
name = "names"
[[axes]]
name = "think_block"
values = ["{SENTENCE}", "{SENTENCE} (v2)", "Short: one/two"]
""",
    )
    runs = plan(exp, [dataclasses.replace(CAT, id="my prompt/1")], [1, 2], Settings(), model_fingerprint=FP)
    names = [r.image_name for r in runs]
    assert len(set(names)) == len(names)
    for run in runs:
        assert re.fullmatch(r"[A-Za-z0-9._=-]+(__[A-Za-z0-9._=-]+)*\.png", run.image_name), run.image_name
        assert SENTENCE not in run.image_name and " " not in run.image_name
        label = run.image_name.split("__")[1].partition("=")[2]
        assert len(label) <= 40
        assert run.variables["think_block"] in (SENTENCE, f"{SENTENCE} (v2)", "Short: one/two")  # raw in the CSV
    assert names[0].startswith("my-prompt-1__think_block=High-detail-sharp-focus-correct-")
    assert names[4].startswith("my-prompt-1__think_block=Short-one-two__seed1__")


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\ndescripton = "y"\n[[axes]]\nname = "shift"\nvalues = [1.0]\n')
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))}:2: unknown key 'descripton'.*did you mean 'description'"
    ):
        load_experiment_file(path)


def test_unknown_parameter_names_line_and_suggestion(tmp_path: Path) -> None:
    text = 'name = "x"\n[base]\nsteps = 8\nshfit = 2.0\n[[axes]]\nname = "refiner"\nvalues = [\n  "skip",\n]\n'
    with pytest.raises(
        ConfigError, match=r"exp.toml:4: x \[base\] shfit = 2.0: unknown parameter 'shfit'; did you mean 'shift'"
    ):
        load(tmp_path, text)
    table = (
        'name = "x"\n[[axes]]\nname = "t"\nvalues = [\n  { label = "a", think_block = "none" },\n'
        '  { label = "b", thinkblock = "empty" },\n]\n'
    )
    with pytest.raises(
        ConfigError, match=r"exp.toml:6: x axis 't' value 'b': unknown parameter 'thinkblock'; did you mean"
    ):
        load(tmp_path, table)
    for key, hint in (("seed", "seeds = "), ("device", "config profile"), ("enable_thinking", "think_block")):
        with pytest.raises(ConfigError, match=hint):
            load(tmp_path, f'name = "x"\n[base]\n{key} = 1\n')


def test_bad_axis_value_names_experiment_axis_and_value(tmp_path: Path) -> None:
    text = 'name = "sweep"\n[[axes]]\nname = "shift"\nvalues = [\n  1.0,\n  -1,\n]\n'
    with pytest.raises(ConfigError, match=r"exp.toml:6: sweep axis 'shift' value -1: shift must be > 0"):
        load(tmp_path, text)
    with pytest.raises(ConfigError, match=r"axis 'hidden_layer' value 99: hidden_layer 99 is out of range"):
        load(tmp_path, 'name = "x"\n[[axes]]\nname = "hidden_layer"\nvalues = [99]\n')
    with pytest.raises(ConfigError, match=r"token_manipulation 'shuffle' is not valid.*did you mean 'shuffle_all'"):
        load(tmp_path, 'name = "x"\n[[axes]]\nname = "token_manipulation"\nvalues = ["shuffle"]\n')
    with pytest.raises(ConfigError, match=r"axis 'layers' is not a parameter name.*add parameter"):
        load(tmp_path, 'name = "x"\n[[axes]]\nname = "layers"\nvalues = [1]\n')


def test_invalid_run_names_experiment_prompt_seed_and_variables() -> None:
    exp = get_experiment("shift_sweep")
    bad_axis = dataclasses.replace(exp.axes[0], values=(*exp.axes[0].values, AxisValue("-1", {"shift": -1})))
    bad = dataclasses.replace(exp, axes=(bad_axis,))
    with pytest.raises(LlmDitError, match=r"^shift_sweep run animal_001 seed 42 shift=-1: shift must be > 0"):
        plan_one(bad)
    with pytest.raises(ConfigError, match=r"override steps=0: steps must be >= 1"):
        plan_one(exp, overrides={"steps": 0})
    with pytest.raises(ConfigError, match=r"unknown parameter 'shfit'; did you mean 'shift'"):
        plan_one(exp, overrides={"shfit": 1.0})
    # A prompt without the annotation a manipulation needs fails at plan time, naming the run.
    bare = Prompt("custom_001", "A cat on a couch")
    with pytest.raises(LlmDitError, match=r"token_importance run custom_001 seed 42 token_manipulation=shuffle_nouns"):
        plan(get_experiment("token_importance"), [bare], [42], Settings(), model_fingerprint=FP)


def test_plan_inputs_are_checked() -> None:
    exp = get_experiment("shift_sweep")
    with pytest.raises(LlmDitError, match=r"seeds given more than once: 1, 3$"):
        plan(exp, [CAT], [3, 1, 2, 1, 3], Settings(), model_fingerprint=FP)
    with pytest.raises(LlmDitError, match="prompt ids given more than once: animal_001"):
        plan(exp, [CAT, CAT], [1], Settings(), model_fingerprint=FP)
    with pytest.raises(LlmDitError, match="no prompts"):
        plan(exp, [], [1], Settings(), model_fingerprint=FP)
    with pytest.raises(LlmDitError, match="model_fingerprint"):
        plan(exp, [CAT], [1], Settings(), model_fingerprint="")
    with pytest.raises(ConfigError, match="override 'seed': pass the seeds"):
        plan_one(exp, overrides={"seed": 5})


def test_duplicate_labels_and_zip_mismatch(tmp_path: Path) -> None:
    dup = (
        'name = "x"\n[[axes]]\nname = "t"\nvalues = [\n  { label = "a", steps = 4 },\n  { label = "a", steps = 8 },\n]'
    )
    with pytest.raises(ConfigError, match=r"exp.toml:6: x axis 't': label 'a' is used twice"):
        load(tmp_path, dup)
    clash = 'name = "x"\n[[axes]]\nname = "t"\nvalues = [{ label = "a b", steps = 4 }, { label = "a/b", steps = 8 }]\n'
    with pytest.raises(ConfigError, match=r"both become 'a-b' in file names"):
        load(tmp_path, clash)
    zipped = (
        'name = "x"\n[[axes]]\nname = "shift"\nvalues = [1.0, 2.0]\nzip = "g"\n'
        '[[axes]]\nname = "steps"\nvalues = [4, 8, 12]\nzip = "g"\n'
    )
    with pytest.raises(ConfigError, match=r"exp.toml:9: x: zip group 'g' needs axes of equal length"):
        load(tmp_path, zipped)
    twice = 'name = "x"\n[[axes]]\nname = "shift"\nvalues = [1.0]\n[[axes]]\nname = "s"\nvalues = [{ shift = 2.0 }]\n'
    with pytest.raises(ConfigError, match=r"parameter 'shift' is set by axes 'shift' and 's'"):
        load(tmp_path, twice)


def test_all_problems_reported_in_line_order(tmp_path: Path) -> None:
    text = 'name = "x"\nseeds = [1, 1]\n[prompts]\ncategroy = "a"\n[base]\nwidth = 100\n'
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    lines = str(info.value).splitlines()
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in lines] == ["2", "4", "6"]
    assert "width 100 is not a multiple of 16" in lines[2]


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exp.toml:2: TOML syntax error"):
        load(tmp_path, 'name = "x"\nseeds = [1,, 2]\n')


def test_unknown_experiment_name_suggests_builtin(tmp_path: Path) -> None:
    with pytest.raises(
        LlmDitError, match=r"unknown experiment 'shift_swep'; did you mean 'shift_sweep'\?.*hidden_layer"
    ):
        get_experiment("shift_swep")
    path = write(tmp_path, GRID, "grid.toml")
    assert get_experiment(None, path).name == "grid"
    assert get_experiment(str(path)).source == str(path)
    with pytest.raises(ConfigError, match="defines 'grid', not 'other'"):
        get_experiment("other", path)


def test_to_dict_round_trips_through_json(tmp_path: Path) -> None:
    exp = get_experiment("hidden_layer_blend")
    data = json.loads(json.dumps(exp.to_dict()))
    assert data["name"] == "hidden_layer_blend" and data["seeds"] == [42, 123]
    assert data["axes"][0]["values"][3] == {"label": "blend_-2_-5", "params": {"layer_weights": {"-2": 0.5, "-5": 0.5}}}


# ------------------------------------------------------------------------------------------------ no torch


def test_planning_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from llm_dit.config import Settings\n"
        "from llm_dit.experiments.loader import builtin_experiments\n"
        "from llm_dit.experiments.planner import plan\n"
        "from llm_dit.experiments.prompts import Prompt\n"
        "p = [Prompt('a', 'A red cat', subjects=('cat',), descriptors=('red',))]\n"
        "for exp in builtin_experiments().values():\n"
        "    plan(exp, p, exp.seeds, Settings(), model_fingerprint='fp')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_image_paths_in_an_experiment_file_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vl_image / style_image written in a file name files beside it, wherever the command runs from."""
    study = tmp_path / "study"
    study.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fixed = tmp_path / "fixed.png"
    (study / "exp.toml").write_text(
        'name = "rel"\n[base]\nconditioning = "vl"\nvl_image = ["ref.png", "sub/b.png", "' + str(fixed) + '"]\n'
        '[[axes]]\nname = "style_image"\nvalues = ["s.png"]\n'
        '[[axes]]\nname = "v"\nvalues = [{ label = "one", vl_image = "~/x.png" }]\n'
    )
    monkeypatch.chdir(elsewhere)
    exp = load_experiment_file(Path("..") / "study" / "exp.toml")
    assert exp.base["vl_image"] == [str(study / "ref.png"), str(study / "sub" / "b.png"), str(fixed)]
    style = exp.axes[0].values[0]
    assert (style.label, style.params["style_image"]) == ("s.png", str(study / "s.png"))
    assert exp.axes[1].values[0].params["vl_image"] == "~/x.png"  # the home folder is not the file's folder


def test_a_source_runs_id_follows_its_encoders_device_and_dtype(tmp_path: Path) -> None:
    """The VL encoder's dtype changes its features, so the run id; a text run's id does not depend on it."""
    from PIL import Image

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "ref.png")
    (tmp_path / "exp.toml").write_text(
        'name = "src"\n[[axes]]\nname = "v"\nvalues = [{ label = "text", steps = 2 },'
        ' { label = "vl", steps = 2, conditioning = "vl", vl_image = "ref.png" }]\n'
    )
    exp = load_experiment_file(tmp_path / "exp.toml")

    def ids(dtype: str) -> dict[str, tuple[str, str | None]]:
        settings = Settings(vl={"device": "cpu", "torch_dtype": dtype})
        runs = plan(exp, [CAT], [42], settings, model_fingerprint=FP)
        return {r.variables["v"]: (r.run_id, r.params["source_numerics"]) for r in runs}

    fp32, bf16 = ids("float32"), ids("bfloat16")
    assert fp32["vl"][1] == "cpu/torch.float32" and bf16["vl"][1] == "cpu/torch.bfloat16"
    assert fp32["vl"][0] != bf16["vl"][0]
    assert fp32["text"] == bf16["text"] and fp32["text"][1] is None
