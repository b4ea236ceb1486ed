"""Tests of the results store: round trips, resume, exports, locking, crash safety and concurrency."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_helpers import read_csv, results_snapshot, subprocess_env
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import (
    DB_NAME,
    METRICS_LOCK_NAME,
    SCHEMA_VERSION,
    TRAILING_COLUMNS,
    MetricValue,
    PlannedRun,
    ResultsStore,
    RunTiming,
    TimedStats,
    file_sha256,
    load_results,
    peek_runs,
)
from llm_dit.files import write_atomic

EXP = "shift_sweep"
TRICKY_PROMPT = 'A cat, "sleeping"\non a mat'


def make_runs(n_prompts: int = 2, shifts: tuple[str, ...] = ("1.0", "3.0"), seed: int = 42) -> list[PlannedRun]:
    runs = []
    for p in range(n_prompts):
        for shift in shifts:
            run_id = f"p{p}_shift{shift}_s{seed}"
            runs.append(
                PlannedRun(
                    run_id=run_id,
                    prompt_id=f"p{p}",
                    prompt_text=TRICKY_PROMPT if p == 0 else f"prompt {p}",
                    seed=seed,
                    variables={"shift": shift, "steps": "8"},  # axis order: shift, then steps
                    params={"shift": float(shift), "steps": 8, "model_path": Path("/models/z")},
                    image_name=f"{run_id}.png",
                )
            )
    return runs


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    s = ResultsStore(tmp_path / "results")
    s.start_experiment(EXP, "shift sweep", {"variables": {"shift": ["1.0", "3.0"]}}, {"model": "z-image-turbo"})
    return s


def finish_run(store: ResultsStore, run_id: str, *, seconds: float = 1.5, tokens: int | None = 12) -> None:
    """What the runner does: write the image atomically, then mark the run done."""
    write_atomic(store.experiment_dir(EXP) / f"{run_id}.png", b"\x89PNG fake")
    store.mark_done(
        EXP, run_id, image_path=f"{run_id}.png", timing=RunTiming(seconds, 1), token_count=tokens, record={"id": run_id}
    )


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh Python process that imports llm_dit from this checkout."""
    env = subprocess_env()
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_script(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = spawn(code, *args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- database round trips ------------------------------------------------------------------------------------


def test_database_settings_and_schema(store: ResultsStore) -> None:
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"schema_version", "experiments", "runs", "metrics"} <= tables
    conn.close()
    store_conn = store._connection()
    assert store_conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store_conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store_conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_plan_mark_status_round_trip(store: ResultsStore) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    assert store.status(EXP) == {r.run_id: "planned" for r in runs}
    finish_run(store, runs[0].run_id)
    store.mark_failed(EXP, runs[1].run_id, "CUDA out of memory")
    status = store.status(EXP)
    assert status[runs[0].run_id] == "done"
    assert status[runs[1].run_id] == "failed"
    assert list(status) == [r.run_id for r in runs]  # planned order
    rows = store.runs(EXP)
    assert [row["run_id"] for row in rows] == [r.run_id for r in runs]
    first = rows[0]
    assert first["variables"] == {"shift": "1.0", "steps": "8"}
    assert list(first["variables"]) == ["shift", "steps"]
    assert first["params"] == {"shift": 1.0, "steps": 8, "model_path": "/models/z"}
    assert first["record"] == {"id": runs[0].run_id}
    assert first["image_path"] == f"{runs[0].run_id}.png"
    assert first["seconds_per_image_batched"] == 1.5 and first["token_count"] == 12
    assert first["prompt_text"] == TRICKY_PROMPT
    assert store.experiments() == [EXP]


def test_replan_keeps_done_rows_and_adds_new_ones(store: ResultsStore) -> None:
    first_plan = make_runs(shifts=("1.0", "3.0"))
    store.plan_runs(EXP, first_plan)
    finish_run(store, first_plan[0].run_id)
    store.mark_failed(EXP, first_plan[1].run_id, "boom")
    # A resumed, extended plan: a new shift value in the middle, and one old run dropped.
    second_plan = [r for r in make_runs(shifts=("1.0", "2.0", "3.0")) if r.run_id != first_plan[3].run_id]
    store.plan_runs(EXP, second_plan)
    status = store.status(EXP)
    assert status[first_plan[0].run_id] == "done"
    assert status[first_plan[1].run_id] == "failed"
    assert status["p0_shift2.0_s42"] == "planned"
    assert store.runs(EXP)[0]["record"] == {"id": first_plan[0].run_id}  # done row untouched
    # The dropped run is left as it was, after the plan's runs; the rest follow the new plan's order.
    assert list(status) == [r.run_id for r in second_plan] + [first_plan[3].run_id]
    assert status[first_plan[3].run_id] == "planned"
    assert store.done_run_ids(EXP) == {first_plan[0].run_id}
    # Only the dropped run is marked as left from an earlier plan; planning it again brings it back.
    assert {r["run_id"] for r in store.runs(EXP) if not r["in_plan"]} == {first_plan[3].run_id}
    store.plan_runs(EXP, first_plan)
    assert {r["run_id"] for r in store.runs(EXP) if not r["in_plan"]} == {"p0_shift2.0_s42", "p1_shift2.0_s42"}


def test_version_2_database_gains_in_plan(store: ResultsStore) -> None:
    store.plan_runs(EXP, make_runs())
    store.close()
    conn = sqlite3.connect(store.db_path)
    conn.execute("ALTER TABLE runs DROP COLUMN in_plan")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.commit()
    conn.close()
    # A read-only open reads it as it is (every run in the plan), and changes nothing.
    with ResultsStore(store.root, read_only=True) as reader:
        assert [r["in_plan"] for r in reader.runs(EXP)] == [True] * 4
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
    conn.close()
    with ResultsStore(store.root) as writer:
        assert [r["in_plan"] for r in writer.runs(EXP)] == [True] * 4
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    assert "in_plan" in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    conn.close()


def test_done_run_ids_excludes_done_row_whose_image_vanished(store: ResultsStore) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    finish_run(store, runs[0].run_id)
    finish_run(store, runs[1].run_id)
    assert store.done_run_ids(EXP) == {runs[0].run_id, runs[1].run_id}
    (store.experiment_dir(EXP) / f"{runs[1].run_id}.png").unlink()
    assert store.done_run_ids(EXP) == {runs[0].run_id}


def test_failed_runs_keep_their_error_until_done(store: ResultsStore) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    store.mark_failed(EXP, runs[0].run_id, "RuntimeError: CUDA out of memory\ntraceback line")
    store.plan_runs(EXP, runs)  # resume: a failed run stays failed (and keeps its error) until retried
    row = store.runs(EXP)[0]
    assert row["status"] == "failed"
    assert row["error"] == "RuntimeError: CUDA out of memory\ntraceback line"
    finish_run(store, runs[0].run_id)
    row = store.runs(EXP)[0]
    assert row["status"] == "done" and row["error"] is None


def test_unknown_runs_experiments_and_bad_input_are_clear_errors(store: ResultsStore) -> None:
    with pytest.raises(LlmDitError, match="not planned"):
        store.mark_done(EXP, "nope", image_path="nope.png", image_sha256="0", token_count=None, record={})
    with pytest.raises(LlmDitError, match="not planned"):
        store.mark_failed(EXP, "nope", "x")
    with pytest.raises(LlmDitError, match="not planned"):
        store.add_metrics(EXP, "nope", {"clip": 0.3})
    with pytest.raises(LlmDitError, match="start it first"):
        store.plan_runs("other", make_runs())
    with pytest.raises(LlmDitError, match="twice"):
        store.plan_runs(EXP, make_runs() + make_runs()[:1])
    for bad in ("", "../escape", "a/b", ".hidden", " padded", DB_NAME):
        with pytest.raises(LlmDitError, match="invalid experiment name"):
            store.experiment_dir(bad)
    store.plan_runs(EXP, make_runs())
    with pytest.raises(LlmDitError, match="outside the experiment directory"):
        store.mark_done(EXP, make_runs()[0].run_id, image_path="/etc/x.png", image_sha256="0", token_count=1, record={})
    assert store.status(EXP)[make_runs()[0].run_id] == "planned"  # nothing half-applied


def test_start_experiment_records_each_start_and_finish(store: ResultsStore) -> None:
    first = store.experiment(EXP)
    store.finish_experiment(EXP, {"done": 4})
    assert store.experiment(EXP)["finished_at"] is not None
    store.start_experiment(EXP, "shift sweep v2", {"variables": {}}, {"model": "z"})
    info = store.experiment(EXP)
    assert info["started_at"] == first["started_at"]  # the first start is kept
    assert len(info["metadata"]["starts"]) == 2
    assert info["metadata"]["starts"][-1]["pid"] == os.getpid()
    assert info["metadata"]["model"] == "z" and info["description"] == "shift sweep v2"
    assert info["finished_at"] is None  # running again
    with pytest.raises(LlmDitError, match="no experiment"):
        store.finish_experiment("missing", {})


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "results"
    ResultsStore(root).close()
    conn = sqlite3.connect(root / DB_NAME)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(LlmDitError, match="newer than this llm-dit"):
        ResultsStore(root)


# -- exports -------------------------------------------------------------------------------------------------


def test_export_metadata_and_csv(store: ResultsStore) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    finish_run(store, runs[0].run_id, seconds=2.25, tokens=17)
    store.mark_failed(EXP, runs[1].run_id, "bad, very bad")
    metadata_path, results_path = store.export(EXP)
    assert metadata_path == store.experiment_dir(EXP) / "metadata.json"

    meta = json.loads(metadata_path.read_text(encoding="utf-8"))
    assert meta["name"] == EXP and meta["description"] == "shift sweep"
    assert meta["definition"] == {"variables": {"shift": ["1.0", "3.0"]}}
    assert meta["metadata"]["model"] == "z-image-turbo"
    assert meta["counts"] == {"planned": 2, "done": 1, "failed": 1, "total": 4}
    assert meta["variables"] == {"shift": ["1.0", "3.0"], "steps": ["8"]}
    assert meta["started_at"] and meta["finished_at"] is None

    columns, rows = read_csv(results_path)
    expected = ["run_id", "prompt_id", "prompt_text", "shift", "steps", *TRAILING_COLUMNS]
    assert columns == expected
    assert [row["run_id"] for row in rows] == [r.run_id for r in runs]
    assert rows[0]["prompt_text"] == TRICKY_PROMPT  # comma, quote and newline survive
    assert rows[0]["shift"] == "1.0" and rows[1]["shift"] == "3.0" and rows[0]["steps"] == "8"
    assert rows[0]["status"] == "done" and rows[0]["output_path"] == f"{runs[0].run_id}.png"
    assert float(rows[0]["seconds_per_image_batched"]) == 2.25 and rows[0]["token_count"] == "17"
    assert rows[1]["error"] == "bad, very bad" and rows[1]["output_path"] == ""
    assert rows[2]["status"] == "planned" and rows[2]["seed"] == "42"

    store.add_metrics(EXP, runs[0].run_id, {"siglip": 0.25, "image_reward": 1.5})
    store.add_metrics(EXP, runs[0].run_id, {"siglip": 0.5})  # replaces
    _, results_path = store.export(EXP)
    columns, rows = read_csv(results_path)
    assert columns == [*expected, "image_reward", "siglip"]  # metric columns last, sorted
    assert float(rows[0]["siglip"]) == 0.5 and float(rows[0]["image_reward"]) == 1.5
    assert rows[1]["siglip"] == ""
    assert store.runs(EXP)[0]["metrics"] == {"image_reward": 1.5, "siglip": 0.5}


def test_variable_named_like_a_fixed_column_gets_a_prefix(store: ResultsStore) -> None:
    store.plan_runs(EXP, [PlannedRun("r1", "p", "t", 7, {"seed": "7", "cfg": "[1, 2]"}, {}, "r1.png")])  # a seed sweep
    _, results_path = store.export(EXP)
    columns, rows = read_csv(results_path)
    assert columns[3:5] == ["var_seed", "cfg"] and "seed" in columns[5:]
    assert rows[0]["var_seed"] == "7" and rows[0]["seed"] == "7"


def test_exports_are_atomic(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    metadata_path, results_path = store.export(EXP)
    before = (metadata_path.read_bytes(), results_path.read_bytes())
    directory = store.experiment_dir(EXP)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]

    finish_run(store, runs[0].run_id)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.export(EXP)
    monkeypatch.undo()
    assert (metadata_path.read_bytes(), results_path.read_bytes()) == before  # old export intact
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]  # and no temp file left
    store.export(EXP)
    assert results_path.read_bytes() != before[1]


