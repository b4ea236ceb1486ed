"""The light paths import no model library: planning, dry runs, listings and rejections of bad input.

Each command runs in a child Python of its own (``llm_dit.cli.main``) that reports its exit status and which of
torch, transformers and diffusers are in ``sys.modules`` afterwards (docs/architecture.md, "Which way imports
go"). The tokenizer the checks use is cached first (the session's tokenizer cache, see conftest.py): with the
cache warm a dry run needs only the ``tokenizers`` library. Also here: the lock is checked before anything is
built (a real second process holds it), and a plan is counted before it is expanded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import ANSI, results_snapshot, subprocess_env
from llm_dit.models import devices
from llm_dit.models.tokenizer import checkpoint_tokenizer

HEAVY = ("torch", "transformers", "diffusers")
CHILD = (
    "import json, os, sys\n"
    "from llm_dit.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "heavy = [m for m in os.environ['LIGHT_HEAVY'].split(',') if m in sys.modules]\n"
    "open(os.environ['LIGHT_REPORT'], 'w').write(json.dumps({'rc': rc, 'heavy': heavy}))\n"
)
LONG_PROMPT = " ".join(f"mountain river castle {i}" for i in range(40))
CAP_8 = ["--max-text-tokens", "8", "--long-prompt-mode", "none"]


def light_run(argv: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    """(exit status, model libraries imported, stdout, stderr) of one CLI command in a fresh child."""
    report = cwd / f".light-report-{os.getpid()}.json"
    env = subprocess_env(LIGHT_REPORT=str(report), LIGHT_HEAVY=",".join(HEAVY))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )
    assert report.is_file(), done.stdout + done.stderr
    result = json.loads(report.read_text())
    report.unlink()
    return result["rc"], result["heavy"], ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)


@pytest.fixture(scope="module")
def warm(tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint with its tokenizer in the session's cache (what a machine has after its first run)."""
    checkpoint_tokenizer(tiny_checkpoint)
    return tiny_checkpoint


@pytest.fixture
def files(warm: Path, tmp_path: Path) -> dict[str, str]:
    """The inputs the cases name: results dirs, a damaged checkpoint, a huge experiment file, a CUDA config."""
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(warm, broken, copy_function=os.link)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    weights.unlink()
    weights.write_bytes(b"\x17" * size)  # garbage of the right size: only the header check finds it
    seeds = ", ".join(str(i) for i in range(200_000))
    values = ", ".join(repr(1.0 + i * 1e-5) for i in range(50_000))
    (tmp_path / "huge.toml").write_text(
        f'name = "huge"\nseeds = [{seeds}]\n[[axes]]\nname = "shift"\nvalues = [{values}]\n'
    )
    (tmp_path / "studies").mkdir()
    (tmp_path / "cuda.toml").write_text('[default.pipeline]\ndevice = "cuda"\n')
    (tmp_path / "limits.toml").write_text("[default.limits]\nmax_runs = 59\n")
    return {"ck": str(warm), "tmp": str(tmp_path), "broken": str(broken)}


DRY = ["--model-path", "{ck}", "--output-dir", "{tmp}/results"]
LIGHT_COMMANDS: list[tuple[str, list[str]]] = [
    ("help", ["--help"]),
    ("ablate-help", ["ablate", "--help"]),
    ("list-experiments", ["ablate", "--list-experiments"]),
    ("list-prompts", ["ablate", "--list-prompts"]),
    ("config-show", ["config", "show"]),
    ("metrics-list", ["metrics", "--list"]),
    ("dry-run", ["ablate", "-e", "hidden_layer", "--dry-run", *DRY]),
    ("dry-run-file", ["ablate", "--experiment-file", "{tmp}/small.toml", "--dry-run", *DRY]),
    ("dry-run-sweep", ["sweep", "shift_steps", "--quick", "--dry-run", *DRY]),
    ("dry-run-sweep-all", ["sweep", "--all", "--quick", "--dry-run", *DRY]),
    ("dry-run-timing", ["ablate", "-e", "shift_sweep", "--timing", "--timing-repeats", "2", "--dry-run", *DRY]),
]
SMALL = (
    'name = "small"\nseeds = [1, 2]\n[prompts]\nids = ["animal_001"]\n[[axes]]\nname = "shift"\nvalues = [2.0, 3.0]\n'
)


