"""``ablate --timing``: every run at batch 1 after a warm-up per sampling shape, repeated, the median and spread
stored. The runner is driven with a stand-in pipeline and an injected clock (no model, no real time: no test here
depends on the machine's speed), and the options are checked before anything loads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_helpers import assert_user_error, results_snapshot, run
from llm_dit.config import Settings
from llm_dit.experiments.loader import load_experiment_file
from llm_dit.experiments.planner import plan
from llm_dit.experiments.preparation import TimingPlan, pending_runs
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.runner import ExperimentRunner
from llm_dit.experiments.store import ResultsStore, load_results
from llm_dit.generation.pipeline import GenerationRequest, GenerationResult


class ClockedPipeline:
    """Stands in for LlmDitPipeline: each generate_batch call advances the shared clock by the next of
    ``durations`` and returns grey images with the batch fields a pipeline records."""

    model_path = "<clocked>"
    fingerprint = None
    info = None  # no checkpoint: the built-in defaults

    def __init__(self, durations: Sequence[float]) -> None:
        self.now = 0.0
        self.durations = list(durations)
        self.calls: list[list[int]] = []  # seeds per call

    def clock(self) -> float:
        return self.now

    def check(self, requests: Sequence[GenerationRequest]) -> None:
        pass

    def precompute_encodings(self, requests: Sequence[GenerationRequest], offload: bool = False) -> None:
        pass

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        seconds = self.durations.pop(0)
        self.now += seconds
        self.calls.append([r.generation.seed for r in requests])
        out = []
        for k, request in enumerate(requests):
            gen = request.generation
            record = {
                "steps": gen.steps, "shift": gen.shift, "seed": gen.seed, "width": gen.width, "height": gen.height,
                "guidance_scale": gen.guidance_scale, "batch_seconds": seconds, "batch_size": len(requests),
                "batch_position": k, "peak_memory_bytes": None,
            }  # fmt: skip
            out.append(GenerationResult(torch.full((3, gen.height, gen.width), 0.5), record, request.tag))
        return out


def steps_runs(directory: Path) -> tuple[Any, list[Any]]:
    """Steps 1 and 2 x seeds 1, 2 of one prompt at 16x16: two sampling shapes, two runs each."""
    path = directory / "steps.toml"
    path.write_text('name = "steps"\nseeds = [1, 2]\n\n[[axes]]\nname = "steps"\nvalues = [1, 2]\n')
    experiment = load_experiment_file(path)
    size = {"width": 16, "height": 16}
    runs = plan(experiment, [Prompt("p", "a grey square")], [1, 2], Settings(), overrides=size, model_fingerprint="t")
    return experiment, runs


def test_each_run_is_timed_at_batch_1_after_one_warm_up_per_shape(tmp_path: Path) -> None:
    experiment, runs = steps_runs(tmp_path)
    # Per shape: a warm-up (8 s, never counted), then 3 repeats per run; the second run of a shape is not warmed.
    # Binary fractions: the clock's differences are exact. Skewed repeats: their mean is not their median.
    durations = [8.0, 1.0, 0.125, 0.25, 0.75, 2.0, 0.5] * 2
    pipeline = ClockedPipeline(durations)
    store = ResultsStore(tmp_path / "results")
    runner = ExperimentRunner(
        pipeline,
        store,
        batch_size=8,
        timing=TimingPlan(repeats=3),
        clock=pipeline.clock,  # type: ignore[arg-type]
    )
    summary = runner.run(experiment, runs, Settings())
    assert (summary.done, summary.failed) == (4, 0)
    assert pipeline.calls == [[1], [1], [1], [1], [2], [2], [2]] * 2  # batch 1 throughout; warm-up once per shape
    frame = load_results(store.root, "steps")
    columns = ("timed_median_s", "timed_min_s", "timed_max_s", "timed_repeats")
    timed = list(zip(*(frame[c] for c in columns), strict=True))
    assert timed == [(0.25, 0.125, 1.0, 3), (0.75, 0.5, 2.0, 3)] * 2
    assert frame["batch_size"].tolist() == [1] * 4
    # The kept image's own batch (the last repeat) is stored as its batched figure, the timing separately.
    assert frame["batch_seconds"].tolist() == [0.25, 0.5] * 2

    # Timed runs are done for --timing; a plain resume skips them as well.
    again = ExperimentRunner(ClockedPipeline([]), store, timing=TimingPlan(3))  # type: ignore[arg-type]
    assert again.pending(experiment, runs) == []


def test_the_dry_run_counts_the_generations_the_timed_runner_makes(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run's --timing cost is what the runner does: counted against the stand-in pipeline's calls."""
    experiment, runs = steps_runs(tmp_path)
    pipeline = ClockedPipeline([1.0] * 100)
    runner = ExperimentRunner(pipeline, ResultsStore(tmp_path / "results"), timing=TimingPlan(repeats=3))  # type: ignore[arg-type]
    runner.run(experiment, runs, Settings())
    argv = ["ablate", "--experiment-file", tmp_path / "steps.toml", "--model-path", tiny_checkpoint, "--dry-run"]
    argv += ["--prompt", "a grey square", "--set", "width=16", "--set", "height=16", "--output-dir", tmp_path / "dry"]
    rc, out, err = run(capsys, *argv, "--timing", "--timing-repeats", "3")
    assert rc == 0, err
    line = next(line for line in out.splitlines() if line.startswith("timing:"))
    assert f"sampling shape (2): {len(pipeline.calls)} generations for all 4 runs" in line, line
    assert len(pipeline.calls) == 4 * 3 + 2  # repeats per run, one warm-up per shape


