"""Reading a metric network's weights file (a torch state dict) with one-line errors: the LPIPS backbone and the FID
Inception share it."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llm_dit.errors import LlmDitError


def load_torch_file(path: Path) -> Any:
    """``torch.load`` of a weights file, tensors only (``weights_only``), on the CPU; memory-mapped when the file is in
    torch's zip format (torch >= 1.6 saves), read whole otherwise (legacy pickles cannot be mapped). Raises what
    torch raises."""
    return torch.load(path, weights_only=True, map_location="cpu", mmap=zipfile.is_zipfile(path))


def read_state_dict(path: Path, metric: str, noun: str, fix: str) -> Mapping[str, Any]:
    """The state dict in ``path``; errors read "<metric>: cannot read <noun> <path> (why); <fix>" (e.g. metric
    "lpips", noun "backbone weights file"), read by :func:`load_torch_file`."""
    try:
        state = load_torch_file(path)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmDitError(f"{metric}: cannot read {noun} {path} ({first}); {fix}") from exc
    if not isinstance(state, Mapping):
        raise LlmDitError(f"{metric}: {noun} {path} holds no state dict; {fix}")
    return state
