"""Embedding statistics: how an encoder setting (think block, hidden layer, system prompt...) changes the
caption features the DiT reads.

Two layers:

- Pure tensor functions on ``[L, D]`` sequences (no model): :func:`token_cosine`, :func:`pooled_cosine`,
  :func:`dim_stats`, :func:`outlier_dims`. They compute in float64 on the CPU whatever the input dtype/device.
- A comparison API: :func:`parse_condition` turns ``"hidden_layer=-6,think_block=empty"`` into encoder
  overrides (validated before any model loads), and :func:`compare_embeddings` encodes prompts under several
  conditions and measures each against the first condition (the reference), as an :class:`EmbedStatsReport`.

Alignment caveat: without a system prompt the chat template puts the user's content first and appends extra
tokens (a think block) at the end, so position-wise comparisons align on the shared prefix. Under causal
attention that prefix is computed from identical tokens, so a think block leaves ``token_cosine`` at ~1:
its effect is the *extra* tokens, visible in ``tokens`` and ``pooled_cosine``. A system prompt shifts the
content instead; ``content_cosine`` aligns the user's content tokens for that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from llm_dit.conditioning.conditions import Condition, parse_condition
from llm_dit.conditioning.conditions import check_overrides as _check_overrides
from llm_dit.conditioning.embeddings import check_features
from llm_dit.errors import LlmDitError
from llm_dit.files import json_safe, write_csv, write_json

__all__ = [
    "ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "Condition",
    "DimStats",
    "EmbedStatsReport",
    "Outliers",
    "aligned_token_cosine",
    "compare_embeddings",
    "content_rows",
    "dim_correlation",
    "dim_stats",
    "outlier_dims",
    "parse_condition",
    "pooled_cosine",
    "token_cosine",
]

# Floor for a reference std in outlier ratios: a dimension that is constant in the reference would divide by 0.
DEFAULT_STD_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------
# Pure tensor functions


def _seq(x: object, name: str) -> Tensor:
    """A non-empty floating-point ``[L, D]`` tensor as float64 on the CPU (bf16 has no float64 path on GPU)."""
    return check_features(x, name).detach().to(device="cpu", dtype=torch.float64)


def _pair(a: object, b: object) -> tuple[Tensor, Tensor]:
    x, y = _seq(a, "a"), _seq(b, "b")
    if x.shape[1] != y.shape[1]:
        raise LlmDitError(f"embedding widths differ: a has D={x.shape[1]}, b has D={y.shape[1]}")
    return x, y


def _cosine_rows(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise cosine; a zero row gives 0.

    Written as dot / sqrt(|x|^2 |y|^2) rather than with norms so identical rows give exactly 1.0 (the reference
    row of a report must read 1.0, not 0.9999999999999998).
    """
    dot = (x * y).sum(dim=-1)
    denom = ((x * x).sum(dim=-1) * (y * y).sum(dim=-1)).sqrt()
    cos = torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dot))
    return cos.clamp(-1.0, 1.0)


def aligned_token_cosine(a: Tensor, b: Tensor) -> tuple[float, int]:
    """Mean cosine of aligned token rows, and how many rows were aligned.

    Sequences of different length are aligned on their first ``min(La, Lb)`` tokens: the chat template puts
    the user's content first and extra tokens (a think block) at the end. Inputs ``[L, D]``, any float dtype.
    """
    x, y = _pair(a, b)
    n = min(x.shape[0], y.shape[0])
    return float(_cosine_rows(x[:n], y[:n]).mean()), n


def token_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over aligned token positions of cosine(a[i], b[i]); see :func:`aligned_token_cosine`."""
    return aligned_token_cosine(a, b)[0]


def pooled_cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of the mean-pooled vectors (each sequence pooled over all of its own tokens)."""
    x, y = _pair(a, b)
    return float(_cosine_rows(x.mean(dim=0, keepdim=True), y.mean(dim=0, keepdim=True))[0])


