"""Shared fixtures: one tiny Z-Image checkpoint per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_helpers import forbid_model_loading
from llm_dit import checkpoint
from llm_dit.tiny import build_tiny_checkpoint

# The tiny models gain nothing from intra-op threads, and on a small shared machine torch's OpenMP threads
# spin against other processes: a 2-step 64x64 generation measured 6 s with 2 threads under load versus
# 0.08 s with 1. An explicit OMP_NUM_THREADS still wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny checkpoint (seed 0, diffusers layout), built once per session in a temp dir.

    Treat it as read-only: tests that need to damage a checkpoint work on a copy.
    """
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-checkpoint", seed=0)


@pytest.fixture(scope="module")
def cached_tokenizer() -> Iterator[None]:
    """Load each checkpoint's tokenizer once per module (~2 s each otherwise); everything else loads for real.

    For CLI-level tests that start many commands in one process: use with
    ``pytestmark = pytest.mark.usefixtures("cached_tokenizer")``.
    """
    real = checkpoint.load_tokenizer
    cache: dict[str, Any] = {}

    def load(path: str | Path) -> Any:
        key = str(Path(path).resolve())
        if key not in cache:
            cache[key] = real(path)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "load_tokenizer", load)
        yield


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model's weights fails the test."""
    forbid_model_loading(monkeypatch)
