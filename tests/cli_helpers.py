"""Helpers shared by the CLI-level tests: run the CLI in-process and forbid model loading."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from llm_dit import checkpoint
from llm_dit.cli import main

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
