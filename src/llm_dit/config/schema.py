"""The one schema of every user-settable parameter: value parsing, the settings models and their layered resolution.

Owns the pydantic models (:class:`Settings` and its sections), the dotted setting keys and their CLI flags, the
value parsers (layer blends, sigma schedules, ``KEY=VALUE`` items and their scalars), and the
resolution of precedence layers into validated settings with each error reported at its origin. Resolution lives
here, not in the file loader, because :meth:`Settings.with_overrides` needs it. It must not import torch, any
model library or another llm_dit layer: the CLI validates a whole run here before anything heavy loads.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

from llm_dit.config.step_schedules import AlphaSchedule, parse_alpha_schedule
from llm_dit.constants import (
    CONDITIONING_SOURCES,
    DEFAULT_CFG_NORMALIZATION,
    DEFAULT_CFG_TRUNCATION,
    DEFAULT_EMBEDDING_LAYER,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_HIDDEN_LAYER,
    DEFAULT_OUTLIER_THRESHOLD,
    DEFAULT_SHIFT,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DEFAULT_THINK_BLOCK,
    DEFAULT_VL_LAYER,
    EMBEDDING_FORMATS,
    FILL_MODES,
    GRADUATED_CURVES,
    HARD_MAX_TEXT_TOKENS,
    LONG_PROMPT_MODES,
    MAX_SEED,
    OUTLIER_MASKS,
    PADDING_MODES,
    REFINER_MODES,
    SIZE_MULTIPLE,
    THINK_EMPTY,
    THINK_NONE,
    VL_BLENDS,
    VL_NORMALIZATIONS,
    VL_TOKEN_MODES,
)
from llm_dit.errors import ConfigError, closest

# Qwen3-4B has 36 layers; output_hidden_states gives 37 entries: [0] = token embeddings, [k] = raw
# output of layer k-1, and [-1] is replaced by the final-normed state (so -2 is the last raw layer).
QWEN3_NUM_LAYERS = 36
NUM_HIDDEN_STATES = QWEN3_NUM_LAYERS + 1
MIN_LAYER, MAX_LAYER = -NUM_HIDDEN_STATES, QWEN3_NUM_LAYERS


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


def _int_in(name: str, value: Any, low: int, high: int, why: str = "") -> int:
    number = _as_int(name, value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in {low}..{high} (got {number}){why}")
    return number


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


def split_assignment(item: str, flag: str, example: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (stripped key, value verbatim), or ConfigError naming the flag and an example."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {item!r}: expected {example}")
    return key.strip(), value


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
# Value formatting (TOML literals for messages and render_settings)
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


def toml_value(value: Any) -> str:
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
        inner = ", ".join(f"{_toml_str(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)  # TOML dates and times print as they are written


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
        DEFAULT_THINK_BLOCK,
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
        if key in (THINK_NONE, THINK_EMPTY):
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
        return _int_in(
            "max_text_tokens",
            v,
            1,
            HARD_MAX_TEXT_TOKENS,
            f"; the DiT's RoPE axis holds at most {HARD_MAX_TEXT_TOKENS} caption tokens; 512 reproduces diffusers",
        )

    @field_validator("long_prompt_mode", mode="before")
    @classmethod
    def _v_long_prompt_mode(cls, v: Any) -> str:
        return _choice("long_prompt_mode", v, LONG_PROMPT_MODES)

    @property
    def think_content(self) -> str | None:
        """Text inside the think block: None = no block (official), "" = empty block, else the text."""
        if self.think_block == THINK_NONE:
            return None
        if self.think_block == THINK_EMPTY:
            return ""
        return self.think_block


# diffusers' torch-native attention backends (and flex) that run without extra packages; 'auto' picks by device.
ATTENTION_BACKENDS = ("auto", "native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math", "flex")


class PipelineSettings(BaseModel):
    """[PROFILE.pipeline]: where and in which precision the DiT and the VAE run."""

    model_config = _MODEL_CONFIG

    device: DeviceName = Field("auto", description="DiT device: auto, cpu, cuda or cuda:N.")
    torch_dtype: DtypeName = Field("auto", description="DiT dtype: auto, bfloat16 or float32 (never float16).")
    vae_device: str | None = Field(None, description="VAE device; unset = same as device.")
    vae_dtype: str | None = Field(None, description="VAE dtype; unset = same as torch_dtype.")
    compile: str = Field(
        "auto",
        description="torch.compile of the DiT: none, regional (each transformer block, compiled once and reused), "
        "full (the whole model: recompiles on new shapes), or auto (regional on CUDA, none elsewhere).",
    )
    compile_backend: str = Field(
        "inductor", description="torch.compile backend: inductor, or aot_eager / eager to debug a compile problem."
    )
    compile_mode: str = Field(
        "default", description="torch.compile mode: default or max-autotune-no-cudagraphs (longer first call)."
    )
    attention_backend: str = Field(
        "auto",
        description="diffusers attention backend of the DiT: native (PyTorch SDPA's choice), _native_cudnn, "
        "_native_efficient, _native_flash, _native_math, flex, or auto (measured: _native_cudnn on CUDA, native "
        "elsewhere).",
    )
    vae_tiling: bool = Field(
        False,
        description="Decode images larger than one VAE tile (1024 px for Z-Image) in overlapping tiles: memory stays "
        "flat at 2048^2 and beyond, pixels change a little (part of run ids).",
    )
    fp8: str = Field(
        "none",
        description="FP8 weights and activations of the DiT's transformer-block linear layers (torchao): none, "
        "rowwise or tensorwise. Changes images: part of run ids.",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _v_compile(cls, v: Any) -> str:
        return _choice("compile", v, ("auto", "none", "regional", "full"))

    @field_validator("compile_backend", mode="before")
    @classmethod
    def _v_compile_backend(cls, v: Any) -> str:
        return _choice("compile_backend", v, ("inductor", "aot_eager", "eager"))

    @field_validator("compile_mode", mode="before")
    @classmethod
    def _v_compile_mode(cls, v: Any) -> str:
        return _choice("compile_mode", v, ("default", "max-autotune-no-cudagraphs"))

    @field_validator("attention_backend", mode="before")
    @classmethod
    def _v_attention_backend(cls, v: Any) -> str:
        return _choice("attention_backend", v, ATTENTION_BACKENDS)

    @field_validator("fp8", mode="before")
    @classmethod
    def _v_fp8(cls, v: Any) -> str:
        return _choice("fp8", v, ("none", "rowwise", "tensorwise"))

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
    shift: float | None = Field(
        None,
        description=f"Flow-matching time shift; unset = the checkpoint's scheduler shift "
        f"(scheduler/scheduler_config.json; Z-Image-Turbo: {DEFAULT_SHIFT}).",
    )
    sigmas: list[float] | None = Field(
        None,
        description="Experimental: explicit schedule, strictly decreasing in (0, 1], optional final 0; "
        "sets steps and bypasses shift.",
    )
    seed: int = Field(42, description=f"Noise seed, 0..{MAX_SEED}.")
    guidance_scale: float = Field(DEFAULT_GUIDANCE_SCALE, description="CFG scale; 0 = off (Turbo is distilled for 0).")
    negative_prompt: str = Field("", description="Negative prompt (only used when guidance_scale > 0).")
    cfg_normalization: bool = Field(
        DEFAULT_CFG_NORMALIZATION,
        description="CFG only: cap each step's guided prediction at the norm of the positive one (diffusers).",
    )
    cfg_truncation: float = Field(
        DEFAULT_CFG_TRUNCATION,
        description="CFG only: guidance stops once t = 1 - sigma exceeds this, 0..1 (1 = never; diffusers).",
    )
    refiner: str = Field("default", description=f"Refiner layers: {', '.join(REFINER_MODES)}.")
    init_image: str | None = Field(
        None, description="Image-to-image: start from this image (VAE-encoded, noised to the schedule at strength)."
    )
    strength: float | None = Field(
        None,
        description=f"Image-to-image: fraction of the schedule run, 0 < s <= 1; unset = {DEFAULT_STRENGTH} "
        "(diffusers' default) with init_image.",
    )

    @field_validator("init_image", mode="before")
    @classmethod
    def _v_init_image(cls, v: Any) -> str | None:
        return _one_image("init_image", v)

    @field_validator("strength", mode="before")
    @classmethod
    def _v_strength(cls, v: Any) -> float | None:
        if v is None or v == "":
            return None
        value = _as_float("strength", v)
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"strength must be in (0, 1] (got {value}): the fraction of the schedule run from init_image"
            )
        return value

    @property
    def resolved_strength(self) -> float | None:
        """The img2img strength a run uses: None without init_image, the default when unset."""
        if self.init_image is None:
            return None
        return DEFAULT_STRENGTH if self.strength is None else self.strength

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
    def _v_shift(cls, v: Any) -> float | None:
        if v is None or v == "":  # "" unsets a profile's shift (back to the checkpoint's), as for sigmas
            return None
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
        return _int_in("seed", v, 0, MAX_SEED)

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

    @field_validator("cfg_normalization", mode="before")
    @classmethod
    def _v_cfg_normalization(cls, v: Any) -> bool:
        # diffusers declares a bool (its arithmetic would take a float factor; True is the factor 1.0).
        if not isinstance(v, bool):
            raise ValueError(f"cfg_normalization must be true or false (got {toml_value(v)})")
        return v

    @field_validator("cfg_truncation", mode="before")
    @classmethod
    def _v_cfg_truncation(cls, v: Any) -> float:
        value = _as_float("cfg_truncation", v)
        # t = 1 - sigma lies in [0, 1): above 1 truncates nothing, as 1 does (two spellings of one image), and
        # below 0 turns CFG off at every step (guidance_scale 0 says that).
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"cfg_truncation must be in 0..1 (got {value}): CFG stops once t = 1 - sigma exceeds it; "
                "1 = never (diffusers' default)"
            )
        return value

    @field_validator("refiner", mode="before")
    @classmethod
    def _v_refiner(cls, v: Any) -> str:
        return _choice("refiner", v, REFINER_MODES)

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


def generation_problem(g: GenerationSettings) -> tuple[str, str] | None:
    """(field, message) for generation settings that contradict each other, or None (checked where a run's settings
    come together, as :func:`conditioning_problem`)."""
    if g.strength is not None and g.init_image is None:
        return "strength", "strength is read only with init_image (image-to-image): set init_image or drop strength"
    return None


def _image_list(name: str, value: Any) -> list[str] | None:
    """One path or a list of paths as a list; ``None``/``""``/``[]`` = no image."""
    if value is None or value == "" or value == []:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        text = _as_str(name, item).strip()
        if not text:
            raise ValueError(f"{name} has an empty path; give image files, e.g. {name}=ref.png")
        out.append(text)
    return out


def _one_image(name: str, value: Any) -> str | None:
    """One image path (a one-item list too); ``None``/``""`` = no image."""
    images = _image_list(name, value)
    if images is not None and len(images) != 1:
        raise ValueError(f"{name} takes one image, got {len(images)}")
    return images[0] if images else None


def _optional_unit(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = _as_float(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in 0..1 (got {number})")
    return number


# The conditioning settings that take one of a fixed set of names.
_CONDITIONING_CHOICES: dict[str, tuple[str, ...]] = {
    "conditioning": CONDITIONING_SOURCES,
    "vl_token_mode": VL_TOKEN_MODES,
    "vl_blend": VL_BLENDS,
    "vl_blend_curve": GRADUATED_CURVES,
    "vl_normalize": VL_NORMALIZATIONS,
    "outlier_mask": OUTLIER_MASKS,
    "embedding_format": EMBEDDING_FORMATS,
}


class ConditioningSettings(BaseModel):
    """[PROFILE.conditioning]: where caption features come from and the operations applied to them (per run).

    ``conditioning`` picks the source (text = Qwen3-4B, the official path; vl = Qwen3-VL with images; embedding =
    Qwen3-Embedding-4B); the ``vl_*`` mixing and normalisation settings apply to the chosen non-text source
    (docs/conditioning.md gives every formula). Settings a run's source does not use are inert: the planner records
    them as None, so they never change a run id.
    """

    model_config = _MODEL_CONFIG

    conditioning: str = Field("text", description=f"Caption-feature source: {', '.join(CONDITIONING_SOURCES)}.")
    vl_image: list[str] | None = Field(None, description="Qwen3-VL input image(s): a path or a list of paths.")
    vl_text: str | None = Field(None, description="Text of the VL turn; unset = the run's prompt.")
    vl_system_prompt: str | None = Field(None, description="System message of the VL turn; none if empty.")
    vl_layer: int = Field(DEFAULT_VL_LAYER, description="Qwen3-VL hidden state, -37..36 (same rule as hidden_layer).")
    vl_token_mode: str = Field("full", description=f"VL rows kept: {', '.join(VL_TOKEN_MODES)}.")
    vl_image_weights: list[float] | None = Field(
        None,
        description="Multi-reference: one weight per vl_image; each image gets its own VL pass, then a weighted sum.",
    )
    vl_alpha: float | None = Field(
        None, description="Source share in the mix, 0..1 (0 = text only, 1 = source only); unset = 1 with a source."
    )
    vl_alpha_schedule: str | None = Field(
        None,
        description="vl_alpha per denoising step: linear|ease_in|ease_out:START:END, constant:A, step:START:END@K "
        "or step:START:END@sigma=S; excludes vl_alpha.",
    )
    vl_blend: str = Field("linear", description=f"How source and text mix: {', '.join(VL_BLENDS)}.")
    vl_blend_curve: str = Field(
        "linear", description=f"Per-token alpha curve of vl_blend=graduated: {', '.join(GRADUATED_CURVES)}."
    )
    vl_normalize: str = Field("none", description=f"Source normalisation: {', '.join(VL_NORMALIZATIONS)}.")
    vl_target_std: float | None = Field(
        None, description="Target std of global/hybrid normalisation; unset = Qwen3-4B's std at the same layer."
    )
    vl_hybrid_weight: float = Field(0.5, description="hybrid normalisation: weight of per_dim (1 - it: global).")
    outlier_mask: str = Field("none", description=f"Source outlier dimensions: {', '.join(OUTLIER_MASKS)}.")
    outlier_threshold: float = Field(
        DEFAULT_OUTLIER_THRESHOLD, description="Outlier: std ratio to Qwen3-4B's above which a dimension is masked."
    )
    style_image: str | None = Field(None, description="Style delta: text + alpha * (VL(style) - VL(neutral)).")
    neutral_image: str | None = Field(None, description="Style delta's neutral image; unset = mid-gray, same size.")
    intra_vl_ratio: float | None = Field(
        None, description="Blend of one VL pass's image rows (1) and text rows (0), 0..1; unset = off."
    )
    embedding_layer: int = Field(DEFAULT_EMBEDDING_LAYER, description="Qwen3-Embedding hidden state, -37..36.")
    embedding_format: str = Field("chat", description=f"Embedding prompt format: {', '.join(EMBEDDING_FORMATS)}.")
    embedding_instruction: str | None = Field(
        None, description="Task of embedding_format=instruction; unset = default."
    )
    embedding_keep_eot: bool = Field(False, description="Keep the <|endoftext|> row the embedding tokenizer appends.")
    fill_mode: str | None = Field(None, description=f"Bring features to target_length: {', '.join(FILL_MODES)}.")
    target_length: int | None = Field(None, description="Rows after fill_mode, 1..1504.")
    prompt_switch: str | None = Field(
        None, description="A second prompt: the run's prompt conditions steps < prompt_switch_step, this one the rest."
    )
    prompt_switch_step: int | None = Field(None, description="The first step (0-based) conditioned by prompt_switch.")

    @field_validator("vl_image", mode="before")
    @classmethod
    def _v_vl_image(cls, v: Any) -> list[str] | None:
        return _image_list("vl_image", v)

    @field_validator("style_image", "neutral_image", mode="before")
    @classmethod
    def _v_one_image(cls, v: Any, info: Any) -> str | None:
        return _one_image(info.field_name, v)

    @field_validator("vl_alpha_schedule", mode="before")
    @classmethod
    def _v_alpha_schedule(cls, v: Any) -> str | None:
        schedule = parse_alpha_schedule(v)
        return None if schedule is None else schedule.text()

    @field_validator("prompt_switch_step", mode="before")
    @classmethod
    def _v_switch_step(cls, v: Any) -> int | None:
        if v is None or v == "":
            return None
        step = _as_int("prompt_switch_step", v)
        if step < 1:
            raise ValueError(f"prompt_switch_step must be >= 1 (got {step}; at 0 prompt_switch alone would condition)")
        return step

    @field_validator("vl_text", "vl_system_prompt", "embedding_instruction", "prompt_switch", mode="before")
    @classmethod
    def _v_optional_text(cls, v: Any, info: Any) -> str | None:
        return None if v is None else _as_str(info.field_name, v) or None

    @field_validator(*_CONDITIONING_CHOICES, mode="before")
    @classmethod
    def _v_choice(cls, v: Any, info: Any) -> str:
        return _choice(info.field_name, v, _CONDITIONING_CHOICES[info.field_name])

    @field_validator("vl_layer", "embedding_layer", mode="before")
    @classmethod
    def _v_layer(cls, v: Any, info: Any) -> int:
        return _check_layer(info.field_name, _as_int(info.field_name, v))

    @field_validator("vl_image_weights", mode="before")
    @classmethod
    def _v_weights(cls, v: Any) -> list[float] | None:
        if v is None or v == "" or v == []:
            return None
        items = [p for p in v.split(",") if p.strip()] if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError("vl_image_weights must be a list of numbers like [0.7, 0.3]")
        weights = [_as_float(f"vl_image_weights[{i}]", w) for i, w in enumerate(items)]
        if math.isclose(sum(weights), 0.0, abs_tol=1e-12):
            raise ValueError("vl_image_weights sum to 0; they are normalised by their sum, so it must be non-zero")
        return weights

    @field_validator("vl_alpha", "intra_vl_ratio", mode="before")
    @classmethod
    def _v_unit(cls, v: Any, info: Any) -> float | None:
        return _optional_unit(info.field_name, v)

    @field_validator("vl_hybrid_weight", mode="before")
    @classmethod
    def _v_hybrid(cls, v: Any) -> float:
        number = _optional_unit("vl_hybrid_weight", v)
        if number is None:
            raise ValueError("vl_hybrid_weight must be a number in 0..1")
        return number

    @field_validator("vl_target_std", mode="before")
    @classmethod
    def _v_target_std(cls, v: Any) -> float | None:
        if v is None or v == "":
            return None
        number = _as_float("vl_target_std", v)
        if number <= 0:
            raise ValueError(f"vl_target_std must be > 0 (got {number}; the seeds used 50, 61, 70)")
        return number

    @field_validator("outlier_threshold", mode="before")
    @classmethod
    def _v_threshold(cls, v: Any) -> float:
        number = _as_float("outlier_threshold", v)
        if number <= 0:
            raise ValueError(f"outlier_threshold must be > 0 (got {number}; default {DEFAULT_OUTLIER_THRESHOLD})")
        return number

    @field_validator("embedding_keep_eot", mode="before")
    @classmethod
    def _v_keep_eot(cls, v: Any) -> bool:
        if not isinstance(v, bool):
            raise ValueError(f"embedding_keep_eot must be true or false (got {toml_value(v)})")
        return v

    @field_validator("fill_mode", mode="before")
    @classmethod
    def _v_fill_mode(cls, v: Any) -> str | None:
        return None if v is None or v == "" else _choice("fill_mode", v, FILL_MODES)

    @field_validator("target_length", mode="before")
    @classmethod
    def _v_target_length(cls, v: Any) -> int | None:
        if v is None or v == "":
            return None
        return _int_in("target_length", v, 1, HARD_MAX_TEXT_TOKENS, "; the DiT reads at most 1504 caption rows")

    @property
    def source_alpha(self) -> float:
        """The mix's source share: vl_alpha, or 1 (the source alone) when unset (a schedule: its first step's)."""
        if self.alpha_schedule is not None:
            return self.alpha_schedule.start
        return 1.0 if self.vl_alpha is None else self.vl_alpha

    @property
    def alpha_schedule(self) -> AlphaSchedule | None:
        return parse_alpha_schedule(self.vl_alpha_schedule)

    @property
    def lowest_alpha(self) -> float:
        """The smallest source share of any step: below 1, the text encoder's features are needed."""
        schedule = self.alpha_schedule
        return self.source_alpha if schedule is None else schedule.lowest

    @property
    def per_step(self) -> bool:
        """Whether the caption features change over the steps (an alpha schedule or a prompt switch)."""
        return self.vl_alpha_schedule is not None or self.prompt_switch is not None

    @property
    def source_layer(self) -> int | None:
        """The source's hidden layer (vl_layer or embedding_layer); None for text."""
        return {"vl": self.vl_layer, "embedding": self.embedding_layer}.get(self.conditioning)

    @property
    def needs_reference_stats(self) -> bool:
        """Masking or normalisation of a source: Qwen3-4B's statistics at the source's layer are read."""
        return self.conditioning != "text" and (self.outlier_mask != "none" or self.vl_normalize != "none")


