"""The ``llm-dit tiny-model`` command: write a tiny random checkpoint that tests and dry runs use (Z-Image, or the
tiny twins of the other conditioning sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_dit.cli.terminal import wrote
from llm_dit.errors import LlmDitError


def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint (must not exist).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    kind: Annotated[
        str, typer.Option("--kind", help="zimage (diffusers layout), vl (Qwen3-VL) or embedding (Qwen3-Embedding).")
    ] = "zimage",
) -> None:
    """Write a tiny, architecture-faithful random checkpoint: Z-Image in diffusers layout, or the tiny Qwen3-VL or
    Qwen3-Embedding twin in its official layout (usable as [default.vl] / [default.embedding] model_path)."""
    kinds = ("zimage", "vl", "embedding")
    if kind not in kinds:
        raise LlmDitError(f"--kind {kind!r} is not valid; use one of: {', '.join(kinds)}")
    if directory.exists():
        raise LlmDitError(f"{directory} already exists; give a new directory")
    from llm_dit.files import probe_directory

    # The checkpoint is built next to its destination and renamed into place: that folder must take files.
    probe_directory(directory.parent, f"cannot write {directory}")
    if kind == "vl":
        from llm_dit.models.vl import build_tiny_vl

        wrote(f"tiny Qwen3-VL checkpoint to {build_tiny_vl(directory, seed=seed)}")
        return
    if kind == "embedding":
        from llm_dit.models.embedding_model import build_tiny_embedding

        wrote(f"tiny Qwen3-Embedding checkpoint to {build_tiny_embedding(directory, seed=seed)}")
        return
    from llm_dit.models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(directory, seed=seed)
    wrote(f"tiny Z-Image checkpoint to {path}")
