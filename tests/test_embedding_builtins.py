"""The built-in Qwen3-Embedding-4B experiments (seed 000: embedding_layers, embedding_instructions,
embedding_generation): shipped and listed with their question, the pure Qwen3-4B run as each one's default
reference, dry runs without a model library, and real runs on the built-in tiny models (``--model tiny``: the tiny
embedding twin fits only it), with MAD against the Qwen3-4B image of the same prompt and seed.

The end-to-end test shares one pipeline (``from_settings`` is patched to return it; the rest of ``ablate`` runs as a
user runs it) and makes each built-in's runs for one prompt and one seed at 16x16 in 2 steps.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import ANSI, flat, run, subprocess_env
from llm_dit.conditioning.embedding_comparison import DEFAULT_COMPARISON_LAYERS, SEED_T2I_TASK
from llm_dit.config import ConditioningSettings, Settings
from llm_dit.experiments.loader import builtin_experiments, get_experiment
from llm_dit.experiments.planner import plan
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.store import ResultsStore
from llm_dit.generation.image import read_record
from llm_dit.models.embedding_model import EMBEDDING_QUERY_TASK
from llm_dit.models.sources import tiny_source_name

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

NAMES = ["embedding_generation", "embedding_instructions", "embedding_layers"]
FILES = Path(__file__).resolve().parents[1] / "src" / "llm_dit" / "data" / "experiments"
TINY = ("--model", "tiny")
SMALL = ("--max-prompts", "1", "--seeds", "42", "--set", "steps=2", "--set", "width=16", "--set", "height=16")
SUMMARY_RE = re.compile(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed")
# The embedding settings of each run but the baseline: (layer, format, instruction), by axis label.
EMBEDDING_RUNS = {
    "embedding_layers": {str(layer): (layer, "chat", None) for layer in (-1, -2, -4, -8, -16)},
    "embedding_instructions": {
        "chat": (-2, "chat", None),
        "raw": (-2, "raw", None),
        "instruction_t2i": (-2, "instruction", SEED_T2I_TASK),
        "instruction_query": (-2, "instruction", EMBEDDING_QUERY_TASK),
    },
    "embedding_generation": {"qwen3_embedding_4b": (-2, "chat", None)},
}


def test_the_three_are_shipped_and_listed_with_their_question(capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(n for n in builtin_experiments() if n.startswith("embedding_")) == NAMES
    rc, out, err = run(capsys, "ablate", "--list-experiments", "--format", "json")
    assert rc == 0, err
    listed = {row["name"]: row for row in json.loads(out)}
    for name in NAMES:
        exp = get_experiment(name)
        assert listed[name]["question"].endswith("?"), name  # the description states the question first
        assert listed[name]["runs_per_prompt"] == (len(EMBEDDING_RUNS[name]) + 1) * 2
        assert exp.seeds == (42, 123) and exp.prompt_ids[:2] == ("simple_001", "simple_003")
        assert exp.baseline is not None and exp.baseline.label == "qwen3_4b"
        assert exp.baseline.params == {"conditioning": "text"} and exp.base["conditioning"] == "embedding"


def test_the_files_use_the_comparisons_instructions_and_layers() -> None:
    """The instruction strings are written out in the TOML (experiments are data): the same as the statistics
    command's, and the layer sweep is the command's default layer set."""
    data = tomllib.loads((FILES / "embedding_instructions.toml").read_text(encoding="utf-8"))
    tasks = [v.get("embedding_instruction") for v in data["axes"][0]["values"]]
    assert tasks == [None, None, SEED_T2I_TASK, EMBEDDING_QUERY_TASK]
    layers = tomllib.loads((FILES / "embedding_layers.toml").read_text(encoding="utf-8"))["axes"][0]["values"]
    assert tuple(layers) == DEFAULT_COMPARISON_LAYERS


@pytest.mark.parametrize("name", NAMES)
def test_plan_has_the_qwen3_4b_run_as_default_reference(name: str) -> None:
    from llm_dit.experiments.planner import REPLACES, default_params
    from llm_dit.metrics.reference import default_labels, swept_parameters

    exp = get_experiment(name)
    runs = plan(exp, [Prompt("p", "a red house")], [42], Settings(), model_fingerprint="fp")
    (axis,) = exp.variables()
    rows = [{"variables": r.variables, "params": json.loads(json.dumps(r.params))} for r in runs]
    definition = json.loads(json.dumps(exp.to_dict()))  # as the runner stores it
    assert default_labels(rows, definition, default_params()) == {axis: "qwen3_4b"}
    by = {r.variables[axis]: r for r in runs}
    text = by.pop("qwen3_4b")
    assert text.params["conditioning"] == "text" and text.params["source_model"] is None
    inert = [k for k in ConditioningSettings.model_fields if k != "conditioning"]
    assert all(text.params[k] is None for k in inert), {k: text.params[k] for k in inert}
    got = {
        label: (r.params["embedding_layer"], r.params["embedding_format"], r.params["embedding_instruction"])
        for label, r in by.items()
    }
    assert got == EMBEDDING_RUNS[name]
    assert all(r.params["source_model"] == tiny_source_name("embedding") for r in by.values())
    assert {"conditioning", "embedding_layer", "source_model"} <= swept_parameters(definition, REPLACES)


@pytest.mark.parametrize("name", NAMES)
def test_each_dry_runs_on_the_tiny_models(name: str, tiny_cached: Path, tmp_path: Path, capsys: Any) -> None:
    rc, out, err = run(capsys, "ablate", "-e", name, "--dry-run", *TINY, "--output-dir", tmp_path / "results")
    assert rc == 0, err
    exp = get_experiment(name)
    prompts = len(exp.prompt_ids)
    count = exp.combination_count()
    assert f"{count * prompts * 2} runs = {prompts} prompts x {count} combinations" in flat(out)
    assert not (tmp_path / "results").exists()


def test_a_dry_run_imports_no_model_library(tiny_cached: Path, tmp_path: Path) -> None:
    child = (
        "import sys\nfrom llm_dit.cli import main\nrc = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "print('HEAVY', rc, heavy)\n"
    )
    argv = ["ablate", "-e", "embedding_instructions", "--dry-run", *TINY, "--output-dir", str(tmp_path / "r")]
    done = subprocess.run(
        [sys.executable, "-c", child, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert "HEAVY 0 []" in ANSI.sub("", done.stdout), done.stdout + done.stderr


@pytest.fixture(scope="module")
def pipe(tiny_cached: Path) -> Iterator[Any]:
    from llm_dit.generation.pipeline import LlmDitPipeline

    yield LlmDitPipeline.from_pretrained(None)


@pytest.mark.parametrize("name", NAMES)
def test_each_runs_end_to_end_on_the_tiny_models(
    name: str, pipe: Any, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_dit.generation.pipeline import LlmDitPipeline

    monkeypatch.setattr(LlmDitPipeline, "from_settings", classmethod(lambda cls, settings, **kw: pipe))
    results = tmp_path / "results"
    argv = ("ablate", "-e", name, *TINY, *SMALL, "--output-dir", results, "--compute-metrics", "--metric", "mad")
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    count = len(EMBEDDING_RUNS[name]) + 1
    match = SUMMARY_RE.search(flat(err))
    assert match and match.groups() == (str(count), "0", "0"), err
    with ResultsStore(results, read_only=True) as store:
        runs = store.runs(name)
        metrics = {(m.run_id, m.name): m for m in store.metric_values(name)}
    assert len(runs) == count and {r["status"] for r in runs} == {"done"}
    (axis,) = get_experiment(name).variables()
    by_id = {r["run_id"]: r for r in runs}
    for r in runs:
        label = r["variables"][axis]
        record = read_record(results / name / r["image_path"])
        if label == "qwen3_4b":
            assert r["params"]["conditioning"] == "text" and record["conditioning"] == "prompt"  # Qwen3-4B's features
        else:
            layer, fmt, task = EMBEDDING_RUNS[name][label]
            assert record["conditioning"] == "embedding"
            (source,) = record["source_passes"]["main"]
            assert (source["layer"], source["prompt_format"], source["eot_kept"]) == (layer, fmt, False)
            assert source["instruction"] == task
        # MAD against the default reference: the Qwen3-4B image of the same prompt and seed (0 for itself).
        value = metrics[(r["run_id"], "mad")]
        reference = by_id[value.params["reference"].removeprefix("run:")]
        assert reference["variables"] == {axis: "qwen3_4b"} and reference["params"]["conditioning"] == "text"
        assert (reference["seed"], reference["prompt_id"]) == (r["seed"], r["prompt_id"])
        if reference is r:
            assert value.value == 0.0


def test_sweep_embedding_all_quick_runs_the_three_in_order(
    pipe: Any, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_dit.generation.pipeline import LlmDitPipeline

    monkeypatch.setattr(LlmDitPipeline, "from_settings", classmethod(lambda cls, settings, **kw: pipe))
    small = ("--set", "steps=2", "--set", "width=16", "--set", "height=16")
    rc, _, err = run(capsys, "sweep", "embedding", "--all", "--quick", *TINY, *small, "--output-dir", tmp_path / "r")
    assert rc == 0, err
    text = flat(err)
    order = ["embedding_layers", "embedding_instructions", "embedding_generation"]  # seed 000's run_all order
    assert [m.group(1) for m in re.finditer(r"sweep embedding: (\w+)", text)] == order
    # --quick: the built-ins' first 2 prompts and seed 42, every combination (the baseline included)
    done = [tuple(map(int, m.groups())) for m in SUMMARY_RE.finditer(text)]
    assert done == [(get_experiment(name).combination_count() * 2, 0, 0) for name in order]