def conditioning_problem(c: ConditioningSettings) -> tuple[str, str] | None:
    """(field to blame, message) for conditioning settings that contradict each other, or None.

    Not a validator of the section: experiment files and ``--set`` check one value at a time; the whole is checked
    where a run's settings come together (:class:`Settings`, the planner, :class:`GenerationRequest`)."""
    if (c.prompt_switch is None) != (c.prompt_switch_step is None):
        given, missing = (
            ("prompt_switch", "prompt_switch_step") if c.prompt_switch else ("prompt_switch_step", "prompt_switch")
        )
        return given, f"{given} needs {missing} too (e.g. prompt_switch='a watercolour' with prompt_switch_step=3)"
    if c.vl_alpha_schedule is not None and c.vl_alpha is not None:
        return "vl_alpha_schedule", "vl_alpha_schedule sets vl_alpha per step: drop vl_alpha (or the schedule)"
    if (c.fill_mode is None) != (c.target_length is None):
        given, missing = ("fill_mode", "target_length") if c.fill_mode else ("target_length", "fill_mode")
        return given, f"{given} needs {missing} too (e.g. fill_mode=pad_end_zero with target_length=300)"
    if c.conditioning == "vl":
        if c.vl_image is None and c.style_image is None:
            return (
                "conditioning",
                "conditioning = vl needs vl_image (a path or a list) or style_image; e.g. vl_image=ref.png",
            )
        if c.style_image is not None and c.vl_image is not None:
            return "style_image", "style_image (style delta) and vl_image exclude each other; give one"
        if c.vl_image_weights is not None and len(c.vl_image_weights) != len(c.vl_image or []):
            n = len(c.vl_image or [])
            return "vl_image_weights", f"vl_image_weights has {len(c.vl_image_weights)} weights for {n} vl_image(s)"
        if c.intra_vl_ratio is not None:
            if c.vl_token_mode != "full":
                return (
                    "intra_vl_ratio",
                    "intra_vl_ratio blends one VL pass's image and text rows: needs vl_token_mode=full",
                )
            if c.style_image is not None or c.vl_image_weights is not None:
                what = "style_image" if c.style_image is not None else "vl_image_weights"
                return "intra_vl_ratio", f"intra_vl_ratio blends one VL pass's image and text rows: drop {what}"
    return _inert_problem(c)


