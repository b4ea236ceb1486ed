"""Where and in which precision models run: device and dtype names, and quiet Hugging Face loading.

Shared by every layer that loads a model (the text encoder, the DiT and VAE, metric models), so a device or
dtype name means the same everywhere. Imports torch; the diffusers/transformers imports stay inside quiet_hf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from llm_dit.errors import LlmDitError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """Device by name: "auto"/None -> cuda if available else cpu; others are checked to exist."""
    if isinstance(name, torch.device):
        device = name
    elif name is None or name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name.strip().lower())
        except (RuntimeError, ValueError) as exc:
            raise LlmDitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LlmDitError(f"device {device} requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LlmDitError(f"device {device} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
_FP16_NAMES = ("fp16", "float16", "half")


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """Dtype by name: "auto"/None -> bfloat16 on cuda, float32 elsewhere; bf16/bfloat16/fp32/float32.

    fp16 is refused: Z-Image's activations overflow float16 (NaN latents, black images).
    """
    if isinstance(name, torch.dtype):
        key = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(name, str(name))
    else:
        key = "auto" if name is None else name.strip().lower()
    if key == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if key in _FP16_NAMES:
        raise LlmDitError(
            f"dtype {name} is not supported: Z-Image overflows in float16 (NaN latents, black images); "
            "use bfloat16 (bf16)"
        )
    if key not in _DTYPES:
        raise LlmDitError(f"unknown dtype {name!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[key]


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence diffusers/transformers info logs and progress bars (restored afterwards)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        if saved[2]:
            dlog.enable_progress_bar()
        if saved[3]:
            tlog.enable_progress_bar()


def module_device(module: torch.nn.Module) -> str:
    """Where a module runs, as records state it: ``"<device type>/<dtype>"`` of its first parameter (cpu/float32)."""
    p = next(module.parameters())
    return f"{p.device.type}/{str(p.dtype).removeprefix('torch.')}"
