"""The ``llm-dit`` command line as a user runs it.

Most tests call ``llm_dit.cli.main(argv)`` in-process (it returns the exit status) and read stdout/stderr
through ``capsys``; one test runs the CLI in a real subprocess. Every run uses the session's tiny checkpoint
(``--model-path``, never the ~/.cache one), 64x64 images and 2 steps, and writes under ``tmp_path``.

Speed: loading the Qwen3 tokenizer (a ~10 MB tokenizer.json) takes ~2 s on a small machine and is the bulk
of every run, so this module caches ``checkpoint.load_tokenizer`` per path; everything else (validation,
the three models, sampling, saving) runs for real on every call.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from safetensors import safe_open

from bounds import EPS32
from cli_helpers import ANSI, flat, forbid_model_loading, run, subprocess_env
from llm_dit.cli import main
from llm_dit.generation.image import read_record
from llm_dit.models import checkpoint

REPO = Path(__file__).resolve().parents[1]
PROMPT = "A tabby cat on a windowsill"
SMALL = ["--width", "64", "--height", "64", "--steps", "2"]
FORMATTED = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
# diffusers' FlowMatchEulerDiscreteScheduler for 8 steps at shift 3 (the official Turbo schedule).
GOLDEN_SIGMAS_8_SHIFT_3 = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
LONG_PROMPT = " ".join(["a very long prompt about a cat"] * 20)  # ~150 tokens
TINY_TEXT_HIDDEN = 32  # hidden size of the tiny text encoder = caption feature width


# ------------------------------------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("cached_tokenizer")


def gen_argv(ck: Path, out: Path, *extra: str, prompt: str | None = PROMPT, small: bool = True) -> list[str]:
    """``generate`` argv; ``extra`` comes last (click: the last value of a repeated option wins)."""
    argv = ["generate"] + ([prompt] if prompt is not None else []) + ["--model-path", str(ck), "-o", str(out)]
    return argv + (SMALL if small else []) + list(extra)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as img:
        return dict(img.text)  # type: ignore[attr-defined]


def assert_user_error(rc: int, err: str, *needles: str) -> str:
    """Exit status 2, exactly one stderr line starting with 'error:' that contains every needle."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert rc == 2
    return line


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def default_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``generate PROMPT`` with the small settings and nothing else: the reference image and its record."""
    out = tmp_path_factory.mktemp("default") / "default.png"
    rc = main(gen_argv(tiny_checkpoint, out))
    assert rc == 0
    return {"path": out, "record": read_record(out), "pixels": pixels(out), "text": png_text(out)}


# ---------------------------------------------------------------------------------- 1. generate + record


def test_generate_writes_png_with_full_record(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "out.png"  # a missing parent directory is created
    rc, stdout, err = run(capsys, *gen_argv(tiny_checkpoint, out))
    assert rc == 0, err
    assert "Traceback" not in err
    assert stdout == ""  # messages go to stderr
    assert "wrote" in err and "out.png" in err
    with Image.open(out) as img:
        assert (img.format, img.size, img.mode) == ("PNG", (64, 64), "RGB")

    r = read_record(out)
    assert r["prompt"] == PROMPT
    assert r["formatted_prompt"] == FORMATTED
    assert r["system_prompt"] is None
    assert r["think_block"] == "none"
    assert r["hidden_layer"] == -2
    assert r["layer_weights"] is None
    assert r["long_prompt_mode"] == "truncate"
    assert isinstance(r["token_count"], int) and 10 < r["token_count"] < 40
    assert r["conditioning"] == "prompt"
    assert r["seed"] == 42
    assert r["steps"] == 2
    assert r["shift"] == 3.0
    assert r["sigmas"] == [1.0, 0.75, 0.0]  # 3*0.5 / (1 + 2*0.5): exact in float32 and in 8 decimals
    assert (r["width"], r["height"]) == (64, 64)
    assert r["guidance_scale"] == 0.0
    assert r["negative_prompt"] is None  # no CFG: the negative prompt played no part
    assert r["refiner"] == "default"
    assert r["padding"] == "diffusers"
    assert r["model_path"] == str(tiny_checkpoint)
    assert r["model_fingerprint"] == checkpoint.fingerprint(tiny_checkpoint)
    assert re.fullmatch(r"[0-9a-f]{16}", r["model_fingerprint"])
    assert r["versions"]["torch"] == torch.__version__
    for package in ("diffusers", "transformers"):
        assert re.match(r"\d+\.\d+", r["versions"][package]), r["versions"]
    assert r["devices"] == {"dit": "cpu/float32", "vae": "cpu/float32", "encoder": "cpu/float32"}
    assert r["config"] == {"file": None, "profile": "default"}

    lines = png_text(out)["parameters"].split("\n")
    assert len(lines) == 3
    assert lines[0] == PROMPT
    assert lines[1] == "Negative prompt: "
    assert lines[2].startswith("Steps: 2, ")
    for part in ("Shift: 3.0", "CFG scale: 0.0", "Seed: 42", "Size: 64x64", "Hidden layer: -2", "Refiner: default"):
        assert part in lines[2], part
    assert f"Model hash: {r['model_fingerprint']}" in lines[2]


def test_golden_sigmas_for_8_steps(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eight.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--steps", "8"))
    assert rc == 0, err
    r = read_record(out)
    assert (r["steps"], r["shift"]) == (8, 3.0)
    # The golden table's 6 decimals (+-5e-7), the formula in float32 (3 eps, as test_schedule.py derives) and
    # the record's 8 decimals (+-5e-9).
    assert r["sigmas"] == pytest.approx(GOLDEN_SIGMAS_8_SHIFT_3, abs=5e-7 + 3 * EPS32 + 5e-9)
    assert "Steps: 8, " in png_text(out)["parameters"]


def _formatted_with(prefix: str = "", think: str = "") -> str:
    return f"{prefix}<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n{think}"


# (id, extra flags, expected record entries, substrings of the A1111 parameters text)
FLAG_CASES: list[tuple[str, list[str], dict[str, Any], list[str]]] = [
    ("hidden-layer", ["--hidden-layer", "-6"], {"hidden_layer": -6, "layer_weights": None}, ["Hidden layer: -6"]),
    (
        "layer-weights",
        ["--layer-weights=-2:0.7,-5:0.3"],
        {"hidden_layer": None, "layer_weights": {"-2": 0.7, "-5": 0.3}},
        ["Hidden layer: -2:0.7,-5:0.3"],
    ),
    (
        "system-prompt",
        ["--system-prompt", "You are a painter."],
        {
            "system_prompt": "You are a painter.",
            "formatted_prompt": _formatted_with(prefix="<|im_start|>system\nYou are a painter.<|im_end|>\n"),
        },
        ["System prompt: You are a painter."],
    ),
    (
        "think-block-empty",
        ["--think-block", "empty"],
        {"think_block": "empty", "formatted_prompt": _formatted_with(think="<think>\n\n</think>\n\n")},
        ["Think block: empty"],
    ),
    (
        "think-block-text",
        ["--think-block", "Plan the scene."],
        {
            "think_block": "Plan the scene.",
            "formatted_prompt": _formatted_with(think="<think>\nPlan the scene.\n</think>\n\n"),
        },
        [],
    ),
    # shift 1.5 at 2 steps: 1.5*0.5 / (1 + 0.5*0.5) = 0.6
    ("shift", ["--shift", "1.5"], {"shift": 1.5, "sigmas": [1.0, 0.6, 0.0]}, ["Shift: 1.5"]),
    ("seed", ["--seed", "7"], {"seed": 7}, ["Seed: 7"]),
    ("refiner-skip", ["--refiner", "skip"], {"refiner": "skip"}, ["Refiner: skip"]),
    ("refiner-double", ["--refiner", "double"], {"refiner": "double"}, ["Refiner: double"]),
    (
        "cfg",
        ["--guidance-scale", "2", "--negative-prompt", "blurry"],
        {"guidance_scale": 2.0, "negative_prompt": "blurry"},
        ["Negative prompt: blurry", "CFG scale: 2.0"],
    ),
]


@pytest.mark.parametrize(("extra", "expected", "params"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_flag_changes_record_and_image(
    extra: list[str],
    expected: dict[str, Any],
    params: list[str],
    default_run: dict[str, Any],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "flag.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, *extra))
    assert rc == 0, err
    r = read_record(out)
    for key, value in expected.items():
        if isinstance(value, list):  # sigmas: the float32 nearest each value (the formula gives it), to 8 decimals
            assert r[key] == pytest.approx(torch.tensor(value, dtype=torch.float32).tolist(), abs=5e-9), key
        else:
            assert r[key] == value, key
    # Everything not named by the flag stays at its default.
    reference = default_run["record"]
    for key in ("prompt", "seed", "steps", "shift", "width", "height", "hidden_layer", "refiner", "guidance_scale"):
        if key not in expected:
            assert r[key] == reference[key], key
    text = png_text(out)["parameters"]
    for part in params:
        assert part in text, part
    # A flag that does nothing to the image must fail here.
    diff = mean_abs_diff(pixels(out), default_run["pixels"])
    assert diff > 0.5, f"image barely changed (mean |diff| {diff:.3f} of 255)"


def test_explicit_sigmas(
    default_run: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sigmas.png"
    # No --steps: with explicit sigmas the step count is their non-zero count.
    argv = ["generate", PROMPT, "--model-path", tiny_checkpoint, "-o", out, "--width", "64", "--height", "64"]
    rc, _, err = run(capsys, *argv, "--sigmas", "1,0.6,0.2")
    assert rc == 0, err
    r = read_record(out)
    assert r["shift"] is None
    assert r["steps"] == 3
    # used verbatim: the given values as float32, and the final 0; the record keeps 8 decimals (+-5e-9)
    float32_values = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float32).tolist()
    assert r["sigmas"] == pytest.approx(float32_values, abs=5e-9)
    assert "Steps: 3, " in png_text(out)["parameters"]
    assert "Shift: explicit sigmas" in png_text(out)["parameters"]
    assert mean_abs_diff(pixels(out), default_run["pixels"]) > 0.5


def test_inert_negative_prompt_is_noted_and_changes_nothing(
    default_run: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without CFG a negative prompt has no effect: the user is told, and the image is the default one."""
    out = tmp_path / "neg.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--negative-prompt", "blurry"))
    assert rc == 0, err
    assert "note:" in err and "negative_prompt has no effect" in err
    assert read_record(out)["negative_prompt"] is None
    assert np.array_equal(pixels(out), default_run["pixels"])


