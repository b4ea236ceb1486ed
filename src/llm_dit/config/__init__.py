"""The one schema, validator and loader of every user-settable parameter.

The library API, the CLI and TOML files all go through this module, so a default can never differ
between them (an earlier tool had three different think-block defaults and a shift silently replaced
by 1.15). It must stay importable without torch or any model library: the CLI validates a whole run
here before anything heavy loads.

Layering (highest wins): overrides (CLI / API) > named profile > ``[default]`` profile > built-in.
Every value in a file is validated with its file, line, section and key; an unknown key or section is
an error with a suggested fix, never silently ignored.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llm_dit.constants import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_HIDDEN_LAYER,
    DEFAULT_SHIFT,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    HARD_MAX_TEXT_TOKENS,
    LONG_PROMPT_MODES,
    MAX_SEED,
    PADDING_MODES,
    REFINER_MODES,
    SIZE_MULTIPLE,
    THINK_EMPTY,
    THINK_NONE,
)
from llm_dit.errors import ConfigError, closest

__all__ = [
    "CLI_FLAGS",
    "DEFAULT_PROFILE",
    "SETTING_KEYS",
    "THINK_BLOCK_EMPTY",
    "THINK_BLOCK_NONE",
    "EncoderSettings",
    "GenerationSettings",
    "MetricsSettings",
    "PipelineSettings",
    "ResolvedSettings",
    "Settings",
    "build_section",
    "count_steps",
    "list_profiles",
    "load_settings",
    "parse_layer_weights",
    "parse_sigmas",
    "render_settings",
]

DEFAULT_PROFILE = "default"

# Qwen3-4B has 36 layers; output_hidden_states gives 37 entries: [0] = token embeddings, [k] = raw
# output of layer k-1, and [-1] is replaced by the final-normed state (so -2 is the last raw layer).
QWEN3_NUM_LAYERS = 36
NUM_HIDDEN_STATES = QWEN3_NUM_LAYERS + 1
MIN_LAYER, MAX_LAYER = -NUM_HIDDEN_STATES, QWEN3_NUM_LAYERS

THINK_BLOCK_NONE = THINK_NONE
THINK_BLOCK_EMPTY = THINK_EMPTY


_DTYPES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "torch.float32": "float32",
}
_FP16_NAMES = {"float16", "fp16", "half", "torch.float16", "torch.half"}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


# --------------------------------------------------------------------------------------------------
# Value parsing helpers (raise ValueError with a message that names the key; pydantic wraps them)
# --------------------------------------------------------------------------------------------------


class _FieldError(ValueError):
    """A model-level check that should be reported against one field (e.g. steps vs sigmas)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _as_int(name: str, value: Any) -> int:
    # Reject booleans explicitly: pydantic's lax mode (and Python) treat True as 1.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer (got {value!r})")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not a boolean")
    out: float | None = None
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            out = None
    if out is None:
        raise ValueError(f"{name} must be a number (got {value!r})")
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number (got {value!r})")
    return out


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string (got {type(value).__name__} {value!r})")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = _as_str(name, value).strip().lower()
    if text in choices:
        return text
    hint = closest(text, choices)
    extra = f"; did you mean '{hint}'?" if hint else ""
    raise ValueError(f"{name} '{value}' is not valid; use one of: {', '.join(choices)}{extra}")


def _dtype(name: str, value: Any) -> str:
    text = _as_str(name, value).strip().lower()
    if text in _FP16_NAMES:
        raise ValueError(f"{name} '{value}' refused: Z-Image overflows in float16 (NaN / black images); use bfloat16")
    if text not in _DTYPES:
        raise ValueError(f"{name} '{value}' is not valid; use auto, bfloat16 (bf16) or float32 (fp32)")
    # Canonical names, so metadata of "bf16" and "bfloat16" runs compare equal.
    return _DTYPES[text]


def _device(name: str, value: Any) -> str:
    text = _as_str(name, value).strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(f"{name} '{value}' is not valid; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return text


# The device and dtype fields of every section (encoder, pipeline, metrics) share one check each.
DeviceName = Annotated[str, BeforeValidator(lambda v: _device("device", v))]
DtypeName = Annotated[str, BeforeValidator(lambda v: _dtype("torch_dtype", v))]


def parse_scalar(raw: str) -> Any:
    """A ``key=value`` value: TOML value syntax (``-6``, ``2.5``, ``true``, ``"quoted"``, ``[1, 2]``,
    ``{a = 1}``); anything TOML rejects is a bare string (``empty``, ``-2:0.7,-5:0.3``). Surrounding
    whitespace is ignored."""
    text = raw.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_layer(name: str, layer: int) -> int:
    if not MIN_LAYER <= layer <= MAX_LAYER:
        raise ValueError(
            f"{name} {layer} is out of range {MIN_LAYER}..{MAX_LAYER} (Qwen3-4B has {QWEN3_NUM_LAYERS} "
            f"layers: 0 = token embeddings, -1 = final-normed output, -2 = official)"
        )
    return layer


def _size(name: str, value: Any) -> int:
    size = _as_int(name, value)
    if size <= 0:
        raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE} (got {size})")
    if size % SIZE_MULTIPLE:
        low = size - size % SIZE_MULTIPLE
        high = low + SIZE_MULTIPLE
        fix = f"{low} or {high}" if low > 0 else f"{high}"
        raise ValueError(f"{name} {size} is not a multiple of {SIZE_MULTIPLE}; use {fix}")
    return size


