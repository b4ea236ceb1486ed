"""Sigma schedules for flow matching, computed exactly as diffusers' FlowMatchEulerDiscreteScheduler does.

N steps = N DiT forwards: ``s = linspace(1, 1/N, N)``, ``s' = shift*s / (1 + (shift-1)*s)``, then a final 0.
The arithmetic mirrors diffusers (torch linspace -> numpy float32 shift -> torch float32) so that sigmas, and
so images, are bit-identical to ``ZImagePipeline``'s.

The checks are pure Python (:func:`check_schedule`, what the light request checks use); torch and numpy are
imported by the functions that build tensors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    import torch

NUM_TRAIN_TIMESTEPS = 1000


def _check_shifted(steps: int, shift: float | None) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise LlmDitError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(shift, int | float) and math.isfinite(shift) and shift > 0):
        raise LlmDitError(f"shift must be a finite number > 0, got {shift!r}")


def _explicit_values(values: Sequence[float]) -> list[float]:
    """The non-zero values of an explicit schedule, checked (a final 0 dropped)."""
    vals = [float(v) for v in values]
    if vals and vals[-1] == 0.0:
        vals = vals[:-1]
    if not vals:
        raise LlmDitError("sigmas must contain at least one value > 0")
    for v in vals:
        if not (math.isfinite(v) and 0.0 < v <= 1.0):
            raise LlmDitError(f"sigmas must lie in (0, 1], got {v}")
    if any(b >= a for a, b in itertools.pairwise(vals)):
        raise LlmDitError(f"sigmas must be strictly decreasing, got {vals}")
    return vals


def check_schedule(steps: int, shift: float | None, sigmas: Sequence[float] | None = None) -> int:
    """The checks of :func:`resolve_sigmas` without building it: the number of DiT forwards, or LlmDitError."""
    if sigmas is not None:
        return len(_explicit_values(sigmas))
    _check_shifted(steps, shift)
    return steps


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The ``steps + 1`` sigmas (final 0 included) for ``steps`` forwards at ``shift``, float32."""
    _check_shifted(steps, shift)
    import numpy as np
    import torch

    base = np.array(torch.linspace(1.0, 1.0 / steps, steps).tolist()).astype(np.float32)
    shifted = shift * base / (1 + (shift - 1) * base)
    sigmas = torch.from_numpy(np.asarray(shifted, dtype=np.float32)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def explicit_sigmas(values: Sequence[float]) -> torch.Tensor:
    """An explicit schedule used verbatim (no shift); a final 0 is appended when missing."""
    vals = _explicit_values(values)
    import torch

    return torch.cat([torch.tensor(vals, dtype=torch.float32), torch.zeros(1)])


def resolve_sigmas(steps: int, shift: float, sigmas: Sequence[float] | None = None) -> torch.Tensor:
    """The schedule a run uses: the explicit list when given, else the shifted linear one."""
    return explicit_sigmas(sigmas) if sigmas is not None else shifted_sigmas(steps, shift)


def dit_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The DiT's time input for noise level ``sigma``: ``t = 1 - sigma``, via diffusers' float32 route.

    diffusers goes through ``timestep = sigma * 1000`` and ``(1000 - timestep) / 1000``; rounding differs
    from ``1 - sigma`` in the last bit, so the same route is taken here.
    """
    import torch

    timestep = sigma.to(torch.float32) * NUM_TRAIN_TIMESTEPS
    return (NUM_TRAIN_TIMESTEPS - timestep) / NUM_TRAIN_TIMESTEPS


def img2img_start(steps: int, strength: float | None) -> int:
    """The first step an image-to-image run takes of its ``steps``-step schedule (0 without img2img).

    diffusers' ``ZImageImg2ImgPipeline.get_timesteps``, in the same Python float arithmetic:
    ``t_start = int(max(steps - min(steps * strength, steps), 0))``; the run takes ``steps - t_start`` steps and its
    start latents are the image's, noised to the sigma of step ``t_start``. Refuses a strength that runs no step.
    """
    if strength is None:
        return 0
    init_timestep = min(steps * strength, steps)
    t_start = int(max(steps - init_timestep, 0))
    if steps - t_start < 1:
        raise LlmDitError(
            f"strength {strength} with {steps} steps runs no step (int({steps} * {strength}) = 0); "
            f"raise strength to at least {1 / steps:.4g} or the steps"
        )
    return t_start