# Where an inert conditioning setting would be read: the error's fix.
_READ_WITH = {
    "vl_blend_curve": "vl_blend=graduated",
    "vl_target_std": "vl_normalize=global or hybrid",
    "vl_hybrid_weight": "vl_normalize=hybrid",
    "outlier_threshold": "an outlier_mask other than none",
    "neutral_image": "style_image",
    "embedding_instruction": "embedding_format=instruction",
}


def _no_blend_runs(c: ConditioningSettings) -> bool:
    """No mix of text and source runs at any step: the source alone (vl_alpha 1), the text alone (0), or a style
    delta."""
    if c.conditioning == "text":
        return False
    schedule = c.alpha_schedule
    mixes = schedule.mixes if schedule is not None else c.source_alpha not in (0.0, 1.0)
    return c.style_image is not None or not mixes


def _inert_problem(c: ConditioningSettings) -> tuple[str, str] | None:
    """A setting given a value that this run would never read (so it would silently do nothing), or None.

    Inert means what :func:`conditioning_params` records as None; a value equal to the field's default is not
    a choice and passes."""
    used = conditioning_params(c)
    for key, value in c.model_dump().items():
        default = ConditioningSettings.model_fields[key].default
        if used[key] is not None or value is None or value == default:
            continue
        # A blend at the ends of an alpha sweep (or beside a style delta) is inert, recorded as null, not refused:
        # a vl_alpha x vl_blend grid must run its alpha 0 and 1 cells.
        if (key == "vl_blend" or (key == "vl_blend_curve" and c.vl_blend == "graduated")) and _no_blend_runs(c):
            continue
        if key in _READ_WITH:
            where = _READ_WITH[key]
        elif key.startswith("embedding_"):
            where = "conditioning=embedding"
        elif key in _VL_ONLY or key in ("vl_layer", "vl_token_mode"):
            where = "conditioning=vl"
        else:
            where = "conditioning=vl or conditioning=embedding"
        return key, f"{key} does nothing in this run: it is read only with {where}; set that or drop {key}"
    return None


