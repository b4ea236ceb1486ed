"""The ``llm-dit tiny-model`` command: write the tiny random Z-Image checkpoint that tests and dry runs use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_dit.cli.terminal import wrote
from llm_dit.errors import LlmDitError


def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint (must not exist).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny, architecture-faithful random Z-Image checkpoint in diffusers layout."""
    if directory.exists():
        raise LlmDitError(f"{directory} already exists; give a new directory")
    from llm_dit.files import probe_directory

    # The checkpoint is built next to its destination and renamed into place: that folder must take files.
    probe_directory(directory.parent, f"cannot write {directory}")
    from llm_dit.models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(directory, seed=seed)
    wrote(f"tiny Z-Image checkpoint to {path}")
