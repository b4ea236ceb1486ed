"""Rounding-error bounds for the tests' float comparisons (tests/README.md, "Tolerance policy" and "Bounds").

Two models of the error of a computation whose reductions (dot products, sums, means) add up to ``n`` terms
along its longest path, and a way to count ``n`` on a real run:

- ``worst_case(n, eps) = n * eps``: the classic first-order bound (Higham, Accuracy and Stability of Numerical
  Algorithms, 2nd ed., section 3.1). Used for float64, for short float32 computations, and for the generation
  tests below, where the reductions are counted on the run itself.
- ``probable(n, eps) = 3 * sqrt(n) * eps``: the probabilistic bound of Higham & Mary (2019, "A new approach to
  probabilistic rounding error analysis", theorem 2.4), lambda * sqrt(n) * u with lambda = 6 and u = eps / 2
  (to first order). For rounding errors that are independent and mean zero (the theorem's model), one product of
  n rounding factors exceeds it with probability at most 2 exp(-lambda^2 (1 - u)^2 / 2) = 2 exp(-18), about
  3e-8; for a length-n inner product, their theorem 3.1 gives at most n times that (3e-4 at n = 10^4). Used for
  one float32 forward of a metric network (LPIPS, SigLIP, CLIP), whose worst case (10^3 to 10^4 terms times
  eps32) is as large as the values compared; errors observed there are ~1000x below it. Not for a sampler:
  errors carried through several Euler steps with CFG measured above it.
- Generation (the DiT, the sampler, the pipeline): a float32 run is compared with a float64 run of the same models
  on the same inputs, within ``eps32 * factor * max |reference|``, with ``factor`` counted from the reference run
  by :func:`count_reductions`: the lengths of all reductions the computation makes, each a first-order budget (a
  length-K dot product is accurate to K * eps relative, Higham's gamma_K; a pairwise sum, as torch's CPU norms
  do, to log2(K) * eps), with the errors of chained operations adding to first order. Measured on the tiny
  models (2-core x86, 1 and 2 threads): errors 58x (6 steps with CFG 3.5) to 2000x below these bounds, while the
  bugs the tests look for (a wrong sample, latent, layer, sigma or seed) move results by 13x (another prompt,
  under the 6-step CFG 3.5 bound) to 1000x the bound.

Each model returns a *relative* error of the result; the tests turn it into an absolute bound on what they
compare.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from llm_dit.generation.pipeline import GenerationRequest, GenerationResult, LlmDitPipeline

EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)


def worst_case(n: int, eps: float) -> float:
    return n * eps


PROBABLE_LAMBDA = 6.0  # Higham & Mary's lambda: failure probability <= 2 exp(-lambda^2 / 2) per product


def probable(n: int, eps: float = EPS32) -> float:
    return PROBABLE_LAMBDA * math.sqrt(n) * eps / 2  # lambda * sqrt(n) * u, u = eps / 2


def transformer_length(config: Any, seq_len: int, extra_layers: int = 0) -> int:
    """Summed reduction lengths through a pre-norm transformer stack of ``config`` (hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads[, head_dim]) on ``seq_len`` tokens.

    Per layer: two norms (hidden each), the q/k/v projections (hidden), q.k (head_dim), the softmax sum and
    attention x V (seq_len each), the output projection (heads x head_dim), the MLP's two matmuls (hidden,
    intermediate); then a final norm. ``extra_layers`` counts a pooling head as one more layer.
    """
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    per_layer = 3 * hidden + head_dim + 2 * seq_len + heads * head_dim + hidden + int(config.intermediate_size)
    return (int(config.num_hidden_layers) + extra_layers) * per_layer + hidden


# lpips' slice ends (lpips/pretrained_networks.py): the ReLU outputs it compares.
LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}


@functools.cache
def lpips_lins(net: str) -> tuple[torch.Tensor, ...]:
    """lpips v0.1's linear-layer weights of ``net``, as packaged with llm-dit."""
    data = (resources.files("llm_dit") / "data" / "lpips" / f"{net}.pth").read_bytes()
    state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    return tuple(state[f"lin{k}.model.1.weight"] for k in range(len(LPIPS_TAPS[net])))