def parse_layer_weights(value: Any) -> dict[int, float] | None:
    """Parse ``{"-2": 0.7, "-5": 0.3}`` or ``"-2:0.7,-5:0.3"`` into ``{-2: 0.7, -5: 0.3}``.

    ``None`` or ``""`` mean no blend (the single ``hidden_layer`` is used).
    """
    name = "layer_weights"
    if value is None:
        return None
    items: list[tuple[Any, Any]]
    if isinstance(value, str):
        if not value.strip():
            return None
        items = []
        for part in value.split(","):
            if not part.strip():
                continue
            layer, sep, weight = part.partition(":")
            if not sep:
                raise ValueError(f"{name} entry '{part.strip()}' is not 'layer:weight' (e.g. '-2:0.7,-5:0.3')")
            items.append((layer, weight))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError(f"{name} must be a table like {{\"-2\" = 0.7}} or a string like '-2:0.7,-5:0.3'")
    if not items:
        raise ValueError(f"{name} must not be empty (leave it out to use hidden_layer alone)")
    out: dict[int, float] = {}
    seen: dict[int, int] = {}
    for raw_layer, raw_weight in items:
        layer = _check_layer(f"{name} key", _as_int(f"{name} key", raw_layer))
        weight = _as_float(f"{name}[{layer}]", raw_weight)
        # -2 and 35 name the same hidden state: a silent double count otherwise.
        canonical = layer % NUM_HIDDEN_STATES
        if canonical in seen:
            raise ValueError(f"{name} keys {seen[canonical]} and {layer} name the same hidden state")
        seen[canonical] = layer
        out[layer] = weight
    if math.isclose(sum(out.values()), 0.0, abs_tol=1e-12):
        raise ValueError(f"{name} weights sum to 0; they are normalised by their sum, so it must be non-zero")
    return out


def parse_sigmas(value: Any) -> list[float] | None:
    """Parse an explicit sigma schedule (a list, or a comma-separated string); ``""`` means none.

    Rules: values strictly decreasing, each in (0, 1], with an optional final 0.
    """
    name = "sigmas"
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]")
        if not text.strip():
            return None
        raw: list[Any] = [p for p in (s.strip() for s in text.split(",")) if p]
    elif isinstance(value, list | tuple):
        raw = list(value)
    else:
        raise ValueError(f"{name} must be a list of numbers like [1.0, 0.75, 0.5, 0.0]")
    if not raw:
        raise ValueError(f"{name} must not be empty (leave it out to use steps and shift)")
    sig = [_as_float(f"{name}[{i}]", v) for i, v in enumerate(raw)]
    for i, s in enumerate(sig):
        if s == 0.0 and i != len(sig) - 1:
            raise ValueError(f"{name}[{i}] = 0: 0 may only be the final value")
        if s != 0.0 and not 0.0 < s <= 1.0:
            raise ValueError(f"{name}[{i}] = {s}: values must be in (0, 1] (plus an optional final 0)")
    for i in range(1, len(sig)):
        if sig[i] >= sig[i - 1]:
            raise ValueError(f"{name} must be strictly decreasing: [{i - 1}] = {sig[i - 1]}, [{i}] = {sig[i]}")
    if not any(sig):
        raise ValueError(f"{name} needs at least one non-zero value")
    return sig


def count_steps(sigmas: list[float]) -> int:
    """Number of transformer forwards for an explicit schedule: its non-zero entries."""
    return sum(1 for s in sigmas if s != 0.0)


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

