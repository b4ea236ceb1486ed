"""Helpers shared by the CLI-level tests: run the CLI in-process or in a subprocess, check user errors, read
exports, forbid model loading."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest

from llm_dit.cli import main
from llm_dit.models import checkpoint

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SRC = Path(__file__).resolve().parents[1] / "src"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit status, stdout, stderr), ANSI codes stripped."""
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, ANSI.sub("", out), ANSI.sub("", err)


def forbid_model_loading(mp: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model's weights fails the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    for name in ("load_transformer", "load_text_encoder", "load_vae"):
        mp.setattr(checkpoint, name, boom)


def flat(text: str) -> str:
    """Text with every run of whitespace as one space (rich wraps long lines at the console width)."""
    return " ".join(text.split())


def assert_user_error(rc: int, out: str, err: str, *needles: str, notes: bool = False) -> str:
    """Exit status 2, nothing on stdout, one stderr line 'error: ...' holding every needle, and nothing else on
    stderr (with ``notes``: except 'note: ...' lines and a sweep's heading before it). Returns the error line."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if notes:
        assert all(line.startswith(("note: ", "sweep ")) for line in lines[:-1]), err
    else:
        assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[-1].startswith("error: "), lines[-1]
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    assert rc == 2
    assert out == ""
    return lines[-1]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV export."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports llm_dit from this checkout, without forced colours, with the
    test process's thread count (one intra-op thread unless OMP_NUM_THREADS is set, as conftest pins it here)."""
    paths = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env = {**os.environ, **threads, "PYTHONPATH": os.pathsep.join(paths), **extra}
    env.pop("FORCE_COLOR", None)
    return env


def results_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under a results directory: (size, mtime_ns, sha256), to show that a reader changed nothing.

    SQLite's own side files are not results: a read-only connection to a WAL database creates an empty
    ``results.db-wal`` when absent and keeps its read marks in ``results.db-shm`` (shared memory), so ``-shm`` is
    left out and an empty ``-wal`` counts as absent (a ``-wal`` with frames would be a write, and is compared).
    """
    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(".db-shm"):
            continue
        stat = path.stat()
        if path.name.endswith(".db-wal") and stat.st_size == 0:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, digest)
    return out