@pytest.mark.parametrize("value", ["", " "], ids=["empty", "blank"])
def test_empty_layer_weights_mean_no_blend(
    value: str,
    default_run: dict[str, Any],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--layer-weights ""`` is "no blend" (documented in config.parse_layer_weights): the single hidden
    layer is used, so the image is the default one. (``","`` is an error instead: see the bad-input table.)"""
    out = tmp_path / "lw.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, f"--layer-weights={value}"))
    assert rc == 0, err
    r = read_record(out)
    assert (r["hidden_layer"], r["layer_weights"]) == (-2, None)
    assert np.array_equal(pixels(out), default_run["pixels"])


def test_long_prompt_mode_changes_record_and_image(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over the cap, 'truncate' cuts the prompt and 'pool' compresses it: both fit, differently."""
    runs = {}
    for mode in ("truncate", "pool"):
        out = tmp_path / f"{mode}.png"
        extra = ["--max-text-tokens", "32", "--long-prompt-mode", mode]
        rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, *extra, prompt=LONG_PROMPT))
        assert rc == 0, err
        r = read_record(out)
        assert r["long_prompt_mode"] == mode
        assert r["max_text_tokens"] == 32
        assert r["token_count"] > 100  # the whole formatted prompt, before the cap
        assert r["embedding_length"] == 32
        runs[mode] = (r, pixels(out))
    assert (runs["truncate"][0]["truncated"], runs["truncate"][0]["compressed"]) == (True, False)
    assert (runs["pool"][0]["truncated"], runs["pool"][0]["compressed"]) == (False, True)
    assert mean_abs_diff(runs["truncate"][1], runs["pool"][1]) > 0.5