# frozen: a validated Settings cannot be changed behind the validator's back; use with_overrides().
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EncoderSettings(BaseModel):
    """[PROFILE.encoder]: how the Qwen3-4B text encoder turns a prompt into caption features."""

    model_config = _MODEL_CONFIG

    device: DeviceName = Field("auto", description="Text encoder device: auto, cpu, cuda or cuda:N.")
    torch_dtype: DtypeName = Field("auto", description="Text encoder dtype: auto, bfloat16 or float32.")
    hidden_layer: int = Field(
        DEFAULT_HIDDEN_LAYER,
        description="Hidden state to use, -37..36 (-2 = official; 0 = embeddings; -1 = final-normed).",
    )
    layer_weights: dict[int, float] | None = Field(
        None,
        description="Experimental: blend of hidden states, e.g. '-2:0.7,-5:0.3' (replaces hidden_layer).",
    )
    system_prompt: str | None = Field(None, description="System message; none (official) if empty.")
    think_block: str = Field(
        THINK_BLOCK_NONE,
        description="'none' = no think block (official), 'empty' = <think>\\n\\n</think>, else its text.",
    )
    max_text_tokens: int = Field(
        HARD_MAX_TEXT_TOKENS,
        description=f"Caption token cap, 1..{HARD_MAX_TEXT_TOKENS} (512 reproduces diffusers' cap).",
    )
    long_prompt_mode: str = Field(
        "truncate",
        description=f"What to do above the cap: {', '.join(LONG_PROMPT_MODES)} (none = error).",
    )
    padding: str = Field(
        "diffusers",
        description="Batch padding: 'diffusers' = at least 512 tokens as diffusers pads (bit-identical in bf16), "
        "'longest' = to the longest prompt (faster; differs by bf16 rounding).",
    )

    @field_validator("padding", mode="before")
    @classmethod
    def _v_padding(cls, v: Any) -> str:
        return _choice("padding", v, PADDING_MODES)

    @field_validator("hidden_layer", mode="before")
    @classmethod
    def _v_hidden_layer(cls, v: Any) -> int:
        return _check_layer("hidden_layer", _as_int("hidden_layer", v))

    @field_validator("layer_weights", mode="before")
    @classmethod
    def _v_layer_weights(cls, v: Any) -> dict[int, float] | None:
        return parse_layer_weights(v)

    @field_validator("system_prompt", mode="before")
    @classmethod
    def _v_system_prompt(cls, v: Any) -> str | None:
        # TOML has no null: "" is how a file says "no system prompt".
        if v is None:
            return None
        return _as_str("system_prompt", v) or None

    @field_validator("think_block", mode="before")
    @classmethod
    def _v_think_block(cls, v: Any) -> str:
        text = _as_str("think_block", v)
        key = text.strip().lower()
        if key in (THINK_BLOCK_NONE, THINK_BLOCK_EMPTY):
            return key
        if not key:
            # "" could mean either; an earlier tool got exactly this wrong, so make the user say which.
            raise ValueError(
                'think_block "" is ambiguous; use "none" (official: no think block) or "empty" '
                "(<think>\\n\\n</think>\\n\\n)"
            )
        return text

    @field_validator("max_text_tokens", mode="before")
    @classmethod
    def _v_max_text_tokens(cls, v: Any) -> int:
        n = _as_int("max_text_tokens", v)
        if not 1 <= n <= HARD_MAX_TEXT_TOKENS:
            raise ValueError(
                f"max_text_tokens must be in 1..{HARD_MAX_TEXT_TOKENS} (got {n}); the DiT's RoPE axis "
                f"holds at most {HARD_MAX_TEXT_TOKENS} caption tokens; 512 reproduces diffusers"
            )
        return n

    @field_validator("long_prompt_mode", mode="before")
    @classmethod
    def _v_long_prompt_mode(cls, v: Any) -> str:
        return _choice("long_prompt_mode", v, LONG_PROMPT_MODES)

    @property
    def think_content(self) -> str | None:
        """Text inside the think block: None = no block (official), "" = empty block, else the text."""
        if self.think_block == THINK_BLOCK_NONE:
            return None
        if self.think_block == THINK_BLOCK_EMPTY:
            return ""
        return self.think_block


class PipelineSettings(BaseModel):
    """[PROFILE.pipeline]: where and in which precision the DiT and the VAE run."""

    model_config = _MODEL_CONFIG

    device: DeviceName = Field("auto", description="DiT device: auto, cpu, cuda or cuda:N.")
    torch_dtype: DtypeName = Field("auto", description="DiT dtype: auto, bfloat16 or float32 (never float16).")
    vae_device: str | None = Field(None, description="VAE device; unset = same as device.")
    vae_dtype: str | None = Field(None, description="VAE dtype; unset = same as torch_dtype.")

    @field_validator("vae_device", mode="before")
    @classmethod
    def _v_vae_device(cls, v: Any) -> str | None:
        return None if v is None or v == "" else _device("vae_device", v)

    @field_validator("vae_dtype", mode="before")
    @classmethod
    def _v_vae_dtype(cls, v: Any) -> str | None:
        return None if v is None or v == "" else _dtype("vae_dtype", v)


