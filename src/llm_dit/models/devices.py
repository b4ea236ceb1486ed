"""Where and in which precision models run: device and dtype names, and quiet Hugging Face loading.

Shared by every layer that loads a model (the text encoder, the DiT and VAE, metric models), so a device or
dtype name means the same everywhere. torch is imported by the functions that return torch objects
(:func:`resolve_device`, :func:`resolve_dtype`); the names planning needs (:func:`device_type`, :func:`dtype_key`,
:func:`numerics_label`, which enter run ids) are answered without torch wherever the answer is known without it:
always for cpu, and for auto and cuda when the installed torch is a build without CUDA or ROCm (then
``torch.cuda.is_available()`` is False whatever the machine has; :func:`cuda_available`). With a CUDA or ROCm
build they ask torch (importing it, not transformers or diffusers): no cheaper answer is exactly torch's.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    import torch

__all__ = [
    "cuda_available",
    "device_type",
    "dtype_key",
    "module_device",
    "numerics_label",
    "quiet_hf",
    "resolve_device",
    "resolve_dtype",
]

_LIGHT_DEVICE = re.compile(r"^(cpu|cuda)(?::\d+)?$")

# Where each device setting is set: (CLI flag, config section, key); metrics.device has no flag.
_DEVICE_SETTINGS: dict[str, tuple[str | None, str, str]] = {
    "encoder.device": ("--encoder-device", "encoder", "device"),
    "pipeline.device": ("--dit-device", "pipeline", "device"),
    "pipeline.vae_device": ("--vae-device", "pipeline", "vae_device"),
    "metrics.device": (None, "metrics", "device"),
}


def _cpu_fix(setting: str | None) -> str:
    """How to ask for the CPU instead: the flag and config key of ``setting``, or all of them."""
    if setting in _DEVICE_SETTINGS:
        flag, section, key = _DEVICE_SETTINGS[setting]
        config = f'{key} = "cpu" in the config\'s [PROFILE.{section}]'
        return f"use {flag} cpu (or {config})" if flag else f"set {config}"
    return (
        'use --dit-device cpu, --encoder-device cpu and --vae-device cpu (or device = "cpu" in the config\'s '
        "[PROFILE.pipeline], [PROFILE.encoder] and [PROFILE.metrics])"
    )


def _no_cuda(device: str, setting: str | None) -> LlmDitError:
    return LlmDitError(f"device {device} requested but CUDA is not available; {_cpu_fix(setting)}")


@functools.cache
def _torch_gpu_build() -> bool:
    """Whether the installed torch was built with CUDA or ROCm, read from ``torch/version.py`` without importing
    torch (its ``cuda`` and ``hip`` constants). True when that cannot be read: then torch is asked."""
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return True
        folder = Path(next(iter(spec.submodule_search_locations)))
        tree = ast.parse((folder / "version.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, ImportError):
        return True
    values: dict[str, ast.expr | None] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            values[node.target.id] = node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    if "cuda" not in values or "hip" not in values:
        return True
    return not all(isinstance(values[k], ast.Constant) and values[k].value is None for k in ("cuda", "hip"))  # type: ignore[union-attr]


def cuda_available() -> bool:
    """``torch.cuda.is_available()``; without importing torch when the installed build has neither CUDA nor ROCm.

    Exact: such a build has no CUDA runtime bindings (``torch.cuda._is_compiled()`` is False), so torch itself
    answers False without looking at the machine.
    """
    if "torch" not in sys.modules and not _torch_gpu_build():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(name: str | torch.device | None, setting: str | None = None) -> torch.device:
    """Device by name: "auto"/None -> cuda if available else cpu; others are checked to exist.

    ``setting`` (e.g. "pipeline.device") names where the device was chosen, so an error names its flag.
    """
    import torch

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
            raise _no_cuda(str(device), setting)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LlmDitError(f"device {device} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def device_type(name: str | None, setting: str | None = None) -> str:
    """``resolve_device(name).type`` with the same checks, importing torch only where the answer needs it.

    cpu never does; auto and cuda do only with a CUDA or ROCm build of torch (see :func:`cuda_available`).
    """
    text = "auto" if name is None else name.strip().lower()
    if text == "auto":
        return "cuda" if cuda_available() else "cpu"
    light = _LIGHT_DEVICE.match(text)
    if light is None or (light.group(1) == "cuda" and cuda_available()):  # other names, GPU indices: torch's answer
        return resolve_device(name, setting).type
    if light.group(1) == "cuda":
        raise _no_cuda(text, setting)
    return "cpu"


_DTYPE_KEYS: dict[str, str] = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
}
_FP16_NAMES = ("fp16", "float16", "half")


def dtype_key(name: str | None, device: str, *, shown: object = None) -> str:
    """The torch dtype name ("bfloat16" or "float32") of a dtype name on a device type, without torch.

    "auto"/None -> bfloat16 on cuda, float32 elsewhere; bf16/bfloat16/fp32/float32. fp16 is refused: Z-Image's
    activations overflow float16 (NaN latents, black images). ``shown``: what messages call the name.
    """
    shown = name if shown is None else shown
    key = "auto" if name is None else name.strip().lower()
    if key == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    if key in _FP16_NAMES:
        raise LlmDitError(
            f"dtype {shown} is not supported: Z-Image overflows in float16 (NaN latents, black images); "
            "use bfloat16 (bf16)"
        )
    if key not in _DTYPE_KEYS:
        raise LlmDitError(f"unknown dtype {shown!r}; valid: auto, {', '.join(_DTYPE_KEYS)}")
    return _DTYPE_KEYS[key]


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """Dtype by name (:func:`dtype_key`) as a torch dtype; a torch dtype is checked the same way."""
    import torch

    shown: object = name
    if isinstance(name, torch.dtype):
        name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(name, str(name))
    key = dtype_key(name, torch.device(device).type, shown=shown)
    return getattr(torch, key)


def numerics_label(device: str | None, dtype: str | None, setting: str | None = None) -> str:
    """``"<device type>/torch.<dtype>"``: what ``f"{resolve_device(d).type}/{resolve_dtype(t, ...)}"`` gives
    (run ids hash it), through :func:`device_type` and :func:`dtype_key`."""
    kind = device_type(device, setting)
    return f"{kind}/torch.{dtype_key(dtype, kind)}"


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
