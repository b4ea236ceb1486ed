"""The denoising loop: Euler steps over the flow-matching ODE, written out so it reads top to bottom.

Everything here works on a batch in which each sample carries its own sigma schedule, seed, caption and
guidance (:class:`Guidance`: scale, cfg_normalization, cfg_truncation), so runs that differ only in shift, prompt,
seed, embeddings or guidance share one batched DiT forward. The arithmetic follows diffusers' ``ZImagePipeline``
step for step (fp32 latents, DiT input cast to the DiT's dtype, output negated, ``x += (s[i+1] - s[i]) * v``,
CFG in its order of operations) so that results match it to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from llm_dit.constants import DEFAULT_CFG_NORMALIZATION, DEFAULT_CFG_TRUNCATION, REFINER_MODES
from llm_dit.errors import LlmDitError
from llm_dit.generation.schedule import dit_timestep

StepCallback = Callable[[int, int], None]  # (step index, total steps)
# One sample's caption features: one tensor for every step, or one per step (conditioning that changes over the
# steps; equal steps share one tensor object).
Caption = torch.Tensor | Sequence[torch.Tensor]


def initial_noise(
    seeds: Sequence[int], channels: int, latent_height: int, latent_width: int, device: torch.device | str
) -> torch.Tensor:
    """Seeded fp32 noise ``[B, C, h, w]``, one generator per sample on ``device``.

    diffusers draws ``randn((1, C, h, w), generator=torch.Generator(device).manual_seed(seed))`` per sample
    when given one generator per sample (and the same for a single sample), so each image's noise depends
    on its own seed only, never on its position in a batch.
    """
    device = torch.device(device)
    noise = []
    for seed in seeds:
        generator = torch.Generator(device).manual_seed(int(seed))
        noise.append(
            torch.randn(
                (1, channels, latent_height, latent_width), generator=generator, device=device, dtype=torch.float32
            )
        )
    return torch.cat(noise, dim=0)


def noised_latents(image_latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Image latents moved to noise level ``sigma`` along the flow-matching path, ``sigma * noise + (1 - sigma) * z``.

    diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise`` as image-to-image calls it: ``sigma`` in the
    latents' dtype, shaped ``[B, 1, 1, 1]`` (a dimensioned tensor, so type promotion with the noise is the same).
    """
    s = sigma.to(device=image_latents.device, dtype=image_latents.dtype).reshape(-1, 1, 1, 1)
    return s * noise + (1.0 - s) * image_latents


def caption_at(caption: Caption, step: int) -> torch.Tensor:
    """A sample's caption features at ``step``."""
    return caption if isinstance(caption, torch.Tensor) else caption[step]


