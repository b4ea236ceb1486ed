"""Reading a metric network's weights file (a torch state dict) and taking its tensors, with one-line errors: the
LPIPS backbone, the FID Inception and HPSv2.1 share it."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Collection, Mapping
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


def matching_tensors(
    state: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    *,
    path: Path,
    metric: str,
    noun: str,
    needs: str,
    fix: str,
    prefix: str = "",
    ignored: Collection[str] = (),
    default: Callable[[str], torch.Tensor | None] = lambda name: None,
) -> dict[str, torch.Tensor]:
    """``load_state_dict(strict=True)``'s checks, each failure one line naming the key: for every ``name`` of
    ``expected`` (a module's state dict), the file's ``prefix + name`` (else ``default(name)``) with the same shape,
    copied in the expected dtype (nothing stays mapped to the file); any other key under ``prefix`` except the
    ``ignored`` ones means another architecture, and is refused rather than ignored."""
    loaded: dict[str, torch.Tensor] = {}
    for name, param in expected.items():
        key = prefix + name
        value = state.get(key)
        if value is None:
            value = default(name)
        if not isinstance(value, torch.Tensor):
            raise LlmDitError(f"{metric}: {noun} {path} has no tensor {key}; {fix}")
        if value.shape != param.shape:
            raise LlmDitError(
                f"{metric}: {key} in {path} has shape {tuple(value.shape)} but {needs} needs {tuple(param.shape)}; "
                f"{fix}"
            )
        loaded[name] = value.to(param.dtype, copy=True)
    extra = sorted(
        key
        for key in state
        if isinstance(key, str) and key.startswith(prefix) and key[len(prefix) :] not in expected
        and key not in ignored
    )  # fmt: skip
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise LlmDitError(f"{metric}: {noun} {path} has unexpected {extra[0]}{more}; {fix}")
    return loaded
