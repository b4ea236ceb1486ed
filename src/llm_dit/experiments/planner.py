"""Experiments as data: ablation studies defined in small TOML files and expanded into planned runs.

An experiment names default seeds and prompts, a ``[base]`` of parameters, and ``[[axes]]`` of values to
sweep. :func:`plan` expands it over prompts x combinations x seeds into :class:`PlannedRun` rows whose
parameters are fully resolved and validated against the one schema in :mod:`llm_dit.config`, so a bad
value stops the whole experiment before any model loads. This module must not import torch.

Parameters are flat names: every :class:`~llm_dit.config.EncoderSettings` field except ``device`` and
``torch_dtype`` (hardware, recorded through ``numerics``), every :class:`~llm_dit.config.GenerationSettings`
field except ``output_dir`` (and ``seed``, which comes from ``seeds``), plus ``token_manipulation``
(a name from ``llm_dit.experiments.prompts.MANIPULATIONS``, applied to the prompt text with the run's seed).

Precedence (highest wins): axis values > overrides (CLI) > experiment ``[base]`` > settings (config
profile) > built-in defaults. Two pairs of parameters replace each other, as in the config and the encoder:
a level that sets ``hidden_layer`` (without ``layer_weights``) clears a blend from a lower level, and a level
that sets ``steps`` or ``shift`` (without ``sigmas``) clears explicit sigmas from a lower level; a level that
sets ``sigmas`` without ``steps`` derives ``steps`` from them. An override of a swept parameter is therefore
ignored on that axis's runs, with no error: :func:`swept_overrides` names them so the CLI can say so.

Resolved params record an inert value as ``None`` (the value "does not apply"), so the same image gets the
same parameters and id whatever an unused setting held: ``hidden_layer`` when ``layer_weights`` is set,
``shift`` when explicit ``sigmas`` are set, ``negative_prompt`` when ``guidance_scale`` is 0 (CFG off).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.config import (
    MAX_SEED,
    EncoderSettings,
    GenerationSettings,
    Settings,
    build_section,
    count_steps,
    parse_sigmas,
)
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import ConfigError, LlmDitError, closest

if TYPE_CHECKING:  # prompts.py is imported lazily: planning must stay light whatever it grows to import
    from llm_dit.experiments.prompts import Prompt

__all__ = [
    "ENCODER_PARAMETERS",
    "GENERATION_PARAMETERS",
    "PARAMETERS",
    "TOKEN_MANIPULATION",
    "Axis",
    "AxisValue",
    "Experiment",
    "PlannedRun",
    "builtin_experiments",
    "compute_run_id",
    "file_label",
    "get_experiment",
    "image_name",
    "load_experiment_file",
    "plan",
    "swept_overrides",
]

TOKEN_MANIPULATION = "token_manipulation"
# Hardware and output location are not experiment variables: they come from the config profile, and the
# numerics that can change pixels (dtype, device) are hashed into run ids through plan(numerics=...).
ENCODER_PARAMETERS: tuple[str, ...] = tuple(n for n in EncoderSettings.model_fields if n not in ENCODER_LOAD_FIELDS)
GENERATION_PARAMETERS: tuple[str, ...] = tuple(n for n in GenerationSettings.model_fields if n != "output_dir")
PARAMETERS: tuple[str, ...] = (*ENCODER_PARAMETERS, *GENERATION_PARAMETERS, TOKEN_MANIPULATION)
# The seed is a parameter of a run but not of an experiment: it always comes from the seeds list.
_SETTABLE: tuple[str, ...] = tuple(p for p in PARAMETERS if p != "seed")

_SETTINGS_HINT = "it is not an experiment parameter; set it in the config profile or on the command line"
_NOT_PARAMETERS: dict[str, str] = {
    "seed": "seeds come from the seeds list: seeds = [...] at the top of the file",
    "device": _SETTINGS_HINT,
    "torch_dtype": _SETTINGS_HINT,
    "vae_device": _SETTINGS_HINT,
    "vae_dtype": _SETTINGS_HINT,
    "model_path": _SETTINGS_HINT,
    "output_dir": "the output directory is chosen when the experiment runs, not by the experiment",
    "enable_thinking": 'use think_block = "none" | "empty" | "<text>"',
    "force_think_block": 'use think_block = "none" | "empty" | "<text>"',
    "thinking_content": 'use think_block = "none" | "empty" | "<text>"',
    "num_inference_steps": "use steps",
    "max_sequence_length": "use max_text_tokens (512 = diffusers' cap)",
    "hidden_layers": "use hidden_layer (one layer) or layer_weights (a blend)",
    "cfg_scale": "use guidance_scale",
    "compression_mode": "use long_prompt_mode",
}

_TOP_KEYS = ("name", "description", "seeds", "prompts", "base", "axes")
_PROMPT_KEYS = ("ids", "category", "max")
_AXIS_KEYS = ("name", "parameter", "values", "zip")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Axis names become results.csv columns next to these, and parts of image names.
_RESERVED_AXIS_NAMES = ("experiment", "prompt", "prompt_id", "prompt_text", "seed", "run_id", "image", "image_name")
_LABEL_LIMIT = 40
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
BUILTIN_SOURCE = "built-in"


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
        out: list[tuple[AxisValue, ...]] = []
        for picks in itertools.product(*(range(n) for n in lengths)):
            chosen: list[AxisValue | None] = [None] * len(self.axes)
            for group, k in zip(groups, picks, strict=True):
                for i in group:
                    chosen[i] = self.axes[i].values[k]
            out.append(tuple(v for v in chosen if v is not None))
        return out

    def runs_per_prompt_seed(self) -> int:
        """Runs for one prompt and one seed: the number of combinations."""
        return len(self.combinations())

    def to_dict(self) -> dict[str, Any]:
        """The definition as JSON-serialisable data (stored with the results)."""
        return {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "prompts": {"ids": list(self.prompt_ids), "category": self.prompt_category, "max": self.max_prompts},
            "base": _jsonable(self.base),
            "axes": [
                {
                    "name": axis.name,
                    "zip": axis.zip,
                    "values": [{"label": v.label, "params": _jsonable(v.params)} for v in axis.values],
                }
                for axis in self.axes
            ],
            "source": self.source,
        }


@dataclass(frozen=True)
class PlannedRun:
    """One image to generate.

    ``params`` holds every conditioning and generation parameter (the names of :data:`PARAMETERS`),
    validated and canonical; ``None`` marks a value that does not apply (see the module docstring).
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

    def generation_params(self) -> dict[str, Any]:
        """Keyword values for :class:`GenerationSettings`, seed included (inert ``None`` values left out)."""
        out = {k: self.params[k] for k in GENERATION_PARAMETERS if k in self.params}
        for key in ("shift", "negative_prompt"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON data (TOML tables may carry int keys after validation; JSON keys are strings)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _show(value: Any) -> str:
    """A value as written in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_show(str(k))} = {_show(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _format_label(value: Any) -> str:
    """The label of a scalar axis value: its value as text (``3.0``, ``-2``, ``-2:0.7,-5:0.3``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{_format_label(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(_format_label(v) for v in value)
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


def _manipulation_names() -> tuple[str, ...]:
    # Lazy: prompts.py may grow heavier imports; only experiments that use manipulations pay for them.
    from llm_dit.experiments import prompts

    names = getattr(prompts, "MANIPULATIONS", None)
    if names is None:
        raise ConfigError(
            "token_manipulation needs llm_dit.experiments.prompts.MANIPULATIONS, which this installation lacks"
        )
    return tuple(names)


def _check_manipulation(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"token_manipulation must be a string (got {_show(value)})")
    names = _manipulation_names()
    if value not in names:
        hint = closest(value, names)
        extra = f"; did you mean '{hint}'?" if hint else ""
        raise ConfigError(f"token_manipulation '{value}' is not valid; use one of: {', '.join(names)}{extra}")
    return value


def _unknown_parameter(key: str) -> str:
    if key in _NOT_PARAMETERS:
        return f"'{key}' is not an experiment parameter: {_NOT_PARAMETERS[key]}"
    hint = closest(key, _SETTABLE)
    if hint:
        return f"unknown parameter '{key}'; did you mean '{hint}'?"
    return f"unknown parameter '{key}'; parameters: {', '.join(_SETTABLE)}"


def _check_value(key: str, value: Any) -> None:
    """Validate one parameter on its own (raises ConfigError with the schema's message)."""
    if key == TOKEN_MANIPULATION:
        _check_manipulation(value)
    elif key in ENCODER_PARAMETERS:
        build_section(EncoderSettings, {key: value})
    else:
        build_section(GenerationSettings, {key: value})


def _param_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each unknown name or invalid value of a partial parameter set."""
    out: list[tuple[str, str]] = []
    valid: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _SETTABLE:
            out.append((key, _unknown_parameter(key)))
            continue
        try:
            _check_value(key, value)
        except ConfigError as exc:
            out.append((key, str(exc)))
            continue
        valid[key] = value
    if "steps" in valid and "sigmas" in valid:  # the one pair the schema checks together
        try:
            build_section(GenerationSettings, {"steps": valid["steps"], "sigmas": valid["sigmas"]})
        except ConfigError as exc:
            out.append(("steps", str(exc)))
    return out


# --------------------------------------------------------------------------------------------------
# Line numbers (tomllib gives none)
# --------------------------------------------------------------------------------------------------


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_RE = re.compile(r"[^,\]}\s#]+")  # numbers, booleans, dates (a date-time with a space ends early)


class _Lines:
    """Line of each key, ``[[table]]`` entry and array element of a (valid) TOML text.

    Paths use keys and 0-based indices: ``("axes", 1, "values", 2)`` is the third value of the second
    axis whether the file writes ``[[axes]]`` or an inline array. A best-effort scanner: it only runs on
    text tomllib accepted, and any surprise leaves the remaining paths to their enclosing table's line.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.paths: dict[tuple[str | int, ...], int] = {}
        with contextlib.suppress(IndexError, ValueError):  # keep the lines found so far
            self._document()

    def line_of(self, *path: str | int) -> int:
        for n in range(len(path), 0, -1):
            line = self.paths.get(tuple(path[:n]))
            if line is not None:
                return line
        return 0

    def where(self, label: str, *path: str | int) -> str:
        line = self.line_of(*path)
        return f"{label}:{line}" if line else label

    # -- scanner -------------------------------------------------------------------------------------

    def _mark(self, path: tuple[str | int, ...], pos: int) -> None:
        self.paths.setdefault(path, bisect.bisect_right(self.starts, pos))

    def _peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def _skip(self, newlines: bool) -> None:
        chars = " \t\r\n" if newlines else " \t"
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in chars:
                self.i += 1
            elif c == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c in ('"', "'"):
                start = self.i
                self._string()
                parts.append(self.text[start + 1 : self.i - 1])
            else:
                m = _BARE_KEY_RE.match(self.text, self.i)
                if not m:
                    raise ValueError("no key")
                parts.append(m.group(0))
                self.i = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        for delim in ('"""', "'''", '"', "'"):
            if self.text.startswith(delim, self.i):
                break
        self.i += len(delim)
        while True:
            c = self.text[self.i]
            if c == "\\" and delim[0] == '"':
                self.i += 2
            elif self.text.startswith(delim, self.i):
                self.i += len(delim)
                while self._peek() == delim[0] and len(delim) == 3:  # quotes just before a closing """
                    self.i += 1
                return
            else:
                self.i += 1

    def _value(self, path: tuple[str | int, ...]) -> None:
        self._skip(newlines=False)
        c = self._peek()
        if c == "[":
            self.i += 1
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self._mark((*path, index), self.i)
                self._value((*path, index))
                self._skip(newlines=True)
                if self._peek() == ",":
                    self.i += 1
                    index += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self.i += 1
                    return
                start = self.i
                key = (*path, *self._key())
                self._mark(key, start)
                self.i += 1  # "="
                self._value(key)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif c in ('"', "'"):
            self._string()
        else:
            m = _SCALAR_RE.match(self.text, self.i)
            if not m:
                raise ValueError("no value")
            self.i = m.end()

    def _document(self) -> None:
        table: tuple[str | int, ...] = ()
        counts: dict[tuple[str | int, ...], int] = {}
        while True:
            self._skip(newlines=True)
            if self.i >= len(self.text):
                return
            start = self.i
            if self.text.startswith("[[", self.i):
                self.i += 2
                name = self._key()
                self.i += 2
                counts[name] = counts.get(name, -1) + 1
                table = (*name, counts[name])
                self._mark(name, start)
                self._mark(table, start)
            elif self._peek() == "[":
                self.i += 1
                table = self._key()
                self.i += 1
                self._mark(table, start)
            else:
                key = (*table, *self._key())
                self._mark(key, start)
                self.i += 1  # "="
                self._value(key)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


class _Loader:
    """Validates one parsed experiment file, collecting every problem with its file:line."""

    def __init__(self, text: str, label: str, source: str, default_name: str) -> None:
        self.label = label
        self.source = source
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            where = f"{label}:{m.group(1)}" if m else label
            raise ConfigError(f"{where}: TOML syntax error: {exc}") from None
        self.lines = _Lines(text)
        self.errors: list[tuple[int, str]] = []
        raw_name = self.data.get("name", default_name)
        self.name = raw_name if isinstance(raw_name, str) and raw_name else default_name

    def error(self, path: tuple[str | int, ...], message: str) -> None:
        self.errors.append((self.lines.line_of(*path), f"{self.lines.where(self.label, *path)}: {message}"))

    def load(self) -> Experiment:
        data = self.data
        for key in data:
            if key in _TOP_KEYS:
                continue
            if key in _SETTABLE:
                hint = f"parameters go in [base] or in an axis: [base] {key} = {_show(data[key])}"
            elif key in _NOT_PARAMETERS:
                hint = _NOT_PARAMETERS[key]
            else:
                near = closest(key, _TOP_KEYS)
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(_TOP_KEYS)}"
            self.error((key,), f"unknown key '{key}' in experiment '{self.name}'; {hint}")

        name = data.get("name", self.name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            self.error(("name",), f"name {_show(name)} must be letters, digits, '_' or '-', starting with a letter")
        description = data.get("description", "")
        if not isinstance(description, str):
            self.error(("description",), "description must be a string")
            description = ""
        seeds = self._seeds(data.get("seeds", [42]))
        ids, category, max_prompts = self._prompts(data.get("prompts", {}))
        base = data.get("base", {})
        if not isinstance(base, dict):
            self.error(("base",), "base must be a table: [base]")
            base = {}
        for key, message in _param_errors(base):
            self.error(("base", key), f"{self.name} [base] {key} = {_show(base[key])}: {message}")
        axes = self._axes(data.get("axes", []))
        if self.errors:
            self.errors.sort(key=lambda e: e[0])
            raise ConfigError("\n".join(dict.fromkeys(msg for _, msg in self.errors)))
        return Experiment(
            name=self.name,
            description=description.strip(),
            seeds=seeds,
            prompt_ids=ids,
            prompt_category=category,
            max_prompts=max_prompts,
            base=dict(base),
            axes=axes,
            source=self.source,
        )

    def _seeds(self, raw: Any) -> tuple[int, ...]:
        if not isinstance(raw, list) or not raw:
            self.error(("seeds",), "seeds must be a non-empty list of integers, e.g. seeds = [42, 123]")
            return ()
        out: list[int] = []
        for i, seed in enumerate(raw):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                self.error(("seeds", i), f"seed {_show(seed)} must be an integer in 0..{MAX_SEED}")
            elif seed in out:
                self.error(("seeds", i), f"seed {seed} is listed twice")
            else:
                out.append(seed)
        return tuple(out)

    def _prompts(self, raw: Any) -> tuple[tuple[str, ...], str | None, int | None]:
        if not isinstance(raw, dict):
            self.error(("prompts",), "prompts must be a table: [prompts] with category, ids and/or max")
            return (), None, None
        for key in raw:
            if key not in _PROMPT_KEYS:
                near = closest(key, _PROMPT_KEYS)
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(_PROMPT_KEYS)}"
                self.error(("prompts", key), f"unknown key '{key}' in [prompts]; {hint}")
        ids: list[str] = []
        raw_ids = raw.get("ids", [])
        if not isinstance(raw_ids, list) or (not raw_ids and "ids" in raw):
            self.error(("prompts", "ids"), 'ids must be a non-empty list of prompt ids, e.g. ids = ["animal_001"]')
        else:
            for i, pid in enumerate(raw_ids):
                if not isinstance(pid, str) or not pid:
                    self.error(("prompts", "ids", i), f"prompt id {_show(pid)} must be a non-empty string")
                elif pid in ids:
                    self.error(("prompts", "ids", i), f"prompt id '{pid}' is listed twice")
                else:
                    ids.append(pid)
        category = raw.get("category")
        if category is not None and (not isinstance(category, str) or not category):
            self.error(("prompts", "category"), "category must be a non-empty string")
            category = None
        if category is not None and "ids" in raw:
            self.error(("prompts", "category"), "give either category or ids in [prompts], not both")
        max_prompts = raw.get("max")
        if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int)):
            self.error(("prompts", "max"), f"max must be a positive integer (got {_show(max_prompts)})")
            max_prompts = None
        elif max_prompts is not None and max_prompts < 1:
            self.error(("prompts", "max"), f"max must be a positive integer (got {max_prompts})")
            max_prompts = None
        return tuple(ids), category, max_prompts

    def _axes(self, raw: Any) -> tuple[Axis, ...]:
        if not isinstance(raw, list):
            self.error(("axes",), "axes must be an array of tables: [[axes]]")
            return ()
        axes: list[Axis] = []
        first_index: dict[str, int] = {}
        raw_lengths: dict[str, int] = {}  # as written: a dropped invalid value must not hide a zip mismatch
        for i, table in enumerate(raw):
            axis = self._axis(i, table)
            if axis is None:
                continue
            raw_lengths[axis.name] = len(table["values"])
            if axis.name in first_index:
                self.error(("axes", i, "name"), f"{self.name}: axis name '{axis.name}' is used twice")
                continue
            first_index[axis.name] = i
            axes.append(axis)
        # One parameter on two axes would make one of them silently inert.
        owner: dict[str, str] = {}
        for axis in axes:
            for param in axis.parameters():
                if param in owner:
                    self.error(
                        ("axes", first_index[axis.name]),
                        f"{self.name}: parameter '{param}' is set by axes '{owner[param]}' and '{axis.name}'; "
                        "set each parameter on one axis (tables can set several parameters at once)",
                    )
                owner.setdefault(param, axis.name)
        zips: dict[str, Axis] = {}
        for axis in axes:
            if axis.zip is None:
                continue
            first = zips.setdefault(axis.zip, axis)
            if raw_lengths[first.name] != raw_lengths[axis.name]:
                self.error(
                    ("axes", first_index[axis.name], "zip"),
                    f"{self.name}: zip group '{axis.zip}' needs axes of equal length: '{first.name}' has "
                    f"{raw_lengths[first.name]} values, '{axis.name}' has {raw_lengths[axis.name]}",
                )
        return tuple(axes)

    def _axis(self, i: int, table: Any) -> Axis | None:
        path: tuple[str | int, ...] = ("axes", i)
        if not isinstance(table, dict):
            self.error(path, "each axis must be a table ([[axes]] with name and values)")
            return None
        for key in table:
            if key in _AXIS_KEYS:
                continue
            if key in _SETTABLE:
                hint = "an axis sets parameters through its values (scalars for `name`/`parameter`, or tables)"
            else:
                near = closest(key, _AXIS_KEYS)
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(_AXIS_KEYS)}"
            self.error((*path, key), f"unknown key '{key}' in [[axes]]; {hint}")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or "__" in name:
            self.error(
                (*path, "name"),
                f"axis name {_show(name) if name is not None else '(missing)'} must be letters, digits, '_' or "
                "'-', starting with a letter (no '__': it separates the fields of image names)",
            )
            return None
        if name in _RESERVED_AXIS_NAMES:
            self.error((*path, "name"), f"axis name '{name}' is reserved for a results column; choose another")
            return None
        zip_group = table.get("zip")
        if zip_group is not None and (not isinstance(zip_group, str) or not zip_group):
            self.error((*path, "zip"), f"axis '{name}': zip must be a non-empty group name (got {_show(zip_group)})")
            zip_group = None
        parameter = table.get("parameter")
        if parameter is not None and (not isinstance(parameter, str) or parameter not in _SETTABLE):
            self.error((*path, "parameter"), f"axis '{name}': {_unknown_parameter(str(parameter))}")
            parameter = None
        scalar_param = parameter or (name if name in _SETTABLE else None)
        values = table.get("values")
        if not isinstance(values, list) or not values:
            self.error((*path, "values"), f"axis '{name}' needs values = [...] (a non-empty list)")
            return None
        out: list[AxisValue] = []
        scalar_error = False
        for j, value in enumerate(values):
            vpath = (*path, "values", j)
            if isinstance(value, dict):
                item = self._table_value(name, vpath, value)
            elif scalar_param is None:
                if not scalar_error:
                    near = closest(name, _SETTABLE)
                    hint = f" (did you mean '{near}'?)" if near else ""
                    self.error(
                        (*path, "name"),
                        f"{self.name} axis '{name}' is not a parameter name{hint}: add parameter = \"...\" for "
                        'scalar values, or write each value as a table such as { label = "a", shift = 2.0 }',
                    )
                scalar_error = True
                continue
            else:
                item = self._scalar_value(name, vpath, scalar_param, value)
            if item is not None:
                out.append(item)
        self._check_labels(name, path, out)
        return Axis(name=name, values=tuple(out), zip=zip_group)

    def _scalar_value(self, axis: str, vpath: tuple[str | int, ...], param: str, value: Any) -> AxisValue | None:
        bad = _param_errors({param: value})
        for _, message in bad:
            self.error(vpath, f"{self.name} axis '{axis}' value {_show(value)}: {message}")
        label = _format_label(value)
        if not label:
            self.error(
                vpath,
                f"{self.name} axis '{axis}' value {_show(value)} needs a label: write it as a table, e.g. "
                f'{{ label = "none", {param} = {_show(value)} }}',
            )
            return None
        return None if bad else AxisValue(label, {param: value})

    def _table_value(self, axis: str, vpath: tuple[str | int, ...], value: dict[str, Any]) -> AxisValue | None:
        params = {k: v for k, v in value.items() if k != "label"}
        raw_label = value.get("label")
        shown = f"'{raw_label}'" if isinstance(raw_label, str) else f"{vpath[-1]}"
        if not params:
            self.error(vpath, f"{self.name} axis '{axis}' value {shown} sets no parameter")
            return None
        bad = _param_errors(params)
        for key, message in bad:
            self.error((*vpath, key), f"{self.name} axis '{axis}' value {shown}: {message}")
        if raw_label is None:
            if len(params) != 1:
                self.error(vpath, f"{self.name} axis '{axis}' value {shown} sets several parameters; add a label")
                return None
            raw_label = _format_label(next(iter(params.values())))
        if not isinstance(raw_label, str) or not raw_label.strip():
            self.error((*vpath, "label"), f"{self.name} axis '{axis}': label must be a non-empty string")
            return None
        return None if bad else AxisValue(raw_label, params)

    def _check_labels(self, axis: str, path: tuple[str | int, ...], values: list[AxisValue]) -> None:
        seen: dict[str, str] = {}
        files: dict[str, str] = {}
        for j, value in enumerate(values):
            vpath = (*path, "values", j)
            if value.label in seen:
                self.error(vpath, f"{self.name} axis '{axis}': label '{value.label}' is used twice")
                continue
            seen[value.label] = value.label
            safe = file_label(value.label)
            if safe in files:
                self.error(
                    vpath,
                    f"{self.name} axis '{axis}': labels '{files[safe]}' and '{value.label}' both become "
                    f"'{safe}' in file names; make them differ in letters or digits",
                )
                continue
            files[safe] = value.label


