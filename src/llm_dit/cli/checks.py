"""Checks every experiment command makes on the results directory before it builds a pipeline or loads a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_dit.cli.terminal import note
from llm_dit.errors import LlmDitError


def refuse_before_running(prepared_all: list[Any], output_dir: Path, dry_run: bool) -> None:
    """Another process running one of these experiments in ``output_dir``, or a damaged results database: one line
    and exit 2, before any pipeline is built or model loaded (the runner takes the lock for real later); a dry run
    only notes a running experiment (its read-only look at the database refuses damage itself)."""
    from llm_dit.experiments.store import DB_NAME, ResultsStore, lock_holder

    if not dry_run and (output_dir / DB_NAME).is_file():
        with ResultsStore(output_dir, read_only=True):  # opening checks it, and writes nothing
            pass
    for prepared in prepared_all:
        holder = lock_holder(output_dir, prepared.experiment.name)
        if holder is None:
            continue
        busy = f"experiment {prepared.experiment.name!r} in {output_dir} is already being run by another process"
        if not dry_run:
            raise LlmDitError(f"{busy} ({holder}); wait for it or use another --output-dir")
        note(f"{busy} ({holder}); a real run would be refused until it ends")
