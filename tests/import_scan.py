"""The llm_dit imports of a source file, read from its syntax tree (test_architecture.py,
test_metrics_stored_defaults.py)."""

from __future__ import annotations

import ast
from pathlib import Path


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every llm_dit import in a file, at module level or inside functions.

    ``from llm_dit.models import checkpoint`` counts as ``llm_dit.models.checkpoint`` (it may import that
    module). A relative import fails: the package uses none, and a scan that skipped one would miss an edge."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}:{node.lineno}: relative import (use llm_dit.…)"
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "llm_dit" or name.startswith("llm_dit.")]


def top(dotted: str) -> str | None:
    """The top-level module or folder of llm_dit that ``dotted`` is in (None for llm_dit itself)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None
