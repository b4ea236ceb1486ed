"""The experiment runner end to end: planning, fail-fast checks, real runs, resume, a real SIGKILL, batching,
failures, locking, encoder offload, sweep presets and ``profile``.

Every run uses the session's tiny checkpoint (``--model-path``, never a cached real model), 64x64 images,
2 steps, one or two prompts and seeds, and writes under ``tmp_path``. Most tests call ``llm_dit.cli.main``
in-process (it returns the exit status) and read its output through ``capsys``; three use real subprocesses
(run ids in a fresh interpreter, the lock held by another process, the SIGKILL).

Speed: loading the Qwen3 tokenizer (~2 s) dominates a tiny run, so this module caches
``checkpoint.load_tokenizer`` per path, as tests/test_cli.py does; the models load for real every time.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bounds import generate_counted, rounding_bound
from cli_helpers import assert_user_error, flat, read_csv, results_snapshot, run, subprocess_env
from llm_dit.config import Settings, load_settings
from llm_dit.experiments.preparation import PreparedExperiment, plan_cost, prepare_experiment, request_for
from llm_dit.experiments.runner import ExperimentRunner
from llm_dit.experiments.store import ResultsStore, load_results
from llm_dit.generation.image import read_record
from llm_dit.generation.pipeline import LlmDitPipeline

REPO = Path(__file__).resolve().parents[1]
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2}
SMALL_SETS = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
PROMPT_ID = "animal_001"
# The image name of a one-axis (shift) experiment: <prompt_id>__shift=<label>__seed<seed>__<8 hex>.png
IMAGE_RE = re.compile(
    r"^(?P<prompt>[a-z]+_\d{3})__shift=(?P<shift>\d+\.\d+)__seed(?P<seed>\d+)__(?P<rid>[0-9a-f]{8})\.png$"
)
CSV_COLUMNS = [
    "run_id",
    "prompt_id",
    "prompt_text",
    "shift",
    "seed",
    "status",
    "error",
    "seconds_per_image_batched",
    "batch_seconds",
    "batch_size",
    "batch_position",
    "timed_median_s",
    "timed_min_s",
    "timed_max_s",
    "timed_repeats",
    "peak_memory_bytes",
    "token_count",
    "output_path",
    "image_sha256",
]
SUMMARY_RE = re.compile(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed")
SWEEP_ORDER = [  # (preset, experiment) in the documented priority order
    ("hidden_layer", "hidden_layer"),
    ("shift_steps", "shift_steps_grid"),
    ("think_block", "think_block"),
    ("long_prompt", "long_prompt_mode"),
    ("hidden_layer_blend", "hidden_layer_blend"),
]


# ------------------------------------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("cached_tokenizer")


def ablate_argv(ck: Path, out: Path, *extra: str | Path) -> list[str]:
    return ["ablate", "--model-path", str(ck), "--output-dir", str(out), *SMALL_SETS, *map(str, extra)]


def summary_of(err: str) -> tuple[int, int, int]:
    """(done, skipped, failed) from the runner's final summary line."""
    match = SUMMARY_RE.search(flat(err))
    assert match, f"no summary line in: {err!r}"
    return int(match[1]), int(match[2]), int(match[3])


def write_experiment(
    directory: Path, name: str, shifts: Sequence[float], seeds: Sequence[int], prompt_ids: Sequence[str] = (PROMPT_ID,)
) -> Path:
    """A one-axis custom experiment (shift) as a TOML file."""
    path = directory / f"{name}.toml"
    values = ", ".join(repr(float(s)) for s in shifts)
    path.write_text(
        f'name = "{name}"\n'
        f'description = "test experiment: {len(shifts)} shifts"\n'
        f"seeds = {list(seeds)}\n\n"
        f"[prompts]\nids = {json.dumps(list(prompt_ids))}\n\n"
        f'[[axes]]\nname = "shift"\nvalues = [{values}]\n',
        encoding="utf-8",
    )
    return path


def settings_for(ck: Path) -> Settings:
    return load_settings(None, None, {"model_path": str(ck)}).settings


def prepare(ck: Path, name: str | None = None, **kwargs: Any) -> PreparedExperiment:
    kwargs.setdefault("overrides", dict(SMALL))
    return prepare_experiment(name, settings=settings_for(ck), **kwargs)


def pngs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.png") if not p.name.startswith("."))


def mtimes(directory: Path) -> dict[str, int]:
    return {name: (directory / name).stat().st_mtime_ns for name in pngs(directory)}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()  # a truncated file fails here
        return np.asarray(img.convert("RGB")).astype(np.int16)