def lpips_bound(net: str, value: float, error: Callable[[int], float] = probable) -> float:
    """Bound on the rounding error of one LPIPS value ``value`` of ``net`` (alex | vgg; lpips v0.1, whose lin
    weights are non-negative); float32 by default (~8e-9 for identical images, ~5e-5 at 0.016 for AlexNet),
    ``error=lambda n: worst_case(n, EPS64)`` for a float64 evaluation (~1e-11 at 0.1).

    At tap l the unit-normalised features a, b of the two images carry errors alpha, beta of 2-norm at most
    g_l = error(N_l), N_l = the summed conv fan-in up to that tap (normalising does not raise a relative
    error; ReLU and max-pool do not either). The tap's term mean_pixels sum_c w_c (a_c - b_c)^2 then moves by at
    most 2 sqrt(max(w) d_l) |alpha - beta| + max(w) |alpha - beta|^2 (Cauchy-Schwarz, then Jensen over pixels),
    with |alpha - beta| <= 2 g_l and d_l <= value: sum over taps of 4 g_l sqrt(max(w_l) value) + 4 max(w_l) g_l^2.
    """
    from llm_dit.metrics.lpips import build_features

    fan_in, total, tap_lengths = 0, 0.0, {}
    for index, module in enumerate(build_features(net)):
        if isinstance(module, nn.Conv2d):
            fan_in += module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        tap_lengths[index] = fan_in
    for tap, weight in zip(LPIPS_TAPS[net], lpips_lins(net), strict=True):
        g, w = error(tap_lengths[tap]), float(weight.max())
        total += 4 * g * math.sqrt(w * max(value, 0.0)) + 4 * w * g * g
    return total


def scorer_tolerance(scorer: Any) -> float:
    """How far two float32 evaluations of one SigLIP score or CLIPScore of ``scorer`` may differ (other batch
    shapes, other paddings).

    Each tower's embedding carries a relative error of at most probable(N), N = its summed reduction length
    (patch projection + transformer layers + the pooling head counted as one more layer; ~1100 per tiny
    tower); the cosine of the two unit vectors moves by at most the sum of both. A SigLIP score
    sigmoid(exp(logit_scale) cos + bias) moves by at most exp(logit_scale) / 4 times that, a CLIPScore by 100
    times that. Two evaluations: twice. (~1e-4 for the tiny SigLIP, ~6e-3 for the tiny CLIP; observed 1e-7
    and 6e-6.)
    """
    from llm_dit.metrics.scorers import ClipScorer

    clip = isinstance(scorer, ClipScorer)
    config = scorer.model.config
    vision, text = config.vision_config, config.text_config
    if getattr(vision, "num_patches", None):  # NaFlex: at most num_patches patches
        patches = int(vision.num_patches)
    else:  # fixed resolution, plus CLIP's class token
        patches = (vision.image_size // vision.patch_size) ** 2 + int(clip)
    image_length = vision.num_channels * vision.patch_size**2 + transformer_length(vision, patches, extra_layers=1)
    text_length = transformer_length(text, text.max_position_embeddings, extra_layers=1)
    cosine = probable(image_length) + probable(text_length)
    slope = 100.0 if clip else float(scorer.model.logit_scale.exp()) / 4
    return 2 * slope * cosine


# -- generation: reductions counted on the run itself ------------------------------------------------------


def _pairwise(n: int) -> int:
    """Budget of a pairwise (cascade) sum of ``n`` terms: log2(n) roundings."""
    return max(1, math.ceil(math.log2(max(n, 2))))


@dataclass
class Reductions:
    """The rounding budget counted so far (see :func:`count_reductions`)."""

    total: int = 0


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("hidden_states")
    return x if isinstance(x, torch.Tensor) else None


@contextmanager
def count_reductions(*models: nn.Module) -> Iterator[Reductions]:
    """Count, over every call into ``models`` while open, the reduction lengths of each layer call:

    - ``nn.Linear``: ``in_features``; ``nn.Conv*``: ``in_channels / groups`` times the kernel size;
    - a norm (LayerNorm, GroupNorm, RMSNorm): mean and variance as pairwise sums over the elements it
      normalises together, ``2 * log2(n)``, plus 2 for the division and square root;
    - an attention module: q.k over its width (all heads, an over-count) and the softmax sum and weighted
      sum of values over its tokens, ``width + 2 * tokens``;
    - a module that scales its time input before sinusoids (the Z-Image DiT: ``t_scale``, 1000): the phase
      ``t_scale * t`` is rounded to eps relative, an absolute error of ``t_scale * eps`` in O(1) features.
      diffusers computes the time embedding and RoPE in float32 even in a float64 model; the float64
      reference carries that rounding too, and it is counted here once for both runs.

    Calls are counted once however many samples they batch: rounding is per element. Masked (padding)
    positions add exact zeros and are not rounding; count on an unpadded reference run.
    """
    counted = Reductions()

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        x = _hidden(args, kwargs)
        name = type(module).__name__
        if isinstance(module, nn.Linear):
            counted.total += module.in_features
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            counted.total += module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.GroupNorm) and x is not None:
            counted.total += 2 * _pairwise(x[0].numel() // module.num_groups) + 2
        elif isinstance(module, nn.LayerNorm):
            counted.total += 2 * _pairwise(math.prod(module.normalized_shape)) + 2
        elif name.endswith("RMSNorm") and x is not None:
            counted.total += _pairwise(x.shape[-1]) + 2
        elif name.endswith("Attention") and x is not None:
            width, tokens = (x.shape[1], x.shape[2] * x.shape[3]) if x.ndim == 4 else (x.shape[-1], x.shape[-2])
            counted.total += width + 2 * tokens
        t_scale = getattr(module, "t_scale", None)
        if isinstance(t_scale, int | float):
            counted.total += math.ceil(t_scale)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for model in models for m in model.modules()]
    try:
        yield counted
    finally:
        for handle in handles:
            handle.remove()


