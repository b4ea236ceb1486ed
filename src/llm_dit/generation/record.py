"""The record of an image: everything that affected it, stored with it (PNG text chunk) and in results."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
from datetime import UTC, datetime
from typing import Any

import torch

PACKAGES = ("llm-dit", "torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change an image, plus Python's (looked up once per process)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """sha256 (16 hex chars) of a tensor's dtype, shape and bytes: identifies caller-supplied embeddings."""
    t = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parameters_line(record: dict[str, Any]) -> str:
    """An A1111-style ``parameters`` summary (prompt, negative prompt, then ``Key: value`` pairs)."""
    layer = record.get("layer_weights") or record.get("hidden_layer")
    if isinstance(layer, dict):
        layer = ",".join(f"{k}:{v}" for k, v in layer.items())
    pairs = {
        "Steps": record["steps"],
        "Sampler": "Euler (flow matching)",
        "Shift": record["shift"] if record.get("shift") is not None else "explicit sigmas",
        "CFG scale": record["guidance_scale"],
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        "Model": record.get("model_path"),
        "Model hash": record.get("model_fingerprint"),
        "Hidden layer": layer,
        "Think block": record.get("think_block"),
        "System prompt": record.get("system_prompt") or "none",
        "Refiner": record.get("refiner"),
        "Long prompt mode": record.get("long_prompt_mode"),
        "Version": f"llm-dit {record.get('versions', {}).get('llm-dit', '?')}",
    }
    body = ", ".join(f"{k}: {v}" for k, v in pairs.items())
    prompt = record.get("prompt") or "<precomputed embeddings>"
    negative = record.get("negative_prompt") or ""
    return f"{prompt}\nNegative prompt: {negative}\n{body}"
