"""Reference statistics: per-dimension mean and std of Qwen3-4B hidden states over a set of prompts, per layer.

What outlier masking and normalisation of other sources (Qwen3-VL, Qwen3-Embedding) compare with
(embeddings.mask_outliers, embeddings.normalize). Stats are kept per layer: stats of one layer applied to another
were one of the seed project's defects. Computed with one encoder forward for all layers, accumulated in float64
(population stds: ``correction=0``), stored as float32, and cached on disk under
``cache_root() / "reference-stats"``, one safetensors file per (encoder fingerprint, layer, template key, texts).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_dit.conditioning.embeddings import check_features
from llm_dit.errors import LlmDitError
from llm_dit.files import write_atomic
from llm_dit.models.cache import cache_root
from llm_dit.models.checkpoint import safetensors_problem

__all__ = [
    "TEMPLATE_FIELDS",
    "ReferenceStats",
    "compute_reference_stats",
    "load_or_compute",
    "load_reference_stats",
    "reference_stats_path",
    "reference_texts",
    "save_reference_stats",
    "template_key",
    "template_overrides",
]

# Bumped when the statistics or the file layout change: old cache files then miss instead of being misread.
FORMAT_VERSION = "1"
CACHE_FOLDER = "reference-stats"

EncodeLayers = Callable[[list[str], list[int]], list[dict[int, Tensor]]]


@dataclass(frozen=True)
class ReferenceStats:
    """Per-dimension statistics of one layer's hidden states over every real token row of ``prompt_count`` prompts."""

    mean: Tensor  # [D] float32
    std: Tensor  # [D] float32, population std
    layer: int
    token_count: int
    prompt_count: int
    encoder_fingerprint: str
    template_key: str

    @property
    def global_std(self) -> float:
        """Population std over all token_count * D values: ``sqrt(mean_d(std_d^2 + mean_d^2) - mean_d(mean_d)^2)``
        (every dimension has the same rows, so the per-dimension moments give it exactly; float64)."""
        mean, std = self.mean.double(), self.std.double()
        second = float((std * std + mean * mean).mean())
        first = float(mean.mean())
        return math.sqrt(max(second - first * first, 0.0))

    def top_outliers(self, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` dimensions of largest std (the massive-activation dims), std descending, ties lower dim first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise LlmDitError(f"k must be a non-negative integer, got {k!r}")
        ranked = sorted(enumerate(self.std.double().tolist()), key=lambda item: (-item[1], item[0]))
        return ranked[:k]


# The encoder settings that shape the reference texts' rows (not the layer choice): the statistics' template.
TEMPLATE_FIELDS = ("system_prompt", "think_block", "max_text_tokens", "long_prompt_mode", "padding")


def template_overrides(settings: Any) -> dict[str, Any]:
    """The :data:`TEMPLATE_FIELDS` of encoder settings, as per-call overrides of ``encode_layers``."""
    return {name: getattr(settings, name) for name in TEMPLATE_FIELDS}


def template_key(settings: Any) -> str:
    """The cache key of the statistics' template under encoder settings (:data:`TEMPLATE_FIELDS`)."""
    return json.dumps(template_overrides(settings), sort_keys=True)


def reference_texts() -> list[str]:
    """The packaged prompt library's texts (llm_dit/data/prompts.json), sorted by prompt id."""
    ref = resources.files("llm_dit") / "data" / "prompts.json"
    try:
        library = json.loads(ref.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:  # pragma: no cover - shipped as package data
        raise LlmDitError("prompts.json is missing from the installation; reinstall llm-dit") from exc
    return [library[pid]["text"] for pid in sorted(library)]


# ---------------------------------------------------------------------------------------------------------
# computing


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise LlmDitError("reference texts must be a non-empty list of prompts")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise LlmDitError("every reference text must be a non-empty string")
    return list(texts)


def _check_layers(layers: object) -> list[int]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise LlmDitError("layers must be a non-empty list of hidden-layer indices")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in layers):
        raise LlmDitError(f"layers must be integers, got {list(layers)!r}")
    return list(dict.fromkeys(layers))


def _check_key(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise LlmDitError(f"{name} must be a non-empty string, got {value!r}")
    return value


def compute_reference_stats(
    encode_layers: EncodeLayers,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    encoder_fingerprint: str = "",
    template_key: str = "",
) -> dict[int, ReferenceStats]:
    """Statistics of each of ``layers`` over all real token rows of all ``texts``, from ONE ``encode_layers`` call.

    ``encode_layers(texts, layers)`` is :meth:`ZImageTextEncoder.encode_layers`: per prompt ``{layer: [L, D]}``.
    Per prompt, mean and centred sum of squares in float64, combined exactly across prompts (Chan et al.'s
    pairwise update), so no concatenation of all rows is held in memory.
    """
    texts = _check_texts(texts)
    layers = _check_layers(layers)
    per_prompt = encode_layers(texts, layers)
    if not isinstance(per_prompt, Sequence) or len(per_prompt) != len(texts):
        got = len(per_prompt) if isinstance(per_prompt, Sequence) else type(per_prompt).__name__
        raise LlmDitError(f"encode_layers returned {got} results for {len(texts)} texts")
    out: dict[int, ReferenceStats] = {}
    for layer in layers:
        count, mean, m2 = 0, None, None
        for i, states in enumerate(per_prompt):
            if layer not in states:
                raise LlmDitError(f"encode_layers gave no layer {layer} for text {i}")
            x = check_features(states[layer], f"layer {layer} of text {i}").detach().to("cpu", torch.float64)
            n = x.shape[0]
            x_mean = x.mean(dim=0)
            x_m2 = ((x - x_mean) ** 2).sum(dim=0)
            if mean is None or m2 is None:
                count, mean, m2 = n, x_mean, x_m2
                continue
            if x.shape[1] != mean.shape[0]:
                raise LlmDitError(f"layer {layer}: text {i} has width {x.shape[1]}, text 0 has {mean.shape[0]}")
            total = count + n
            delta = x_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + x_m2 + delta * delta * (count * n / total)
            count = total
        assert mean is not None and m2 is not None
        out[layer] = ReferenceStats(
            mean=mean.to(torch.float32),
            std=(m2 / count).sqrt().to(torch.float32),
            layer=layer,
            token_count=count,
            prompt_count=len(texts),
            encoder_fingerprint=encoder_fingerprint,
            template_key=template_key,
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# disk cache


def _digest(encoder_fingerprint: str, layer: int, template_key: str, texts: Sequence[str]) -> str:
    key = {
        "format": FORMAT_VERSION,
        "encoder_fingerprint": encoder_fingerprint,
        "layer": layer,
        "template_key": template_key,
        "texts": list(texts),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def reference_stats_path(encoder_fingerprint: str, layer: int, template_key: str, texts: Sequence[str]) -> Path:
    """``cache_root() / "reference-stats" / <sha256>.safetensors``, the digest of (format version, encoder
    fingerprint, layer, template key, texts) as sorted-key JSON."""
    encoder_fingerprint = _check_key(encoder_fingerprint, "encoder_fingerprint")
    template_key = _check_key(template_key, "template_key")
    (layer,) = _check_layers([layer])
    texts = _check_texts(texts)
    name = _digest(encoder_fingerprint, layer, template_key, texts)
    return cache_root() / CACHE_FOLDER / f"{name}.safetensors"


def save_reference_stats(stats: ReferenceStats, path: str | Path) -> None:
    """Write ``stats`` (tensors ``mean``, ``std``; the other fields in the header's metadata), atomically."""
    from safetensors.torch import save

    metadata = {
        "format": FORMAT_VERSION,
        "layer": str(stats.layer),
        "token_count": str(stats.token_count),
        "prompt_count": str(stats.prompt_count),
        "encoder_fingerprint": stats.encoder_fingerprint,
        "template_key": stats.template_key,
    }
    tensors = {
        "mean": stats.mean.detach().to("cpu", torch.float32).contiguous(),
        "std": stats.std.detach().to("cpu", torch.float32).contiguous(),
    }
    write_atomic(path, save(tensors, metadata=metadata))


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read a file :func:`save_reference_stats` wrote; a missing, damaged or foreign file raises LlmDitError."""
    path = Path(path)
    if not path.is_file():
        raise LlmDitError(f"{path}: no such file")
    problem, names = safetensors_problem(path)
    if problem is not None:
        raise LlmDitError(f"{path}: not a readable .safetensors file ({problem})")
    if names != {"mean", "std"}:
        raise LlmDitError(f"{path}: not a reference-stats file (tensors {sorted(names)})")

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            mean, std = handle.get_tensor("mean"), handle.get_tensor("std")
    except SafetensorError as exc:
        raise LlmDitError(f"{path}: not a readable .safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise LlmDitError(f"{path}: reference-stats format {meta.get('format')!r}, expected {FORMAT_VERSION!r}")
    if mean.dim() != 1 or mean.shape != std.shape or mean.dtype != torch.float32 or std.dtype != torch.float32:
        raise LlmDitError(f"{path}: mean and std must be float32 [D] tensors of one shape")
    try:
        return ReferenceStats(
            mean=mean,
            std=std,
            layer=int(meta["layer"]),
            token_count=int(meta["token_count"]),
            prompt_count=int(meta["prompt_count"]),
            encoder_fingerprint=meta["encoder_fingerprint"],
            template_key=meta["template_key"],
        )
    except (KeyError, ValueError) as exc:
        raise LlmDitError(f"{path}: damaged reference-stats metadata ({exc!r})") from exc


def load_or_compute(
    encoder_fingerprint: str,
    template_key: str,
    texts: Sequence[str],
    layers: Sequence[int],
    encode_layers: EncodeLayers,
) -> dict[int, ReferenceStats]:
    """Statistics of each of ``layers``: from the disk cache where present, the rest computed with ONE
    ``encode_layers`` call for all missing layers and cached. A cache file that is damaged or does not match its
    key (fingerprint, layer, template key, prompt count) is recomputed and overwritten."""
    encoder_fingerprint = _check_key(encoder_fingerprint, "encoder_fingerprint")
    template_key = _check_key(template_key, "template_key")
    texts = _check_texts(texts)
    layers = _check_layers(layers)
    found: dict[int, ReferenceStats] = {}
    paths = {layer: reference_stats_path(encoder_fingerprint, layer, template_key, texts) for layer in layers}
    for layer, path in paths.items():
        if not path.is_file():
            continue
        try:
            stats = load_reference_stats(path)
        except LlmDitError:
            continue
        if (stats.layer, stats.encoder_fingerprint, stats.template_key, stats.prompt_count) == (
            layer,
            encoder_fingerprint,
            template_key,
            len(texts),
        ):
            found[layer] = stats
    missing = [layer for layer in layers if layer not in found]
    if missing:
        computed = compute_reference_stats(
            encode_layers, texts, missing, encoder_fingerprint=encoder_fingerprint, template_key=template_key
        )
        for layer, stats in computed.items():
            save_reference_stats(stats, paths[layer])
            found[layer] = stats
    return {layer: found[layer] for layer in layers}