def _fill(argv: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in argv]


@pytest.mark.parametrize("argv", [c[1] for c in LIGHT_COMMANDS], ids=[c[0] for c in LIGHT_COMMANDS])
def test_light_commands_import_no_model_library(argv: list[str], files: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "small.toml").write_text(SMALL)
    rc, heavy, out, err = light_run(_fill(argv, files), tmp_path)
    assert (rc, heavy) == (0, []), out + err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


REJECTIONS: list[tuple[str, list[str], str]] = [
    ("unknown-experiment", ["ablate", "-e", "hidden_layr", *DRY], "unknown experiment 'hidden_layr'"),
    ("set-steps-0", ["ablate", "-e", "hidden_layer", "--set", "steps=0", *DRY], "steps"),
    ("bad-seeds", ["ablate", "-e", "hidden_layer", "--seeds", "1.5", *DRY], "--seeds"),
    ("width", ["ablate", "-e", "hidden_layer", "--set", "width=1000", *DRY], "multiple of 16"),
    (
        "prompt-over-cap",
        ["ablate", "-e", "hidden_layer", "--set", "max_text_tokens=8", "--set", "long_prompt_mode=none", *DRY],
        "over the cap of 8",
    ),
    ("huge-plan", ["ablate", "--experiment-file", "{tmp}/huge.toml", "--dry-run", *DRY], "limits.max_runs"),
    (
        "plan-over-config-limit",
        ["ablate", "-e", "hidden_layer", "--config", "{tmp}/limits.toml", *DRY],
        "max_runs = 60",
    ),
    ("experiment-file-dir", ["ablate", "--experiment-file", "{tmp}/studies", *DRY], "is a directory"),
    (
        "damaged-weights",
        ["ablate", "-e", "hidden_layer", "--dry-run", "--model-path", "{broken}", "--output-dir", "{tmp}/results"],
        "transformer/diffusion_pytorch_model.safetensors is not a valid safetensors file",
    ),
    ("unknown-sweep", ["sweep", "shfit_steps", "--dry-run", *DRY], "unknown sweep"),
    ("compare-list-empty", ["compare", "--list", "--output-dir", "{tmp}/empty"], "no results database"),
    ("plot-empty", ["plot", "x", "--output-dir", "{tmp}/empty"], "no results database"),
    ("view-empty", ["view", "--output-dir", "{tmp}/empty"], "no results database"),
    ("generate-steps-0", ["generate", "a cat", "--steps", "0", "--model-path", "{ck}"], "steps must be >= 1"),
    (
        "generate-over-cap",
        ["generate", LONG_PROMPT, "--model-path", "{ck}", *CAP_8, "-o", "{tmp}/x.png"],
        "over the cap of 8",
    ),
    (
        "generate-damaged-weights",
        ["generate", "a cat", "--model-path", "{broken}", "-o", "{tmp}/x.png"],
        "not a valid safetensors file",
    ),
    (
        "encode-over-cap",
        ["encode", LONG_PROMPT, "-o", "{tmp}/x.safetensors", "--model-path", "{ck}", *CAP_8],
        "over the cap of 8",
    ),
    ("embed-stats-condition", ["embed-stats", "--model-path", "{ck}", "--prompt", "a", "-c", "hiden=1"], "hiden"),
    (
        "embed-stats-over-cap",
        [
            "embed-stats",
            "--model-path",
            "{ck}",
            "--prompt",
            LONG_PROMPT,
            "-c",
            "max_text_tokens=8,long_prompt_mode=none",
        ],
        "condition 'max_text_tokens=8,long_prompt_mode=none': prompt is",
    ),
]


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in REJECTIONS], ids=[c[0] for c in REJECTIONS])
def test_rejections_import_no_model_library(
    argv: list[str], needle: str, files: dict[str, str], tmp_path: Path
) -> None:
    before = results_snapshot(tmp_path)
    rc, heavy, out, err = light_run(_fill(argv, files), tmp_path)
    assert (rc, heavy) == (2, []), out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert results_snapshot(tmp_path) == before