# ----------------------------------------------------------------------------------------- 1. planning


def test_prepare_expands_prompts_x_combinations_x_seeds(tiny_checkpoint: Path, no_model_load: None) -> None:
    prepared = prepare(
        tiny_checkpoint,
        "shift_steps_grid",
        prompt_ids=["simple_001", "simple_002"],
        seeds=[1, 2],
        overrides={"width": 64, "height": 64},
    )
    runs = prepared.runs
    combos = prepared.experiment.combinations()
    assert len(combos) == 5 * 6 + 1  # the grid and its converged reference, first
    assert len(runs) == 2 * 31 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert len({r.image_name for r in runs}) == len(runs)
    # Order: prompts (slowest), combinations (first axis slowest), seeds (fastest).
    assert [r.prompt.id for r in runs] == ["simple_001"] * 62 + ["simple_002"] * 62
    assert [r.seed for r in runs[:4]] == [1, 2, 1, 2]
    reference = {"shift": "converged_50", "steps": "converged_50"}
    assert [r.variables for r in runs[:6:2]] == [
        reference,
        {"shift": "2.0", "steps": "6"},
        {"shift": "2.0", "steps": "8"},
    ]
    assert runs[-1].variables == {"shift": "4.0", "steps": "15"}
    for r in runs:
        request = request_for(r)
        assert request.tag is r
        assert request.prompt == r.prompt_text
        gen = request.generation
        assert (gen.seed, gen.width, gen.height) == (r.seed, 64, 64)
        if r.variables == reference:
            assert (gen.shift, gen.steps) == (3.0, 50)
        else:
            assert (gen.shift, gen.steps) == (float(r.variables["shift"]), int(r.variables["steps"]))
    assert prepared.notes == []
    assert not prepared.source.built  # planned and checked without a pipeline (the light checks)
    # Nothing loaded: the transformer and VAE are still lazy, the encoder model too.
    assert prepared.pipeline.encoder._model is None
    assert prepared.pipeline._transformer._value is None and prepared.pipeline._vae._value is None


def test_prepare_uses_the_experiment_defaults_and_notes_swept_overrides(
    tiny_checkpoint: Path, no_model_load: None
) -> None:
    prepared = prepare(tiny_checkpoint, "shift_sweep", overrides={**SMALL, "shift": 2.5})
    # shift_sweep: category animals, max 5 prompts; seeds 42, 123; 6 shifts and the converged reference.
    assert len(prepared.runs) == 5 * 7 * 2
    assert sorted({r.prompt.id for r in prepared.runs}) == [f"animal_{i:03d}" for i in range(1, 6)]
    assert {r.seed for r in prepared.runs} == {42, 123}
    # The axis wins over --set shift, and the user is told.
    assert sorted({r.params["shift"] for r in prepared.runs}) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert any("shift" in note and "swept" in note for note in prepared.notes), prepared.notes
    assert "--set shift does not apply to the baseline 'converged_50' (it sets its own shift)" in prepared.notes


