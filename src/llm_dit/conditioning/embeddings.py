"""Pure tensor operations on text-encoder hidden states (sequences of shape [L, D]).

No model, no I/O, no global state. Every function accepts fp32, bf16 and fp16 tensors on any
device, computes in fp32 where precision matters, returns the input dtype and device, and never
modifies or aliases its input (outputs are always fresh tensors).

- ``blend_layers``: weighted average of several hidden layers.
- ``compress`` / ``compress_sequence``: shorten over-long prompts (LONG_PROMPT_MODES).
- ``apply_fill_mode``: the caption-length study's fill modes (FILL_MODES).
- ``check_features``: the one check that a tensor is a ``[L, D]`` sequence of caption features.
- ``resample``, ``mix`` (VL_BLENDS), ``normalize`` (VL_NORMALIZATIONS), ``mask_outliers`` (OUTLIER_MASKS),
  ``style_delta``, ``intra_blend``, ``weighted_sum``, ``global_std``: the other conditioning sources' operations
  (text features ``t`` and source features ``v``, both ``[L, D]``, lengths may differ).

Standard deviations here are population stds (``correction=0``, as embedding_stats and reference_stats compute
them): a one-row sequence has std 0. The seed project used torch's default (``correction=1``); over D = 2560
values the two differ by a factor sqrt(D / (D - 1)) = 1 + 2e-4.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_dit.constants import (
    DEFAULT_OUTLIER_THRESHOLD,
    FILL_MODES,
    GRADUATED_CURVES,
    LONG_PROMPT_MODES,
    OUTLIER_MASKS,
    VL_BLENDS,
    VL_NORMALIZATIONS,
)
from llm_dit.errors import LlmDitError

__all__ = [
    "OutlierReport",
    "apply_fill_mode",
    "blend_layers",
    "check_features",
    "compress",
    "compress_sequence",
    "global_std",
    "intra_blend",
    "mask_outliers",
    "mix",
    "normalize",
    "resample",
    "style_delta",
    "weighted_sum",
]

# |sum of weights| below this is treated as zero: dividing by it would blow the blend up.
_MIN_WEIGHT_SUM = 1e-8


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_mode(mode: object, valid: tuple[str, ...], what: str) -> str:
    if not isinstance(mode, str) or mode not in valid:
        raise LlmDitError(f"unknown {what} {mode!r}; valid modes: {', '.join(valid)}")
    return mode


def _check_int(value: object, name: str, minimum: int) -> int:
    # bool is an int subclass; True as a length is always a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise LlmDitError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise LlmDitError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_features(x: object, name: str, *, width: int | None = None, max_rows: int | None = None) -> Tensor:
    """``x`` if it is a sequence of caption features: a floating-point ``[L, D]`` tensor, L >= 1 and D >= 1.

    ``width``: the D the DiT expects (its ``cap_feat_dim``); ``max_rows``: the most rows (tokens) it accepts.
    Every message names ``name``, what is wrong, and how to fix it. The one check of precomputed embeddings,
    of the pure operations here and of the embedding statistics.
    """
    if not isinstance(x, Tensor):
        raise LlmDitError(
            f"{name} must be a torch.Tensor of shape [L, D], got {type(x).__name__}; convert it with torch.as_tensor"
        )
    if x.dim() != 2:
        raise LlmDitError(
            f"{name} must have shape [L, D] (rank 2), got rank {x.dim()} {tuple(x.shape)}; "
            "give one sequence: a row per token, a column per feature"
        )
    if not x.is_floating_point():
        raise LlmDitError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")
    rows, columns = x.shape
    if rows == 0 or columns == 0:
        raise LlmDitError(
            f"{name} is empty: shape {tuple(x.shape)} has {rows} rows and {columns} columns; "
            "give at least one token (row) and one feature (column)"
        )
    if width is not None and columns != width:
        raise LlmDitError(
            f"{name} has width {columns}, the DiT expects {width}; use features of this checkpoint's text encoder"
        )
    if max_rows is not None and rows > max_rows:
        raise LlmDitError(
            f"{name} has {rows} rows, the DiT accepts 1..{max_rows}; shorten them (e.g. compress_sequence)"
        )
    return x


# ---------------------------------------------------------------------------------------------
# layer blending


def blend_layers(layers: Mapping[int, Tensor], weights: Mapping[int, float]) -> Tensor:
    """Weighted average ``sum(w_i * h_i) / sum(w_i)`` of hidden states from one encoder forward.

    ``layers`` maps hidden-layer index -> ``[L, D]`` tensor (all the same shape, dtype and device); only the
    layers named in ``weights`` are used. Negative weights are allowed if the sum is non-zero.
    """
    if not weights:
        raise LlmDitError("layer weights are empty; give at least one LAYER:WEIGHT")
    missing = [k for k in weights if k not in layers]
    if missing:
        raise LlmDitError(f"weights given for layer(s) {missing} that were not provided; available: {sorted(layers)}")
    ws: dict[int, float] = {}
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise LlmDitError(f"weight for layer {k} must be a number, got {w!r}")
        if not math.isfinite(w):
            raise LlmDitError(f"weight for layer {k} is not finite ({w})")
        ws[k] = float(w)
    total = math.fsum(ws.values())
    if abs(total) < _MIN_WEIGHT_SUM:
        raise LlmDitError(f"layer weights sum to zero; they are normalised by their sum (weights: {ws})")

    first_key = next(iter(ws))
    ref = check_features(layers[first_key], f"layer {first_key}")
    for k in ws:
        h = check_features(layers[k], f"layer {k}")
        if h.shape != ref.shape:
            raise LlmDitError(
                f"layer {k} has shape {tuple(h.shape)}, layer {first_key} has {tuple(ref.shape)}; "
                "blended layers must come from one forward"
            )
        if h.dtype != ref.dtype or h.device != ref.device:
            raise LlmDitError(f"layer {k} is {h.dtype} on {h.device}, layer {first_key} is {ref.dtype} on {ref.device}")

    # Accumulate in fp32: bf16 has 8 mantissa bits and would round every partial sum.
    acc = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
    for k, w in ws.items():
        acc.add_(layers[k].to(torch.float32), alpha=w / total)
    return acc.to(ref.dtype)


# ---------------------------------------------------------------------------------------------
# long-prompt compression


def _adaptive_pool(x: Tensor, target: int) -> Tensor:
    """fp32 [L, D] -> [target, D]: row i = mean of rows floor(i*L/T) .. ceil((i+1)*L/T)-1."""
    return F.adaptive_avg_pool1d(x.t().unsqueeze(0), target).squeeze(0).t()


def compress(content: Tensor, target: int, mode: str) -> Tensor:
    """Shorten content rows [L, D] to ``target`` rows (returned unchanged, as a copy, if L <= target).

    Modes (LONG_PROMPT_MODES):

    - ``truncate``: the first ``target`` rows.
    - ``interpolate``: linear resampling to ``target`` rows with align_corners=True, so the first
      and last rows are kept exactly (target == 1 keeps the first row).
    - ``pool``: adaptive average pooling; row i averages input rows
      ``floor(i*L/T) .. ceil((i+1)*L/T) - 1`` (F.adaptive_avg_pool1d windows, which may overlap).
    - ``attention_pool``: importance-weighted pooling over the same windows. With
      ``m = content.mean(0)`` and ``c_j = cos(content[j], m)`` (fp32, eps 1e-8, so a zero row has
      c_j = 0), each output row is ``sum_j softmax_w(c)_j * content[j]`` where ``softmax_w`` is a
      softmax of ``c_j`` (temperature 1) over the rows j of that window. Weights are positive
      and sum to 1, so every output row is a convex combination of its window; since c_j lies in
      [-1, 1] a row's weight is at most e^2 ~ 7.4 times another's.
    - ``none``: no compression; raises LlmDitError if L > target.
    """
    mode = _check_mode(mode, LONG_PROMPT_MODES, "long_prompt_mode")
    content = check_features(content, "content")
    target = _check_int(target, "target", 1)
    length = content.shape[0]
    if length <= target:
        return content.clone()
    if mode == "none":
        raise LlmDitError(
            f"content is {length} tokens, over the cap of {target}; choose a long_prompt_mode or shorten the prompt"
        )
    if mode == "truncate":
        return content[:target].clone()

    x = content.to(torch.float32)
    if mode == "interpolate":
        # F.interpolate wants [N, C, L]: the hidden dimension is the channel axis.
        out = F.interpolate(x.t().unsqueeze(0), size=target, mode="linear", align_corners=True)
        out = out.squeeze(0).t()
    elif mode == "pool":
        out = _adaptive_pool(x, target)
    else:  # attention_pool
        mean_row = x.mean(dim=0, keepdim=True)
        cos = F.cosine_similarity(x, mean_row, dim=1, eps=1e-8)  # [L], in [-1, 1]
        # Windowed softmax = sum(e_j x_j) / sum(e_j) with e_j = exp(c_j); both sums over a window
        # are adaptive average pools of the same window, so their ratio is exactly the softmax
        # weighted mean. c_j is bounded, so exp cannot overflow and needs no max-subtraction.
        e = torch.exp(cos).unsqueeze(1)  # [L, 1]
        out = _adaptive_pool(x * e, target) / _adaptive_pool(e, target)
    return out.to(content.dtype).contiguous()


def compress_sequence(embeds: Tensor, prefix_len: int, suffix_len: int, max_len: int, mode: str) -> Tensor:
    """Compress only the content rows between a kept prefix and suffix so the total is <= max_len.

    The first ``prefix_len`` rows (chat-template prefix) and the last ``suffix_len`` rows
    (template suffix) are copied bit-for-bit; the rows between go through ``compress`` with a
    target of ``max_len - prefix_len - suffix_len``. A sequence already within ``max_len`` is
    returned unchanged (as a copy).
    """
    mode = _check_mode(mode, LONG_PROMPT_MODES, "long_prompt_mode")
    embeds = check_features(embeds, "embeds")
    prefix_len = _check_int(prefix_len, "prefix_len", 0)
    suffix_len = _check_int(suffix_len, "suffix_len", 0)
    max_len = _check_int(max_len, "max_len", 1)
    length = embeds.shape[0]
    if prefix_len + suffix_len >= max_len:
        raise LlmDitError(
            f"prefix_len + suffix_len = {prefix_len + suffix_len} leaves no room for content under max_len {max_len}"
        )
    if prefix_len + suffix_len > length:
        raise LlmDitError(f"prefix_len + suffix_len = {prefix_len + suffix_len} exceeds the sequence length {length}")
    if length <= max_len:
        return embeds.clone()
    if mode == "none":
        # Report the whole sequence, which is what the user's cap refers to.
        raise LlmDitError(
            f"sequence is {length} tokens, over the cap of {max_len}; choose a long_prompt_mode or shorten the prompt"
        )
    end = length - suffix_len  # explicit end: embeds[-0:] would be the whole sequence
    content = compress(embeds[prefix_len:end], max_len - prefix_len - suffix_len, mode)
    return torch.cat([embeds[:prefix_len], content, embeds[end:]], dim=0)


# ---------------------------------------------------------------------------------------------
# fill modes (caption-length study)


def apply_fill_mode(embeds: Tensor, target_length: int, mode: str) -> Tensor:
    """Bring ``embeds`` [L, D] to ``target_length`` rows as in the caption-length study.

    If L >= target every mode returns ``embeds[:target]``. Otherwise, with ``content = embeds``:

    - ``content_only``: content as is (L rows; no padding).
    - ``pad_end_zero``: content, then ``target - L`` zero rows.
    - ``pad_end_mean``: content, then the mean of the content rows repeated ``target - L`` times.
    - ``pad_middle_zero``: ``half = L // 2``; content[:half], zeros, content[half:].
    - ``filler_repeat``: content repeated cyclically, cut to ``target`` rows.
    """
    mode = _check_mode(mode, FILL_MODES, "fill_mode")
    embeds = check_features(embeds, "embeds")
    target_length = _check_int(target_length, "target_length", 1)
    content = embeds[:target_length]
    kept = content.shape[0]
    if kept >= target_length or mode == "content_only":
        return content.clone()

    pad_length = target_length - kept
    dim = content.shape[1]
    if mode == "pad_end_zero":
        zeros = content.new_zeros(pad_length, dim)
        return torch.cat([content, zeros], dim=0)
    if mode == "pad_end_mean":
        # Mean in fp32: a bf16 sum over hundreds of rows loses most of its mantissa.
        mean_row = content.to(torch.float32).mean(dim=0, keepdim=True).to(content.dtype)
        return torch.cat([content, mean_row.expand(pad_length, dim)], dim=0)
    if mode == "pad_middle_zero":
        half = kept // 2
        zeros = content.new_zeros(pad_length, dim)
        return torch.cat([content[:half], zeros, content[half:]], dim=0)
    # filler_repeat
    repeats = (target_length + kept - 1) // kept
    return content.repeat(repeats, 1)[:target_length]


# ---------------------------------------------------------------------------------------------
# other conditioning sources: shared helpers

# Floor for a reference std in outlier ratios (as embedding_stats.DEFAULT_STD_EPS): a dimension constant in the
# reference would divide by zero.
_REF_STD_EPS = 1e-12
# AdaIN's epsilon, as the seed project's blend_adain: std + eps in the denominator.
_ADAIN_EPS = 1e-5
# Cosine epsilon of attention_weighted (as compress's attention_pool): a zero row has cosine 0 with every row.
_COS_EPS = 1e-8
# per_dim normalisation clips z-scores to +-this many standard deviations (the seed project's 3 sigma).
_Z_CLIP = 3.0


def _check_real(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LlmDitError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise LlmDitError(f"{name} must be finite, got {number}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise LlmDitError(f"{name} must be in [{low:g}, {high:g}], got {number:g}")
    return number


def _check_pair(text: object, source: object, text_name: str, source_name: str) -> tuple[Tensor, Tensor]:
    """Two [L, D] sequences of one width on one device (dtypes may differ: results take the first's)."""
    t = check_features(text, text_name)
    v = check_features(source, source_name)
    if t.shape[1] != v.shape[1]:
        raise LlmDitError(f"{source_name} has width {v.shape[1]}, {text_name} has {t.shape[1]}; widths must match")
    if t.device != v.device:
        raise LlmDitError(f"{source_name} is on {v.device}, {text_name} on {t.device}; move one with .to(device)")
    return t, v


def _check_vector(x: object, name: str, width: int, device: torch.device) -> Tensor:
    """A floating [D] tensor of ``width`` entries, as fp32 on ``device`` (a fresh copy or a converted view)."""
    if x is None:
        raise LlmDitError(f"{name} is required for this mode; pass the reference statistics' {name}")
    if not isinstance(x, Tensor):
        raise LlmDitError(f"{name} must be a torch.Tensor of shape [D], got {type(x).__name__}")
    if x.dim() != 1 or not x.is_floating_point():
        raise LlmDitError(f"{name} must be a floating-point [D] tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[0] != width:
        raise LlmDitError(
            f"{name} has {x.shape[0]} entries, the features have width {width}; use statistics of this encoder"
        )
    return x.detach().to(device=device, dtype=torch.float32)


def _resample32(x: Tensor, length: int) -> Tensor:
    """fp32 [L, D] -> fp32 [length, D], linear with align_corners=True (length == L: x itself)."""
    if x.shape[0] == length:
        return x
    return F.interpolate(x.t().unsqueeze(0), size=length, mode="linear", align_corners=True).squeeze(0).t()


def resample(x: Tensor, length: int) -> Tensor:
    """Rows of ``x`` [L, D] linearly resampled to ``length`` rows (align_corners=True, as compress's interpolate).

    Output row i sits at position ``p = i * (L - 1) / (length - 1)`` of the input and is
    ``(1 - f) * x[floor(p)] + f * x[floor(p) + 1]`` with ``f = p - floor(p)``: the first and last rows are kept
    exactly. ``length == 1`` gives the first row; ``L == 1`` repeats the one row; ``length == L`` returns a copy.
    Shortens or lengthens.
    """
    x = check_features(x, "x")
    length = _check_int(length, "length", 1)
    if length == x.shape[0]:
        return x.clone()
    return _resample32(x.to(torch.float32), length).to(x.dtype).contiguous()


def global_std(x: Tensor) -> float:
    """Population std over all L*D values of ``x`` (computed in fp32)."""
    x = check_features(x, "x")
    return float(x.to(torch.float32).std(correction=0))


# ---------------------------------------------------------------------------------------------
# mixing text and source features (VL_BLENDS)


def _graduated_weights(length: int, alpha: float, curve: str, device: torch.device) -> Tensor:
    """[length, 1] fp32: alpha * c(s_i), s_i = i / (length - 1) (s_0 = 0 when length == 1, as torch.linspace)."""
    s = torch.linspace(0.0, 1.0, length, dtype=torch.float32, device=device)
    if curve == "ease_in":
        s = s * s
    elif curve == "ease_out":
        s = 1.0 - (1.0 - s) * (1.0 - s)
    return (alpha * s).unsqueeze(1)


def mix(text: Tensor, source: Tensor, alpha: float, blend: str, *, curve: str = "linear") -> Tensor:
    """Mix text features ``t`` [Lt, D] with source features ``v`` [Lv, D] at ``alpha`` in [0, 1].

    ``alpha == 0`` returns ``text.clone()`` (all Lt rows, bit for bit) for every blend. Otherwise, with
    ``a = alpha`` and ``v' = resample(v, Lt)`` (rows resampled to the text's length):

    - ``linear``: ``n = min(Lt, Lv)``; ``a * v[:n] + (1 - a) * t[:n]`` (n rows). Alpha 1: ``v[:n]``.
    - ``interpolate``: ``a * v' + (1 - a) * t``. Alpha 1: ``resample(v, Lt)``.
    - ``adain`` (per token, stats over D): ``mu_t[i], sd_t[i]`` = mean, std of row i of t over its D values,
      ``mu_v[i], sd_v[i]`` the same of row i of v'; ``r = (t - mu_t) / (sd_t + 1e-5) * sd_v + mu_v``;
      ``a * r + (1 - a) * t``. Alpha 1: ``r``, the text's rows with the matching v' rows' mean and std.
    - ``adain_per_dim`` (stats over tokens): ``mu_t[d], sd_t[d]`` over the Lt rows of t, ``mu_v[d], sd_v[d]`` over
      the Lv rows of v itself (not resampled: its own statistics); ``r`` and the mix as above. Alpha 1: ``r``.
    - ``style_only``: dims ``d >= 2 * D // 3`` (the last third, as the seed project) are ``a * v' + (1 - a) * t``,
      the others stay t. Alpha 1: ``t`` with its last third replaced by v''s.
    - ``graduated``: per-token ``a_i = a * c(s_i)``, ``s_i = i / (Lt - 1)`` (0 for Lt == 1), ``c`` by ``curve``
      (GRADUATED_CURVES): ``linear`` s, ``ease_in`` s^2, ``ease_out`` 1 - (1 - s)^2;
      ``a_i * v'[i] + (1 - a_i) * t[i]``. The first row is always t's; alpha 1 ends on v''s last row.
    - ``attention_weighted``: ``v_att[i] = sum_j softmax_j(cos(t_i, v_j)) v_j`` over the Lv rows of v (cosine
      with eps 1e-8, temperature 1; cosines lie in [-1, 1], so one row's weight is at most e^2 times another's);
      ``a * v_att + (1 - a) * t``. Alpha 1: ``v_att``.

    ``curve`` is checked for every blend and used by ``graduated`` only. Both inputs need one width and one device;
    computed in fp32, returned in text's dtype on its device. Stds are population stds.
    """
    blend = _check_mode(blend, VL_BLENDS, "vl_blend")
    curve = _check_mode(curve, GRADUATED_CURVES, "graduated curve")
    t, v = _check_pair(text, source, "text", "source")
    alpha = _check_real(alpha, "alpha", 0.0, 1.0)
    if alpha == 0.0:
        return t.clone()
    t32, v32 = t.to(torch.float32), v.to(torch.float32)
    length = t.shape[0]

    if blend == "linear":
        n = min(length, v.shape[0])
        out = alpha * v32[:n] + (1.0 - alpha) * t32[:n]
    elif blend == "interpolate":
        out = alpha * _resample32(v32, length) + (1.0 - alpha) * t32
    elif blend in ("adain", "adain_per_dim"):
        axis = 1 if blend == "adain" else 0  # adain: over D per token; per_dim: over tokens per dimension
        style = _resample32(v32, length) if blend == "adain" else v32
        t_mean, t_std = t32.mean(dim=axis, keepdim=True), t32.std(dim=axis, correction=0, keepdim=True)
        v_mean, v_std = style.mean(dim=axis, keepdim=True), style.std(dim=axis, correction=0, keepdim=True)
        restyled = (t32 - t_mean) / (t_std + _ADAIN_EPS) * v_std + v_mean
        out = alpha * restyled + (1.0 - alpha) * t32
    elif blend == "style_only":
        start = 2 * t.shape[1] // 3
        out = t32.clone()
        out[:, start:] = alpha * _resample32(v32, length)[:, start:] + (1.0 - alpha) * t32[:, start:]
    elif blend == "graduated":
        w = _graduated_weights(length, alpha, curve, t.device)
        out = w * _resample32(v32, length) + (1.0 - w) * t32
    else:  # attention_weighted
        cos = F.cosine_similarity(t32.unsqueeze(1), v32.unsqueeze(0), dim=2, eps=_COS_EPS)  # [Lt, Lv]
        out = alpha * (torch.softmax(cos, dim=1) @ v32) + (1.0 - alpha) * t32
    return out.to(t.dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# normalisation to reference statistics (VL_NORMALIZATIONS)


def _scale_global(x32: Tensor, target_std: float) -> Tensor:
    std = float(x32.std(correction=0))
    if not std > 0:
        raise LlmDitError("features have zero std: global normalisation cannot scale a constant tensor")
    return x32 * (target_std / std)


def _per_dim(x32: Tensor, ref_mean: Tensor, ref_std: Tensor) -> Tensor:
    mean, std = x32.mean(dim=0, keepdim=True), x32.std(dim=0, correction=0, keepdim=True)
    # A constant dimension (always so for one row) has x - mean == 0 exactly: z = 0, mapped to the reference mean.
    z = torch.where(std > 0, (x32 - mean) / std.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(x32))
    return z.clamp(-_Z_CLIP, _Z_CLIP) * ref_std + ref_mean


def normalize(
    x: Tensor,
    mode: str,
    *,
    ref_mean: Tensor | None = None,
    ref_std: Tensor | None = None,
    target_std: float | None = None,
    hybrid_weight: float = 0.5,
) -> Tensor:
    """Bring source features ``x`` [L, D] to a reference's statistics (VL_NORMALIZATIONS).

    - ``none``: a copy (references ignored).
    - ``global``: ``x * target_std / std(x)``, std over all L*D values; ``target_std`` > 0 is required (callers
      pass the reference's global std, or their own target). A constant ``x`` is refused.
    - ``per_dim``: ``z = (x - mean_d) / std_d`` per dimension over the L rows (a constant dimension gets z = 0),
      clipped to [-3, 3], then ``z * ref_std + ref_mean``; ``ref_mean`` and ``ref_std`` ([D]) are required.
    - ``hybrid``: ``w * per_dim + (1 - w) * global`` with ``w = hybrid_weight`` in [0, 1]; needs all three.

    References may be of any float dtype and device (they are small: converted to fp32 on x's device).
    Population stds; computed in fp32, returned in x's dtype and device.
    """
    mode = _check_mode(mode, VL_NORMALIZATIONS, "vl_normalize")
    x = check_features(x, "x")
    if mode == "none":
        return x.clone()
    weight = _check_real(hybrid_weight, "hybrid_weight", 0.0, 1.0)
    x32 = x.to(torch.float32)
    width = x.shape[1]
    scaled = per_dim = None
    if mode in ("global", "hybrid"):
        if target_std is None:
            raise LlmDitError(f"{mode} normalisation needs target_std (e.g. the reference's global std)")
        target = _check_real(target_std, "target_std")
        if not target > 0:
            raise LlmDitError(f"target_std must be > 0, got {target:g}")
        scaled = _scale_global(x32, target)
    if mode in ("per_dim", "hybrid"):
        mean = _check_vector(ref_mean, "ref_mean", width, x.device)
        std = _check_vector(ref_std, "ref_std", width, x.device)
        per_dim = _per_dim(x32, mean, std)
    if mode == "global":
        out = scaled
    elif mode == "per_dim":
        out = per_dim
    else:
        out = weight * per_dim + (1.0 - weight) * scaled
    assert out is not None
    return out.to(x.dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# outlier masking (OUTLIER_MASKS)


@dataclass(frozen=True)
class OutlierReport:
    """What :func:`mask_outliers` did: the masked dimensions, ratio descending (ties: lower dim first)."""

    mode: str
    threshold: float
    dims: list[int] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # std ratio of each of ``dims``, same order
    rows_selected: int = 0  # rows the ratios were measured on (the rows a mask may touch)
    rows_touched: int = 0  # rows changed: rows_selected if any dimension was masked, else 0

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict (for the run record)."""
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "dims": list(self.dims),
            "ratios": list(self.ratios),
            "rows_selected": self.rows_selected,
            "rows_touched": self.rows_touched,
        }


def _row_index(rows: object, length: int, device: torch.device) -> Tensor:
    """Sorted, distinct int64 row indices on ``device`` from None (all), a bool [L] mask or an index tensor/list."""
    if rows is None:
        return torch.arange(length, device=device)
    if not isinstance(rows, Tensor):
        if isinstance(rows, Sequence) and not isinstance(rows, str | bytes):
            if any(isinstance(r, bool) or not isinstance(r, int) for r in rows):
                raise LlmDitError("rows must be a bool mask [L] or integer row indices")
            rows = torch.tensor(list(rows), dtype=torch.int64)
        else:
            raise LlmDitError(f"rows must be a bool mask [L] or integer row indices, got {type(rows).__name__}")
    if rows.dim() != 1:
        raise LlmDitError(f"rows must be one-dimensional, got shape {tuple(rows.shape)}")
    if rows.dtype == torch.bool:
        if rows.shape[0] != length:
            raise LlmDitError(f"rows mask has {rows.shape[0]} entries, the features have {length} rows")
        return torch.nonzero(rows.to(device), as_tuple=False).squeeze(1)
    if rows.is_floating_point() or rows.is_complex():
        raise LlmDitError(f"rows must be a bool mask or integer indices, got {rows.dtype}")
    index = rows.to(device=device, dtype=torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= length):
        raise LlmDitError(f"rows indices must be in 0..{length - 1}, got {int(index.min())}..{int(index.max())}")
    unique = torch.unique(index)  # sorted
    if unique.numel() != index.numel():
        raise LlmDitError("rows indices contain duplicates; give each row once")
    return unique


def mask_outliers(
    x: Tensor,
    ref_std: Tensor,
    mode: str,
    threshold: float = DEFAULT_OUTLIER_THRESHOLD,
    *,
    rows: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, OutlierReport]:
    """Mask the dimensions of ``x`` [L, D] whose spread on the selected rows is far above a reference's.

    ``rows``: the rows to measure and touch (a bool mask [L] or row indices; callers pass the image-token rows,
    as the seeds mask image tokens); None = all rows. Over the selected rows R, ``r_d = std(x[R, d]) /
    max(ref_std_d, 1e-12)`` (population std; one selected row gives r = 0). Dimensions with ``r_d > threshold``
    are masked on the rows R only (every other value is copied bit for bit):

    - ``zero``: set to 0.
    - ``clamp``: clamped to ``[-threshold * ref_std_d, threshold * ref_std_d]``.
    - ``scale``: multiplied by ``threshold / r_d`` (the dimension's std over R becomes ``threshold * ref_std_d``).
    - ``none``: a copy and an empty report (nothing measured).

    No selected row: a copy and a report with no dims. ``ref_std`` [D] of any float dtype and device. Computed in
    fp32, returned in x's dtype and device.
    """
    mode = _check_mode(mode, OUTLIER_MASKS, "outlier_mask")
    x = check_features(x, "x")
    threshold = _check_real(threshold, "outlier threshold")
    if not threshold > 0:
        raise LlmDitError(f"outlier threshold must be > 0, got {threshold:g}")
    ref = _check_vector(ref_std, "ref_std", x.shape[1], x.device)
    if mode == "none":
        return x.clone(), OutlierReport(mode=mode, threshold=threshold)
    index = _row_index(rows, x.shape[0], x.device)
    if index.numel() == 0:
        return x.clone(), OutlierReport(mode=mode, threshold=threshold)

    x32 = x.to(torch.float32)  # a fresh tensor (to() of another dtype) or x itself: cloned below before writing
    selected = x32[index]  # advanced indexing: a copy
    ratios = selected.std(dim=0, correction=0) / ref.clamp_min(_REF_STD_EPS)
    ranked = sorted(
        ((d, r) for d, r in enumerate(ratios.tolist()) if r > threshold), key=lambda item: (-item[1], item[0])
    )
    report = OutlierReport(
        mode=mode,
        threshold=threshold,
        dims=[d for d, _ in ranked],
        ratios=[r for _, r in ranked],
        rows_selected=int(index.numel()),
        rows_touched=int(index.numel()) if ranked else 0,
    )
    if not ranked:
        return x.clone(), report
    dims = torch.tensor(report.dims, dtype=torch.int64, device=x.device)
    block = selected[:, dims]
    if mode == "zero":
        block = torch.zeros_like(block)
    elif mode == "clamp":
        bound = threshold * ref[dims]
        block = torch.maximum(torch.minimum(block, bound), -bound)
    else:  # scale
        block = block * (threshold / ratios[dims])
    out = x.clone()
    out[index.unsqueeze(1), dims.unsqueeze(0)] = block.to(x.dtype)
    return out, report


# ---------------------------------------------------------------------------------------------
# style delta, intra-VL blend, multi-reference sum


def style_delta(text: Tensor, style: Tensor, neutral: Tensor, alpha: float) -> Tensor:
    """``t + alpha * (resample(style, Lt) - resample(neutral, Lt))``: the style image's difference from a neutral
    image's source features, added to the text features ``t`` [Lt, D].

    ``alpha`` any finite number (0 returns ``text.clone()``; negative subtracts the style). All three need one
    width and one device; computed in fp32, returned in text's dtype.
    """
    t, s = _check_pair(text, style, "text", "style")
    _, n = _check_pair(text, neutral, "text", "neutral")
    alpha = _check_real(alpha, "alpha")
    if alpha == 0.0:
        return t.clone()
    length = t.shape[0]
    delta = _resample32(s.to(torch.float32), length) - _resample32(n.to(torch.float32), length)
    return (t.to(torch.float32) + alpha * delta).to(t.dtype).contiguous()


def intra_blend(image_rows: Tensor, text_rows: Tensor, ratio: float) -> Tensor:
    """``ratio * resample(image_rows, Lt) + (1 - ratio) * text_rows``: one VL pass's image-token rows mixed into its
    text-token rows [Lt, D]; ``ratio`` in [0, 1] (0: ``text_rows.clone()``, 1: the image rows resampled to Lt).

    One width and one device; computed in fp32, returned in text_rows' dtype.
    """
    t, v = _check_pair(text_rows, image_rows, "text_rows", "image_rows")
    ratio = _check_real(ratio, "intra_vl_ratio", 0.0, 1.0)
    if ratio == 0.0:
        return t.clone()
    image = _resample32(v.to(torch.float32), t.shape[0])
    return (ratio * image + (1.0 - ratio) * t.to(torch.float32)).to(t.dtype).contiguous()


def weighted_sum(features: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_i (w_i / sum(w)) * resample(f_i, L_0)``: several references' features, each resampled to the first's
    length L_0 (multi-reference conditioning). Negative weights are allowed if the sum is non-zero.

    One width and one device; computed in fp32, returned in the first's dtype.
    """
    if isinstance(features, Tensor) or not isinstance(features, Sequence) or not features:
        raise LlmDitError("features must be a non-empty list of [L, D] tensors")
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise LlmDitError(f"weights must be a list of numbers, got {type(weights).__name__}")
    if len(weights) != len(features):
        raise LlmDitError(f"{len(weights)} weight(s) for {len(features)} feature tensor(s); give one weight each")
    ws = [_check_real(w, f"weight {i}") for i, w in enumerate(weights)]
    total = math.fsum(ws)
    if abs(total) < _MIN_WEIGHT_SUM:
        raise LlmDitError(f"weights sum to zero; they are normalised by their sum (weights: {ws})")
    first = check_features(features[0], "features[0]")
    length = first.shape[0]
    acc = torch.zeros((length, first.shape[1]), dtype=torch.float32, device=first.device)
    for i, (f, w) in enumerate(zip(features, ws, strict=True)):
        _, f = _check_pair(first, f, "features[0]", f"features[{i}]")
        acc.add_(_resample32(f.to(torch.float32), length), alpha=w / total)
    return acc.to(first.dtype)
