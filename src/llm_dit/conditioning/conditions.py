"""Embedding-statistics conditions: ``"hidden_layer=-6,think_block=empty"`` -> encoder overrides, validated.

Plain parsing and settings checks (no torch): ``embed-stats`` refuses a bad condition before anything heavy is
imported; :mod:`llm_dit.conditioning.embedding_stats` compares the embeddings they make.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llm_dit.config import ConditioningSettings, EncoderSettings, build_section, conditioning_problem, parse_scalar
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import LlmDitError, closest

__all__ = ["Condition", "check_conditioning", "check_overrides", "parse_condition"]


@dataclass(frozen=True)
class Condition:
    """One encoder setting to compare: a label (the report's ``condition`` column) and encoder overrides."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    # Conditioning parameters (source, images, mixing, normalisation, fill): such a condition's features are
    # composed by the pipeline (LlmDitPipeline.caption_features), not by the text encoder alone.
    conditioning: dict[str, Any] = field(default_factory=dict)


_ENCODER_KEYS = tuple(EncoderSettings.model_fields)
_CONDITIONING_KEYS = tuple(ConditioningSettings.model_fields)
_KEY_START = re.compile(r"\s*(?:encoder\.)?[A-Za-z_]\w*\s*=")


def _split_assignments(text: str) -> list[str]:
    """Split on commas that start a new ``key=`` outside quotes and brackets.

    So ``layer_weights=-2:0.7,-5:0.3`` and ``think_block="a, b"`` stay whole.
    """
    parts: list[str] = []
    start, depth, quote = 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0 and _KEY_START.match(text, i + 1):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def check_overrides(overrides: Mapping[str, Any], where: str) -> None:
    """Keys must be per-call encoder settings; values must validate as EncoderSettings."""
    for key in overrides:
        if key in ENCODER_LOAD_FIELDS:
            raise LlmDitError(
                f"{where}: '{key}' is fixed when the encoder loads and cannot vary per condition; "
                f"set it on the encoder instead"
            )
        if key not in _ENCODER_KEYS:
            choices = [k for k in _ENCODER_KEYS if k not in ENCODER_LOAD_FIELDS] + list(_CONDITIONING_KEYS)
            hint = closest(key, choices)
            extra = f"did you mean '{hint}'? " if hint else ""
            raise LlmDitError(f"{where}: unknown encoder setting '{key}'; {extra}valid: {', '.join(choices)}")
    try:
        build_section(EncoderSettings, dict(overrides))
    except LlmDitError as exc:
        raise LlmDitError(f"{where}: {exc}") from None


def parse_condition(text: str) -> Condition:
    """Parse ``"key=value[,key=value...]"`` into a :class:`Condition` labelled with the text.

    Keys are :class:`EncoderSettings` fields (an ``encoder.`` prefix is allowed); values are TOML scalars
    (``-6``, ``"quoted"``), bare words are strings (``think_block=empty``). ``"default"`` (or ``""``) means no
    overrides: the encoder's own settings. Values are validated here, before any model loads.
    """
    if not isinstance(text, str):
        raise LlmDitError(f"condition must be a string like 'think_block=empty', not {type(text).__name__}")
    label = text.strip()
    if label in ("", "default"):
        return Condition(label="default", overrides={})
    overrides: dict[str, Any] = {}
    for part in _split_assignments(label):
        key, sep, raw = part.partition("=")
        key = key.strip().removeprefix("encoder.")
        if not sep or not key:
            raise LlmDitError(
                f"condition {label!r}: {part.strip()!r} is not key=value "
                f"(e.g. 'think_block=empty' or 'hidden_layer=-6,think_block=empty')"
            )
        if key in overrides:
            raise LlmDitError(f"condition {label!r}: '{key}' is given twice")
        overrides[key] = parse_scalar(raw)
    conditioning = {k: overrides.pop(k) for k in list(overrides) if k in _CONDITIONING_KEYS}
    check_overrides(overrides, f"condition {label!r}")
    check_conditioning(conditioning, f"condition {label!r}")
    return Condition(label=label, overrides=overrides, conditioning=conditioning)


def check_conditioning(values: Mapping[str, Any], where: str) -> ConditioningSettings:
    """Conditioning parameters of a condition, validated as a whole (a source needs its inputs, ...)."""
    try:
        settings = build_section(ConditioningSettings, dict(values))
    except LlmDitError as exc:
        raise LlmDitError(f"{where}: {exc}") from None
    problem = conditioning_problem(settings)
    if problem is not None:
        raise LlmDitError(f"{where}: {problem[0]}: {problem[1]}")
    return settings