def _load_text(text: str, label: str, source: str, default_name: str) -> Experiment:
    return _Loader(text, label, source, default_name).load()


def load_experiment_file(path: str | Path) -> Experiment:
    """Load and validate an experiment TOML file; raise ConfigError listing every problem with file:line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"experiment file '{path}' not found (looked at {p.resolve()})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return _load_text(text, str(path), str(path), p.stem)


@lru_cache(maxsize=1)
def _builtins() -> tuple[Experiment, ...]:
    folder = resources.files("llm_dit").joinpath("data", "experiments")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            stem = entry.name.removesuffix(".toml")
            label = f"llm_dit/data/experiments/{entry.name}"
            out.append(_load_text(entry.read_text("utf-8"), label, BUILTIN_SOURCE, stem))
    return tuple(out)


def builtin_experiments() -> dict[str, Experiment]:
    """The built-in experiments (package data), by name, in alphabetical order."""
    return {exp.name: exp for exp in _builtins()}


def get_experiment(name: str | None, experiment_file: str | Path | None = None) -> Experiment:
    """A built-in experiment by name, or the experiment defined in a file.

    A name ending in ``.toml`` is read as a file. With both a name and a file, the file's name must match.
    """
    if experiment_file is not None:
        exp = load_experiment_file(experiment_file)
        if name is not None and name != exp.name:
            raise ConfigError(f"experiment file '{experiment_file}' defines '{exp.name}', not '{name}'")
        return exp
    builtins = builtin_experiments()
    if name is None:
        raise LlmDitError(f"no experiment given; name a built-in ({', '.join(builtins)}) or pass an experiment file")
    if name.endswith(".toml"):
        return load_experiment_file(name)
    if name in builtins:
        return builtins[name]
    hint = closest(name, list(builtins))
    extra = f"did you mean '{hint}'? " if hint else ""
    raise LlmDitError(
        f"unknown experiment '{name}'; {extra}built-in experiments: {', '.join(builtins)} (or pass a TOML file)"
    )


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def _sets_sigmas(value: Any) -> bool:
    try:
        return parse_sigmas(value) is not None
    except ValueError:
        return True  # invalid: keep it, so validation reports it


def _merge(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge parameter layers (last wins), applying the replace rules of the module docstring."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if "hidden_layer" in layer and "layer_weights" not in layer:
            merged["layer_weights"] = None
        if ("steps" in layer or "shift" in layer) and "sigmas" not in layer:
            merged["sigmas"] = None
        if "sigmas" in layer and "steps" not in layer and _sets_sigmas(layer["sigmas"]):
            try:
                merged["steps"] = count_steps(parse_sigmas(layer["sigmas"]) or [])
            except ValueError:
                merged.pop("steps", None)
        merged.update(layer)
    return merged


def _settings_layer(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(settings.encoder, k) for k in ENCODER_PARAMETERS}
    out.update({k: getattr(settings.generation, k) for k in GENERATION_PARAMETERS if k != "seed"})
    out[TOKEN_MANIPULATION] = None
    return out


def _resolve(merged: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Validated, canonical flat params (raises ConfigError with the schema's message)."""
    encoder = build_section(EncoderSettings, {k: merged[k] for k in ENCODER_PARAMETERS if k in merged})
    generation = build_section(
        GenerationSettings, {**{k: merged[k] for k in GENERATION_PARAMETERS if k in merged}, "seed": seed}
    )
    manipulation = merged.get(TOKEN_MANIPULATION)
    if manipulation is not None:
        _check_manipulation(manipulation)
    params: dict[str, Any] = {k: getattr(encoder, k) for k in ENCODER_PARAMETERS}
    params.update({k: getattr(generation, k) for k in GENERATION_PARAMETERS})
    params[TOKEN_MANIPULATION] = manipulation
    # Inert values become None, so they can neither differentiate run ids nor mislead a reader.
    if params["layer_weights"] is not None:
        params["hidden_layer"] = None
    if params["sigmas"] is not None:
        params["shift"] = None
    if params["guidance_scale"] == 0:
        params["negative_prompt"] = None
    return params


