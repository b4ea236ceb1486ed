"""One run's caption features from its conditioning settings: source features, masking, normalisation, mixing, length.

The order, for a run whose ``conditioning`` is ``vl`` or ``embedding`` (docs/conditioning.md gives each formula):

1. source rows ``S``: the chosen layer and token mode of one VL pass (or of one pass per image, summed with
   ``vl_image_weights``; or ``intra_blend`` of one pass's image and text rows), or the embedding model's layer;
2. ``outlier_mask`` on ``S`` (VL: its image rows only, as the seeds mask them; embedding: every row), with the
   ratios to Qwen3-4B's per-dimension std at the same layer index;
3. ``vl_normalize`` of ``S`` to Qwen3-4B's statistics at the same layer index;
4. the mix with the text features ``T``: ``S`` alone at ``vl_alpha`` 1 (the text is not encoded), ``T`` bit for bit at
   0, else ``mix(T, S, alpha, vl_blend)``; a style delta is ``T + alpha (S_style - S_neutral)``;
5. the caption cap: a longer result is shortened with ``long_prompt_mode`` (``none``: an error);
6. ``fill_mode`` to ``target_length`` (text runs too).

Pure functions over tensors the pipeline has already computed: no model here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from llm_dit.conditioning.embeddings import (
    apply_fill_mode,
    compress,
    intra_blend,
    mask_outliers,
    mix,
    normalize,
    style_delta,
    weighted_sum,
)
from llm_dit.config import ConditioningSettings, conditioning_params
from llm_dit.errors import LlmDitError

__all__ = ["ComposedConditioning", "SourceRows", "compose"]


@dataclass
class SourceRows:
    """Rows of one source pass at one layer and token mode, and which of them are image rows (VL)."""

    rows: Tensor  # [L, D]
    image_rows: Tensor | None = None  # bool [L]; None: no image rows (text-only source)
    facts: dict[str, Any] = field(default_factory=dict)  # token counts, spans, formatted text: for the record


@dataclass
class ComposedConditioning:
    """The caption features of one run and everything the record needs to say how they were made."""

    embeddings: Tensor
    record: dict[str, Any]
    text: Any = None  # the text encoder's EncodedPrompt when text features were mixed in (set by the pipeline)
    # No chat-template rows are known to be kept at the ends (statistics then treat every row as content).
    prefix_len: int = 0
    suffix_len: int = 0


ReferenceLookup = Callable[[int], Any]  # layer -> ReferenceStats (mean, std, global_std)


def _to_source(x: Tensor, like: Tensor | None) -> Tensor:
    return x if like is None else x.to(device=like.device, dtype=like.dtype)


def compose(
    settings: ConditioningSettings,
    *,
    text: Tensor | None,
    passes: Mapping[str, Sequence[SourceRows]],
    source_layer: int | None,
    references: ReferenceLookup | None,
    max_rows: int,
    long_prompt_mode: str,
) -> ComposedConditioning:
    """Caption features ``[L, D]`` of one run.

    ``text``: the Qwen3-4B features (None when not needed: a source at alpha 1). ``passes``: ``"main"`` (the VL pass
    of all images, one pass per image with weights, or the embedding pass), or ``"style"`` and ``"neutral"`` for a
    style delta. ``references(layer)``: Qwen3-4B's statistics at a layer (needed only by masking and normalisation).
    ``max_rows``: the caption cap.
    """
    record: dict[str, Any] = {"conditioning_settings": conditioning_params(settings)}
    if settings.conditioning == "text":
        if text is None:
            raise LlmDitError("text conditioning needs the text features")
        out = text
    else:
        alpha = settings.source_alpha
        stats = None
        if settings.needs_reference_stats:
            if references is None or source_layer is None:
                raise LlmDitError("masking and normalisation need Qwen3-4B's reference statistics")
            stats = references(source_layer)
            record["reference_stats"] = {
                "layer": source_layer,
                "token_count": int(stats.token_count),
                "prompt_count": int(stats.prompt_count),
                "global_std": float(stats.global_std),
            }

        def prepared(key: str) -> Tensor:
            rows = _source_rows(settings, passes[key], record, key)
            mask_rows = rows.image_rows if settings.conditioning == "vl" else None
            x = rows.rows
            if settings.outlier_mask != "none":
                assert stats is not None
                ref_std = _to_source(stats.std, x)
                x, report = mask_outliers(x, ref_std, settings.outlier_mask, settings.outlier_threshold, rows=mask_rows)
                record.setdefault("outliers", {})[key] = report.to_record() | {
                    "rows": "image rows" if mask_rows is not None else "all rows"
                }
            if settings.vl_normalize != "none":
                assert stats is not None
                target = settings.vl_target_std if settings.vl_target_std is not None else float(stats.global_std)
                x = normalize(
                    x,
                    settings.vl_normalize,
                    ref_mean=_to_source(stats.mean, x),
                    ref_std=_to_source(stats.std, x),
                    target_std=target,
                    hybrid_weight=settings.vl_hybrid_weight,
                )
                if settings.vl_normalize in ("global", "hybrid"):
                    record["normalize_target_std"] = target
            return x

        if settings.style_image is not None:
            if text is None:
                raise LlmDitError("a style delta is added to the text features: they are missing")
            style, neutral = prepared("style"), prepared("neutral")
            like = {"device": text.device, "dtype": text.dtype}
            out = style_delta(text, style.to(**like), neutral.to(**like), alpha)
        else:
            source = prepared("main")
            if alpha >= 1.0:
                out = source
            else:
                if text is None:
                    raise LlmDitError("a mix with vl_alpha < 1 needs the text features: they are missing")
                out = mix(
                    text,
                    source.to(device=text.device, dtype=text.dtype),
                    alpha,
                    settings.vl_blend,
                    curve=settings.vl_blend_curve,
                )
    record["length_before_cap"] = int(out.shape[0])
    if out.shape[0] > max_rows:
        out = compress(out, max_rows, long_prompt_mode)
        record["compressed_to_cap"] = {"cap": max_rows, "long_prompt_mode": long_prompt_mode}
    if settings.fill_mode is not None:
        assert settings.target_length is not None
        if settings.target_length > max_rows:
            raise LlmDitError(
                f"target_length {settings.target_length} is above the caption cap of {max_rows}; "
                "lower target_length or raise max_text_tokens"
            )
        out = apply_fill_mode(out, settings.target_length, settings.fill_mode)
    record["embedding_length"] = int(out.shape[0])
    return ComposedConditioning(out, record)


def _source_rows(
    settings: ConditioningSettings, passes: Sequence[SourceRows], record: dict[str, Any], key: str
) -> SourceRows:
    """The source rows of one role: one pass, a weighted sum of passes (multi-reference) or an intra-VL blend."""
    record.setdefault("source_passes", {})[key] = [p.facts for p in passes]
    if settings.vl_image_weights is not None and key == "main":
        rows = weighted_sum([p.rows for p in passes], settings.vl_image_weights)
        return SourceRows(rows, None)  # resampled sums: rows no longer map to image tokens
    if len(passes) != 1:
        raise LlmDitError(f"{key}: expected one source pass, got {len(passes)}")
    one = passes[0]
    if settings.intra_vl_ratio is not None and key == "main":
        if one.image_rows is None:
            raise LlmDitError("intra_vl_ratio needs a VL pass with image rows")
        image = one.rows[one.image_rows]
        text_rows = one.rows[~one.image_rows]
        if image.shape[0] == 0 or text_rows.shape[0] == 0:
            raise LlmDitError("intra_vl_ratio needs both image and text rows in the VL pass")
        return SourceRows(intra_blend(image, text_rows, settings.intra_vl_ratio), None)
    return one


def gray_like(width: int, height: int) -> Any:
    """The default neutral image of a style delta: mid-gray (128) RGB of the style image's size."""
    from PIL import Image

    return Image.new("RGB", (width, height), (128, 128, 128))
