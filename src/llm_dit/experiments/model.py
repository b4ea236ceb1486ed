"""The experiment data model: the parameter names and the Experiment, Axis, AxisValue and PlannedRun records.

Parameters are flat names: every :class:`~llm_dit.config.EncoderSettings` field except ``device`` and
``torch_dtype`` (hardware, recorded through ``numerics``), every :class:`~llm_dit.config.GenerationSettings`
field except ``output_dir`` (and ``seed``, which comes from ``seeds``), plus ``token_manipulation``
(a name from ``llm_dit.experiments.prompts.MANIPULATIONS``, applied to the prompt text with the run's seed).
Also the small pure helpers the data needs (JSON form, value labels, file-safe labels) and the input-image
placeholders (``{image}``, ``{image2}``, ..., ``{images}``) with their substitution (:meth:`Experiment.with_images`).
Plain data: it must not import torch, the loader, the planner or the prompt library (only its type).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.config import ConditioningSettings, EncoderSettings, GenerationSettings
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import ConfigError
from llm_dit.files import IMAGE_SETTINGS

if TYPE_CHECKING:  # prompts.py is imported lazily: planning must stay light whatever it grows to import
    from llm_dit.experiments.prompts import Prompt

__all__ = [
    "ALL_IMAGES",
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
    "image_placeholder",
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
    """A validated experiment definition (from a TOML file or the built-ins).

    ``images``: the input images its placeholders name (``{image}`` = the first, ``{imageN}`` = the N-th, ``{images}``
    = all), replaced by ``--image``; :meth:`with_images` substitutes them. ``baseline``: one more combination outside
    the grid, planned first, whose runs carry its label on every axis; its conditioning is the built-in default plus
    its own parameters (the planner leaves out the conditioning of the profile, ``[base]`` and overrides), so a grid
    of VL settings can hold the pure Qwen3-4B run of each prompt and seed, the metrics' default reference.
    ``baseline_is_reference``: the stored definition names the baseline as the reference of every run (``reference``:
    axis -> the baseline's label), whatever the axes' default values (a caption study's source images).
    """

    name: str
    description: str
    seeds: tuple[int, ...]
    prompt_ids: tuple[str, ...]
    prompt_category: str | None
    max_prompts: int | None
    base: dict[str, Any]
    axes: tuple[Axis, ...]
    source: str
    images: tuple[str, ...] = ()
    baseline: AxisValue | None = None
    baseline_is_reference: bool = False

    def variables(self) -> list[str]:
        """Axis names, in order (the variable columns of results.csv)."""
        return [axis.name for axis in self.axes]

    def is_baseline(self, combination: Sequence[AxisValue]) -> bool:
        """Whether ``combination`` (one of :meth:`combinations`) is the baseline's."""
        return self.baseline is not None and bool(combination) and combination[0] is self.baseline

    def combinations(self) -> list[tuple[AxisValue, ...]]:
        """Every combination of axis values, one AxisValue per axis in axis order.

        The baseline's first, if there is one (its AxisValue on every axis); then a grid over zip groups (an axis
        without ``zip`` is a group of its own), ordered by each group's first axis, the first group varying slowest;
        the axes of a zip group advance together.
        """
        groups, lengths = self._zip_groups()
        out: list[tuple[AxisValue, ...]] = []
        if self.baseline is not None:
            out.append(tuple(self.baseline for _ in self.axes))
        for picks in itertools.product(*(range(n) for n in lengths)):
            chosen: list[AxisValue | None] = [None] * len(self.axes)
            for group, k in zip(groups, picks, strict=True):
                for i in group:
                    chosen[i] = self.axes[i].values[k]
            out.append(tuple(v for v in chosen if v is not None))
        return out

    def combination_count(self) -> int:
        """``len(self.combinations())``, counted without building them (a plan's size is checked first)."""
        return math.prod(self._zip_groups()[1]) + (self.baseline is not None)

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
        """The definition as JSON-serialisable data (stored with the results), with the images it was given.

        A baseline is stored as it was written (``baseline``) and also as the first value of every axis, the value
        each axis takes on its runs, with its source made explicit (the default, text, unless it sets one): readers
        of the stored axes (the metrics' default reference; what an axis decides, conditioning deciding every
        source parameter) then need to know nothing of baselines.
        """
        axes = []
        for axis in self.axes:
            values = [{"label": v.label, "params": jsonable(v.params)} for v in axis.values]
            if self.baseline is not None:
                values.insert(0, {"label": self.baseline.label, "params": jsonable(self.baseline_params())})
            axes.append({"name": axis.name, "zip": axis.zip, "values": values})
        out = {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "prompts": {"ids": list(self.prompt_ids), "category": self.prompt_category, "max": self.max_prompts},
            "images": list(self.images),
            "base": jsonable(self.base),
            "axes": axes,
            "source": self.source,
        }
        if self.baseline is not None:
            out["baseline"] = {"label": self.baseline.label, "params": jsonable(self.baseline.params)}
            if self.baseline_is_reference:  # the reference metrics' default: the baseline run of each prompt and seed
                out["reference"] = {axis.name: self.baseline.label for axis in self.axes}
        return out

    def baseline_params(self) -> dict[str, Any]:
        """The baseline's parameters with its source explicit (see to_dict); {} without a baseline."""
        if self.baseline is None:
            return {}
        return {"conditioning": ConditioningSettings.model_fields["conditioning"].default, **self.baseline.params}

    # ---------------------------------------------------------------------------------------- input images

    def image_uses(self) -> list[tuple[str, str]]:
        """(placeholder, where) for every placeholder in the definition, in order: ``where`` names the parameter
        and its level, for messages (``[base] vl_image``, ``axis 'reference' value 'both' vl_image``)."""
        levels: list[tuple[str, Mapping[str, Any]]] = [("[base]", self.base)]
        if self.baseline is not None:
            levels.append((f"baseline '{self.baseline.label}'", self.baseline.params))
        levels += [(f"axis '{a.name}' value '{v.label}'", v.params) for a in self.axes for v in a.values]
        out = []
        for level, params in levels:
            for name in IMAGE_SETTINGS:
                value = params.get(name)
                for item in value if isinstance(value, list) else [value]:
                    if image_placeholder(item) is not None:
                        out.append((item, f"{level} {name}"))
        return out

    def images_needed(self) -> tuple[int, bool]:
        """(how many images the placeholders need, whether ``{images}`` takes any number from there on)."""
        uses = [placeholder for placeholder, _ in self.image_uses()]
        needed = max((_images_required(p) for p in uses), default=0)
        return needed, "{images}" in uses

    def with_images(self, paths: Sequence[str | Path] | None = None) -> Experiment:
        """A copy with its placeholders replaced by ``paths`` (``--image``; None: its own ``images``), recorded as
        absolute paths in ``images``; ``self`` when it has no placeholders and no paths are given.

        One-line errors naming the experiment and the fix: a placeholder past the images given, images the
        placeholders do not use (they would do nothing), ``--image`` for an experiment with no placeholder.
        """
        uses = self.image_uses()
        if not uses:
            if paths:
                raise ConfigError(f"experiment {self.name} takes no input image; drop --image")
            return self
        images = tuple(os.path.abspath(Path(p).expanduser()) for p in (self.images if paths is None else paths))
        needed, open_ended = self.images_needed()
        if len(images) < needed:
            placeholder, where = next((p, w) for p, w in uses if _images_required(p) == needed)
            what = "an input image" if needed == 1 else f"{needed} images"
            own = "" if paths is not None or self.source == "built-in" else " (or list them in images = [...])"
            raise ConfigError(
                f"{self.name} needs {what} ({placeholder} in {where}), got {len(images)}: "
                f"pass --image {_times(needed)}{own}"
            )
        if len(images) > needed and not open_ended:
            raise ConfigError(
                f"{self.name} takes {needed} input image{'s' if needed > 1 else ''}, got {len(images)}: "
                f"pass --image {_times(needed)}"
            )

        def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
            return {k: _substitute(v, images) if k in IMAGE_SETTINGS else v for k, v in params.items()}

        axes = tuple(
            dataclasses.replace(a, values=tuple(AxisValue(v.label, resolve(v.params)) for v in a.values))
            for a in self.axes
        )
        baseline = None if self.baseline is None else AxisValue(self.baseline.label, resolve(self.baseline.params))
        return dataclasses.replace(self, images=images, base=resolve(self.base), axes=axes, baseline=baseline)


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
        from llm_dit.generation.request import encoder_kwargs

        return encoder_kwargs(self.params)

    def conditioning_params(self) -> dict[str, Any]:
        """Keyword values for :class:`ConditioningSettings` (inert ``None`` values left out)."""
        from llm_dit.generation.request import conditioning_kwargs

        return conditioning_kwargs(self.params)

    def generation_params(self) -> dict[str, Any]:
        """Keyword values for :class:`GenerationSettings`, seed included (inert ``None`` values left out)."""
        from llm_dit.generation.request import generation_kwargs

        return generation_kwargs(self.params)


# --------------------------------------------------------------------------------------------------
# Small helpers


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


# --------------------------------------------------------------------------------------------------

ALL_IMAGES = -1  # image_placeholder's index of {images}
_PLACEHOLDER_RE = re.compile(r"\{image([1-9][0-9]*)?\}")


def image_placeholder(value: Any) -> int | None:
    """The image index a placeholder stands for (``{image}`` 0, ``{image2}`` 1, ...; ``{images}``
    :data:`ALL_IMAGES`), or None if ``value`` is not one. ``{image1}`` is not one (the first is ``{image}``)."""
    if not isinstance(value, str):
        return None
    if value == "{images}":
        return ALL_IMAGES
    match = _PLACEHOLDER_RE.fullmatch(value)
    if match is None or match.group(1) == "1":
        return None
    return int(match.group(1) or 1) - 1


def _images_required(placeholder: str) -> int:
    """How many images a placeholder needs (``{images}``: at least one)."""
    index = image_placeholder(placeholder)
    return 1 if index == ALL_IMAGES or index is None else index + 1


def _substitute(value: Any, images: Sequence[str]) -> Any:
    """An image parameter's value with its placeholders replaced (``{images}`` spliced into a list)."""
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            index = image_placeholder(item)
            out.extend(images if index == ALL_IMAGES else [_substitute(item, images)])
        return out
    index = image_placeholder(value)
    if index is None:
        return value
    return list(images) if index == ALL_IMAGES else images[index]


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
