"""The experiment data model: the parameter names and the Experiment, Axis, AxisValue and PlannedRun records.

Parameters are flat names: every :class:`~llm_dit.config.EncoderSettings` field except ``device`` and
``torch_dtype`` (hardware, recorded through ``numerics``), every :class:`~llm_dit.config.GenerationSettings`
field except ``output_dir`` (and ``seed``, which comes from ``seeds``), plus ``token_manipulation``
(a name from ``llm_dit.experiments.prompts.MANIPULATIONS``, applied to the prompt text with the run's seed).
Also the small pure helpers the data needs (JSON form, value labels, file-safe labels). Plain data: it must not
import torch, the loader, the planner or the prompt library (only its type).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_dit.config import ConditioningSettings, EncoderSettings, GenerationSettings
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import ConfigError

if TYPE_CHECKING:  # prompts.py is imported lazily: planning must stay light whatever it grows to import
    from llm_dit.experiments.prompts import Prompt

__all__ = [
    "CONDITIONING_PARAMETERS",
    "ENCODER_PARAMETERS",
    "GENERATION_PARAMETERS",
    "PARAMETERS",
    "SETTABLE_PARAMETERS",
    "TOKEN_MANIPULATION",
    "Axis",
    "AxisValue",
    "Experiment",
    "PlannedRun",
    "file_label",
    "jsonable",
    "settings_section",
    "value_label",
]

TOKEN_MANIPULATION = "token_manipulation"
# Hardware and output location are not experiment variables: they come from the config profile, and the
# numerics that can change pixels (dtype, device) are hashed into run ids through plan(numerics=...).
ENCODER_PARAMETERS: tuple[str, ...] = tuple(n for n in EncoderSettings.model_fields if n not in ENCODER_LOAD_FIELDS)
GENERATION_PARAMETERS: tuple[str, ...] = tuple(n for n in GenerationSettings.model_fields if n != "output_dir")
# Where caption features come from and what is done to them (sources, mixing, normalisation, fill modes).
CONDITIONING_PARAMETERS: tuple[str, ...] = tuple(ConditioningSettings.model_fields)
PARAMETERS: tuple[str, ...] = (
    *ENCODER_PARAMETERS,
    *CONDITIONING_PARAMETERS,
    *GENERATION_PARAMETERS,
    TOKEN_MANIPULATION,
)
# The seed is a parameter of a run but not of an experiment: it always comes from the seeds list.
SETTABLE_PARAMETERS: tuple[str, ...] = tuple(p for p in PARAMETERS if p != "seed")


def settings_section(name: str) -> str:
    """The :class:`~llm_dit.config.Settings` section that holds run parameter ``name`` (seed included)."""
    if name in ENCODER_PARAMETERS:
        return "encoder"
    return "conditioning" if name in CONDITIONING_PARAMETERS else "generation"


_LABEL_LIMIT = 40
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisValue:
    """One value of an axis: its label (results.csv, file names) and the parameters it sets (as written)."""

    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Axis:
    """A swept variable. Axes sharing a ``zip`` group vary together; other axes form a grid."""

    name: str
    values: tuple[AxisValue, ...]
    zip: str | None = None

    def parameters(self) -> list[str]:
        """Every parameter any of its values sets, in first-seen order."""
        return list(dict.fromkeys(k for v in self.values for k in v.params))


@dataclass(frozen=True)
class Experiment:
    """A validated experiment definition (from a TOML file or the built-ins)."""

    name: str
    description: str
    seeds: tuple[int, ...]
    prompt_ids: tuple[str, ...]
    prompt_category: str | None
    max_prompts: int | None
    base: dict[str, Any]
    axes: tuple[Axis, ...]
    source: str

    def variables(self) -> list[str]:
        """Axis names, in order (the variable columns of results.csv)."""
        return [axis.name for axis in self.axes]

    def combinations(self) -> list[tuple[AxisValue, ...]]:
        """Every combination of axis values, one AxisValue per axis in axis order.

        A grid over zip groups (an axis without ``zip`` is a group of its own), ordered by each group's
        first axis, the first group varying slowest; the axes of a zip group advance together.
        """
        groups, lengths = self._zip_groups()
        out: list[tuple[AxisValue, ...]] = []
        for picks in itertools.product(*(range(n) for n in lengths)):
            chosen: list[AxisValue | None] = [None] * len(self.axes)
            for group, k in zip(groups, picks, strict=True):
                for i in group:
                    chosen[i] = self.axes[i].values[k]
            out.append(tuple(v for v in chosen if v is not None))
        return out

    def combination_count(self) -> int:
        """``len(self.combinations())``, counted without building them (a plan's size is checked first)."""
        return math.prod(self._zip_groups()[1])

    def _zip_groups(self) -> tuple[list[list[int]], list[int]]:
        """(axis indices of each zip group in grid order, each group's length); unequal lengths: ConfigError."""
        groups: list[list[int]] = []
        by_zip: dict[str, list[int]] = {}
        for i, axis in enumerate(self.axes):
            if axis.zip is None:
                groups.append([i])
            elif axis.zip in by_zip:
                by_zip[axis.zip].append(i)
            else:
                by_zip[axis.zip] = [i]
                groups.append(by_zip[axis.zip])
        lengths = []
        for group in groups:
            sizes = {len(self.axes[i].values) for i in group}
            if len(sizes) != 1:
                names = ", ".join(f"'{self.axes[i].name}' ({len(self.axes[i].values)})" for i in group)
                raise ConfigError(f"{self.name}: zip group '{self.axes[group[0]].zip}' has unequal lengths: {names}")
            lengths.append(sizes.pop())
        return groups, lengths

    def runs_per_prompt_seed(self) -> int:
        """Runs for one prompt and one seed: the number of combinations."""
        return self.combination_count()

    def to_dict(self) -> dict[str, Any]:
        """The definition as JSON-serialisable data (stored with the results)."""
        return {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "prompts": {"ids": list(self.prompt_ids), "category": self.prompt_category, "max": self.max_prompts},
            "base": jsonable(self.base),
            "axes": [
                {
                    "name": axis.name,
                    "zip": axis.zip,
                    "values": [{"label": v.label, "params": jsonable(v.params)} for v in axis.values],
                }
                for axis in self.axes
            ],
            "source": self.source,
        }


@dataclass(frozen=True)
class PlannedRun:
    """One image to generate.

    ``params`` holds every conditioning and generation parameter (the names of :data:`PARAMETERS`),
    validated and canonical, plus ``shift_source`` (where the shift came from; not a parameter); ``None`` marks a
    value that does not apply (see :mod:`llm_dit.experiments.planner`).
    """

    run_id: str
    experiment: str
    prompt: Prompt
    prompt_text: str
    seed: int
    variables: dict[str, str]
    params: dict[str, Any]
    image_name: str

    def encoder_params(self) -> dict[str, Any]:
        """Keyword values for :class:`EncoderSettings` (inert ``None`` values left out)."""
        out = {k: self.params[k] for k in ENCODER_PARAMETERS if k in self.params}
        if out.get("hidden_layer") is None:
            out.pop("hidden_layer", None)
        return out

    def conditioning_params(self) -> dict[str, Any]:
        """Keyword values for :class:`ConditioningSettings` (inert ``None`` values left out)."""
        return {k: self.params[k] for k in CONDITIONING_PARAMETERS if self.params.get(k) is not None}

    def generation_params(self) -> dict[str, Any]:
        """Keyword values for :class:`GenerationSettings`, seed included (inert ``None`` values left out)."""
        out = {k: self.params[k] for k in GENERATION_PARAMETERS if k in self.params}
        for key in ("shift", "negative_prompt", "cfg_normalization", "cfg_truncation"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Plain JSON data (TOML tables may carry int keys after validation; JSON keys are strings)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def value_label(value: Any) -> str:
    """The label of a scalar axis value: its value as text (``3.0``, ``-2``, ``-2:0.7,-5:0.3``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{value_label(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(value_label(v) for v in value)
    return str(value)


def file_label(label: str, limit: int = _LABEL_LIMIT) -> str:
    """``label`` made safe for a file name: ``[A-Za-z0-9._-]`` only, at most ``limit`` characters.

    Other characters become ``-`` (runs collapsed), runs of ``_`` collapse so that ``__`` stays the field
    separator of image names, and a longer label is cut and suffixed with 6 hex of its sha256, so two
    long labels that share a prefix still differ.
    """
    text = re.sub(r"-{2,}", "-", _UNSAFE_RE.sub("-", label))
    text = re.sub(r"_{2,}", "_", text) or "-"
    if len(text) > limit:
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:6]
        text = text[: limit - 7].rstrip("-_") + "-" + digest
    return text