# Settings only a non-text source reads (given with conditioning = text they would silently do nothing).
_VL_ONLY = (
    "vl_image",
    "vl_text",
    "vl_system_prompt",
    "vl_image_weights",
    "style_image",
    "neutral_image",
    "intra_vl_ratio",
)


def conditioning_params(c: ConditioningSettings) -> dict[str, Any]:
    """The conditioning values a run actually uses, inert ones as None (run ids, records and the store agree).

    Per source: ``text`` uses only fill_mode/target_length and the prompt switch; ``embedding`` drops the VL inputs
    and the VL layer and token mode; ``vl`` drops the embedding settings. Everywhere: vl_alpha is resolved (unset = 1
    with a source; None when vl_alpha_schedule sets it per step), vl_blend_curve only with vl_blend=graduated,
    vl_target_std only with global/hybrid normalisation, the hybrid weight only with hybrid, outlier_threshold only
    with a mask, neutral_image only with style_image.
    """
    out = c.model_dump()
    if c.conditioning == "text":
        keep = {"conditioning", "fill_mode", "target_length", "prompt_switch", "prompt_switch_step"}
        return {k: (v if k in keep else None) for k, v in out.items()}
    out["vl_alpha"] = None if c.vl_alpha_schedule is not None else c.source_alpha
    vl_keys = ("vl_image", "vl_text", "vl_system_prompt", "vl_layer", "vl_token_mode", "vl_image_weights")
    drop = [k for k in out if k.startswith("embedding_")] if c.conditioning == "vl" else [*vl_keys, *_VL_ONLY]
    if c.vl_blend != "graduated":
        drop.append("vl_blend_curve")
    if _no_blend_runs(c):
        drop += ["vl_blend", "vl_blend_curve"]
    if c.vl_normalize not in ("global", "hybrid"):
        drop.append("vl_target_std")
    if c.vl_normalize != "hybrid":
        drop.append("vl_hybrid_weight")
    if c.outlier_mask == "none":
        drop.append("outlier_threshold")
    if c.style_image is None:
        drop.append("neutral_image")
    if c.conditioning == "embedding" and c.embedding_format != "instruction":
        drop.append("embedding_instruction")
    for key in drop:
        out[key] = None
    return out