def test_default_output_name_goes_to_output_dir(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", PROMPT, "--model-path", tiny_checkpoint, *SMALL, "--seed", "3", "--output-dir", tmp_path / "o"]
    for _ in range(2):  # a second run in the same second must not clobber the first
        rc, _, err = run(capsys, *argv)
        assert rc == 0, err
    written = sorted((tmp_path / "o").iterdir())
    assert len(written) == 2
    for path in written:
        assert re.fullmatch(r"\d{8}-\d{6}_seed3(_\d+)?\.png", path.name), path.name
        assert read_record(path)["seed"] == 3


# ------------------------------------------------------------------------------ 2. determinism, overwrite


def test_same_seed_gives_identical_pixels(
    default_run: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out))
    assert rc == 0, err
    assert np.array_equal(pixels(out), default_run["pixels"])
    volatile = {"created", "batch_seconds", "seconds_per_image_batched"}
    again = {k: v for k, v in read_record(out).items() if k not in volatile}
    assert again == {k: v for k, v in default_run["record"].items() if k not in volatile}


def test_existing_output_is_refused_then_replaced_with_overwrite(
    default_run: dict[str, Any],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "exists.png"
    shutil.copyfile(default_run["path"], out)
    before = out.read_bytes()

    with monkeypatch.context() as mp:
        forbid_model_loading(mp)  # refused before any model loads
        rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--seed", "7"))
    assert_user_error(rc, err, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == before

    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--seed", "7", "--overwrite"))
    assert rc == 0, err
    assert out.read_bytes() != before
    assert read_record(out)["seed"] == 7
    assert not np.array_equal(pixels(out), default_run["pixels"])
    assert [p.name for p in tmp_path.iterdir()] == ["exists.png"]  # no temp file left behind


# ------------------------------------------------------------------------------------------- 3. config


CONFIG = """\
[default]
[default.generation]
seed = 5
shift = 2.0
steps = 3
width = 64
height = 64

[default.encoder]
hidden_layer = -3

[fast.generation]
seed = 6
steps = 2

[fast.encoder]
system_prompt = "You are a painter."
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm-dit.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_config_precedence_cli_over_profile_over_default(
    config_file: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cfg.png"
    argv = ["generate", PROMPT, "--model-path", tiny_checkpoint, "-o", out, "--config", config_file]
    rc, _, err = run(capsys, *argv, "--profile", "fast", "--seed", "9")
    assert rc == 0, err
    r = read_record(out)
    assert r["seed"] == 9  # CLI beats [fast] (6) and [default] (5)
    assert r["steps"] == 2  # [fast] beats [default] (3)
    assert r["system_prompt"] == "You are a painter."  # [fast] only
    assert r["shift"] == 2.0  # [default] beats built-in 3.0
    assert r["hidden_layer"] == -3  # [default] beats built-in -2
    assert (r["width"], r["height"]) == (64, 64)  # [default]
    assert r["guidance_scale"] == 0.0  # built-in
    assert r["think_block"] == "none"  # built-in
    assert r["config"] == {"file": str(config_file), "profile": "fast"}


def test_config_show_reflects_profile_and_defaults(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "config", "show", "--config", config_file, "--profile", "fast")
    assert rc == 0, err
    data = tomllib.loads(out)["default"]  # valid TOML
    gen, enc = data["generation"], data["encoder"]
    assert (gen["seed"], gen["steps"]) == (6, 2)  # [fast]
    assert (gen["shift"], gen["width"]) == (2.0, 64)  # [default]
    assert enc["hidden_layer"] == -3  # [default]
    assert enc["system_prompt"] == "You are a painter."  # [fast]
    assert gen["guidance_scale"] == 0.0 and enc["think_block"] == "none"  # built-in defaults
    assert "model_path" not in data  # unset: shown as a comment only
    source = {line.split("=")[0].strip(): line.rsplit("#", 1)[1].strip() for line in out.splitlines() if " = " in line}
    assert source["seed"] == f"{config_file}:[fast]"
    assert source["shift"] == f"{config_file}:[default]"
    assert source["guidance_scale"] == "default"

    rc, out, err = run(capsys, "config", "show")
    assert rc == 0, err
    gen = tomllib.loads(out)["default"]["generation"]
    assert (gen["steps"], gen["seed"], gen["width"]) == (8, 42, 1024)
    assert "shift" not in gen  # unset until a checkpoint is known: its scheduler's, said in a comment
    assert "# shift is unset (the checkpoint's scheduler_config.json shift)  # default" in out


def test_unknown_profile_is_an_error(
    config_file: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    rc, out, err = run(capsys, "config", "show", "--config", config_file, "--profile", "fsat")
    assert_user_error(rc, err, "profile 'fsat' not found", "did you mean 'fast'")
    assert out == ""

    png = tmp_path / "p.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, png, "--config", str(config_file), "--profile", "nope"))
    assert_user_error(rc, err, "profile 'nope' not found", "default, fast")
    assert not png.exists()

    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, png, "--profile", "fast"))  # no --config
    assert_user_error(rc, err, "profile 'fast'", "--config")
    assert not png.exists()


# -------------------------------------------------------------------------------------------- 4. bad input

# (id, argv after "generate" built by gen_argv with these extras; "{ck}", "{tmp}" are substituted,
#  expected substrings of the error line). A case with "PROMPT=" as its first extra replaces the prompt
#  (None = no prompt).
# Every refusal of `generate` (one line, exit 2, nothing written, no model library imported) is a case of the
# bad-input table: tests/test_bad_input.py GENERATE.


@pytest.fixture
def bad_files(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The broken inputs the bad-input table refers to, under tmp_path."""
    (tmp_path / "a-file").write_text("a regular file\n")
    (tmp_path / "syntax.toml").write_text("[default]\n[default.generation\nsteps = 2\n")
    (tmp_path / "typo.toml").write_text("[default]\nmodel_path = 'tiny'\n\n[default.generation]\nstep = 4\n")
    (tmp_path / "value.toml").write_text("[default.generation]\nwidth = 1000\n")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_checkpoint, incomplete)
    (incomplete / "vae" / "config.json").unlink()
    return tmp_path


def test_error_message_keeps_bracketed_section_names(
    bad_files: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    argv = gen_argv(tiny_checkpoint, bad_files / "out.png", "--config", str(bad_files / "typo.toml"))
    rc, _, err = run(capsys, *argv)
    assert_user_error(rc, err, "unknown key 'step' in [default.generation]")


def test_error_with_markup_like_path_is_still_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    weird = tmp_path / "[/x]" / "model"
    rc, _, err = run(capsys, "generate", PROMPT, "--model-path", weird, "-o", tmp_path / "o.png", *SMALL)
    assert_user_error(rc, err, "does not exist", "[/x]")


@pytest.mark.parametrize(
    "argv",
    [["generate", PROMPT, "--width", "abc"], ["generate", PROMPT, "--bogus-flag"], ["encode", PROMPT]],
    ids=["not-an-int", "unknown-option", "missing-option"],
)
def test_usage_errors_exit_2_without_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert "Traceback" not in err and err.strip()


def test_user_error_in_a_real_subprocess(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The installed entry point, as a shell runs it: one line, exit status 2, no traceback, no file."""
    out = tmp_path / "out.png"
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, "-m", "llm_dit.cli", *gen_argv(tiny_checkpoint, out, "--width", "1000")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in ANSI.sub("", proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--width 1000" in lines[0] and "multiple of 16" in lines[0]
    assert proc.stdout == ""
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 5. encode


def _read_safetensors(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys()), handle.get_tensor("embeddings"), dict(handle.metadata() or {})


@pytest.fixture(scope="module")
def encoded(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``encode PROMPT`` at hidden layers -2, -5 and -6 and with a -2/-5 blend."""
    folder = tmp_path_factory.mktemp("encode")
    files = {}
    for name, extra in {
        "-2": [],
        "-5": ["--hidden-layer", "-5"],
        "-6": ["--hidden-layer", "-6"],
        "blend": ["--layer-weights=-2:0.7,-5:0.3"],
    }.items():
        path = folder / f"emb{name}.safetensors"
        assert main(["encode", PROMPT, "--model-path", str(tiny_checkpoint), "-o", str(path), *extra]) == 0
        files[name] = path
    return files


def test_encode_writes_embeddings_and_metadata(encoded: dict[str, Path], default_run: dict[str, Any]) -> None:
    keys, emb, meta = _read_safetensors(encoded["-2"])
    assert keys == ["embeddings"]
    token_count = default_run["record"]["token_count"]
    assert emb.dtype == torch.float32
    assert list(emb.shape) == [token_count, TINY_TEXT_HIDDEN]
    assert torch.isfinite(emb).all()
    assert meta["formatted_prompt"] == FORMATTED
    assert meta["token_count"] == str(token_count)
    assert meta["hidden_layer"] == "-2"
    assert meta["prompt"] == PROMPT

    _, emb6, meta6 = _read_safetensors(encoded["-6"])
    assert meta6["hidden_layer"] == "-6"
    assert emb6.shape == emb.shape
    assert not torch.allclose(emb6, emb)

    _, blend, meta_blend = _read_safetensors(encoded["blend"])
    assert json.loads(meta_blend["layer_weights"]) == {"-2": 0.7, "-5": 0.3}
    assert json.loads(meta_blend.get("hidden_layer", "null")) is None
    _, emb5, _ = _read_safetensors(encoded["-5"])
    torch.testing.assert_close(blend, 0.7 * emb + 0.3 * emb5)


def test_encode_refuses_non_safetensors_output(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    out = tmp_path / "f.pt"
    rc, _, err = run(capsys, "encode", PROMPT, "--model-path", tiny_checkpoint, "-o", out)
    assert_user_error(rc, err, "f.pt", ".safetensors")
    assert not out.exists()


def test_encode_refuses_existing_output(
    encoded: dict[str, Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    before = encoded["-2"].read_bytes()
    rc, _, err = run(capsys, "encode", "another prompt", "--model-path", tiny_checkpoint, "-o", encoded["-2"])
    assert_user_error(rc, err, "already exists")
    assert encoded["-2"].read_bytes() == before


def test_generate_from_embeddings_matches_generate_from_prompt(
    encoded: dict[str, Path],
    default_run: dict[str, Any],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "from-emb.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--embeddings", str(encoded["-2"]), prompt=None))
    assert rc == 0, err
    assert np.array_equal(pixels(out), default_run["pixels"])  # same features, same seed: same image
    r = read_record(out)
    assert r["conditioning"] == "precomputed embeddings"
    assert r["prompt"] is None and r["formatted_prompt"] is None
    assert r["embeddings_file"]["path"] == str(encoded["-2"])
    assert r["embeddings_file"]["metadata"]["hidden_layer"] == "-2"
    assert r["embedding_length"] == default_run["record"]["token_count"]
    assert png_text(out)["parameters"].split("\n")[0] == "<precomputed embeddings>"

    # Other features, other image: the file really is what conditions the DiT.
    out6 = tmp_path / "from-emb-6.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out6, "--embeddings", str(encoded["-6"]), prompt=None))
    assert rc == 0, err
    assert mean_abs_diff(pixels(out6), default_run["pixels"]) > 0.5


def test_encoder_flags_with_embeddings_are_not_misrecorded(
    encoded: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "emb.png"
    argv = gen_argv(tiny_checkpoint, out, "--embeddings", str(encoded["-2"]), "--hidden-layer", "-6", prompt=None)
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    # Precomputed embeddings were made elsewhere: the record says no layer, and the user is told the flag is inert.
    assert read_record(out)["hidden_layer"] is None
    assert "encoder.hidden_layer do not apply to --embeddings" in err


# -------------------------------------------------------------------------------------------- 6. tiny-model


def test_tiny_model_writes_a_loadable_checkpoint_and_refuses_an_existing_dir(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers import ZImagePipeline

    target = tmp_path / "tiny-seed1"
    rc, _, err = run(capsys, "tiny-model", target, "--seed", "1")
    assert rc == 0, err
    assert str(target) in err
    assert json.loads((target / "llm_dit_tiny.json").read_text())["seed"] == 1
    checkpoint.validate_checkpoint(target)
    fingerprint = checkpoint.fingerprint(target)
    assert fingerprint != checkpoint.fingerprint(tiny_checkpoint)  # seed 1 weights, not seed 0's

    pipe = ZImagePipeline.from_pretrained(target)
    assert type(pipe.transformer).__name__ == "ZImageTransformer2DModel"
    assert type(pipe.text_encoder).__name__ == "Qwen3Model"
    assert pipe.text_encoder.config.hidden_size == TINY_TEXT_HIDDEN

    rc, _, err = run(capsys, "tiny-model", target, "--seed", "2")
    assert_user_error(rc, err, str(target), "already exists")
    assert checkpoint.fingerprint(target) == fingerprint  # untouched


# ------------------------------------------------------------------------------------------------- 7. help

SEED_FLAGS = [
    "--model-path",
    "--config",
    "--profile",
    "--hidden-layer",
    "--layer-weights",
    "--system-prompt",
    "--think-block",
    "--shift",
    "--steps",
    "--width",
    "--height",
    "--seed",
    "--guidance-scale",
    "--negative-prompt",
    "--long-prompt-mode",
    "--max-text-tokens",
    "--refiner",
    "--output",
]


def test_app_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for command in ("generate", "encode", "tiny-model", "config"):
        assert re.search(rf"\b{command}\b", out), command


def test_every_setting_has_its_flag_on_generate(capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.config import CLI_FLAGS

    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", out))
    assert set(CLI_FLAGS.values()) <= flags


def test_generate_help_lists_the_seed_flags(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", out))
    missing = [flag for flag in SEED_FLAGS if flag not in flags]
    assert not missing, missing


def test_generate_help_keeps_bracketed_text(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "generate", "--help")
    assert rc == 0
    assert "[default]" in out


def test_settings_overrides_follow_the_declared_flags_not_parameter_names() -> None:
    """An option is a setting because it declares a config flag: a parameter named after a flag that it does not
    declare is not one, and one named otherwise but declaring the flag is."""
    from typer.testing import CliRunner

    from llm_dit.cli.options import settings_overrides

    seen: dict[str, Any] = {}
    app = typer.Typer()

    @app.command()
    def probe(
        ctx: typer.Context,
        steps: Annotated[int | None, typer.Option("--iterations")] = None,  # named like a setting, is not one
        how_many: Annotated[int | None, typer.Option("--steps")] = None,  # declares the setting's flag
        model: Annotated[str | None, typer.Option("--model")] = None,
    ) -> None:
        seen.update(settings_overrides(ctx))

    result = CliRunner().invoke(app, ["--iterations", "3", "--steps", "4", "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert seen == {"generation.steps": 4, "model_path": "tiny"}


@pytest.mark.parametrize("width", [40, 200])
def test_print_rows_keeps_every_cell_whole_at_any_width(width: int) -> None:
    import io

    from rich.console import Console

    from llm_dit.cli.terminal import print_rows

    buffer = io.StringIO()
    rows = [["4f3a9b2c1d0e8f7a", "animal_001", "[1.0, 0.5]", "42"], ["0123456789abcdef", "complex_012", "2.5", "7"]]
    print_rows(Console(file=buffer, width=width), ["run id", "prompt", "sigmas", "seed"], rows)
    lines = buffer.getvalue().splitlines()
    for row in rows:  # each row on one line, every cell whole
        assert any(all(cell in line for cell in row) for line in lines), (row, lines)
    if width == 200:  # a table that fits
        assert "┃" in lines[1] and all(len(line) <= width for line in lines)
    else:  # too narrow for the table: a record per line, left to the terminal to wrap
        assert lines == [
            "run id=4f3a9b2c1d0e8f7a  prompt=animal_001  sigmas=[1.0, 0.5]  seed=42",
            "run id=0123456789abcdef  prompt=complex_012  sigmas=2.5  seed=7",
        ]


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["generate"], 2),
        (["encode", "x", "-o", "x.txt"], 2),
        (["profile", "--repeats", "0", "-o", "p.json"], 2),
        (["--help"], 0),
        (["ablate", "--list-experiments"], 0),
        (["ablate", "--list-prompts"], 0),
        (["config", "show"], 0),
        (["ablate", "--list-experiments", "--format", "json"], 0),
        (["metrics", "--list", "--format", "csv"], 0),
        (["config", "show", "--format", "json"], 0),
        (["ablate", "--list-prompts", "--format", "yaml"], 2),
    ],
)
def test_light_commands_import_no_model_library(argv: list[str], status: int, tmp_path: Path) -> None:
    """Help, listings and these rejections import no model library (docs/architecture.md): the output check is
    pure pathlib (llm_dit.files), and heavy imports sit in the functions that run models."""
    code = (
        "import sys\nfrom llm_dit.cli import main\nrc = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path, env=subprocess_env()
    )
    rc, heavy = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]", done.stdout + done.stderr
    assert rc == str(status), done.stdout + done.stderr


# ------------------------------------------------------------- 8. one vocabulary, the checkpoint's shift, limits


def test_generate_set_takes_the_experiment_names_and_equals_the_flags(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--set NAME=VALUE (the names of experiment files and ablate --set, plus seed) sets the same settings as the
    dedicated flags: the same record and the same pixels."""
    sets = {
        "steps": "3",
        "seed": "9",
        "think_block": "empty",
        "guidance_scale": "1.5",
        "negative_prompt": '"blurry"',
        "cfg_normalization": "true",
        "cfg_truncation": "0.5",
        "refiner": "skip",
    }
    flags = ["--steps", "3", "--seed", "9", "--think-block", "empty", "--guidance-scale", "1.5"]
    flags += ["--negative-prompt", "blurry", "--cfg-normalization", "--cfg-truncation", "0.5", "--refiner", "skip"]
    sets.update(width="64", height="64")
    flags += ["--width", "64", "--height", "64"]
    by_set, by_flag = tmp_path / "set.png", tmp_path / "flag.png"
    set_args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, by_set, *set_args, small=False))
    assert rc == 0, err
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, by_flag, *flags, small=False))
    assert rc == 0, err
    volatile = {"created", "batch_seconds", "seconds_per_image_batched", "peak_memory_bytes"}
    record = {k: v for k, v in read_record(by_set).items() if k not in volatile}
    assert record == {k: v for k, v in read_record(by_flag).items() if k not in volatile}
    assert (record["steps"], record["seed"], record["think_block"], record["refiner"]) == (3, 9, "empty", "skip")
    assert (record["guidance_scale"], record["negative_prompt"]) == (1.5, "blurry")
    assert (record["cfg_normalization"], record["cfg_truncation"]) == (True, 0.5)
    assert np.array_equal(pixels(by_set), pixels(by_flag))


# generate --set NAME -> the setting it overrides, written out by hand (not derived as cli/options.py derives it).
SET_NAME_SETTINGS = {
    "hidden_layer": "encoder.hidden_layer",
    "layer_weights": "encoder.layer_weights",
    "system_prompt": "encoder.system_prompt",
    "think_block": "encoder.think_block",
    "max_text_tokens": "encoder.max_text_tokens",
    "long_prompt_mode": "encoder.long_prompt_mode",
    "padding": "encoder.padding",
    "width": "generation.width",
    "height": "generation.height",
    "steps": "generation.steps",
    "shift": "generation.shift",
    "sigmas": "generation.sigmas",
    "seed": "generation.seed",
    "guidance_scale": "generation.guidance_scale",
    "negative_prompt": "generation.negative_prompt",
    "cfg_normalization": "generation.cfg_normalization",
    "cfg_truncation": "generation.cfg_truncation",
    "refiner": "generation.refiner",
    "init_image": "generation.init_image",
    "strength": "generation.strength",
    "conditioning": "conditioning.conditioning",
    "vl_image": "conditioning.vl_image",
    "vl_text": "conditioning.vl_text",
    "vl_system_prompt": "conditioning.vl_system_prompt",
    "vl_layer": "conditioning.vl_layer",
    "vl_token_mode": "conditioning.vl_token_mode",
    "vl_image_weights": "conditioning.vl_image_weights",
    "vl_alpha": "conditioning.vl_alpha",
    "vl_blend": "conditioning.vl_blend",
    "vl_blend_curve": "conditioning.vl_blend_curve",
    "vl_normalize": "conditioning.vl_normalize",
    "vl_target_std": "conditioning.vl_target_std",
    "vl_hybrid_weight": "conditioning.vl_hybrid_weight",
    "outlier_mask": "conditioning.outlier_mask",
    "outlier_threshold": "conditioning.outlier_threshold",
    "style_image": "conditioning.style_image",
    "neutral_image": "conditioning.neutral_image",
    "intra_vl_ratio": "conditioning.intra_vl_ratio",
    "embedding_layer": "conditioning.embedding_layer",
    "embedding_format": "conditioning.embedding_format",
    "embedding_instruction": "conditioning.embedding_instruction",
    "embedding_keep_eot": "conditioning.embedding_keep_eot",
    "fill_mode": "conditioning.fill_mode",
    "target_length": "conditioning.target_length",
    "vl_alpha_schedule": "conditioning.vl_alpha_schedule",
    "prompt_switch": "conditioning.prompt_switch",
    "prompt_switch_step": "conditioning.prompt_switch_step",
}


def test_every_run_parameter_has_its_set_name() -> None:
    """Each experiment parameter (and seed) is a --set name of generate, mapped onto its own setting."""
    from llm_dit.cli.options import run_parameter_sets
    from llm_dit.config import SETTING_KEYS
    from llm_dit.experiments.model import SETTABLE_PARAMETERS, TOKEN_MANIPULATION

    # The table covers every parameter: a new one needs its setting written here.
    assert {*SETTABLE_PARAMETERS, "seed"} == {*SET_NAME_SETTINGS, TOKEN_MANIPULATION}
    assert run_parameter_sets([f"{TOKEN_MANIPULATION}=x"]) == ({}, "x")
    for name, expected in SET_NAME_SETTINGS.items():
        overrides, manipulation = run_parameter_sets([f"{name}=x"])
        assert (overrides, manipulation) == ({expected: "x"}, None), name
        assert expected in SETTING_KEYS, expected


def _checkpoint_with_shift(tiny_checkpoint: Path, directory: Path, shift: float) -> Path:
    """A copy of the tiny checkpoint whose scheduler_config.json says ``shift``."""
    ck = directory / f"shift{shift}"
    shutil.copytree(tiny_checkpoint, ck)
    path = ck / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "shift": shift}))
    return ck


def test_generate_uses_the_checkpoints_scheduler_shift_and_says_where_from(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = _checkpoint_with_shift(tiny_checkpoint, tmp_path, 5.0)
    config = tmp_path / "c.toml"
    config.write_text("[default.generation]\nshift = 5.0\n")
    sources = {
        "default": ([], "checkpoint scheduler_config"),
        "flag": (["--shift", "5"], "--shift/--set"),
        "set": (["--set", "shift=5.0"], "--shift/--set"),
        "config": (["--config", str(config)], "config file"),
    }
    images = {}
    for name, (extra, source) in sources.items():
        out = tmp_path / f"{name}.png"
        rc, _, err = run(capsys, *gen_argv(ck, out, *extra))
        assert rc == 0, err
        r = read_record(out)
        assert (r["shift"], r["shift_source"]) == (5.0, source), name
        # 2 steps: s = 1, 0.5, shifted 5*0.5 / (1 + 4*0.5) in float32, as the record keeps it (8 decimals)
        assert r["sigmas"] == [1.0, round(float(np.float32(2.5) / np.float32(3.0)), 8), 0.0]
        assert f"shift 5.0 ({source})" in flat(err)
        images[name] = pixels(out)
    for name in sources:
        assert np.array_equal(images[name], images["default"]), name  # the same shift, the same image
    out = tmp_path / "three.png"
    rc, _, err = run(capsys, *gen_argv(ck, out, "--shift", "3"))  # an explicit shift wins over the checkpoint's
    assert rc == 0, err
    assert (read_record(out)["shift"], read_record(out)["shift_source"]) == (3.0, "--shift/--set")


def test_ablate_uses_the_checkpoints_shift_and_hashes_the_resolved_one(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ablate and experiment files: the checkpoint's shift when no level sets one, recorded with its source in
    the store's params and each PNG; the run id hashes the resolved shift (5.0 from the checkpoint or from --set
    is one image, one id; 3.0 is another)."""
    from llm_dit.config import load_settings
    from llm_dit.experiments.preparation import prepare_experiment
    from llm_dit.experiments.store import ResultsStore

    ck = _checkpoint_with_shift(tiny_checkpoint, tmp_path, 5.0)
    exp = tmp_path / "steps.toml"
    exp.write_text(
        'name = "ckshift"\ndescription = "steps on a shift-5 checkpoint"\nseeds = [1]\n\n'
        '[prompts]\nids = ["animal_001"]\n\n[[axes]]\nname = "steps"\nvalues = [1, 2]\n'
    )
    settings = load_settings(None, None, {"model_path": str(ck)}).settings

    def planned(**overrides: Any) -> list[Any]:
        sets = {"width": 64, "height": 64, **overrides}
        return prepare_experiment(None, settings=settings, experiment_file=exp, overrides=sets).runs

    default, explicit, three = planned(), planned(shift=5.0), planned(shift=3.0)
    config = tmp_path / "c.toml"
    config.write_text(f'[default]\nmodel_path = "{ck}"\n[default.generation]\nshift = 5.0\n')
    from_file = prepare_experiment(
        None, settings=load_settings(config).settings, experiment_file=exp, overrides={"width": 64, "height": 64}
    ).runs
    assert [(r.params["shift"], r.params["shift_source"]) for r in from_file] == [(5.0, "config file")] * 2
    assert [r.run_id for r in from_file] == [r.run_id for r in default]
    swept = tmp_path / "shifts.toml"
    swept.write_text(exp.read_text().replace('name = "steps"\nvalues = [1, 2]', 'name = "shift"\nvalues = [5.0]'))
    (axis,) = prepare_experiment(None, settings=settings, experiment_file=swept, overrides={"shift": 2.0}).runs
    assert (axis.params["shift"], axis.params["shift_source"]) == (5.0, "experiment")  # the axis wins over --set
    assert [(r.params["shift"], r.params["shift_source"]) for r in default] == [
        (5.0, "checkpoint scheduler_config")
    ] * 2
    assert [(r.params["shift"], r.params["shift_source"]) for r in explicit] == [(5.0, "--shift/--set")] * 2
    assert [r.run_id for r in explicit] == [r.run_id for r in default]
    assert not {r.run_id for r in three} & {r.run_id for r in default}

    out = tmp_path / "results"
    argv = ["ablate", "--model-path", str(ck), "--output-dir", str(out), "--experiment-file", str(exp)]
    rc, _, err = run(capsys, *argv, "--set", "width=64", "--set", "height=64")
    assert rc == 0, err
    with ResultsStore(out, read_only=True) as store:
        runs = store.runs("ckshift")
    # The plan's stored defaults (the metrics' default reference of a shift axis) hold the checkpoint's shift too.
    meta = json.loads((out / "ckshift" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["metadata"]["plan_defaults"]["params"]["shift"] == 5.0
    assert [run["run_id"] for run in runs] == [r.run_id for r in default]
    for stored in runs:
        assert (stored["params"]["shift"], stored["params"]["shift_source"]) == (5.0, "checkpoint scheduler_config")
        record = read_record(out / "ckshift" / stored["image_path"])
        assert (record["shift"], record["shift_source"]) == (5.0, "checkpoint scheduler_config")


def test_a_dynamic_shifting_checkpoint_is_refused_unless_a_shift_is_set(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = tmp_path / "dynamic"
    shutil.copytree(tiny_checkpoint, ck)
    path = ck / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_dynamic_shifting": True}))
    out = tmp_path / "out.png"
    with monkeypatch.context() as mp:
        forbid_model_loading(mp)
        rc, _, err = run(capsys, *gen_argv(ck, out))
    assert_user_error(rc, err, "use_dynamic_shifting = true", "set a fixed shift instead")
    assert not out.exists()
    rc, _, err = run(capsys, *gen_argv(ck, out, "--shift", "3"))
    assert rc == 0, err


def test_an_over_long_prompt_is_said_on_the_terminal(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "long.png"
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, out, "--max-text-tokens", "32", prompt=LONG_PROMPT))
    assert rc == 0, err
    count = read_record(out)["token_count"]
    assert count > 32
    assert f"the prompt is {count} tokens, over the cap of 32 (max_text_tokens): long_prompt_mode truncate" in flat(err)
    rc, _, err = run(capsys, *gen_argv(tiny_checkpoint, tmp_path / "short.png"))
    assert rc == 0, err
    assert "over the cap" not in err


def test_explicit_sigmas_count_against_max_steps(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    sigmas = ",".join(str(round(1 - i / 202, 6)) for i in range(201))  # 201 strictly decreasing values in (0, 1]
    argv = gen_argv(tiny_checkpoint, tmp_path / "o.png", "--set", f"sigmas=[{sigmas}]", small=False)
    rc, _, err = run(capsys, *argv, "--width", "64", "--height", "64")
    assert_user_error(rc, err, "sigmas has 201 non-zero values (steps) is above the limit of 200", "max_steps")
    config = tmp_path / "c.toml"
    config.write_text("[default.limits]\nmax_steps = 201\n")  # raised: then it is only a matter of time
    from llm_dit.config import check_limits, load_settings

    settings = load_settings(config, None, {}, {"generation.sigmas": [float(x) for x in sigmas.split(",")]}).settings
    check_limits(settings.limits, settings.generation.model_dump())
    assert not (tmp_path / "o.png").exists()


def test_tiny_model_probes_its_directory_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    rc, _, err = run(capsys, "tiny-model", "/proc/llm-dit-tiny")
    assert_user_error(rc, err, "cannot write /proc/llm-dit-tiny", "/proc is not a writable directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = run(capsys, "tiny-model", blocker / "sub" / "ck")
    assert_user_error(rc, err, "not a writable directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_seeds_error_shows_integers(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None) -> None:
    rc, _, err = run(capsys, "ablate", "-e", "steps_only", "--seeds", "1.5", "--dry-run", "--output-dir", tmp_path)
    assert_user_error(rc, err, "--seeds '1.5': expected comma-separated integers, e.g. 42,43,44")


def test_ablate_refuses_a_plan_over_the_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    """--set and experiment files are checked against [limits] before anything loads, naming the run."""
    out = tmp_path / "results"
    rc, _, err = run(capsys, "ablate", "-e", "hidden_layer", "--set", "steps=500", "--dry-run", "--output-dir", out)
    assert_user_error(rc, err, "steps 500 is above the limit of 200 (limits.max_steps)", "[default.limits] max_steps")
    exp = tmp_path / "wide.toml"
    exp.write_text(
        'name = "wide"\ndescription = "too wide"\nseeds = [1]\n\n[prompts]\nids = ["animal_001"]\n\n'
        '[[axes]]\nname = "width"\nvalues = [1024, 8192]\n'
    )
    rc, _, err = run(capsys, "ablate", "--experiment-file", exp, "--dry-run", "--output-dir", out)
    assert_user_error(rc, err, "wide run animal_001 seed 1 width=8192", "width 8192 is above the limit of 4096")
    assert not out.exists()
