"""The package's folders are its data flow: imports only go down the layers (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from import_scan import imports as _imports
from import_scan import top as _top

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "llm_dit"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("constants", "errors", "files", "config"),
    ("models",),
    ("conditioning",),
    ("generation",),
    ("experiments",),
    ("metrics",),
    ("analysis",),
    ("viewer",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_top_level_name_has_a_layer() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert tops <= set(RANK), f"new top-level module or folder without a layer: {tops - set(RANK)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_go_up(path: Path) -> None:
    own = RANK[path.relative_to(PACKAGE).parts[0].removesuffix(".py")]
    upward = []
    for line, name in _imports(path):
        top = _top(name)
        if top in RANK and RANK[top] > own:
            upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {name} (layer {top} is above)")
    assert not upward, "\n".join(upward)


def _graph() -> dict[str, set[str]]:
    names = {_module_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        targets = set()
        for _, name in _imports(path):
            # "from llm_dit.x import y" names a module or an attribute of llm_dit.x: keep the longest module.
            while name not in names and "." in name:
                name = name.rpartition(".")[0]
            if name in names and name != _module_name(path):
                targets.add(name)
        graph[_module_name(path)] = targets
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in trail and nxt > start:  # each cycle once, from its smallest module
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, "\n".join(cycles)


def test_public_api_names_resolve() -> None:
    """Every name ``llm_dit`` exports lazily points at a module that still defines it (moves break this first)."""
    import importlib

    import llm_dit

    for name, module in llm_dit._EXPORTS.items():
        # The name exists in its module (what a move breaks), and llm_dit hands out that very object.
        assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"
        assert getattr(importlib.import_module(module), name) is getattr(llm_dit, name), name