class GenerationSettings(BaseModel):
    """[PROFILE.generation]: the sampling recipe (defaults = official Z-Image-Turbo recipe)."""

    model_config = _MODEL_CONFIG

    width: int = Field(DEFAULT_SIZE, description=f"Image width, a multiple of {SIZE_MULTIPLE}.")
    height: int = Field(DEFAULT_SIZE, description=f"Image height, a multiple of {SIZE_MULTIPLE}.")
    steps: int = Field(DEFAULT_STEPS, description="Transformer forwards (official Turbo: 8).")
    shift: float = Field(DEFAULT_SHIFT, description="Flow-matching time shift (official: 3.0).")
    sigmas: list[float] | None = Field(
        None,
        description="Experimental: explicit schedule, strictly decreasing in (0, 1], optional final 0; "
        "sets steps and bypasses shift.",
    )
    seed: int = Field(42, description=f"Noise seed, 0..{MAX_SEED}.")
    guidance_scale: float = Field(DEFAULT_GUIDANCE_SCALE, description="CFG scale; 0 = off (Turbo is distilled for 0).")
    negative_prompt: str = Field("", description="Negative prompt (only used when guidance_scale > 0).")
    refiner: str = Field("default", description=f"Refiner layers: {', '.join(REFINER_MODES)}.")
    output_dir: str = Field("outputs", description="Directory for images and their metadata.")

    @field_validator("width", "height", mode="before")
    @classmethod
    def _v_size(cls, v: Any, info: Any) -> int:
        return _size(info.field_name, v)

    @field_validator("steps", mode="before")
    @classmethod
    def _v_steps(cls, v: Any) -> int:
        n = _as_int("steps", v)
        if n < 1:
            raise ValueError("steps must be >= 1")
        return n

    @field_validator("shift", mode="before")
    @classmethod
    def _v_shift(cls, v: Any) -> float:
        s = _as_float("shift", v)
        if s <= 0:
            raise ValueError(f"shift must be > 0 (got {s}; official: {DEFAULT_SHIFT})")
        return s

    @field_validator("sigmas", mode="before")
    @classmethod
    def _v_sigmas(cls, v: Any) -> list[float] | None:
        return parse_sigmas(v)

    @field_validator("seed", mode="before")
    @classmethod
    def _v_seed(cls, v: Any) -> int:
        n = _as_int("seed", v)
        if not 0 <= n <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED} (got {n})")
        return n

    @field_validator("guidance_scale", mode="before")
    @classmethod
    def _v_guidance(cls, v: Any) -> float:
        g = _as_float("guidance_scale", v)
        if g < 0:
            raise ValueError(f"guidance_scale must be >= 0 (got {g}; 0 = no CFG, the Turbo recipe)")
        return g

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _v_negative(cls, v: Any) -> str:
        return _as_str("negative_prompt", v)

    @field_validator("refiner", mode="before")
    @classmethod
    def _v_refiner(cls, v: Any) -> str:
        return _choice("refiner", v, REFINER_MODES)

    @field_validator("output_dir", mode="before")
    @classmethod
    def _v_output_dir(cls, v: Any) -> str:
        text = _as_str("output_dir", v)
        if not text.strip():
            raise ValueError("output_dir must not be empty")
        return text

    @model_validator(mode="before")
    @classmethod
    def _steps_from_sigmas(cls, data: Any) -> Any:
        """With explicit sigmas, steps is their non-zero count; a different explicit steps is an error."""
        if not isinstance(data, Mapping) or data.get("sigmas") is None:
            return data
        try:
            sigmas = parse_sigmas(data["sigmas"])
        except ValueError:
            return data  # the field validator reports it
        if sigmas is None:
            return data
        n = count_steps(sigmas)
        if "steps" in data:
            try:
                steps = _as_int("steps", data["steps"])
            except ValueError:
                return data
            if steps != n:
                raise _FieldError(
                    "steps",
                    f"steps {steps} conflicts with sigmas ({n} non-zero values); with sigmas, steps is "
                    f"their non-zero count: drop steps or set it to {n}",
                )
            return data
        return {**data, "steps": n}


def _optional_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _as_str(name, value)
    return text or None  # "" unsets a profile's path, as for model_path


class MetricsSettings(BaseModel):
    """[PROFILE.metrics]: local weights of the model-based metrics and where they run.

    Paths are never downloaded or guessed: a metric whose weights are not set here refuses to run and names the
    setting to fill in. They do not affect generation (not part of any run id).
    """

    model_config = _MODEL_CONFIG

    siglip_path: str | None = Field(
        None, description="Local SigLIP2 checkpoint directory (transformers layout) for the 'siglip' metric."
    )
    clip_path: str | None = Field(
        None, description="Local CLIP checkpoint directory (transformers layout) for the 'clip_score' metric."
    )
    lpips_backbone: str | None = Field(
        None,
        description="torchvision ImageNet weights file of the LPIPS backbone (e.g. alexnet-owt-7be5be79.pth) "
        "for 'lpips' and 'diversity_lpips'.",
    )
    lpips_net: str = Field("alex", description="LPIPS backbone: alex or vgg (must match lpips_backbone).")
    device: DeviceName = Field("auto", description="Device of the metric models: auto, cpu, cuda or cuda:N.")
    # float32 by default even on GPUs: scoring is cheap next to generation, and bf16 moves CLIP scores by tenths.
    torch_dtype: DtypeName = Field(
        "float32", description="Dtype of the metric models: float32, bfloat16 or auto (bf16 on cuda)."
    )
    batch_size: int = Field(16, description="Images per batched forward of a metric model.")

    @field_validator("siglip_path", "clip_path", "lpips_backbone", mode="before")
    @classmethod
    def _v_paths(cls, v: Any, info: Any) -> str | None:
        return _optional_path(info.field_name, v)

    @field_validator("lpips_net", mode="before")
    @classmethod
    def _v_lpips_net(cls, v: Any) -> str:
        return _choice("lpips_net", v, ("alex", "vgg"))

    @field_validator("batch_size", mode="before")
    @classmethod
    def _v_batch(cls, v: Any) -> int:
        n = _as_int("batch_size", v)
        if n < 1:
            raise ValueError(f"batch_size must be >= 1 (got {n})")
        return n