@pytest.mark.skipif(devices._torch_gpu_build(), reason="a CUDA/ROCm build of torch is asked (imported) for CUDA")
def test_cuda_refusal_is_light_and_names_the_real_flag(files: dict[str, str], tmp_path: Path) -> None:
    rc, heavy, out, err = light_run(
        _fill(["ablate", "-e", "hidden_layer", "--config", "{tmp}/cuda.toml", *DRY], files), tmp_path
    )
    assert (rc, heavy) == (2, []), out + err
    assert "device cuda requested but CUDA is not available; use --dit-device cpu" in err
    assert "use --device" not in err  # the flag the old message named does not exist


HOLD_LOCK = """
import sys
from llm_dit.experiments.store import ResultsStore
with ResultsStore(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
"""


def test_a_second_runner_is_refused_before_anything_loads(files: dict[str, str], tmp_path: Path) -> None:
    """Another process runs the experiment: a real run exits 2 in one line without importing a model library
    (nothing built, nothing written); a dry run still plans and notes it."""
    results = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(results), "hidden_layer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = results_snapshot(results)
        argv = ["ablate", "-e", "hidden_layer", "--model-path", files["ck"], "--output-dir", str(results)]
        rc, heavy, out, err = light_run(argv, tmp_path)
        assert (rc, heavy) == (2, []), out + err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "'hidden_layer'" in lines[0], err
        assert f"is already being run by another process (pid {holder.pid}" in lines[0]
        assert "wait for it or use another --output-dir" in lines[0]
        assert results_snapshot(results) == before
        rc, heavy, out, err = light_run([*argv, "--dry-run"], tmp_path)
        assert (rc, heavy) == (0, []), out + err
        assert "a real run would be refused until it ends" in err and "60 runs" in out
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0


def test_plan_is_counted_before_it_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    """10^10 runs are refused from the count alone: expanding even one combination fails this test."""
    from llm_dit.config import Settings
    from llm_dit.experiments import model, planner
    from llm_dit.experiments.model import Axis, AxisValue, Experiment
    from llm_dit.experiments.prompts import Prompt

    def no_expansion(self: Experiment) -> list:
        raise AssertionError("the plan was expanded before it was counted")

    monkeypatch.setattr(model.Experiment, "combinations", no_expansion)
    values = tuple(AxisValue(str(i), {"shift": 1.0 + i}) for i in range(50_000))
    exp = Experiment("huge", "", (1,), (), None, None, {}, (Axis("shift", values),), "test")
    assert exp.combination_count() == 50_000
    with pytest.raises(planner.LlmDitError) as caught:
        planner.plan(exp, [Prompt("p", "a cat")], list(range(200_000)), Settings(), model_fingerprint="f")
    message = str(caught.value)
    assert "10000000000 runs = 1 prompts x 50000 combinations x 200000 seeds" in message
    assert "limits.max_runs" in message and "[default.limits] max_runs" in message


def test_combination_count_equals_the_combinations() -> None:
    from llm_dit.experiments.loader import builtin_experiments, get_experiment

    for exp in builtin_experiments().values():
        assert exp.combination_count() == len(exp.combinations()), exp.name
    assert get_experiment("shift_steps_grid").combination_count() > 1


def test_a_file_too_big_is_refused_before_its_values_are_checked(tmp_path: Path) -> None:
    """The size comes first: a bad value deep in a file over the limit is not what the error names (the values
    of a 10^5-value axis are never validated one by one when the plan cannot run anyway)."""
    from llm_dit.errors import ConfigError
    from llm_dit.experiments.loader import load_experiment_file

    values = ", ".join([*map(str, range(1, 300)), "-1.0"])  # shift -1.0 is invalid
    path = tmp_path / "big.toml"
    path.write_text(
        f'name = "big"\nseeds = [{", ".join(map(str, range(1000)))}]\n[[axes]]\nname = "shift"\nvalues = [{values}]\n'
    )
    with pytest.raises(ConfigError, match=r"1000 seeds x 300 combinations = 300000 runs per prompt, above the limit"):
        load_experiment_file(path, max_runs=100_000)
    with pytest.raises(ConfigError, match=r"big.toml:5: .*shift"):  # within the limit: the value is reported
        load_experiment_file(path, max_runs=300_000)
    with pytest.raises(ConfigError, match=r"shift"):  # no limit given: validated as before
        load_experiment_file(path)