def test_cleanup_temp_files_removes_only_temp_files(store: ResultsStore) -> None:
    store.plan_runs(EXP, make_runs())
    store.export(EXP)
    directory = store.experiment_dir(EXP)
    keep = ["a.png", "results.csv", "metadata.json", "notes.tmp.txt", "tmp.png"]
    temp = [".results.csv.k2j3.tmp", ".p0_shift1.0.abc123.png.tmp", "leftover.png.tmp"]
    for name in keep[:1] + keep[3:] + temp:
        (directory / name).write_bytes(b"x")
    (directory / "sub.tmp").mkdir()  # directories are never touched
    assert store.cleanup_temp_files(EXP) == len(temp)
    names = {p.name for p in directory.iterdir()}
    assert set(keep) <= names and "sub.tmp" in names
    assert not names & set(temp)
    with store.lock(EXP):  # uses the lock this store holds instead of failing on it
        assert store.cleanup_temp_files(EXP) == 0


# -- locking -------------------------------------------------------------------------------------------------

TRY_LOCK = """
import sys
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import ResultsStore
try:
    with ResultsStore(sys.argv[1]).lock(sys.argv[2]):
        print("locked")
except LlmDitError as exc:
    print(exc)
    sys.exit(3)
"""

HOLD_LOCK = """
import sys, time
from llm_dit.experiments.store import ResultsStore
with ResultsStore(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_refuses_another_process_with_a_clear_message(store: ResultsStore) -> None:
    with store.lock(EXP):
        result = run_script(TRY_LOCK, str(store.root), EXP)
        assert result.returncode == 3, result.stderr
        message = result.stdout.strip()
        assert f"experiment '{EXP}' in {store.root} is already being run by another process" in message
        assert f"pid {os.getpid()}" in message and "started 20" in message
        assert "wait for it or use another --output-dir" in message
        # Also within the same process (each lock() is its own open file).
        with pytest.raises(LlmDitError, match="already being run"), store.lock(EXP):
            pass
    result = run_script(TRY_LOCK, str(store.root), EXP)
    assert result.returncode == 0 and result.stdout.strip() == "locked", result.stderr


def test_lock_of_a_process_killed_with_sigkill_is_not_stale(store: ResultsStore) -> None:
    holder = spawn(HOLD_LOCK, str(store.root), EXP)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LlmDitError, match=rf"pid {holder.pid}, started"), store.lock(EXP):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    assert holder.returncode == -signal.SIGKILL
    with store.lock(EXP):  # the kernel dropped the flock with the process
        pass


# -- crash safety and concurrency ----------------------------------------------------------------------------

MARK_LOOP = """
import sys
from llm_dit.experiments.store import ResultsStore, RunTiming
store = ResultsStore(sys.argv[1])
exp, prefix, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
go = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
hold_last = len(sys.argv) > 6 and sys.argv[6] == "hold-last"
import os, time
if go:  # wait for the starting gun, so that concurrent writers really overlap
    print("ready", flush=True)
    deadline = time.monotonic() + 120  # the test creates it within seconds; never wait forever
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("no starting gun within 120 s")
        time.sleep(0.001)