class Settings(BaseModel):
    """Every user-settable parameter of a run; ``model_dump()`` goes into each image's metadata."""

    model_config = _MODEL_CONFIG

    model_path: str | None = Field(
        None, description="Checkpoint directory (diffusers layout); unset or 'tiny' = built-in tiny model."
    )
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @field_validator("model_path", mode="before")
    @classmethod
    def _v_model_path(cls, v: Any) -> str | None:
        if v is None:
            return None
        text = _as_str("model_path", v)
        # One spelling for the tiny model, so metadata and comparisons see a single value.
        return None if text in ("", "tiny") else text

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A validated copy with dotted-key overrides applied (``None`` values are ignored).

        Raises ConfigError naming the key (or its CLI flag). Prefer this over ``model_copy``, which
        does not validate.
        """
        base = _Layer("base", _flatten_settings(self), {})
        settings, _ = _resolve([base, _override_layer(overrides)])
        return settings


SECTIONS: dict[str, type[BaseModel]] = {
    "encoder": EncoderSettings,
    "pipeline": PipelineSettings,
    "generation": GenerationSettings,
    "metrics": MetricsSettings,
}
TOP_LEVEL_KEYS: tuple[str, ...] = ("model_path",)
SETTING_KEYS: tuple[str, ...] = TOP_LEVEL_KEYS + tuple(
    f"{sec}.{name}" for sec, model in SECTIONS.items() for name in model.model_fields
)

# Metrics settings have no flags of their own: they live in the config file ([PROFILE.metrics]).
CLI_FLAGS: dict[str, str] = {
    "model_path": "--model-path",
    "encoder.hidden_layer": "--hidden-layer",
    "encoder.layer_weights": "--layer-weights",
    "encoder.system_prompt": "--system-prompt",
    "encoder.think_block": "--think-block",
    "encoder.long_prompt_mode": "--long-prompt-mode",
    "encoder.padding": "--padding",
    "encoder.max_text_tokens": "--max-text-tokens",
    "encoder.device": "--encoder-device",
    "encoder.torch_dtype": "--encoder-dtype",
    "pipeline.device": "--dit-device",
    "pipeline.torch_dtype": "--dit-dtype",
    "pipeline.vae_device": "--vae-device",
    "pipeline.vae_dtype": "--vae-dtype",
    "generation.width": "--width",
    "generation.height": "--height",
    "generation.steps": "--steps",
    "generation.shift": "--shift",
    "generation.sigmas": "--sigmas",
    "generation.seed": "--seed",
    "generation.guidance_scale": "--guidance-scale",
    "generation.negative_prompt": "--negative-prompt",
    "generation.refiner": "--refiner",
    "generation.output_dir": "--output-dir",
}

# Keys from the seed project's configs (and common diffusers names) with a pointer to the real key.
_THINK_HINT = (
    'use think_block = "none" | "empty" | "<text>" in [{profile}.encoder] '
    "(note: enable_thinking=true in Qwen3's template means NO think block)"
)
_LEGACY_KEYS: dict[str, str] = {
    "enable_thinking": _THINK_HINT,
    "force_think_block": _THINK_HINT,
    "thinking_content": _THINK_HINT,
    "num_inference_steps": "use steps in [{profile}.generation]",
    "max_sequence_length": "use max_text_tokens in [{profile}.encoder] (512 = diffusers' cap)",
    "hidden_layers": "use hidden_layer (one layer) or layer_weights (a blend) in [{profile}.encoder]",
    "cfg_scale": "use guidance_scale in [{profile}.generation]",
    "dtype": "use torch_dtype in [{profile}.encoder] or [{profile}.pipeline]",
    "image_reward_path": "ImageReward is not supported: the image-reward package does not run with transformers 5 "
    "(see docs/metrics.md); use siglip_path or clip_path in [{profile}.metrics]",
}


def _key_home(key: str) -> list[str]:
    """The sections in which a bare key is valid ("" for the profile's top level)."""
    homes = [sec for sec, model in SECTIONS.items() if key in model.model_fields]
    if key in TOP_LEVEL_KEYS:
        homes.insert(0, "")
    return homes


def _sect(profile: str, sec: str) -> str:
    return f"[{profile}.{sec}]" if sec else f"[{profile}]"


# --------------------------------------------------------------------------------------------------
# Value formatting (for messages and render_settings)
# --------------------------------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")  # TOML forbids raw control characters in strings
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    """A TOML literal for a validated value (best effort for invalid ones, used in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_str(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _cli_value(value: Any) -> str:
    """How a value would look on the command line, for override error messages."""
    if isinstance(value, str):
        return shlex.quote(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------------------------------
# Locating keys in the file text (tomllib gives no line numbers)
# --------------------------------------------------------------------------------------------------

_KEYPART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEYPART}(?:\s*\.\s*{_KEYPART})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEYLINE_RE = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY_RE = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")
_KEYPART_RE = re.compile(_KEYPART)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for m in _KEYPART_RE.finditer(text):
        p = m.group(0)
        parts.append(p[1:-1] if p[:1] in "\"'" else p)
    return tuple(parts)


_STRING_RE = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'""")


def _bracket_depth(value: str) -> int:
    """Net '[' minus ']' in a TOML value fragment, ignoring strings and comments."""
    code = _STRING_RE.sub("", value).split("#", 1)[0]
    return code.count("[") - code.count("]")


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table/key path to the (1-based) line where it first appears."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline: str | None = None  # the delimiter of an open multi-line string
    array_depth = 0  # open brackets of a multi-line array value
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        if array_depth > 0:
            array_depth += _bracket_depth(line)
            continue
        header = _HEADER_RE.match(line)
        if header and not _KEYLINE_RE.match(line):
            table = _split_dotted(header.group(1))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], lineno)  # implicit parent tables point here too
            continue
        keyline = _KEYLINE_RE.match(line)
        if not keyline:
            continue
        path = table + _split_dotted(keyline.group(1))
        for i in range(len(table) + 1, len(path) + 1):
            lines.setdefault(path[:i], lineno)
        rest = keyline.group(2)
        for delim in ('"""', "'''"):
            if rest.count(delim) % 2 == 1:
                in_multiline = delim
                break
        else:
            # A multi-line array: skip its continuation lines (one could look like a [header]).
            array_depth = _bracket_depth(rest)
        if rest.lstrip().startswith("{"):
            # Inline table: its keys are on this line (nested ones are attributed to it too).
            for m in _INLINE_KEY_RE.finditer(rest):
                lines.setdefault(path + _split_dotted(m.group(1)), lineno)
    return lines