class SourceModelSettings(BaseModel):
    """[PROFILE.vl] / [PROFILE.embedding]: a conditioning source's local checkpoint and where it runs."""

    model_config = _MODEL_CONFIG

    model_path: str | None = Field(
        None, description="Local checkpoint directory; unset = the built-in tiny twin (only with the tiny Z-Image)."
    )
    device: DeviceName = Field("auto", description="Device: auto, cpu, cuda or cuda:N.")
    torch_dtype: DtypeName = Field("auto", description="Dtype: auto, bfloat16 or float32.")

    @field_validator("model_path", mode="before")
    @classmethod
    def _v_model_path(cls, v: Any) -> str | None:
        if v is None:
            return None
        text = _as_str("model_path", v)
        return None if text in ("", "tiny") else text


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
    pickscore_path: str | None = Field(
        None,
        description="Local PickScore_v1 checkpoint directory (transformers CLIP layout, with the CLIP-H processor "
        "files) for the 'pickscore' metric.",
    )
    hpsv2_path: str | None = Field(
        None,
        description="Local directory with HPS_v2.1_compressed.pt (HPSv2.1's open_clip ViT-H-14 state dict) and the "
        "CLIP-H tokenizer files, for the 'hpsv2' metric.",
    )
    lpips_backbone: str | None = Field(
        None,
        description="torchvision ImageNet weights file of the LPIPS backbone (e.g. alexnet-owt-7be5be79.pth) "
        "for 'lpips' and 'diversity_lpips'.",
    )
    lpips_net: str = Field("alex", description="LPIPS backbone: alex or vgg (must match lpips_backbone).")
    inception_weights: str | None = Field(
        None,
        description="torch-fidelity's FID Inception-v3 weights file (weights-inception-2015-12-05-6726825d.pth) "
        "for the set-level metrics 'fid' and 'kid'.",
    )
    inception_resize: str = Field(
        "antialias",
        description="How images reach Inception's 299x299: antialias (torchmetrics' antialiased bilinear) or tf1 "
        "(TF1's bilinear without antialiasing, torch-fidelity's and the original FID code's).",
    )
    device: DeviceName = Field("auto", description="Device of the metric models: auto, cpu, cuda or cuda:N.")
    # float32 by default even on GPUs: scoring is cheap next to generation, and bf16 moves CLIP scores by tenths.
    torch_dtype: DtypeName = Field(
        "float32", description="Dtype of the metric models: float32, bfloat16 or auto (bf16 on cuda)."
    )
    batch_size: int = Field(16, description="Images per batched forward of a metric model.")

    @field_validator(
        "siglip_path", "clip_path", "pickscore_path", "hpsv2_path", "lpips_backbone", "inception_weights", mode="before"
    )
    @classmethod
    def _v_paths(cls, v: Any, info: Any) -> str | None:
        return _optional_path(info.field_name, v)

    @field_validator("lpips_net", mode="before")
    @classmethod
    def _v_lpips_net(cls, v: Any) -> str:
        return _choice("lpips_net", v, ("alex", "vgg"))

    @field_validator("inception_resize", mode="before")
    @classmethod
    def _v_inception_resize(cls, v: Any) -> str:
        return _choice("inception_resize", v, ("antialias", "tf1"))

    @field_validator("batch_size", mode="before")
    @classmethod
    def _v_batch(cls, v: Any) -> int:
        n = _as_int("batch_size", v)
        if n < 1:
            raise ValueError(f"batch_size must be >= 1 (got {n})")
        return n