for i in range(n):
    if hold_last and i == n - 1:  # never finish on its own: a kill lands mid-loop, however late it comes
        time.sleep(600)
    run_id = f"{prefix}{i}"
    (store.experiment_dir(exp) / f"{run_id}.png").write_bytes(b"png")
    store.mark_done(exp, run_id, image_path=f"{run_id}.png", timing=RunTiming(i / 10, 1), token_count=i,
                    record={"run_id": run_id, "blob": "x" * 2000})
    store.add_metrics(exp, run_id, {"m": float(i)})
    if i == 20:
        print("going", flush=True)
print("finished", flush=True)
"""


def plan_n(store: ResultsStore, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    store.plan_runs(EXP, [PlannedRun(rid, "p", "t", i, {"i": str(i)}, {}, f"{rid}.png") for i, rid in enumerate(ids)])
    return ids


def test_database_survives_a_writer_killed_with_sigkill(store: ResultsStore) -> None:
    ids = plan_n(store, "k", 5000)
    store.close()
    writer = spawn(MARK_LOOP, str(store.root), EXP, "k", str(len(ids)), "-", "hold-last")
    assert writer.stdout is not None
    # Killed once it has 21 runs done and while it writes on (no delay to guess: it cannot reach the end).
    assert writer.stdout.readline().strip() == "going"
    writer.send_signal(signal.SIGKILL)
    _, err = writer.communicate(timeout=10)
    assert writer.returncode == -signal.SIGKILL, err

    reopened = ResultsStore(store.root)
    conn = reopened._connection()
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    rows = reopened.runs(EXP)
    assert len(rows) == len(ids)
    done = [row for row in rows if row["status"] == "done"]
    assert 20 < len(done) < len(ids), "the kill should land mid-loop"
    for row in rows:
        i = int(row["run_id"][1:])
        if row["status"] == "done":  # fully there
            assert row["image_path"] == f"{row['run_id']}.png"
            assert row["seconds_per_image_batched"] == i / 10 and row["token_count"] == i
            assert row["record"] == {"run_id": row["run_id"], "blob": "x" * 2000}
        else:  # or absent
            assert row["status"] == "planned"
            assert row["image_path"] is None and row["record"] is None and row["token_count"] is None
            assert row["metrics"] == {}
    # Done rows are a prefix of the loop (each write committed in order), and the store still takes writes.
    assert sorted(int(row["run_id"][1:]) for row in done) == list(range(len(done)))
    reopened.mark_failed(EXP, ids[-1], "after crash")
    assert reopened.status(EXP)[ids[-1]] == "failed"


def test_two_processes_writing_different_runs_both_land(store: ResultsStore, tmp_path: Path) -> None:
    n = 150
    store.plan_runs(
        EXP, [PlannedRun(f"{p}{i}", "p", "t", i, {"i": str(i)}, {}, f"{p}{i}.png") for p in "ab" for i in range(n)]
    )
    store.close()
    go = tmp_path / "go"
    writers = [spawn(MARK_LOOP, str(store.root), EXP, prefix, str(n), str(go)) for prefix in ("a", "b")]
    for writer in writers:  # both started and waiting for the gun
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
    go.touch()
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err  # neither saw 'database is locked'
        assert out.strip().endswith("finished")
    status = store.status(EXP)
    assert len(status) == 2 * n and set(status.values()) == {"done"}
    assert len(store.done_run_ids(EXP)) == 2 * n
    for row in store.runs(EXP):
        assert row["metrics"] == {"m": float(int(row["run_id"][1:]))}


# -- pandas --------------------------------------------------------------------------------------------------


def test_load_results_columns_and_dtypes(store: ResultsStore) -> None:
    import pandas as pd

    runs = make_runs()
    store.plan_runs(EXP, runs)
    finish_run(store, runs[0].run_id, seconds=2.0, tokens=9)
    finish_run(store, runs[1].run_id, seconds=3.0, tokens=None)
    store.mark_failed(EXP, runs[2].run_id, "oops")
    store.add_metrics(EXP, runs[0].run_id, {"siglip": 0.3})
    df = load_results(store.root, EXP)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["run_id", "prompt_id", "prompt_text", "shift", "steps", *TRAILING_COLUMNS, "siglip"]
    assert len(df) == len(runs)
    assert df["seed"].dtype == "int64"
    assert df["seconds_per_image_batched"].dtype == "float64" and df["siglip"].dtype == "float64"
    assert str(df["token_count"].dtype) == "Int64" and str(df["peak_memory_bytes"].dtype) == "Int64"
    for column in ("run_id", "prompt_text", "shift", "status", "error", "output_path"):
        assert pd.api.types.is_string_dtype(df[column]), column
    assert df["token_count"].tolist()[:2] == [9, pd.NA]
    assert df["siglip"].iloc[0] == 0.3 and pd.isna(df["siglip"].iloc[1])
    assert df["prompt_text"].iloc[0] == TRICKY_PROMPT
    assert df["error"].iloc[2] == "oops" and pd.isna(df["error"].iloc[0])
    # Same columns as the csv export.
    _, results_path = store.export(EXP)
    header = next(csv.reader(io.StringIO(results_path.read_text(encoding="utf-8"))))
    assert header == list(df.columns)
    with pytest.raises(LlmDitError, match="no experiment"):
        load_results(store.root, "missing")
    with pytest.raises(LlmDitError, match="no results database"):
        load_results(store.root / "nowhere", EXP)


# -- schema 4: image hashes, migrations, damaged databases ---------------------------------------------------

# The runs table as llm-dit 0.1.0 wrote it (schema 3; schema 2 lacked in_plan), with its metrics table.
V3_RUNS = """CREATE TABLE runs (
    experiment TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE, run_id TEXT NOT NULL,
    seq INTEGER NOT NULL, in_plan INTEGER NOT NULL DEFAULT 1, prompt_id TEXT NOT NULL, prompt_text TEXT NOT NULL,
    seed INTEGER NOT NULL, variables TEXT NOT NULL DEFAULT '{}', params TEXT NOT NULL DEFAULT '{}',
    image_name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'done', 'failed')),
    error TEXT, image_path TEXT, generation_time_s REAL, token_count INTEGER, record TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (experiment, run_id))"""
V3_METRICS = """CREATE TABLE metrics (
    experiment TEXT NOT NULL, run_id TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1,
    value REAL, params TEXT NOT NULL DEFAULT '{}', computed_at TEXT, PRIMARY KEY (experiment, run_id, name, version),
    FOREIGN KEY (experiment, run_id) REFERENCES runs (experiment, run_id) ON DELETE CASCADE)"""


def old_database(root: Path, version: int) -> None:
    """A schema 2 or 3 database with two done runs (images on disk, one metric value each) and a planned one."""
    root.mkdir(parents=True)
    conn = sqlite3.connect(root / DB_NAME)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    conn.execute(
        """CREATE TABLE experiments (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '',
           definition TEXT NOT NULL DEFAULT '{}', metadata TEXT NOT NULL DEFAULT '{}', summary TEXT,
           started_at TEXT, finished_at TEXT)"""
    )
    conn.execute(V3_RUNS if version == 3 else V3_RUNS.replace("in_plan INTEGER NOT NULL DEFAULT 1, ", ""))
    conn.execute(V3_METRICS)
    conn.execute("INSERT INTO experiments (name) VALUES (?)", (EXP,))
    (root / EXP).mkdir()
    for seq, (run_id, status, seconds) in enumerate([("a", "done", 0.25), ("b", "done", 0.5), ("c", "planned", None)]):
        done = status == "done"
        if done:
            (root / EXP / f"{run_id}.png").write_bytes(f"png {run_id}".encode())
        conn.execute(
            """INSERT INTO runs (experiment, run_id, seq, prompt_id, prompt_text, seed, image_name, status,
               image_path, generation_time_s, created_at, updated_at)
               VALUES (?, ?, ?, 'p', 't', 1, ?, ?, ?, ?, 'x', 'x')""",
            (EXP, run_id, seq, f"{run_id}.png", status, f"{run_id}.png" if done else None, seconds),
        )
        if done:
            conn.execute(
                "INSERT INTO metrics (experiment, run_id, name, value) VALUES (?, ?, 'mad', 1.5)", (EXP, run_id)
            )
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", [2, 3])
def test_an_old_database_is_read_as_is_and_migrated_without_hashing(tmp_path: Path, version: int) -> None:
    root = tmp_path / "results"
    old_database(root, version)
    before = results_snapshot(root)
    with ResultsStore(root, read_only=True) as reader:
        runs = reader.runs(EXP)
        assert [r["seconds_per_image_batched"] for r in runs] == [0.25, 0.5, None]  # the old figure, renamed
        assert [r["image_sha256"] for r in runs] == [None] * 3
        # Values from before image hashes are tied to no image: not shown (a metrics pass recomputes them).
        assert [r["metrics"] for r in runs] == [{}] * 3
        assert [v.image_sha256 for v in reader.metric_values(EXP)] == [None, None]
        found = peek_runs(root, EXP)
        assert (found.done, found.timed, found.seconds) == ({"a", "b"}, set(), [0.25, 0.5])
        assert reader.captions(EXP) == {}  # no captions table before 5: none
    assert results_snapshot(root) == before  # a reader changes nothing

    with ResultsStore(root) as writer:
        runs = writer.runs(EXP)
        assert [r["seconds_per_image_batched"] for r in runs] == [0.25, 0.5, None]
        # Nothing hashed at migration: a file found now need not be the one generated.
        assert [(r["image_sha256"], r["image_hash_origin"]) for r in runs] == [(None, None)] * 3
        assert [r["in_plan"] for r in runs] == [True] * 3
        assert [r["metrics"] for r in runs] == [{}] * 3
        _, results_path = writer.export(EXP)
    conn = sqlite3.connect(root / DB_NAME)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(5,)]
    assert {row[1] for row in conn.execute("PRAGMA table_info(captions)")} >= {"source_run_id", "caption", "params"}
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    assert "generation_time_s" not in columns and {"seconds_per_image_batched", "image_sha256", "execution"} <= columns
    assert "image_sha256" in {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}
    assert conn.execute("SELECT count(*) FROM metrics WHERE image_sha256 IS NULL").fetchone() == (2,)
    conn.close()
    header, rows = read_csv(results_path)
    assert "mad" not in header and [row["seconds_per_image_batched"] for row in rows] == ["0.25", "0.5", ""]
    assert json.loads((root / EXP / "metadata.json").read_text())["unverified_images"] == 2


def test_a_regenerated_run_retires_its_values_and_those_that_used_its_image(store: ResultsStore) -> None:
    runs = make_runs()
    store.plan_runs(EXP, runs)
    a, b, c = (r.run_id for r in runs[:3])
    for run_id in (a, b, c):
        finish_run(store, run_id)
    directory = store.experiment_dir(EXP)
    first = file_sha256(directory / f"{a}.png")
    store.add_metrics(EXP, a, {"mad": 0.0})
    store.put_metrics(EXP, [MetricValue(b, "mad", 2.0, params={"input_sha256": {a: first}})])  # compared with a
    store.add_metrics(EXP, c, {"siglip": 0.5})
    shown = {r["run_id"]: r["metrics"] for r in store.runs(EXP)}
    assert (shown[a], shown[b], shown[c]) == ({"mad": 0.0}, {"mad": 2.0}, {"siglip": 0.5})

    write_atomic(directory / f"{a}.png", b"\x89PNG another image")  # regenerated: same run id, other pixels
    store.mark_done(EXP, a, image_path=f"{a}.png", token_count=1, record={})
    shown = {r["run_id"]: r["metrics"] for r in store.runs(EXP)}
    assert (shown[a], shown[b], shown[c]) == ({}, {}, {"siglip": 0.5})
    header, rows = read_csv(store.export(EXP)[1])
    assert "mad" not in header and rows[2]["siglip"] == "0.5"  # no current mad value left anywhere
    assert "mad" not in load_results(store.root, EXP).columns
    assert len(store.metric_values(EXP)) == 3  # kept (a metrics pass replaces them), never shown

    # The same bytes again: the values are of this very image, current again.
    finish_run(store, a)
    assert store.runs(EXP)[0]["image_sha256"] == first
    assert {r["run_id"]: r["metrics"] for r in store.runs(EXP)}[b] == {"mad": 2.0}


def scribble(path: Path, at: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(at)
        handle.write(data)


def damage(db: Path, how: str) -> None:
    size = db.stat().st_size
    page = int.from_bytes(db.read_bytes()[16:18], "big")
    if how == "garbage":
        db.write_bytes(os.urandom(size))
    elif how == "empty":
        db.write_bytes(b"")
    elif how == "cut mid-page":
        os.truncate(db, size - 100)
    elif how == "cut at a page boundary":
        os.truncate(db, 2 * page)
    elif how == "table missing":
        conn = sqlite3.connect(db)
        conn.execute("DROP TABLE metrics")
        conn.commit()
        conn.close()
    elif how == "another program's database":
        db.unlink()
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
        conn.close()
    else:
        raise AssertionError(how)


DAMAGE = ["garbage", "empty", "cut mid-page", "cut at a page boundary", "table missing", "another program's database"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_database_is_refused_in_one_line_and_left_as_it_is(store: ResultsStore, how: str) -> None:
    store.plan_runs(EXP, make_runs())
    finish_run(store, make_runs()[0].run_id)
    store.close()  # checkpointed: the database is one file
    assert not (store.root / f"{DB_NAME}-wal").exists()
    damage(store.db_path, how)
    before = results_snapshot(store.root)
    openers = {
        "writer": lambda: ResultsStore(store.root),
        "reader": lambda: ResultsStore(store.root, read_only=True),
        "load_results": lambda: load_results(store.root, EXP),
        "peek_runs": lambda: peek_runs(store.root, EXP),
    }
    for name, open_it in openers.items():
        with pytest.raises(LlmDitError) as caught:
            open_it()
        message = str(caught.value)
        assert f"results database {store.db_path} is damaged" in message, (name, message)
        assert "restore it from a backup, or use another --output-dir" in message and "\n" not in message
        assert results_snapshot(store.root) == before, name  # nothing re-created, migrated or switched to WAL


def test_a_damaged_page_is_refused_by_the_call_that_reads_it(store: ResultsStore) -> None:
    store.plan_runs(EXP, make_runs())
    store.close()
    page = int.from_bytes(store.db_path.read_bytes()[16:18], "big")
    conn = sqlite3.connect(store.db_path)
    (root_page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    conn.close()
    scribble(store.db_path, (root_page - 1) * page, b"\xff" * page)  # the run rows' page, header intact
    reopened = ResultsStore(store.root)  # the header and the table list are fine
    with pytest.raises(LlmDitError, match=rf"results database {re.escape(str(store.db_path))} is damaged"):
        reopened.runs(EXP)
    reopened.close()


def test_metrics_lock_refuses_a_second_pass(store: ResultsStore) -> None:
    with store.metrics_lock(EXP):
        result = run_script(TRY_LOCK.replace(".lock(", ".metrics_lock("), str(store.root), EXP)
        assert result.returncode == 3, result.stderr
        message = result.stdout.strip()
        assert f"metrics of experiment '{EXP}' in {store.root} are being computed by another process" in message
        assert f"pid {os.getpid()}" in message and "wait for it to finish" in message
        with store.lock(EXP):  # the run lock is another lock: generation and scoring may overlap
            pass
    assert run_script(TRY_LOCK.replace(".lock(", ".metrics_lock("), str(store.root), EXP).returncode == 0
    with pytest.raises(LlmDitError, match="reserved"):
        store.plan_runs(EXP, [PlannedRun("r", "p", "t", 1, {}, {}, METRICS_LOCK_NAME)])


def test_timed_stats_are_the_median_and_the_extremes_of_the_repeats() -> None:
    assert TimedStats.from_samples([0.3, 0.1, 0.2]) == TimedStats(0.2, 0.1, 0.3, 3)
    assert TimedStats.from_samples([0.4, 0.1, 0.2, 0.3]) == TimedStats(0.25, 0.1, 0.4, 4)  # even: the mid-mean
    assert TimedStats.from_samples([1.5]) == TimedStats(1.5, 1.5, 1.5, 1)
    with pytest.raises(LlmDitError, match="at least one repeat"):
        TimedStats.from_samples([])
    assert RunTiming(3.0, 4).seconds_per_image_batched == 0.75


def test_captions_are_kept_per_source_run_and_replaced_whole(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.start_experiment(EXP, "", {}, {})
        store.put_caption(EXP, "r1", "A cat.", origin="generated", params={"seed": 1}, token_count=3)
        store.put_caption(EXP, "r2", "A dog.", origin="generated", params={"seed": 2}, token_count=3)
        store.put_caption(EXP, "r1", "A grey cat.", origin="given", params={"file": "c.json"}, token_count=4)
        with pytest.raises(LlmDitError, match="caption origin must be"):
            store.put_caption(EXP, "r3", "x", origin="made", params={}, token_count=1)
        with pytest.raises(LlmDitError, match="no experiment 'other'"):
            store.put_caption("other", "r3", "x", origin="given", params={}, token_count=1)
    with ResultsStore(tmp_path, read_only=True) as reader:
        captions = reader.captions(EXP)
    assert list(captions) == ["r1", "r2"]
    assert {k: v for k, v in captions["r1"].items() if k != "created_at"} == {
        "caption": "A grey cat.", "origin": "given", "params": {"file": "c.json"}, "token_count": 4,
    }  # fmt: skip