# --------------------------------------------------------------------------------------------------
# Layers and resolution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """Where one value came from, to prefix its error messages."""

    describe: Callable[[Any], str]


@dataclass
class _Layer:
    """One precedence level: dotted key -> value, plus where each value came from."""

    source: str
    values: dict[str, Any]
    origins: dict[str, _Origin]


def _flatten_settings(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"model_path": settings.model_path}
    for sec in SECTIONS:
        for name, value in getattr(settings, sec):
            out[f"{sec}.{name}"] = value
    return out


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        sec, _, name = key.rpartition(".")
        if sec:
            nested.setdefault(sec, {})[name] = value
        else:
            nested[name] = value
    return nested


SectionT = TypeVar("SectionT", bound=BaseModel)


def build_section(model: type[SectionT], values: Mapping[str, Any]) -> SectionT:
    """Validate API keyword values into a settings section, raising ConfigError (one clear line) on bad input."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError("; ".join(message for _, message in _validation_messages(exc))) from None


def _validation_messages(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message) for each pydantic error, with our own message text."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        cause = (err.get("ctx") or {}).get("error")
        if loc and loc[0] in SECTIONS:
            key = f"{loc[0]}.{loc[1]}" if len(loc) > 1 else loc[0]
            if isinstance(cause, _FieldError):
                key = f"{loc[0]}.{cause.key}"
        else:
            key = ".".join(loc[:1]) or "?"
        message = str(cause) if isinstance(cause, ValueError) else f"{key.rpartition('.')[2]}: {err['msg']}"
        out.append((key, message))
    return out


def _override_origin(key: str) -> _Origin:
    flag = CLI_FLAGS.get(key)
    if flag:
        return _Origin(lambda v, flag=flag: f"{flag} {_cli_value(v)}")
    return _Origin(lambda v, key=key: f"override {key}={_cli_value(v)}")


def _override_layer(overrides: Mapping[str, Any] | None) -> _Layer:
    """Validate override keys; ``None`` values mean "not given" (the CLI's unset options)."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in (overrides or {}).items():
        if key not in SETTING_KEYS:
            hint = closest(key, SETTING_KEYS)
            if hint is None:
                # A bare name such as "steps": point at its dotted form.
                hint = next((k for k in SETTING_KEYS if k.rpartition(".")[2] == key), None)
            fix = f"did you mean '{hint}'?" if hint else f"valid settings: {', '.join(SETTING_KEYS)}"
            errors.append(f"unknown setting '{key}'; {fix}")
            continue
        if value is not None:
            values[key] = value
    if errors:
        raise ConfigError("\n".join(errors))
    return _Layer("override", values, {k: _override_origin(k) for k in values})


def _resolve(layers: list[_Layer]) -> tuple[Settings, dict[str, str]]:
    """Merge layers (last wins), validate the result, and report errors at their origin."""
    merged: dict[str, Any] = {}
    winner: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for key, value in layer.values.items():
            merged[key] = value
            winner[key] = i
    # A steps value from a lower layer than the sigmas is superseded by them (steps is derived);
    # a steps value from the same or a higher layer is checked against them by the model.
    sig_layer = winner.get("generation.sigmas")
    sig_value = merged.get("generation.sigmas")
    sig_given = sig_layer is not None and sig_value is not None and sig_value != ""
    if sig_given and "generation.steps" in winner and winner["generation.steps"] < sig_layer:
        del merged["generation.steps"]
        del winner["generation.steps"]
    try:
        settings = Settings.model_validate(_nest(merged))
    except ValidationError as exc:
        errors = []
        for key, message in _validation_messages(exc):
            origin = layers[winner[key]].origins.get(key) if key in winner else None
            where = origin.describe(merged[key]) if origin else f"{key} = {_toml_value(merged.get(key))}"
            errors.append(f"{where}: {message}")
        raise ConfigError("\n".join(errors)) from None
    sources = {key: layers[winner[key]].source if key in winner else "default" for key in SETTING_KEYS}
    if sig_given and "generation.steps" not in winner:
        sources["generation.steps"] = layers[sig_layer].source  # derived from the sigmas
    return settings, sources


# --------------------------------------------------------------------------------------------------
# The config file
# --------------------------------------------------------------------------------------------------


class _ConfigFile:
    """A parsed config file with line lookup, validated structure and per-profile layers."""

    def __init__(self, path: Path, label: str) -> None:
        self.label = label
        if not path.exists():
            raise ConfigError(
                f"config file '{label}' not found (looked at {path.resolve()}); "
                "pass an existing file, or start from config.toml.example"
            )
        if not path.is_file():
            raise ConfigError(f"config file '{label}' is not a file")
        try:
            self.text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read ({exc.strerror})") from None
        try:
            self.data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"at line (\d+)", msg)
            where = f"{label}:{m.group(1)}" if m else label
            raise ConfigError(f"{where}: TOML syntax error: {msg}") from None
        self.lines = _index_lines(self.text)

    def where(self, *path: str) -> str:
        """'file:line' for a table/key path, falling back to its nearest enclosing table."""
        for i in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:i]))
            if line is not None:
                return f"{self.label}:{line}"
        return self.label

    def line_of(self, *path: str) -> int:
        """For sorting errors by position."""
        for i in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:i]))
            if line is not None:
                return line
        return 0

    @property
    def profiles(self) -> list[str]:
        return list(self.data)

    def check(self) -> None:
        """Check the structure and values of every profile; raise one ConfigError listing all problems."""
        errors: list[tuple[int, str]] = []
        for profile, table in self.data.items():
            if profile in SECTIONS:
                errors.append(
                    (
                        self.line_of(profile),
                        f"{self.where(profile)}: section [{profile}] must be inside a profile; "
                        f"use [{DEFAULT_PROFILE}.{profile}]",
                    )
                )
                continue
            if profile in TOP_LEVEL_KEYS or not isinstance(table, dict):
                errors.append(
                    (
                        self.line_of(profile),
                        f"{self.where(profile)}: '{profile}' is outside any profile; every setting must be "
                        f"under a profile table such as [{DEFAULT_PROFILE}]",
                    )
                )
                continue
            # Values of the known keys are checked too, so one run reports every problem.
            errors += self._check_profile(profile, table)
            errors += self._check_values(profile, table)
        if errors:
            errors.sort(key=lambda e: e[0])
            raise ConfigError("\n".join(msg for _, msg in errors))

    def _unknown_key(self, profile: str, sec: str, key: str, valid: list[str]) -> str:
        where = self.where(profile, *([sec] if sec else []), key)
        head = f"{where}: unknown key '{key}' in {_sect(profile, sec)}; "
        if key in _LEGACY_KEYS:
            return head + _LEGACY_KEYS[key].format(profile=profile)
        homes = [h for h in _key_home(key) if h != sec]
        if homes:
            return head + f"'{key}' belongs in " + " or ".join(_sect(profile, h) for h in homes)
        hint = closest(key, valid)
        if hint:
            return head + f"did you mean '{hint}'?"
        everywhere = closest(key, [k.rpartition(".")[2] for k in SETTING_KEYS])
        if everywhere:
            homes = " or ".join(_sect(profile, h) for h in _key_home(everywhere))
            return head + f"did you mean '{everywhere}' in {homes}?"
        return head + f"valid keys: {', '.join(valid)}"

    def _check_profile(self, profile: str, table: dict[str, Any]) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        top_valid = list(TOP_LEVEL_KEYS) + list(SECTIONS)
        for key, value in table.items():
            line = self.line_of(profile, key)
            if key in SECTIONS:
                if not isinstance(value, dict):
                    errors.append((line, f"{self.where(profile, key)}: '{key}' must be a table: [{profile}.{key}]"))
                    continue
                valid = list(SECTIONS[key].model_fields)
                for sub in value:
                    if sub not in valid:
                        errors.append((self.line_of(profile, key, sub), self._unknown_key(profile, key, sub, valid)))
            elif key in TOP_LEVEL_KEYS:
                continue
            elif isinstance(value, dict):
                # An unknown sub-table such as [default.pytorch]: name the nearest section, and
                # where each of its keys belongs, in one line.
                hint = closest(key, list(SECTIONS))
                fix = (
                    f"did you mean [{profile}.{hint}]?"
                    if hint
                    else "valid sections: " + ", ".join(f"[{profile}.{s}]" for s in SECTIONS)
                )
                moves = []
                for sub in value:
                    homes = _key_home(sub)
                    if sub in _LEGACY_KEYS:
                        moves.append(f"for '{sub}' {_LEGACY_KEYS[sub].format(profile=profile)}")
                    elif homes:
                        moves.append(f"'{sub}' belongs in " + " or ".join(_sect(profile, h) for h in homes))
                errors.append(
                    (
                        line,
                        f"{self.where(profile, key)}: unknown section [{profile}.{key}]; {fix}"
                        + "".join(f"; {m}" for m in moves),
                    )
                )
            else:
                errors.append((line, self._unknown_key(profile, "", key, top_valid)))
        return errors

    def _flat(self, table: dict[str, Any]) -> dict[str, Any]:
        """The profile's known keys as dotted names (unknown ones are reported by _check_profile)."""
        flat = {k: table[k] for k in TOP_LEVEL_KEYS if k in table}
        for sec, model in SECTIONS.items():
            section = table.get(sec)
            if not isinstance(section, dict):
                continue
            for name, value in section.items():
                if name in model.model_fields:
                    flat[f"{sec}.{name}"] = value
        return flat

    def _origin(self, profile: str, key: str) -> _Origin:
        sec, _, name = key.rpartition(".")
        path = (profile, sec, name) if sec else (profile, name)

        def describe(value: Any) -> str:
            return f"{self.where(*path)}: {_sect(profile, sec)} {name} = {_toml_value(value)}"

        return _Origin(describe)

    def _check_values(self, profile: str, table: dict[str, Any]) -> list[tuple[int, str]]:
        flat = self._flat(table)
        try:
            Settings.model_validate(_nest(flat))
        except ValidationError as exc:
            out = []
            for key, message in _validation_messages(exc):
                sec, _, name = key.rpartition(".")
                path = (profile, sec, name) if sec else (profile, name)
                where = self._origin(profile, key).describe(flat.get(key))
                out.append((self.line_of(*path), f"{where}: {message}"))
            return out
        return []

    def layer(self, profile: str) -> _Layer:
        flat = self._flat(self.data.get(profile, {}))
        return _Layer(f"{self.label}:[{profile}]", flat, {key: self._origin(profile, key) for key in flat})


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSettings:
    """Validated settings plus where each value came from.

    ``sources`` maps every dotted key to "default", "<file>:[profile]" or "override".
    ``notes`` lists settings that are valid but have no effect in this combination.
    """

    settings: Settings
    sources: dict[str, str]
    config_path: Path | None
    profile: str
    notes: tuple[str, ...] = field(default=())


