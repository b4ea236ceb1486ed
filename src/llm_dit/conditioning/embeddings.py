"""Pure tensor operations on text-encoder hidden states (sequences of shape [L, D]).

No model, no I/O, no global state. Every function accepts fp32, bf16 and fp16 tensors on any
device, computes in fp32 where precision matters, returns the input dtype and device, and never
modifies or aliases its input (outputs are always fresh tensors).

- ``blend_layers``: weighted average of several hidden layers.
- ``compress`` / ``compress_sequence``: shorten over-long prompts (LONG_PROMPT_MODES).
- ``apply_fill_mode``: the caption-length study's fill modes (FILL_MODES).
- ``check_features``: the one check that a tensor is a ``[L, D]`` sequence of caption features.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_dit.constants import FILL_MODES, LONG_PROMPT_MODES
from llm_dit.errors import LlmDitError

__all__ = [
    "apply_fill_mode",
    "blend_layers",
    "check_features",
    "compress",
    "compress_sequence",
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
