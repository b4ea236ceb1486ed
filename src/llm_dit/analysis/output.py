"""Where the comparison tools may write: a figure or picture file the user names, never into the results."""

from __future__ import annotations

from pathlib import Path

from llm_dit.errors import LlmDitError
from llm_dit.files import ensure_writable


def check_output_path(path: Path, results_root: str | Path, overwrite: bool = False) -> None:
    """Before any drawing: ``path`` is a file path outside the results directory, in a directory that exists or
    can be made, and new unless ``overwrite`` (nothing already written is replaced by accident)."""
    root = Path(results_root).resolve()
    resolved = path.resolve()
    if resolved == root or root in resolved.parents:
        raise LlmDitError(
            f"output {path} is inside the results directory {results_root}; the comparison tools never write "
            "there, choose a path outside it"
        )
    if path.is_dir():
        raise LlmDitError(f"output {path} is a directory; give a file path inside it, e.g. {path / path.name}.png")
    ensure_writable(path, overwrite)
