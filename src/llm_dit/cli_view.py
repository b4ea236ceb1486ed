"""The ``llm-dit view`` command (registered on the main app by ``llm_dit.cli``). Imports stay light: heavy modules
are imported inside the command."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