def default_params() -> dict[str, Any]:
    """The built-in defaults (the official recipe) resolved as a plan stores a run's params, without the seed.

    JSON-normalised (string keys), so it compares directly with params read back from the results store; the
    metrics use it to find each axis's default value (the natural reference of a sweep).
    """
    params = _resolve(_merge([_settings_layer(Settings())]), seed=0)
    params.pop("seed")
    return json.loads(json.dumps(_jsonable(params)))


def _check_overrides(overrides: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate CLI/API overrides once; ``where`` names the first run they apply to (they apply to all)."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in (overrides or {}).items():
        if value is None:  # an unset CLI option
            continue
        if key not in _SETTABLE:
            flat = key.rpartition(".")[2]
            if key == "seed":
                errors.append("override 'seed': pass the seeds to plan (the experiment's seeds are its default)")
            elif flat != key and flat in _SETTABLE:
                errors.append(f"override '{key}': use the flat name '{flat}'")
            else:
                errors.append(f"override {_unknown_parameter(key)}")
            continue
        try:
            _check_value(key, value)
        except ConfigError as exc:
            errors.append(f"{where}: override {key}={_format_label(value)}: {exc}")
            continue
        out[key] = value
    if errors:
        raise ConfigError("\n".join(errors))
    return out


# Parameters an axis value makes irrelevant below it, besides the one it sets (see _merge).
REPLACES: dict[str, tuple[str, ...]] = {
    "hidden_layer": ("layer_weights",),
    "layer_weights": ("hidden_layer",),
    "sigmas": ("steps", "shift"),
    "steps": ("sigmas",),
    "shift": ("sigmas",),
}


def swept_overrides(experiment: Experiment, overrides: Mapping[str, Any] | None) -> list[str]:
    """Names of the given overrides that an axis overrides in turn (so they are ignored on its runs).

    Includes parameters an axis replaces (an override of ``layer_weights`` when an axis sets
    ``hidden_layer``, of ``steps`` when an axis sets ``sigmas``, ...). ``None`` values are not overrides.
    """
    touched: set[str] = set()
    for axis in experiment.axes:
        for param in axis.parameters():
            touched.add(param)
            touched.update(REPLACES.get(param, ()))
    return [k for k, v in (overrides or {}).items() if v is not None and k in touched]


def compute_run_id(
    prompt_text: str,
    seed: int,
    params: Mapping[str, Any],
    model_fingerprint: str,
    numerics: Mapping[str, str] | None = None,
) -> str:
    """First 16 hex of sha256 over the canonical JSON of everything that affects pixels.

    The payload is ``{"model": fingerprint, "numerics": {...}, "params": {...}, "prompt": text, "seed": n}``
    dumped with ``sort_keys=True, separators=(",", ":")`` (ASCII escapes), where ``params`` are the
    resolved params without ``seed`` (already at the top), ``output_dir`` and ``token_manipulation`` (its
    whole effect is the prompt text, so a no-op manipulation gives the id of the plain run), and with
    ``layer_weights`` keys as strings. Experiment name, prompt id, labels and package versions are left out
    on purpose: the same image in two experiments gets the same id (a store can reuse it), and upgrading a
    package does not invalidate resume; what can change pixels across machines goes in ``numerics``.
    """
    pixel = {k: v for k, v in params.items() if k not in ("seed", "output_dir", TOKEN_MANIPULATION)}
    payload = {
        "model": model_fingerprint,
        "numerics": {str(k): str(v) for k, v in (numerics or {}).items()},
        "params": _jsonable(pixel),
        "prompt": prompt_text,
        "seed": seed,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _run_name(experiment: Experiment, prompt_id: str, seed: int, variables: Mapping[str, str]) -> str:
    parts = " ".join(f"{k}={v}" for k, v in variables.items())
    return f"{experiment.name} run {prompt_id} seed {seed}" + (f" {parts}" if parts else "")


def image_name(prompt_id: str, variables: Mapping[str, str], seed: int, run_id: str) -> str:
    """``<prompt_id>__<var>=<label>__...__seed<seed>__<run_id[:8]>.png`` with safe, bounded labels."""
    fields = [file_label(prompt_id)]
    fields += [f"{name}={file_label(label)}" for name, label in variables.items()]
    fields += [f"seed{seed}", run_id[:8]]
    return "__".join(fields) + ".png"


def plan(
    experiment: Experiment,
    prompts: Sequence[Prompt],
    seeds: Sequence[int],
    settings: Settings,
    *,
    overrides: Mapping[str, Any] | None = None,
    model_fingerprint: str,
    numerics: Mapping[str, str] | None = None,
) -> list[PlannedRun]:
    """Expand an experiment into validated runs: prompts (given order) x combinations x seeds.

    Precedence: defaults < ``settings`` < experiment base < ``overrides`` (flat names; ``None`` = unset)
    < axis values. Every run is validated with the config schema; the first invalid one raises
    LlmDitError naming the experiment, prompt, seed and variables. Run ids are unique within a plan: a run
    that would make the same image as an earlier one (e.g. a token manipulation that leaves a prompt
    unchanged) gets an id derived from the earlier id and its own variables.
    """
    if not model_fingerprint or not isinstance(model_fingerprint, str):
        raise LlmDitError("plan needs a model_fingerprint (a non-empty string identifying the weights)")
    if not prompts:
        raise LlmDitError(f"{experiment.name}: no prompts to plan")
    prompt_ids = [p.id for p in prompts]
    dupes = sorted({pid for pid in prompt_ids if prompt_ids.count(pid) > 1})
    if dupes:
        raise LlmDitError(f"{experiment.name}: prompt ids given more than once: {', '.join(dupes)}")
    seed_list = list(seeds)
    if not seed_list:
        raise LlmDitError(f"{experiment.name}: no seeds to plan")
    for seed in seed_list:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise LlmDitError(f"{experiment.name}: seed {seed!r} must be an integer in 0..{MAX_SEED}")
    if len(set(seed_list)) != len(seed_list):
        raise LlmDitError(f"{experiment.name}: a seed is given more than once: {seed_list}")
    override_layer = _check_overrides(
        overrides, _run_name(experiment, prompts[0].id, seed_list[0], {}) + " (and every other run)"
    )
    settings_layer = _settings_layer(settings)
    combos = experiment.combinations()
    merged = [_merge([settings_layer, experiment.base, override_layer, *(v.params for v in combo)]) for combo in combos]
    resolved: dict[int, dict[str, Any]] = {}  # per combination: params without the seed's value
    runs: list[PlannedRun] = []
    names: dict[str, str] = {}
    ids: set[str] = set()
    for prompt in prompts:
        for c, combo in enumerate(combos):
            variables = {axis.name: value.label for axis, value in zip(experiment.axes, combo, strict=True)}
            for seed in seed_list:
                where = _run_name(experiment, prompt.id, seed, variables)
                if c not in resolved:
                    try:
                        resolved[c] = _resolve(merged[c], seed)
                    except LlmDitError as exc:
                        raise LlmDitError(f"{where}: {exc}") from None
                params = {**resolved[c], "seed": seed}
                manipulation = params[TOKEN_MANIPULATION]
                text = prompt.text
                if manipulation is not None:
                    from llm_dit.experiments.prompts import manipulate

                    try:
                        text = manipulate(prompt, manipulation, seed)
                    except (LlmDitError, ValueError) as exc:
                        raise LlmDitError(f"{where}: token_manipulation {manipulation}: {exc}") from None
                rid = compute_run_id(text, seed, params, model_fingerprint, numerics)
                if rid in ids:
                    # Same pixels as an earlier run of this plan (e.g. a token manipulation that leaves this
                    # prompt unchanged). Every planned condition keeps its own row and image, so the id is
                    # derived from the first one and this run's variables: still deterministic, still unique.
                    tag = json.dumps(variables, sort_keys=True, separators=(",", ":"))
                    rid = hashlib.sha256(f"{rid}:{tag}".encode()).hexdigest()[:16]
                ids.add(rid)
                name = image_name(prompt.id, variables, seed, rid)
                if name in names:
                    raise LlmDitError(f"{where}: image name {name} is also that of {names[name]}; rename a prompt id")
                names[name] = where
                runs.append(PlannedRun(rid, experiment.name, prompt, text, seed, variables, params, name))
    return runs