def test_zip_groups_count_once(tmp_path: Path) -> None:
    from llm_dit.errors import ConfigError
    from llm_dit.experiments.loader import load_experiment_file

    axes = "".join(
        f'[[axes]]\nname = "{name}"\nzip = "{group}"\nvalues = [{values}]\n'
        for name, group, values in (
            ("shift", "g", "2.0, 3.0, 4.0"),
            ("steps", "g", "4, 6, 8"),
            ("guidance_scale", "h", "0.0, 1.0"),
        )
    )
    path = tmp_path / "zipped.toml"
    path.write_text(f'name = "zipped"\nseeds = [1, 2]\n[prompts]\nids = ["animal_001"]\n{axes}')
    assert load_experiment_file(path, max_runs=12).combination_count() == 6  # 2 seeds x (3 zipped x 2) = 12
    with pytest.raises(ConfigError, match=r"2 seeds x 6 combinations = 12 runs per prompt"):
        load_experiment_file(path, max_runs=11)


def test_experiments_of_a_sweep_share_one_pipeline_built_on_first_use(warm: Path) -> None:
    """prepare_experiment builds nothing; the source handed on is one pipeline for every experiment, built once,
    when a run really starts (weights still load lazily inside it)."""
    from llm_dit.config import Settings
    from llm_dit.experiments.preparation import prepare_experiment

    settings = Settings(model_path=str(warm))
    small = {"width": 64, "height": 64, "steps": 2}
    first = prepare_experiment("shift_sweep", settings=settings, max_prompts=1, seeds=[1], overrides=small)
    second = prepare_experiment(
        "hidden_layer", settings=settings, max_prompts=1, seeds=[1], overrides=small, pipeline=first.source
    )
    assert second.source is first.source and not first.source.built
    pipeline = second.pipeline
    assert first.pipeline is pipeline and first.source.built
    assert pipeline.encoder._model is None and pipeline._transformer._value is None
    # The pipeline's own checks accept what the light checks accepted.
    from llm_dit.experiments.preparation import request_for

    pipeline.check([request_for(run) for run in first.runs + second.runs])


def test_light_checks_refuse_what_the_pipeline_refuses(warm: Path) -> None:
    """RequestChecker over the cached tokenizer and LlmDitPipeline.check (its encoder's transformers tokenizer)
    accept and refuse the same requests with the same messages."""
    import torch

    from llm_dit.config import EncoderSettings
    from llm_dit.errors import LlmDitError
    from llm_dit.generation.checks import RequestChecker
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.request import GenerationRequest
    from llm_dit.models.checkpoint import validate_checkpoint

    pipeline = LlmDitPipeline.from_pretrained(warm)
    light = RequestChecker.for_checkpoint(validate_checkpoint(warm), EncoderSettings())
    build = GenerationRequest.build
    requests = [
        build("a cat", width=64, height=64, steps=2),
        build("a cat", sigmas=[0.9, 0.5, 0.1]),
        build(LONG_PROMPT, max_text_tokens=8, long_prompt_mode="none"),
        build(LONG_PROMPT, max_text_tokens=16, long_prompt_mode="truncate"),
        build("a cat", max_text_tokens=8, long_prompt_mode="pool", system_prompt="A long system prompt " * 4),
        build("a cat", hidden_layer=-37),
        build("a cat", guidance_scale=3.0, negative_prompt=LONG_PROMPT, max_text_tokens=8, long_prompt_mode="none"),
        build(embeddings=torch.zeros(4, 32)),
        build(embeddings=torch.zeros(4, 31)),
        build(embeddings=torch.zeros(1505, 32)),
        build(embeddings=torch.zeros(4, 32, dtype=torch.long)),
    ]

    def outcome(check, request: GenerationRequest) -> str:
        try:
            check([request])
            return "ok"
        except LlmDitError as exc:
            return str(exc)

    pairs = [(outcome(pipeline.check, r), outcome(light.check, r)) for r in requests]
    assert all(a == b for a, b in pairs), pairs
    assert [a == "ok" for a, _ in pairs] == [True, True, False, True, False, True, False, True] + [False] * 3, pairs
    assert pipeline._transformer._value is None and pipeline.encoder._model is None
