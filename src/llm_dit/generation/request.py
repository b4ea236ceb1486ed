"""What one image needs: a prompt or caption features plus its settings, and which requests can share a batch.

No torch here (tensors appear only as type hints): planning, checking and dry runs build requests without
loading any model library.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llm_dit.config import (
    ConditioningSettings,
    EncoderSettings,
    GenerationSettings,
    build_section,
    conditioning_problem,
    generation_problem,
)
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    import torch

_ENCODER_FIELDS = set(EncoderSettings.model_fields) - set(ENCODER_LOAD_FIELDS)
_GENERATION_FIELDS = set(GenerationSettings.model_fields)
_CONDITIONING_FIELDS = set(ConditioningSettings.model_fields)


# A resolved run's params record an inert value as None; these generation settings must then be left unset.
_UNSET_WHEN_NONE = ("shift", "negative_prompt", "cfg_normalization", "cfg_truncation")


def encoder_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """A resolved run's encoder settings (``hidden_layer`` left out when inert: a blend sets ``layer_weights``)."""
    out = {k: params[k] for k in EncoderSettings.model_fields if k not in ENCODER_LOAD_FIELDS and k in params}
    if out.get("hidden_layer") is None:
        out.pop("hidden_layer", None)
    return out


def conditioning_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """A resolved run's conditioning settings (inert None values left out)."""
    return {k: params[k] for k in ConditioningSettings.model_fields if params.get(k) is not None}


def generation_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """A resolved run's generation settings, seed included (inert None values left out)."""
    out = {k: params[k] for k in GenerationSettings.model_fields if k != "output_dir" and k in params}
    for key in _UNSET_WHEN_NONE:
        if out.get(key) is None:
            out.pop(key, None)
    return out


def request_from_params(prompt: str, params: dict[str, Any], tag: Any = None) -> GenerationRequest:
    """The request of a run from its prompt text and resolved params (as the planner and the store record them)."""
    return GenerationRequest.build(
        prompt,
        tag=tag,
        shift_source=params.get("shift_source"),
        **encoder_kwargs(params),
        **conditioning_kwargs(params),
        **generation_kwargs(params),
    )


@dataclass
class GenerationRequest:
    """One image to make: a prompt or precomputed caption features, plus its settings."""

    prompt: str | None = None
    embeddings: torch.Tensor | None = None  # [L, D] caption features, bypassing the text encoder
    negative_embeddings: torch.Tensor | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    encoder: dict[str, Any] = field(default_factory=dict)  # overrides of the pipeline encoder's settings
    tag: Any = None  # caller's handle (e.g. a run id); carried through untouched
    # Where generation.shift came from when it is set (constants.SHIFT_FROM_*), for the image's record;
    # an unset shift is the checkpoint's, and the pipeline says so itself.
    shift_source: str | None = None
    # Where the caption features come from and the operations on them (default: the text encoder alone).
    conditioning: ConditioningSettings = field(default_factory=ConditioningSettings)

    @classmethod
    def build(
        cls,
        prompt: str | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        negative_embeddings: torch.Tensor | None = None,
        tag: Any = None,
        shift_source: str | None = None,
        **params: Any,
    ) -> GenerationRequest:
        """Split flat keyword parameters into generation settings and encoder overrides, validating both."""
        unknown = set(params) - _ENCODER_FIELDS - _GENERATION_FIELDS - _CONDITIONING_FIELDS
        if unknown:
            valid = ", ".join(sorted(_ENCODER_FIELDS | _GENERATION_FIELDS | _CONDITIONING_FIELDS))
            raise LlmDitError(f"unknown generation parameter(s) {', '.join(sorted(unknown))}; valid: {valid}")
        if (prompt is None) == (embeddings is None):
            raise LlmDitError("give exactly one of prompt or embeddings")
        encoder = {k: v for k, v in params.items() if k in _ENCODER_FIELDS}
        if encoder:
            build_section(EncoderSettings, encoder)  # validate early
        generation = build_section(GenerationSettings, {k: v for k, v in params.items() if k in _GENERATION_FIELDS})
        conditioning = build_section(
            ConditioningSettings, {k: v for k, v in params.items() if k in _CONDITIONING_FIELDS}
        )
        problem = conditioning_problem(conditioning) or generation_problem(generation)
        if problem is not None:
            raise LlmDitError(f"{problem[0]}: {problem[1]}")
        if embeddings is not None and conditioning.conditioning != "text":
            raise LlmDitError(f"conditioning = {conditioning.conditioning} makes its own features: drop embeddings")
        if embeddings is not None and conditioning.prompt_switch is not None:
            raise LlmDitError("prompt_switch switches the prompt a run encodes: give a prompt, not embeddings")
        return cls(prompt, embeddings, negative_embeddings, generation, encoder, tag, shift_source, conditioning)