def list_profiles(config_path: str | Path) -> list[str]:
    """The profile names in a config file (validated)."""
    cfg = _ConfigFile(Path(config_path), str(config_path))
    cfg.check()
    return cfg.profiles


def _notes(settings: Settings, sources: Mapping[str, str]) -> tuple[str, ...]:
    """Valid-but-inert combinations, so a value that does nothing is never silently accepted."""
    notes = []
    gen, enc = settings.generation, settings.encoder
    if gen.sigmas is not None and sources["generation.shift"] != "default":
        notes.append(f"shift {gen.shift} is not applied: explicit sigmas are used verbatim")
    if gen.negative_prompt and gen.guidance_scale == 0:
        notes.append("negative_prompt has no effect: guidance_scale is 0 (CFG off)")
    if enc.layer_weights is not None and sources["encoder.hidden_layer"] != "default":
        notes.append(f"hidden_layer {enc.hidden_layer} is not used: layer_weights replaces it")
    return tuple(notes)


def load_settings(
    config_path: str | Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """Resolve settings: overrides > named profile > ``[default]`` > built-in defaults.

    ``overrides`` are keyed by dotted name ("generation.steps", "model_path"); ``None`` values are
    ignored (an unset CLI option). The whole file is validated, every profile, so a typo anywhere is
    reported. Raises ConfigError with one line per problem.
    """
    name = profile or DEFAULT_PROFILE
    layers: list[_Layer] = []
    path: Path | None = None
    if config_path is not None:
        path = Path(config_path)
        cfg = _ConfigFile(path, str(config_path))
        cfg.check()
        if name not in cfg.data and name != DEFAULT_PROFILE:
            hint = closest(name, cfg.profiles)
            extra = f"did you mean '{hint}'? " if hint else ""
            raise ConfigError(
                f"profile '{name}' not found in {cfg.label}; {extra}profiles in the file: "
                + (", ".join(cfg.profiles) or "(none)")
            )
        if DEFAULT_PROFILE in cfg.data:
            layers.append(cfg.layer(DEFAULT_PROFILE))
        if name != DEFAULT_PROFILE:
            layers.append(cfg.layer(name))
    elif name != DEFAULT_PROFILE:
        raise ConfigError(f"profile '{name}' given but no config file; pass --config FILE")
    layers.append(_override_layer(overrides))
    settings, sources = _resolve(layers)
    return ResolvedSettings(settings, sources, path, name, _notes(settings, sources))


def render_settings(resolved: ResolvedSettings) -> str:
    """The effective settings as TOML (a ``[default]`` layout), each value commented with its source.

    Unset optional values are written as comments, so the text parses back to the same settings.
    """
    s = resolved.settings
    origin = f" of {resolved.config_path}" if resolved.config_path else ""
    out = [
        f'# llm-dit resolved settings: profile "{resolved.profile}"{origin}',
        "# After each value, its source: default = built-in, FILE:[profile] = config file,",
        "# override = CLI/API. Unset optional values are shown as comments.",
        "",
    ]

    def emit(key: str, value: Any, unset_note: str = "") -> None:
        name = key.rpartition(".")[2]
        src = resolved.sources.get(key, "default")
        if value is None:
            out.append(f"# {name} is unset ({unset_note})  # {src}")
        else:
            out.append(f"{name} = {_toml_value(value)}  # {src}")

    unset = {
        "model_path": "built-in tiny model",
        "encoder.layer_weights": "hidden_layer alone",
        "encoder.system_prompt": "no system prompt",
        "pipeline.vae_device": "same as device",
        "pipeline.vae_dtype": "same as torch_dtype",
        "generation.sigmas": "schedule from steps and shift",
        "metrics.siglip_path": "metric 'siglip' unavailable",
        "metrics.clip_path": "metric 'clip_score' unavailable",
        "metrics.lpips_backbone": "metrics 'lpips', 'diversity_lpips' unavailable",
    }
    out.append(f"[{DEFAULT_PROFILE}]")
    emit("model_path", s.model_path, unset["model_path"])
    for sec in SECTIONS:
        out += ["", f"[{DEFAULT_PROFILE}.{sec}]"]
        for name, value in getattr(s, sec):
            key = f"{sec}.{name}"
            if isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            emit(key, value, unset.get(key, ""))
    return "\n".join(out) + "\n"