@contextmanager
def context_refiner_mode(transformer: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily change the DiT's context refiner (ablation 3): default | skip | single | double.

    ``skip`` bypasses it, ``single`` keeps only its first layer, ``double`` runs its layers twice in order
    (4 layers for Turbo's 2). The transformer iterates ``self.context_refiner``; swapping that list is the
    whole intervention, and the original is always restored.
    """
    if mode not in REFINER_MODES:
        raise LlmDitError(f"unknown refiner mode {mode!r}; valid: {', '.join(REFINER_MODES)}")
    original = transformer.context_refiner
    layers = list(original)
    replacement = {
        "default": layers,
        "skip": [],
        "single": layers[:1],
        "double": layers + layers,
    }[mode]
    transformer.context_refiner = nn.ModuleList(replacement)
    try:
        yield
    finally:
        transformer.context_refiner = original


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of one sample, as diffusers' ``ZImagePipeline`` applies it.

    - ``scale``: CFG is on where it is > 0: ``pred = pos + scale * (pos - neg)``.
    - ``normalization`` (diffusers' ``cfg_normalization``): then, if ``|pred| > |pos|`` (2-norms over the
      whole sample), ``pred`` is rescaled to ``|pos|``.
    - ``truncation`` (``cfg_truncation``): at a step whose DiT time ``t = 1 - sigma`` is above it, the sample
      runs without CFG (no negative in that forward); 1 = never.
    """

    scale: float = 0.0
    normalization: bool = DEFAULT_CFG_NORMALIZATION
    truncation: float = DEFAULT_CFG_TRUNCATION

    def applies(self, t: float) -> bool:
        """Whether CFG runs at DiT time ``t`` (diffusers: the scale is set to 0 where ``t > cfg_truncation``)."""
        return self.scale > 0 and not t > self.truncation

    def combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The guided prediction from the fp32 positive and negative outputs, in diffusers' order of operations."""
        pred = pos + self.scale * (pos - neg)
        if self.normalization:
            ori_pos_norm = torch.linalg.vector_norm(pos)
            new_pos_norm = torch.linalg.vector_norm(pred)
            max_new_norm = ori_pos_norm * float(self.normalization)  # diffusers' factor: float(True) = 1.0
            # torch.where instead of `if`: the same values, and no host sync inside the step loop.
            pred = torch.where(new_pos_norm > max_new_norm, pred * (max_new_norm / new_pos_norm), pred)
        return pred


@torch.no_grad()
def denoise(
    transformer: nn.Module,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    captions: Sequence[Caption],
    negative_captions: Sequence[torch.Tensor | None],
    guidance: Sequence[Guidance | float],
    refiner: str = "default",
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run the Euler loop and return the final fp32 latents ``[B, C, h, w]``.

    - ``latents``: fp32 initial noise ``[B, C, h, w]`` on the DiT's device.
    - ``sigmas``: ``[B, S + 1]`` fp32, one schedule per sample, all with the same number of steps S.
    - ``captions``: B tensors ``[L_i, D]`` (the DiT's caption features), any lengths; or, for a sample whose
      conditioning changes over the steps, a sequence of S tensors (the features of each step).
    - ``negative_captions``/``guidance``: CFG per sample (a :class:`Guidance`, or a bare scale); the negatives
      of the samples guided at a step join that step's forward, after the positives, in sample order.
    """
    batch = latents.shape[0]
    if sigmas.ndim != 2 or sigmas.shape[0] != batch:
        raise LlmDitError(f"sigmas must be [batch, steps + 1] = [{batch}, S + 1], got {tuple(sigmas.shape)}")
    if not (len(captions) == len(negative_captions) == len(guidance) == batch):
        raise LlmDitError("captions, negative captions and guidance need one entry per sample")
    guides = [g if isinstance(g, Guidance) else Guidance(scale=float(g)) for g in guidance]
    steps = sigmas.shape[1] - 1
    for j, caption in enumerate(captions):
        if not isinstance(caption, torch.Tensor) and len(caption) != steps:
            raise LlmDitError(f"sample {j} has caption features for {len(caption)} steps, the schedule has {steps}")
    for j, g in enumerate(guides):
        if g.scale > 0 and negative_captions[j] is None:
            raise LlmDitError(f"sample {j} has guidance_scale > 0 but no negative caption")
    dit_dtype = next(transformer.parameters()).dtype
    device = latents.device
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    # Each sample's DiT times, computed once (elementwise: the same bits as step by step); as Python floats
    # too, read once (diffusers compares cfg_truncation with these).
    ts = dit_timestep(sigmas[:, :steps])
    times = ts.tolist()

    with context_refiner_mode(transformer, refiner):
        for i in range(steps):
            sigma, sigma_next = sigmas[:, i], sigmas[:, i + 1]
            t = ts[:, i]
            cfg_index = [j for j, g in enumerate(guides) if g.applies(times[j][i])]
            x = latents.to(dit_dtype)
            # The DiT takes one [C, 1, h, w] latent per sample; negatives reuse their positive's latent.
            model_latents = list(x.unsqueeze(2).unbind(0)) + [x[j].unsqueeze(1) for j in cfg_index]
            model_t = torch.cat([t, t[cfg_index]]) if cfg_index else t
            model_captions = [caption_at(c, i) for c in captions] + [negative_captions[j] for j in cfg_index]
            out = transformer(model_latents, model_t, model_captions, return_dict=False)[0]

            velocity = [o.float() for o in out[:batch]]
            for k, j in enumerate(cfg_index):
                velocity[j] = guides[j].combine(velocity[j], out[batch + k].float())
            # Z-Image predicts the negated velocity of the noise -> image path.
            v = -torch.stack(velocity, dim=0).squeeze(2)
            dt = (sigma_next - sigma).view(batch, 1, 1, 1)
            latents = latents + dt * v
            if on_step is not None:
                on_step(i, steps)
    return latents