def needs_text_features(request: GenerationRequest) -> bool:
    """Whether the prompt goes through the Qwen3-4B text encoder: always for text conditioning, and for a source
    when text is mixed in (vl_alpha < 1) or a style delta is added to it."""
    c = request.conditioning
    if request.embeddings is not None:
        return False
    return c.conditioning == "text" or c.lowest_alpha < 1.0 or c.style_image is not None


# What a step variant drops: the per-step settings it resolves to one step's values.
_PER_STEP_RESET = {"vl_alpha_schedule": None, "prompt_switch": None, "prompt_switch_step": None}


def step_variants(request: GenerationRequest, sigmas: Sequence[float]) -> list[GenerationRequest] | None:
    """The request each denoising step is conditioned by, for conditioning that changes over the steps (None
    otherwise: every step reads the request itself).

    ``sigmas``: the sigma each step starts from (the run's schedule without its final 0). Step ``i`` is the run with
    ``vl_alpha`` = the schedule's alpha at ``i`` and, from ``prompt_switch_step`` on, ``prompt_switch`` as its prompt
    (the whole conditioning follows: a VL turn without vl_text reads the switched prompt too). Steps with equal
    settings are equal requests, so their features are made once.
    """
    c = request.conditioning
    if not c.per_step:
        return None
    schedule = c.alpha_schedule
    alphas = schedule.values(sigmas) if schedule is not None else [None] * len(sigmas)
    out = []
    for i, alpha in enumerate(alphas):
        switched = c.prompt_switch is not None and c.prompt_switch_step is not None and i >= c.prompt_switch_step
        update: dict[str, Any] = dict(_PER_STEP_RESET)
        if alpha is not None:
            update["vl_alpha"] = alpha
        out.append(
            replace(
                request,
                prompt=c.prompt_switch if switched else request.prompt,
                conditioning=c.model_copy(update=update),
            )
        )
    return out


def encoding_texts(request: GenerationRequest) -> list[str]:
    """The texts a request needs encoded by the text encoder: its prompt and prompt_switch (unless it brings
    embeddings or its source alone makes the features) and, with CFG, its negative prompt (unless it brings negative
    embeddings)."""
    texts = [request.prompt or ""] if needs_text_features(request) else []
    if texts and request.conditioning.prompt_switch is not None:
        texts.append(request.conditioning.prompt_switch)
    if request.generation.guidance_scale > 0 and request.negative_embeddings is None:
        texts.append(request.generation.negative_prompt)
    return texts


def sampling_group(request: GenerationRequest, sigmas: Sized | None = None) -> tuple[int, int, int, str]:
    """``(width, height, steps, refiner)``: requests with equal keys can share batched DiT forwards.

    ``sigmas``: the request's resolved schedule (final 0 included) when the caller has it; otherwise the step
    count is the settings' (with explicit sigmas, the settings derive steps from them).
    """
    gen = request.generation
    steps = len(sigmas) - 1 if sigmas is not None else gen.steps
    return (gen.width, gen.height, steps, gen.refiner)