class LimitsSettings(BaseModel):
    """[PROFILE.limits]: upper bounds that catch a typo before it costs minutes (``--steps 10000``, 200k seeds).

    Raise them in the config file when a study really needs more; they never change an image (no run id).
    """

    model_config = _MODEL_CONFIG

    max_steps: int = Field(200, description="Most transformer forwards one image may take (official Turbo: 8).")
    max_image_side: int = Field(4096, description="Largest width or height in pixels (official: 1024).")
    max_runs: int = Field(100_000, description="Most runs one experiment plan may hold (checked before expanding).")

    @field_validator("max_steps", "max_image_side", "max_runs", mode="before")
    @classmethod
    def _v_limit(cls, v: Any, info: Any) -> int:
        n = _as_int(info.field_name, v)
        if n < 1:
            raise ValueError(f"{info.field_name} must be >= 1 (got {n})")
        return n


def check_limits(limits: LimitsSettings, run: Mapping[str, Any]) -> None:
    """Refuse a run above ``[limits]`` (steps, or the non-zero count of explicit sigmas; width; height) with one
    line naming the value, the limit and the config key that raises it. ``run``: resolved generation values
    (``steps``, ``width``, ``height``, ``sigmas``), e.g. ``GenerationSettings.model_dump()`` or a run's params.
    Call it before any model loads."""
    steps, width, height = run["steps"], run["width"], run["height"]
    what = f"sigmas has {steps} non-zero values (steps)" if run.get("sigmas") is not None else f"steps {steps}"
    checks = ((what, steps, "max_steps"), (f"width {width}", width, "max_image_side"))
    checks += ((f"height {height}", height, "max_image_side"),)
    for text, value, key in checks:
        limit = getattr(limits, key)
        if value > limit:
            raise ConfigError(
                f"{text} is above the limit of {limit} (limits.{key}); if you mean it, raise it in the config "
                f"file: [default.limits] {key} = {value}"
            )