def test_run_ids_are_stable_across_processes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A fresh interpreter (another hash seed) plans the same run ids and image names."""
    code = (
        "import json, sys\n"
        "from llm_dit.config import load_settings\n"
        "from llm_dit.experiments.preparation import prepare_experiment\n"
        "settings = load_settings(None, None, {'model_path': sys.argv[1]}).settings\n"
        "p = prepare_experiment('shift_sweep', settings=settings, prompt_ids=['animal_001', 'animal_002'],\n"
        "                       seeds=[1, 2], overrides={'width': 64, 'height': 64, 'steps': 2})\n"
        "print(json.dumps([[r.run_id, r.image_name] for r in p.runs]))\n"
    )
    env = {**subprocess_env(OMP_NUM_THREADS="1"), "PYTHONHASHSEED": "4242"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = [tuple(pair) for pair in json.loads(proc.stdout)]
    ours = [
        (r.run_id, r.image_name)
        for r in prepare(tiny_checkpoint, "shift_sweep", prompt_ids=["animal_001", "animal_002"], seeds=[1, 2]).runs
    ]
    assert len(ours) == 2 * 7 * 2
    assert theirs == ours
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid, _ in ours)


@pytest.mark.terminal
def test_dry_run_prints_the_plan_and_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    out = tmp_path / "results"
    argv = [*ablate_argv(tiny_checkpoint, out), "-e", "shift_sweep", "--prompt-ids", "animal_001,animal_002"]
    rc, stdout, _err = run(capsys, *argv, "--seeds", "1,2", "--dry-run")
    assert rc == 0
    text = flat(stdout)
    assert "28 runs = 2 prompts x 7 combinations x 2 seeds" in text
    assert "axes: shift = 1.0, 2.0, 3.0, 4.0, 5.0, 6.0; plus the baseline converged_50" in text
    # 24 runs of one (64, 64, 2 steps) group: 3 batches of 8 x 2 steps, or 48 forwards one by one; and the 4
    # converged references (50 steps: --set steps does not apply to them): one batch of 4 x 50, or 200.
    assert "56 batched DiT forwards at batch 8 (248 one by one)" in text
    assert "2 prompt encodings" in text
    runs = prepare(tiny_checkpoint, "shift_sweep", prompt_ids=["animal_001", "animal_002"], seeds=[1, 2]).runs
    table = [line for line in stdout.splitlines() if re.search(r"\b[0-9a-f]{16}\b", line)]
    assert len(table) == 12  # the first 12 runs
    for line, r in zip(table, runs[:12], strict=True):
        assert r.run_id in line and r.prompt.id in line
    assert "and 16 more (dry run: nothing written)" in text
    assert not out.exists()


def test_dry_run_on_existing_results_reports_progress_and_changes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    exp = write_experiment(tmp_path, "mini", [2.0, 4.0], [1, 2])
    rc, _, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp))
    assert rc == 0, err
    before = results_snapshot(out)
    rc, stdout, _ = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp, "--dry-run"))
    assert rc == 0
    assert "already done: 4; to run: 0" in flat(stdout)
    assert "estimated time" not in flat(stdout)
    assert results_snapshot(out) == before  # same files, same bytes, same mtimes
    next((out / "mini").glob("*.png")).unlink()  # one image lost: one run to redo, with an estimate
    before = results_snapshot(out)
    rc, stdout, _ = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp, "--dry-run"))
    assert rc == 0
    assert "already done: 3; to run: 1" in flat(stdout)
    assert re.search(r"estimated time: \d+ s \([0-9.]+ s per image so far\)", flat(stdout))
    assert results_snapshot(out) == before


# ------------------------------------------------------------------------------- 2. fail fast, by name

# Each refusal of `ablate` (one line, exit 2, nothing written, no model library imported) is a case of the
# bad-input table: tests/test_bad_input.py ABLATE_CASES.


# --------------------------------------------------------------------------------------- 3. a real run


def test_real_run_writes_images_records_csv_metadata_and_db(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    exp = write_experiment(tmp_path, "mini", [2.0, 4.0], [1, 2])
    rc, _, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp))
    assert rc == 0, err
    assert summary_of(err) == (4, 0, 0)

    prepared = prepare(tiny_checkpoint, experiment_file=exp)
    runs = prepared.runs
    fingerprint = prepared.pipeline.fingerprint
    exp_dir = out / "mini"
    assert pngs(exp_dir) == sorted(r.image_name for r in runs)
    assert sorted(os.listdir(exp_dir)) == sorted([".lock", "metadata.json", "results.csv", *pngs(exp_dir)])
    for r in runs:
        match = IMAGE_RE.match(r.image_name)
        assert match, r.image_name
        assert (match["prompt"], match["shift"], int(match["seed"]), match["rid"]) == (
            PROMPT_ID,
            r.variables["shift"],
            r.seed,
            r.run_id[:8],
        )
        assert pixels(exp_dir / r.image_name).shape == (64, 64, 3)
        record = read_record(exp_dir / r.image_name)
        assert record["run_id"] == r.run_id
        assert record["experiment"] == "mini"
        assert record["prompt_id"] == PROMPT_ID
        assert record["variables"] == {"shift": r.variables["shift"]}
        assert (record["seed"], record["shift"], record["steps"], record["width"]) == (
            r.seed,
            float(r.variables["shift"]),
            2,
            64,
        )
        assert record["model_fingerprint"] == fingerprint

    columns, rows = read_csv(exp_dir / "results.csv")
    assert columns == CSV_COLUMNS
    assert [row["run_id"] for row in rows] == [r.run_id for r in runs]
    for row, r in zip(rows, runs, strict=True):
        assert row["status"] == "done" and row["error"] == ""
        assert (row["prompt_id"], row["prompt_text"]) == (PROMPT_ID, r.prompt.text)
        assert (row["shift"], row["seed"]) == (r.variables["shift"], str(r.seed))
        assert row["output_path"] == r.image_name
        assert int(row["token_count"]) > 0
        assert float(row["seconds_per_image_batched"]) >= 0
        assert row["peak_memory_bytes"] == ""  # a CPU run: no accelerator peak, and no made-up number

    meta = json.loads((exp_dir / "metadata.json").read_text(encoding="utf-8"))
    assert meta["name"] == "mini"
    assert meta["counts"] == {"planned": 0, "done": 4, "failed": 0, "total": 4}
    assert meta["definition"] == json.loads(json.dumps(prepared.experiment.to_dict()))
    assert meta["metadata"]["base_settings"]["model_path"] == str(tiny_checkpoint)
    assert meta["metadata"]["model_fingerprint"] == fingerprint
    assert {"python", "torch", "diffusers", "transformers", "llm-dit"} <= set(meta["metadata"]["versions"])
    assert meta["summary"]["done"] == 4 and meta["summary"]["failed"] == 0

    frame = load_results(out, "mini")
    assert list(frame.columns) == CSV_COLUMNS
    assert list(frame["run_id"]) == [r.run_id for r in runs]
    assert set(frame["status"]) == {"done"}
    assert list(frame["seed"]) == [r.seed for r in runs] and str(frame["seed"].dtype) == "int64"
    assert str(frame["token_count"].dtype) == "Int64"


# ------------------------------------------------------------------------------------------- 4. resume


def test_resume_skips_done_regenerates_a_deleted_image_and_force_redoes_all(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    exp = write_experiment(tmp_path, "mini", [2.0, 4.0], [1, 2])
    argv = ablate_argv(tiny_checkpoint, out, "--experiment-file", exp)
    exp_dir = out / "mini"
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and summary_of(err) == (4, 0, 0)
    first = mtimes(exp_dir)
    assert len(first) == 4

    rc, _, err = run(capsys, *argv)
    assert rc == 0 and summary_of(err) == (0, 4, 0)
    assert mtimes(exp_dir) == first

    victim = sorted(first)[1]
    (exp_dir / victim).unlink()
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and summary_of(err) == (1, 3, 0)
    again = mtimes(exp_dir)
    assert set(again) == set(first)
    assert {k: v for k, v in again.items() if k != victim} == {k: v for k, v in first.items() if k != victim}
    assert read_record(exp_dir / victim)["run_id"][:8] == victim.removesuffix(".png")[-8:]

    # Back-date every image (no sleep: file times can be coarser than a run), so a rewrite shows in its mtime.
    old = 1_000_000_000 * 10**9  # 2001-09-09
    for name in again:
        os.utime(exp_dir / name, ns=(old, old))
    rc, _, err = run(capsys, *argv, "--force")
    assert rc == 0 and summary_of(err) == (4, 0, 0)
    forced = mtimes(exp_dir)
    assert set(forced) == set(first)
    assert all(forced[name] > old for name in forced)
    with ResultsStore(out) as store:
        assert set(store.status("mini").values()) == {"done"}


# ------------------------------------------------------------------------------ 5. a real SIGKILL, resumed


# The CLI in a child that stops at its second mark_done, after saying so in the file argv[1]: that image is
# on disk but not recorded as done (a background write may be making the third), and nothing ends it but a kill.
HOLD_AT_SECOND_DONE = """
import pathlib, sys, time
from llm_dit.experiments.store import ResultsStore
from llm_dit.cli import main
real, calls = ResultsStore.mark_done, []
def mark_done(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        pathlib.Path(sys.argv[1]).touch()
        time.sleep(600)
    return real(self, *args, **kwargs)
ResultsStore.mark_done = mark_done
sys.exit(main(sys.argv[2:]))
"""


def test_resume_after_sigkill_yields_exactly_the_planned_images(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shifts = [1.0 + 0.25 * i for i in range(12)]
    exp = write_experiment(tmp_path, "killme", shifts, [1, 2])
    out = tmp_path / "results"
    exp_dir = out / "killme"
    argv = [*ablate_argv(tiny_checkpoint, out, "--experiment-file", exp), "--batch-size", "1"]
    log, holding = tmp_path / "child.log", tmp_path / "holding"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_AT_SECOND_DONE, str(holding), *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=subprocess_env(OMP_NUM_THREADS="1"),
            cwd=tmp_path,
        )
    try:
        # Killed where the child says it stands (not after a delay): the second image is on disk, not yet done.
        deadline = time.monotonic() + 120
        while not holding.exists():
            assert proc.poll() is None, f"the run ended before the kill: {log.read_text()}"
            assert time.monotonic() < deadline, "the child did not reach its second image in 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    planned = prepare(tiny_checkpoint, experiment_file=exp).runs
    assert len(planned) == 24
    by_name = {r.image_name: r for r in planned}
    at_kill = pngs(exp_dir)
    assert set(at_kill) <= set(by_name)
    assert 2 <= len(at_kill) < 24, at_kill  # the first two, and what the writer thread had queued
    with ResultsStore(out) as store:
        done_at_kill = store.done_run_ids("killme")
    assert len(done_at_kill) == 1  # the second image is on disk but not done: the resume redoes it
    # What a kill in the middle of a write leaves (save_png's temp-file pattern), whether or not this kill did.
    missing = sorted(set(by_name) - set(at_kill))
    (exp_dir / f".{missing[0].removesuffix('.png')}.k1ll3d.png.tmp").write_bytes(b"\x89PNG\r\n\x1a\n")

    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    done, skipped, failed = summary_of(err)
    assert (done + skipped, failed) == (24, 0)
    assert skipped == len(done_at_kill)

    # Exactly the planned images: none missing, none duplicated, no temp files or other leftovers.
    assert sorted(os.listdir(exp_dir)) == sorted([".lock", "metadata.json", "results.csv", *by_name])
    for name, r in by_name.items():
        assert pixels(exp_dir / name).shape == (64, 64, 3)  # decodes fully: not truncated
        record = read_record(exp_dir / name)
        assert (record["run_id"], record["seed"]) == (r.run_id, r.seed)
    with ResultsStore(out) as store:
        status = store.status("killme")
    assert status == {r.run_id: "done" for r in planned}
    _, rows = read_csv(exp_dir / "results.csv")
    assert len(rows) == 24 and {row["status"] for row in rows} == {"done"}
    assert sorted(row["output_path"] for row in rows) == sorted(by_name)


# ---------------------------------------------------------------------------------------- 6. batching


@pytest.mark.numerics
def test_batched_run_matches_one_by_one(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_experiment(tmp_path, "batchy", [1.0, 2.0, 3.0, 4.0], [1, 2])
    outs = {}
    for batch in (4, 1):
        outs[batch] = tmp_path / f"b{batch}"
        argv = ablate_argv(tiny_checkpoint, outs[batch], "--experiment-file", exp, "--batch-size", str(batch))
        rc, _, err = run(capsys, *argv)
        assert rc == 0 and summary_of(err) == (8, 0, 0), err
    dir4, dir1 = outs[4] / "batchy", outs[1] / "batchy"
    names = pngs(dir4)
    assert len(names) == 8 and names == pngs(dir1)
    worst = 0
    for name in names:
        a, b = pixels(dir4 / name), pixels(dir1 / name)
        worst = max(worst, int(np.abs(a - b).max()))
        rec4, rec1 = read_record(dir4 / name), read_record(dir1 / name)
        assert rec4["run_id"] == rec1["run_id"]
        assert (rec4["batch_size"], rec1["batch_size"]) == (4, 1)
    assert load_results(outs[4], "batchy")["run_id"].tolist() == load_results(outs[1], "batchy")["run_id"].tolist()

    prepared = prepare(tiny_checkpoint, experiment_file=exp, batch_size=4)
    # Each float32 image is within its counted rounding bound of the exact one (tests/bounds.py), so the two differ
    # by at most twice that; in 1/255 levels d, rounding to uint8 moves them apart by at most floor(d) + 1.
    levels = 0
    for planned in prepared.runs:
        result, factor = generate_counted(prepared.pipeline, request_for(planned))
        levels = max(levels, math.floor(2 * rounding_bound(result.image, factor) * 255) + 1)
    assert worst <= levels, f"batched pixels differ by {worst}/255, more than rounding explains ({levels}/255)"
    cost4 = plan_cost(prepared.runs, 4, prepared.checker)
    cost1 = plan_cost(prepared.runs, 1, prepared.checker)
    assert cost4 == {
        "images": 8,
        "distinct_prompt_encodings": 1,
        "dit_forwards_batched": 2 * 2,  # 2 batches of 4, 2 steps each
        "dit_forwards_unbatched": 8 * 2,
    }
    assert cost1["dit_forwards_batched"] == cost1["dit_forwards_unbatched"] == 16
    assert cost4["dit_forwards_batched"] < cost1["dit_forwards_batched"]
    # With CFG the negative prompt is encoded too (once per encoder group), as the pipeline will do.
    cfg = prepare(tiny_checkpoint, experiment_file=exp, batch_size=4, overrides={**SMALL, "guidance_scale": 2.0})
    assert plan_cost(cfg.runs, 4, cfg.checker)["distinct_prompt_encodings"] == 2


def test_stored_generation_time_is_the_batch_time_over_its_size(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock that advances 1 s per DiT forward and at no other time: 5 runs in batches of 3 and 2, 2 steps
    each, take 2 s per batch, so the store holds batch seconds 2, batch sizes 3 and 2, each image's position,
    and 2/3 s per image batched for the first batch and 2/2 for the second."""
    from types import SimpleNamespace

    from llm_dit.generation import pipeline as pipeline_module

    clock = [0.0]

    def tick(module: Any, args: Any, output: Any) -> None:
        clock[0] += 1.0

    monkeypatch.setattr(pipeline_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    exp = write_experiment(tmp_path, "clocked", [1.0, 2.0, 3.0, 4.0, 5.0], [1])
    prepared = prepare(tiny_checkpoint, experiment_file=exp, batch_size=3)
    handle = prepared.pipeline.transformer.register_forward_hook(tick)
    try:
        runner = ExperimentRunner(prepared.pipeline, ResultsStore(tmp_path / "out"), batch_size=3)
        summary = runner.run(prepared.experiment, prepared.runs, prepared.settings)
    finally:
        handle.remove()
    assert (summary.done, summary.failed) == (5, 0)
    assert clock[0] == 2 + 2  # two batches, 2 forwards each
    frame = load_results(tmp_path / "out", "clocked")
    stored = sorted(zip(frame["batch_size"], frame["batch_position"], frame["batch_seconds"], strict=True))
    assert stored == [(2, 0, 2.0), (2, 1, 2.0), (3, 0, 2.0), (3, 1, 2.0), (3, 2, 2.0)]
    assert sorted(frame["seconds_per_image_batched"]) == sorted([2 / 3] * 3 + [1.0] * 2)


# ---------------------------------------------------------------------------------------- 7. failures


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = write_experiment(tmp_path, "flaky", [2.0, 4.0], [1, 2])
    out = tmp_path / "results"
    exp_dir = out / "flaky"
    runs = prepare(tiny_checkpoint, experiment_file=exp).runs
    target = next(r for r in runs if r.seed == 2 and r.variables["shift"] == "4.0")
    real = LlmDitPipeline.generate_batch
    calls: list[int] = []

    def generate_batch(self: LlmDitPipeline, requests: Any, progress: Any = None) -> Any:
        calls.append(len(requests))
        if any(r.generation.seed == 2 and r.generation.shift == 4.0 for r in requests):
            raise RuntimeError("injected failure for seed 2")
        return real(self, requests, progress)

    monkeypatch.setattr(LlmDitPipeline, "generate_batch", generate_batch)
    argv = ablate_argv(tiny_checkpoint, out, "--experiment-file", exp, "--batch-size", "4")
    rc, _, err = run(capsys, *argv)
    assert rc == 1  # scripts can tell that runs failed
    assert summary_of(err) == (3, 0, 1)
    assert calls == [4, 1, 1, 1, 1]  # the failed batch, then each run alone
    assert f"failed {target.run_id}: RuntimeError: injected failure for seed 2" in flat(err)
    assert pngs(exp_dir) == sorted(r.image_name for r in runs if r is not target)
    _, rows = read_csv(exp_dir / "results.csv")
    by_id = {row["run_id"]: row for row in rows}
    assert by_id[target.run_id]["status"] == "failed"
    assert by_id[target.run_id]["error"].startswith("RuntimeError: injected failure for seed 2")
    assert by_id[target.run_id]["output_path"] == ""
    assert {row["status"] for rid, row in by_id.items() if rid != target.run_id} == {"done"}
    meta = json.loads((exp_dir / "metadata.json").read_text(encoding="utf-8"))
    assert meta["counts"]["failed"] == 1 and meta["counts"]["done"] == 3

    monkeypatch.setattr(LlmDitPipeline, "generate_batch", real)
    rc, _, err = run(capsys, *argv)
    assert rc == 0
    assert summary_of(err) == (1, 3, 0)  # only the failed run is retried
    _, rows = read_csv(exp_dir / "results.csv")
    assert {row["status"] for row in rows} == {"done"} and {row["error"] for row in rows} == {""}
    assert pngs(exp_dir) == sorted(r.image_name for r in runs)


# -------------------------------------------------------------------------------------------- 8. lock


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the run lock of experiment 'mini' in tmp_path/results."""
    out = tmp_path / "results"
    code = (
        "import sys, time\n"
        "from llm_dit.experiments.store import ResultsStore\n"
        "with ResultsStore(sys.argv[1]).lock('mini'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield out, proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_second_runner_is_refused_while_another_process_holds_the_lock(
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    held_lock: tuple[Path, subprocess.Popen[str]],
) -> None:
    out, holder = held_lock
    exp = write_experiment(tmp_path, "mini", [2.0, 4.0], [1, 2])
    argv = ablate_argv(tiny_checkpoint, out, "--experiment-file", exp)
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "already being run by another process" in errors[0]
    assert f"pid {holder.pid}" in errors[0]
    assert pngs(out / "mini") == []
    # kill -9 of the holder releases the lock: the experiment runs now.
    holder.kill()
    holder.wait(timeout=30)
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and summary_of(err) == (4, 0, 0)


def test_lock_error_is_one_line(
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    held_lock: tuple[Path, subprocess.Popen[str]],
) -> None:
    out, _ = held_lock
    exp = write_experiment(tmp_path, "mini", [2.0, 4.0], [1, 2])
    rc, stdout, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp))
    assert_user_error(rc, stdout, err, "already being run by another process")


# --------------------------------------------------------------------------------------- 9. offload


@pytest.mark.numerics
def test_offload_encoder_frees_the_encoder_and_changes_no_pixel(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_experiment(tmp_path, "offl", [2.0, 4.0], [1, 2])
    dirs = {}
    for offload in (False, True):
        prepared = prepare(tiny_checkpoint, experiment_file=exp, batch_size=4)
        out = tmp_path / f"api-{offload}"
        seen: list[tuple[int, int, int]] = []
        runner = ExperimentRunner(
            prepared.pipeline,
            ResultsStore(out),
            batch_size=4,
            offload_encoder=offload,
            progress=lambda *a, seen=seen: seen.append(a),
        )
        summary = runner.run(prepared.experiment, prepared.runs, prepared.settings)
        assert (summary.planned, summary.done, summary.skipped, summary.failed) == (4, 4, 0, 0)
        assert seen[0] == (0, 4, 0) and seen[-1] == (4, 4, 0)
        assert (prepared.pipeline.encoder._model is None) is offload
        dirs[offload] = out / "offl"
        meta = json.loads((dirs[offload] / "metadata.json").read_text(encoding="utf-8"))
        assert meta["metadata"]["offload_encoder"] is offload

    out = tmp_path / "cli"
    rc, _, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp, "--offload-encoder"))
    assert rc == 0 and summary_of(err) == (4, 0, 0)
    dirs["cli"] = out / "offl"
    names = pngs(dirs[False])
    assert len(names) == 4
    for key in (True, "cli"):
        assert pngs(dirs[key]) == names
        for name in names:
            assert np.array_equal(pixels(dirs[key] / name), pixels(dirs[False] / name)), name


# ----------------------------------------------------------------------------------------- 10. sweep


@pytest.mark.terminal
def test_sweep_quick_dry_run_prints_the_plan_and_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    out = tmp_path / "results"
    argv = ["sweep", "hidden_layer", "--quick", "--dry-run", "--model-path", tiny_checkpoint, "--output-dir", out]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    assert "sweep hidden_layer:" in err
    text = flat(stdout)
    # --quick: 2 prompts and seed 42; hidden_layer sweeps 6 layers.
    assert "12 runs = 2 prompts x 6 combinations x 1 seed" in text
    assert "axes: hidden_layer = -1, -2, -3, -4, -5, -6" in text
    table = [line for line in stdout.splitlines() if re.search(r"\b[0-9a-f]{16}\b", line)]
    assert len(table) == 12 and all(re.search(r"\b42\b", line) for line in table)
    assert not out.exists()


@pytest.mark.terminal
def test_sweep_all_covers_the_presets_in_priority_order(
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model_load: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []
    real = LlmDitPipeline.from_settings.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(LlmDitPipeline, "from_settings", classmethod(counting))
    out = tmp_path / "results"
    argv = ["sweep", "--all", "--quick", "--dry-run", "--model-path", tiny_checkpoint, "--output-dir", out]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    assert built == []  # a dry run checks with the light checks: no pipeline (tests/test_light_paths.py)
    assert re.findall(r"^sweep (\w+):", err, flags=re.M) == [preset for preset, _ in SWEEP_ORDER]
    experiments = {name for _, name in SWEEP_ORDER}
    headings = [m for m in re.findall(r"^(\w+): ", stdout, flags=re.M) if m in experiments]
    assert headings == [name for _, name in SWEEP_ORDER]
    assert len(re.findall(r"runs = 2 prompts x \d+ combinations x 1 seed", flat(stdout))) == 5
    assert flat(stdout).count("(dry run: nothing written)") == 5
    assert not out.exists()


def test_unknown_sweep_lists_the_valid_ones(capsys: pytest.CaptureFixture[str], no_model_load: None) -> None:
    rc, stdout, err = run(capsys, "sweep", "bogus")
    assert_user_error(rc, stdout, err, "unknown sweep 'bogus'", *(preset for preset, _ in SWEEP_ORDER))


# --------------------------------------------------------------------------------------- 11. profile


def test_profile_writes_encode_and_generate_timings(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.json"
    argv = ["profile", "-o", path, "--model-path", tiny_checkpoint, "--width", "64", "--height", "64"]
    rc, stdout, err = run(capsys, *argv, "--steps", "2", "--repeats", "1")
    assert rc == 0, err
    data = json.loads(path.read_text(encoding="utf-8"))
    assert json.loads(stdout) == data
    encode = data["encode"]
    assert list(encode) == ["short", "medium", "long"]
    tokens = [encode[k]["tokens"] for k in ("short", "medium", "long")]
    assert 0 < tokens[0] < tokens[1] < tokens[2]
    for timing in (*encode.values(), data["generate"]):
        assert timing["repeats"] == 1 and 0 < timing["min_s"] <= timing["mean_s"]
    assert {k: data["generate"][k] for k in ("width", "height", "steps")} == {"width": 64, "height": 64, "steps": 2}
    assert data["peak_memory_gib"] > 0 and data["peak_memory_kind"]
    assert data["model_path"] == str(tiny_checkpoint)
    # An existing output is refused before anything loads.
    rc, stdout, err = run(capsys, *argv, "--steps", "2", "--repeats", "1")
    assert_user_error(rc, stdout, err, "already exists")


def test_profile_uses_the_configs_recipe(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder

    forwards: list[int] = []
    real = ZImageTextEncoder.encode_variants

    def counting(self: ZImageTextEncoder, *args: Any, **kwargs: Any) -> Any:
        forwards.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ZImageTextEncoder, "encode_variants", counting)
    # Unset size/steps flags take the config's values; explicit sigmas there are timed as such, not refused.
    config = tmp_path / "c.toml"
    config.write_text("[default.generation]\nwidth = 64\nheight = 32\nsigmas = [1.0, 0.6, 0.3, 0.0]\nshift = 2.0\n")
    path = tmp_path / "p.json"
    argv = ["profile", "-o", path, "--model-path", tiny_checkpoint, "--config", config, "--repeats", "1"]
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    generate = json.loads(path.read_text(encoding="utf-8"))["generate"]
    assert (generate["width"], generate["height"], generate["steps"]) == (64, 32, 3)
    assert generate["sigmas"] == [1.0, 0.6, 0.3, 0.0]
    # 3 prompts x (warm-up + 1) encodes, then every timed generation encodes again (warm-up + 1): end to end.
    assert len(forwards) == 3 * 2 + 2


# ------------------------------------------------------------------------------- planned-vs-run agreement


def test_dry_run_and_run_agree_when_two_labels_make_the_same_image(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "dup.toml"
    exp.write_text(
        'name = "dup"\ndescription = "negative prompts are inert without CFG"\nseeds = [1]\n\n'
        f'[prompts]\nids = ["{PROMPT_ID}"]\n\n[[axes]]\nname = "neg"\nvalues = [\n'
        '  { label = "a", guidance_scale = 0.0, negative_prompt = "blurry" },\n'
        '  { label = "b", guidance_scale = 0.0, negative_prompt = "dark" },\n]\n',
        encoding="utf-8",
    )
    out = tmp_path / "results"
    rc_dry, _, _ = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp, "--dry-run"))
    rc_run, _, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp))
    assert rc_dry == rc_run == 0, err
    # Both conditions keep their own row and image, under distinct (derived, deterministic) run ids.
    _, rows = read_csv(out / "dup" / "results.csv")
    assert [row["neg"] for row in rows] == ["a", "b"] and {row["status"] for row in rows} == {"done"}
    assert len({row["run_id"] for row in rows}) == 2
    assert len({row["output_path"] for row in rows}) == 2 and all(
        (out / "dup" / r["output_path"]).is_file() for r in rows
    )


def test_images_are_as_readable_as_the_exports(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    if 0o666 & ~mask == 0o600:
        pytest.skip("this umask makes shared files owner-only too: nothing to compare")
    out = tmp_path / "results"
    exp = write_experiment(tmp_path, "perm", [3.0], [1])
    rc, _, err = run(capsys, *ablate_argv(tiny_checkpoint, out, "--experiment-file", exp))
    assert rc == 0, err
    exp_dir = out / "perm"
    [image] = pngs(exp_dir)
    csv_mode = (exp_dir / "results.csv").stat().st_mode & 0o777
    assert (exp_dir / image).stat().st_mode & 0o777 == csv_mode