@dataclass(frozen=True)
class DimStats:
    """Statistics of one ``[L, D]`` sequence. Stds are population stds (a one-token sequence has std 0)."""

    tokens: int
    dims: int
    mean: Tensor  # [D] float64: per-dimension mean over tokens
    std: Tensor  # [D] float64: per-dimension std over tokens
    token_norm_mean: float  # per-token L2 norms: mean / min / max
    token_norm_min: float
    token_norm_max: float
    value_mean: float  # over all L*D values
    value_std: float
    max_abs: float


def dim_stats(x: Tensor) -> DimStats:
    """Per-dimension mean/std over tokens, per-token L2 norm summary, overall mean/std and max |value|."""
    v = _seq(x, "x")
    norms = v.norm(dim=1)
    return DimStats(
        tokens=int(v.shape[0]),
        dims=int(v.shape[1]),
        mean=v.mean(dim=0),
        std=v.std(dim=0, correction=0),
        token_norm_mean=float(norms.mean()),
        token_norm_min=float(norms.min()),
        token_norm_max=float(norms.max()),
        value_mean=float(v.mean()),
        value_std=float(v.std(correction=0)),
        max_abs=float(v.abs().max()),
    )


def dim_correlation(a: Tensor, b: Tensor) -> float | None:
    """Pearson correlation of two per-dimension vectors ``[D]`` (e.g. per-dim means or stds of two conditions);
    None when either is constant (no correlation is defined). Identical vectors give exactly 1.0."""
    x, y = _std_vector(a, "a"), _std_vector(b, "b")
    if x.shape != y.shape:
        raise LlmDitError(f"widths differ: a has D={x.shape[0]}, b has D={y.shape[0]}")
    xc, yc = x - x.mean(), y - y.mean()
    if not bool(xc.any()) or not bool(yc.any()):
        return None
    return float(_cosine_rows(xc.unsqueeze(0), yc.unsqueeze(0))[0])


@dataclass(frozen=True)
class Outliers:
    """Result of :func:`outlier_dims`: ``(dim, ratio)`` pairs, ratios = std / reference std."""

    ratios: Tensor  # [D] float64
    dims: list[tuple[int, float]]  # every dim with ratio > threshold, ratio descending (ties: lower dim first)
    top: list[tuple[int, float]]  # the `top` highest ratios, over the threshold or not
    threshold: float

    @property
    def max_ratio(self) -> float:
        return float(self.ratios.max())


def outlier_dims(
    x_std: Tensor,
    ref_std: Tensor | float,
    threshold: float = 10.0,
    top: int = 5,
    *,
    eps: float = DEFAULT_STD_EPS,
) -> Outliers:
    """Dimensions whose std is more than ``threshold`` times the reference std.

    ``x_std`` is ``[D]``; ``ref_std`` is ``[D]`` (e.g. the reference condition's per-dim std) or a scalar
    (e.g. ``x_std.median()`` to find dimensions that stand out within one embedding). A reference std below
    ``eps`` is floored at ``eps``: a dimension constant in the reference (always so for a one-token reference)
    then gets a huge finite ratio instead of inf/NaN; read such ratios as "degenerate reference".
    """
    xs = _std_vector(x_std, "x_std")
    if isinstance(ref_std, Tensor) and ref_std.dim() > 0:
        rs = _std_vector(ref_std, "ref_std")
        if rs.shape != xs.shape:
            raise LlmDitError(f"std widths differ: x_std has D={xs.shape[0]}, ref_std has D={rs.shape[0]}")
    else:
        value = float(ref_std)
        if not math.isfinite(value):
            raise LlmDitError(f"ref_std must be finite, got {value}")
        rs = torch.full_like(xs, value)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise LlmDitError(f"top must be a non-negative integer, got {top!r}")
    if not math.isfinite(threshold) or threshold <= 0:
        raise LlmDitError(f"outlier threshold must be a positive number, got {threshold}")
    if not eps > 0:
        raise LlmDitError(f"eps must be positive, got {eps}")
    ratios = xs / rs.clamp_min(eps)
    # Sort in Python: (-ratio, dim) makes ties deterministic; D is a few thousand at most.
    ranked = sorted(enumerate(ratios.tolist()), key=lambda item: (-item[1], item[0]))
    return Outliers(
        ratios=ratios,
        dims=[(d, r) for d, r in ranked if r > threshold],
        top=ranked[:top],
        threshold=float(threshold),
    )


