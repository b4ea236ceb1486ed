"""How much the DiT's context refiner changes the caption (seed 001, Q3.2): the caption's rows as they enter the
refiner (the output of ``cap_embedder``: RMSNorm then a linear map to the DiT's width) and after each of its layers,
and the per-token cosines between them.

The refiner has no timestep modulation and attends only among caption tokens, so its output depends on the caption
alone: :func:`refiner_states` runs the transformer's own forward on a one-patch latent and stops it, by forward
hooks, as soon as the last refiner layer has run (the 30 main layers never run). Only the caption's real rows are
kept (the DiT pads a caption to a multiple of 32 with its ``cap_pad_token``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llm_dit.errors import LlmDitError
from llm_dit.generation.sampler import context_refiner_mode

__all__ = ["RefinerDrift", "refiner_drift", "refiner_states"]


class _Stop(Exception):
    """Raised from the last hook: the rest of the forward is not needed."""


@torch.no_grad()
def refiner_states(transformer: nn.Module, caption: Tensor, refiner: str = "default") -> list[Tensor]:
    """``[L, dim]`` float32 rows of the caption entering the context refiner, then after each of its layers (under
    ``refiner``: default, skip, single, double, as the sampler runs it). ``caption``: the features the DiT reads,
    ``[L, cap_feat_dim]``."""
    if caption.ndim != 2 or caption.shape[0] < 1:
        raise LlmDitError(f"caption features must be [L, D] with L >= 1, got {tuple(caption.shape)}")
    rows = caption.shape[0]
    states: list[Tensor] = []
    param = next(transformer.parameters())
    config = transformer.config
    patch = int(config.all_patch_size[0]) if hasattr(config, "all_patch_size") else 2
    with context_refiner_mode(transformer, refiner):
        layers = list(transformer.context_refiner)

        def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            states.append((output[0] if output.ndim == 3 else output)[:rows].float())
            if len(states) == len(layers) + 1:  # the embedder's output, then one per layer call
                raise _Stop

        # One hook per module: "double" runs each layer twice, and a module's hooks fire on every call.
        modules = [transformer.cap_embedder, *dict.fromkeys(layers)]
        handles = [module.register_forward_hook(keep) for module in modules]
        latent = torch.zeros((config.in_channels, 1, patch, patch), dtype=param.dtype, device=param.device)
        t = torch.zeros(1, dtype=param.dtype, device=param.device)
        try:
            transformer([latent], t, [caption.to(device=param.device, dtype=param.dtype)], return_dict=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
    if len(states) != len(layers) + 1:
        raise LlmDitError(f"the context refiner ran {len(states) - 1} of its {len(layers)} layers; cannot measure it")
    return states


@dataclass(frozen=True)
class RefinerDrift:
    """Per real caption token: ``after_layer[k]`` the cosine of the refiner's input with its output after layer k+1
    (the last: the whole refiner), ``per_layer[k]`` the cosine of layer k+1's input with its output."""

    after_layer: list[Tensor]
    per_layer: list[Tensor]

    @property
    def whole(self) -> float:
        """Mean over tokens of the cosine between what enters and what leaves the refiner (1 = unchanged)."""
        return float(self.after_layer[-1].mean()) if self.after_layer else 1.0

    def summary(self) -> dict[str, list[float]]:
        """Token means per layer: ``after_layer`` and ``per_layer``."""
        return {
            "after_layer": [float(c.mean()) for c in self.after_layer],
            "per_layer": [float(c.mean()) for c in self.per_layer],
        }


def refiner_drift(transformer: nn.Module, caption: Tensor, refiner: str = "default") -> RefinerDrift:
    """The refiner's effect on ``caption`` (see :class:`RefinerDrift`), cosines in float32."""
    states = refiner_states(transformer, caption, refiner)

    def cos(a: Tensor, b: Tensor) -> Tensor:
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)

    return RefinerDrift(
        after_layer=[cos(states[0], s) for s in states[1:]],
        per_layer=[cos(a, b) for a, b in itertools.pairwise(states)],
    )
