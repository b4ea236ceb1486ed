"""Checks that the environment holds exactly the locked versions of everything llm-dit[dev] needs.

Walks the requirement tree of the installed llm-dit (with its 'dev' extra) plus the packages the Makefile adds
(lpips, torch-fidelity), and fails, naming each package, when one is missing from constraints.txt (the lock is
stale: run 'make lock') or installed at another version (run 'make install'). Packages outside that tree are
ignored, so a machine with other packages installed (a CI image, a user's environment) still passes.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / "constraints.txt"
EXTRA_ROOTS = ("lpips", "torch-fidelity", "open-clip-torch")  # installed with --no-deps by 'make install'


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def requirement_tree(root: str, extras: set[str]) -> set[str]:
    """Canonical names of root and everything it requires (for the given extras), as installed."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if key in seen and not wanted:
            continue
        seen.add(key)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # reported as missing by the caller
        for text in requires:
            req = Requirement(text)
            env = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in env):
                todo.append((req.name, set(req.extras)))
    return seen


def main() -> int:
    pins = read_lock(LOCK)
    needed = requirement_tree("llm-dit", {"dev"}) | {canonicalize_name(n) for n in EXTRA_ROOTS}
    needed.discard("llm-dit")
    problems = []
    for name in sorted(needed):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}: not installed (run 'make install')")
            continue
        locked = pins.get(name)
        if locked is None:
            problems.append(f"{name} {installed}: not in {LOCK.name} (the lock is stale: run 'make lock')")
        elif installed.split("+", 1)[0] != locked:
            problems.append(f"{name}: installed {installed}, locked {locked} (run 'make install')")
    for line in problems:
        print(f"check_lock: {line}", file=sys.stderr)
    if not problems:
        print(f"check_lock: {len(needed)} packages at their locked versions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