def _std_vector(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise LlmDitError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] == 0:
        raise LlmDitError(f"{name} must be a non-empty [D] vector, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise LlmDitError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.detach().to(device="cpu", dtype=torch.float64)


def content_rows(embeddings: Tensor, prefix_len: int, suffix_len: int) -> Tensor | None:
    """The rows of the user's content, between the template's prefix and suffix; None if there are none
    (an empty prompt).

    Holds for compressed prompts too (compression keeps prefix and suffix and shortens the content).
    """
    length = int(embeddings.shape[0])
    if prefix_len < 0 or suffix_len < 0:
        raise LlmDitError(f"prefix_len and suffix_len must be >= 0, got {prefix_len} and {suffix_len}")
    if prefix_len + suffix_len >= length:
        return None
    return embeddings[prefix_len : length - suffix_len]


# ---------------------------------------------------------------------------------------------------------
# Conditions: parse_condition and Condition live in conditioning.conditions (no torch), so embed-stats refuses a
# bad condition before importing this module.


# ---------------------------------------------------------------------------------------------------------
# Report

ROW_COLUMNS: tuple[str, ...] = (
    "prompt_index",
    "prompt",
    "condition",
    "tokens",  # embedding rows the DiT reads
    "aligned_tokens",  # rows compared by token_cosine: min(tokens, reference tokens)
    "token_cosine",
    "pooled_cosine",
    "content_tokens",  # rows of the user's content compared by content_cosine (0 for an empty prompt)
    "content_cosine",
    "mean_token_norm",
    "max_abs",
    "value_mean",
    "value_std",
    "std_ratio",  # value_std / the reference's value_std (all L*D values)
    "mean_correlation",  # Pearson correlation of the per-dim means with the reference's (None: a constant vector)
    "std_correlation",  # the same of the per-dim stds
    "max_std_ratio",  # max over dims of std / reference std
    "outlier_dims",  # how many dims have std ratio > outlier_threshold
    "top_outliers",  # "dim:ratio dim:ratio ..." of the highest-ratio outlier dims
)

SUMMARY_COLUMNS: tuple[str, ...] = (
    "condition",
    "prompts",
    "tokens",
    "aligned_tokens",
    "token_cosine",
    "pooled_cosine",
    "content_tokens",
    "content_cosine",
    "mean_token_norm",
    "max_abs",
    "value_mean",
    "value_std",
    "std_ratio",
    "mean_correlation",
    "std_correlation",
    "max_std_ratio",
    "outlier_dims",
    "top_outliers",  # outliers of the std ratios averaged over prompts
)

# Summary columns that are the mean of the row column of the same name.
_MEAN_COLUMNS = tuple(c for c in SUMMARY_COLUMNS if c not in ("condition", "prompts", "top_outliers"))


def _format_outliers(pairs: Sequence[tuple[int, float]]) -> str:
    return " ".join(f"{d}:{r:.1f}" for d, r in pairs)


@dataclass
class EmbedStatsReport:
    """Per prompt x condition statistics (``rows``) and per-condition means (``summary``).

    The first condition is the reference: its rows have cosines 1.0 and std ratios 1.0.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    conditions: list[Condition]
    prompts: list[str]
    outlier_threshold: float

    @property
    def reference(self) -> Condition:
        return self.conditions[0]

    def to_csv(self, path: str | Path, table: Literal["rows", "summary"] = "rows") -> Path:
        """Write ``rows`` (columns ROW_COLUMNS) or ``summary`` (SUMMARY_COLUMNS) as CSV, atomically; returns it."""
        if table not in ("rows", "summary"):
            raise LlmDitError(f"table must be 'rows' or 'summary', got {table!r}")
        columns, records = (ROW_COLUMNS, self.rows) if table == "rows" else (SUMMARY_COLUMNS, self.summary)
        path = Path(path)
        write_csv(path, columns, [[record[c] for c in columns] for record in records])
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.label,
            # A condition's conditioning parameters (another source, its images, ...) too, where it has any.
            "conditions": [
                {
                    "label": c.label,
                    "overrides": c.overrides,
                    **({"conditioning": c.conditioning} if c.conditioning else {}),
                }
                for c in self.conditions
            ],
            "prompts": self.prompts,
            "outlier_threshold": self.outlier_threshold,
            "columns": list(ROW_COLUMNS),
            "rows": self.rows,
            "summary_columns": list(SUMMARY_COLUMNS),
            "summary": self.summary,
        }

    def to_json(self, path: str | Path) -> Path:
        """Write the whole report (conditions, rows, summary) as JSON, atomically; returns the path."""
        path = Path(path)
        write_json(path, json_safe(self.to_dict()), default=str)  # NaN/inf already null: strict JSON
        return path


# ---------------------------------------------------------------------------------------------------------
# Comparison


def _encode_all(
    encoder: Any, prompts: list[str], conditions: Sequence[Condition], features: SourceFeatures | None
) -> list[list[Any]]:
    """``result[condition][prompt]`` EncodedPrompts, one encoder forward per group of conditions that differ
    only in the layer choice (``encode_variants``); conditions with conditioning parameters through ``features``."""
    from llm_dit.conditioning.text_encoder import layer_agnostic_key

    # Resolve and tokenize everything first: a bad layer or an over-cap prompt then fails before any forward.
    settings = [encoder.resolve(**c.overrides) for c in conditions]
    for c in conditions:
        encoder.tokenize(prompts, **c.overrides)  # memoised: encode_variants reuses these tokens
    groups: dict[str, list[int]] = {}
    out: list[list[Any]] = [[] for _ in conditions]
    for i, s in enumerate(settings):
        if conditions[i].conditioning:
            if features is None:
                raise LlmDitError(f"condition {conditions[i].label!r} needs a pipeline to compose its source features")
            out[i] = features(prompts, {**conditions[i].overrides, **conditions[i].conditioning})
        else:
            groups.setdefault(layer_agnostic_key(s), []).append(i)
    for members in groups.values():
        encoded = encoder.encode_variants(prompts, [settings[i] for i in members])
        for i, per_prompt in zip(members, encoded, strict=True):
            out[i] = per_prompt
    return out


SourceFeatures = Callable[[list[str], dict[str, Any]], list[Any]]  # (prompts, params) -> features with .embeddings


def _row_stats(
    encoded: Any, ref: Any, stats: DimStats, ref_stats: DimStats, threshold: float, top: int
) -> tuple[dict[str, Any], Tensor]:
    cos, aligned = aligned_token_cosine(encoded.embeddings, ref.embeddings)
    content = content_rows(encoded.embeddings, encoded.prefix_len, encoded.suffix_len)
    ref_content = content_rows(ref.embeddings, ref.prefix_len, ref.suffix_len)
    content_cos, content_aligned = (
        aligned_token_cosine(content, ref_content) if content is not None and ref_content is not None else (None, 0)
    )
    outliers = outlier_dims(stats.std, ref_stats.std, threshold, top)
    row = {
        "tokens": stats.tokens,
        "aligned_tokens": aligned,
        "token_cosine": cos,
        "pooled_cosine": pooled_cosine(encoded.embeddings, ref.embeddings),
        "content_tokens": content_aligned,
        "content_cosine": content_cos,
        "mean_token_norm": stats.token_norm_mean,
        "max_abs": stats.max_abs,
        "value_mean": stats.value_mean,
        "value_std": stats.value_std,
        "std_ratio": stats.value_std / ref_stats.value_std if ref_stats.value_std > 0 else None,
        "mean_correlation": dim_correlation(stats.mean, ref_stats.mean),
        "std_correlation": dim_correlation(stats.std, ref_stats.std),
        "max_std_ratio": outliers.max_ratio,
        "outlier_dims": len(outliers.dims),
        "top_outliers": _format_outliers(outliers.dims[:top]),
    }
    return row, outliers.ratios


def compare_embeddings(
    encoder: Any,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    outlier_threshold: float = 10.0,
    top_outliers: int = 5,
    features: SourceFeatures | None = None,
) -> EmbedStatsReport:
    """Encode ``prompts`` under each condition and compare every embedding with the first condition's.

    ``encoder`` is a :class:`llm_dit.conditioning.text_encoder.ZImageTextEncoder`; each condition's overrides apply
    on top of its settings. Conditions that differ only in ``hidden_layer`` / ``layer_weights`` share one forward
    per prompt batch. Everything is validated (keys, values, layer range, prompt lengths) before the model loads.
    ``features(prompts, params)``: the caption features of conditions with conditioning parameters (other sources,
    mixing, fill modes), e.g. from :meth:`LlmDitPipeline.caption_features`; their rows have no template
    prefix/suffix, so content rows are all rows.
    """
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompt_list:
        raise LlmDitError("compare_embeddings needs at least one prompt")
    for i, p in enumerate(prompt_list):
        if not isinstance(p, str):
            raise LlmDitError(f"prompt {i} must be a string, not {type(p).__name__}")
    conds = list(conditions)
    if not conds:
        raise LlmDitError("compare_embeddings needs at least one condition (the first is the reference)")
    seen: set[str] = set()
    for c in conds:
        if not isinstance(c, Condition):
            raise LlmDitError(f"conditions must be Condition objects (see parse_condition), got {type(c).__name__}")
        if c.label in seen:
            raise LlmDitError(f"condition label {c.label!r} is given twice; labels name the report's rows")
        seen.add(c.label)
        _check_overrides(c.overrides, f"condition {c.label!r}")
    # Validate report options before the (possibly slow) encode.
    outlier_dims(torch.ones(1), 1.0, outlier_threshold, top_outliers)

    encoded = _encode_all(encoder, prompt_list, conds, features)
    ref_stats = [dim_stats(e.embeddings) for e in encoded[0]]
    rows: list[dict[str, Any]] = []
    ratios: list[list[Tensor]] = [[] for _ in conds]
    for p, prompt in enumerate(prompt_list):
        ref = encoded[0][p]
        for c, cond in enumerate(conds):
            enc = encoded[c][p]
            stats = ref_stats[p] if c == 0 else dim_stats(enc.embeddings)
            values, r = _row_stats(enc, ref, stats, ref_stats[p], outlier_threshold, top_outliers)
            ratios[c].append(r)
            row = {"prompt_index": p, "prompt": prompt, "condition": cond.label, **values}
            rows.append({k: row[k] for k in ROW_COLUMNS})

    summary: list[dict[str, Any]] = []
    for c, cond in enumerate(conds):
        own = [row for row in rows if row["condition"] == cond.label]
        entry: dict[str, Any] = {"condition": cond.label, "prompts": len(own)}
        for col in _MEAN_COLUMNS:
            # content_cosine is None for an empty prompt (a correlation for a constant vector): average over the
            # prompts that have a value.
            values = [float(row[col]) for row in own if row[col] is not None]
            entry[col] = sum(values) / len(values) if values else None
        mean_ratio = torch.stack(ratios[c]).mean(dim=0)
        agg = outlier_dims(mean_ratio, 1.0, outlier_threshold, top_outliers)
        entry["top_outliers"] = _format_outliers(agg.dims[:top_outliers])
        summary.append({k: entry[k] for k in SUMMARY_COLUMNS})

    return EmbedStatsReport(
        rows=rows,
        summary=summary,
        conditions=conds,
        prompts=prompt_list,
        outlier_threshold=float(outlier_threshold),
    )