def rounding_bound(reference: torch.Tensor, factor: float, eps: float = EPS32) -> float:
    """``eps * factor * max |reference|``: the largest difference rounding can explain."""
    return eps * factor * reference.double().abs().max().item()


def assert_within_rounding(got: torch.Tensor, reference: torch.Tensor, factor: float, eps: float = EPS32) -> None:
    """max |got - reference| <= eps * factor * max |reference| (see the module docstring for ``factor``)."""
    assert got.shape == reference.shape, (got.shape, reference.shape)
    err = (got.double() - reference.double()).abs().max().item()
    bound = rounding_bound(reference, factor, eps)
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} (eps {eps:.3g} x factor {factor:g} x scale)"


def float64_pipeline(pipe: LlmDitPipeline) -> LlmDitPipeline:
    """A float64 copy of ``pipe``'s text encoder, DiT and VAE, as a pipeline (the reference for float32 runs).

    The sampler keeps float32 latents between steps and the images come back as float32, as in any run: a few
    eps of the reference's own, far inside any bound counted by :func:`generate_counted`.
    """
    return LlmDitPipeline.from_components(
        pipe.encoder.tokenizer,
        copy.deepcopy(pipe.encoder.model).double(),
        copy.deepcopy(pipe.transformer).double(),
        copy.deepcopy(pipe.vae).double(),
    )


def generate_counted(pipe: LlmDitPipeline, request: GenerationRequest) -> tuple[GenerationResult, float]:
    """``request`` alone, its prompts encoded afresh, and the rounding factor of a float32 run of it.

    Factor: (text encoder + DiT reductions) x (1 + 2 g) + VAE reductions. With CFG, pred = (1 + g) pos - g neg,
    and both branches share each counted call, so conditioning errors grow by up to 1 + 2g. The prompts are
    encoded unpadded (padding="longest"): the default diffusers padding changes nothing but rounding, and
    padded positions add exact zeros (not counted).
    """
    request = dataclasses.replace(request, encoder={**request.encoder, "padding": "longest"})
    pipe.clear_encoding_cache()
    with count_reductions(pipe.encoder.model, pipe.transformer) as conditioning, count_reductions(pipe.vae) as vae:
        (result,) = pipe.generate_batch([request])
    return result, conditioning.total * (1 + 2 * request.generation.guidance_scale) + vae.total


def assert_differ(a: torch.Tensor, b: torch.Tensor, factor: float, eps: float = EPS32) -> None:
    """``a`` and ``b`` (float32 results of different computations) have different exact values: they differ by
    more than twice the rounding bound, since two results each within one bound of the same exact value
    could not."""
    scale = torch.maximum(a.double().abs().max(), b.double().abs().max())
    diff = (a.double() - b.double()).abs().max().item()
    bound = 2 * rounding_bound(scale, factor, eps)
    assert diff > bound, f"max abs difference {diff:.3g} <= twice the rounding bound, {bound:.3g}"


def assert_bit_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    """torch.equal, for the same computation (tolerance policy 2), with a readable failure message."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if not torch.equal(got, expected):
        err = (got.double() - expected.double()).abs().max().item()
        raise AssertionError(f"not bit-equal: max abs difference {err:.3g}")