def test_the_dry_run_counts_what_the_runner_would_make_over_existing_results(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over done runs never timed, --dry-run --timing counts them all as to run (and their generations), as
    --force does; once timed they are done for both a plain and a --timing dry run (the runner's own rule)."""
    steps_runs(tmp_path)
    out_dir = tmp_path / "results"
    argv = ["ablate", "--experiment-file", tmp_path / "steps.toml", "--model-path", tiny_checkpoint]
    argv += ["--prompt", "a grey square", "--set", "width=16", "--set", "height=16", "--output-dir", out_dir]
    rc, _, err = run(capsys, *argv)  # a plain run: all 4 done, none timed
    assert rc == 0, err

    def dry(*extra: str) -> tuple[str, str]:
        rc, out, err = run(capsys, *argv, "--dry-run", *extra)
        assert rc == 0, err
        progress = next(line for line in out.splitlines() if line.startswith("already done:"))
        timing = next((line for line in out.splitlines() if line.startswith("timing:")), "")
        return progress, timing

    before = results_snapshot(out_dir)
    assert dry()[0] == "already done: 4; to run: 0"
    assert dry("--force")[0] == "already done: 0; to run: 4"
    for extra in (["--timing"], ["--timing", "--force"]):
        progress, timing = dry(*extra, "--timing-repeats", "3")
        assert progress == "already done: 0; to run: 4"
        assert "sampling shape (2): 14 generations for all 4 runs" in timing, timing  # 4 x 3 + 2 warm-ups
    rc, records, err = run(capsys, *argv, "--dry-run", "--force", "--format", "json")
    assert rc == 0, err
    assert [record["done"] for record in json.loads(records)] == [False] * 4
    assert results_snapshot(out_dir) == before  # dry runs write nothing

    rc, _, err = run(capsys, *argv, "--timing", "--timing-repeats", "3")  # the runner redoes all 4, timed
    assert rc == 0, err
    assert load_results(out_dir, "steps")["timed_repeats"].tolist() == [3] * 4
    assert dry()[0] == "already done: 4; to run: 0"
    progress, timing = dry("--timing", "--timing-repeats", "3")
    assert progress == "already done: 4; to run: 0"
    assert "sampling shape (0): 0 generations for the 0 pending runs" in timing, timing
    rc, records, err = run(capsys, *argv, "--dry-run", "--timing", "--format", "json")
    assert rc == 0, err
    assert [record["done"] for record in json.loads(records)] == [True] * 4


def test_timing_plan_counts_the_pending_runs_generations(tmp_path: Path) -> None:
    _, runs = steps_runs(tmp_path)
    plan_ = TimingPlan(repeats=3, warmup=2)
    assert plan_.generations(runs) == 4 * 3 + 2 * 2
    assert plan_.generations(runs[:1]) == 3 + 2
    assert plan_.generations([]) == 0
    ids = {run.run_id for run in runs}
    assert pending_runs(runs, ids, set()) == []
    assert pending_runs(runs, ids, set(), timing=True) == runs
    assert pending_runs(runs, ids, {runs[0].run_id}, timing=True) == runs[1:]
    assert pending_runs(runs, ids, ids, force=True, timing=True) == runs


def test_timing_redoes_done_runs_that_were_never_timed(tmp_path: Path) -> None:
    experiment, runs = steps_runs(tmp_path)
    store = ResultsStore(tmp_path / "results")
    plain = ClockedPipeline([1.0, 1.0])
    assert ExperimentRunner(plain, store, batch_size=8).run(experiment, runs, Settings()).done == 4  # type: ignore[arg-type]
    assert plain.calls == [[1, 2], [1, 2]]
    assert load_results(store.root, "steps")["timed_median_s"].isna().all()
    timing = ExperimentRunner(ClockedPipeline([]), store, timing=TimingPlan(2))  # type: ignore[arg-type]
    assert [r.run_id for r in timing.pending(experiment, runs)] == [r.run_id for r in runs]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--timing-repeats", "5"], ["--timing-repeats applies to --timing"]),
        (["--timing", "--timing-repeats", "0"], ["--timing-repeats must be 1..100, got 0"]),
        (["--timing", "--timing-repeats", "101"], ["--timing-repeats must be 1..100, got 101"]),
    ],
)
@pytest.mark.parametrize("command", [["ablate", "-e", "shift"], ["sweep", "shift_steps"]])
def test_timing_options_are_checked_before_anything_loads(
    command: list[str],
    argv: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model_load: None,
) -> None:
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    before = results_snapshot(out_dir)
    rc, out, err = run(capsys, *command, "--output-dir", out_dir, *argv)
    assert_user_error(rc, out, err, *needles)
    assert results_snapshot(out_dir) == before