class Settings(BaseModel):
    """Every user-settable parameter of a run; ``model_dump()`` goes into each image's metadata."""

    model_config = _MODEL_CONFIG

    model_path: str | None = Field(
        None, description="Checkpoint directory (diffusers layout); unset or 'tiny' = built-in tiny model."
    )
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    conditioning: ConditioningSettings = Field(default_factory=ConditioningSettings)
    vl: SourceModelSettings = Field(default_factory=SourceModelSettings)
    embedding: SourceModelSettings = Field(default_factory=SourceModelSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    @field_validator("model_path", mode="before")
    @classmethod
    def _v_model_path(cls, v: Any) -> str | None:
        if v is None:
            return None
        text = _as_str("model_path", v)
        # One spelling for the tiny model, so metadata and comparisons see a single value.
        return None if text in ("", "tiny") else text

    @model_validator(mode="after")
    def _consistent_conditioning(self) -> Settings:
        problem = conditioning_problem(self.conditioning)
        if problem is not None:
            raise _FieldError(f"conditioning.{problem[0]}", problem[1])
        problem = generation_problem(self.generation)
        if problem is not None:
            raise _FieldError(f"generation.{problem[0]}", problem[1])
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A validated copy with dotted-key overrides applied (``None`` values are ignored).

        Raises ConfigError naming the key (or its CLI flag). Prefer this over ``model_copy``, which
        does not validate.
        """
        base = Layer("base", _flatten_settings(self), {})
        settings, _ = resolve_layers([base, override_layer(overrides)])
        return settings


SECTIONS: dict[str, type[BaseModel]] = {
    "encoder": EncoderSettings,
    "conditioning": ConditioningSettings,
    "vl": SourceModelSettings,
    "embedding": SourceModelSettings,
    "pipeline": PipelineSettings,
    "generation": GenerationSettings,
    "metrics": MetricsSettings,
    "limits": LimitsSettings,
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
    "pipeline.compile": "--compile",
    "pipeline.compile_backend": "--compile-backend",
    "pipeline.compile_mode": "--compile-mode",
    "pipeline.attention_backend": "--attention-backend",
    "pipeline.vae_tiling": "--vae-tiling",
    "pipeline.fp8": "--fp8",
    "generation.width": "--width",
    "generation.height": "--height",
    "generation.steps": "--steps",
    "generation.shift": "--shift",
    "generation.sigmas": "--sigmas",
    "generation.seed": "--seed",
    "generation.guidance_scale": "--guidance-scale",
    "generation.negative_prompt": "--negative-prompt",
    "generation.cfg_normalization": "--cfg-normalization",
    "generation.cfg_truncation": "--cfg-truncation",
    "generation.refiner": "--refiner",
    "generation.init_image": "--init-image",
    "generation.strength": "--strength",
}

# --------------------------------------------------------------------------------------------------
# Layers and resolution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where one value came from, to prefix its error messages."""

    describe: Callable[[Any], str]


@dataclass
class Layer:
    """One precedence level: dotted key -> value, plus where each value came from."""

    source: str
    values: dict[str, Any]
    origins: dict[str, Origin]


def _flatten_settings(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"model_path": settings.model_path}
    for sec in SECTIONS:
        for name, value in getattr(settings, sec):
            out[f"{sec}.{name}"] = value
    return out


def nest_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys ("generation.steps") as the nested tables the models validate."""
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
        raise ConfigError("; ".join(message for _, message in validation_messages(exc))) from None


def validation_messages(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message) for each pydantic error, with our own message text."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        cause = (err.get("ctx") or {}).get("error")
        if loc and loc[0] in SECTIONS:
            key = f"{loc[0]}.{loc[1]}" if len(loc) > 1 else loc[0]
            if isinstance(cause, _FieldError):
                key = f"{loc[0]}.{cause.key}"
        elif isinstance(cause, _FieldError) and "." in cause.key:  # a model-level check naming its field
            key = cause.key
        else:
            key = ".".join(loc[:1]) or "?"
        message = str(cause) if isinstance(cause, ValueError) else f"{key.rpartition('.')[2]}: {err['msg']}"
        out.append((key, message))
    return out


def _override_origin(key: str, set_flag: bool = False) -> Origin:
    if set_flag:  # --set NAME=VALUE takes the flat parameter name
        name = key.rpartition(".")[2]
        return Origin(lambda v: f"--set {name}={_cli_value(v)}")
    flag = CLI_FLAGS.get(key)
    if flag:
        return Origin(lambda v, flag=flag: f"{flag} {_cli_value(v)}")
    return Origin(lambda v, key=key: f"override {key}={_cli_value(v)}")


def override_layer(overrides: Mapping[str, Any] | None, set_flag: bool = False) -> Layer:
    """Validate override keys; ``None`` values mean "not given" (the CLI's unset options). ``set_flag``: they
    came as ``--set NAME=VALUE`` (errors name them so)."""
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
    return Layer("override", values, {k: _override_origin(k, set_flag) for k in values})


def resolve_layers(layers: list[Layer]) -> tuple[Settings, dict[str, str]]:
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
        settings = Settings.model_validate(nest_keys(merged))
    except ValidationError as exc:
        errors = []
        for key, message in validation_messages(exc):
            origin = layers[winner[key]].origins.get(key) if key in winner else None
            where = origin.describe(merged[key]) if origin else f"{key} = {toml_value(merged.get(key))}"
            errors.append(f"{where}: {message}")
        raise ConfigError("\n".join(errors)) from None
    sources = {key: layers[winner[key]].source if key in winner else "default" for key in SETTING_KEYS}
    if sig_given and "generation.steps" not in winner:
        sources["generation.steps"] = layers[sig_layer].source  # derived from the sigmas
    return settings, sources
