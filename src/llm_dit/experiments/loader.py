"""Experiment TOML files and the built-in experiments (package data in ``llm_dit/data/experiments``).

Owns the strict loader: unknown keys, bad values and impossible axes are all reported at once, each with its
``file:LINE`` (found by :class:`~llm_dit.config.TomlLines`), before anything runs. Builds on the data model and
the planner's parameter checks; it must not import torch, the runner or the prompt library.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from llm_dit.config import TomlLines, TomlPath, parse_toml, toml_value
from llm_dit.constants import MAX_SEED
from llm_dit.errors import ConfigError, LlmDitError, closest
from llm_dit.experiments.model import (
    SETTABLE_PARAMETERS,
    Axis,
    AxisValue,
    Experiment,
    file_label,
    image_placeholder,
    value_label,
)
from llm_dit.experiments.planner import NOT_PARAMETERS, parameter_errors, unknown_parameter
from llm_dit.files import IMAGE_SETTINGS

__all__ = ["BUILTIN_SOURCE", "builtin_experiments", "get_experiment", "load_experiment_file"]

_TOP_KEYS = ("name", "description", "seeds", "prompts", "images", "base", "baseline", "axes")
_PROMPT_KEYS = ("ids", "category", "max")
_AXIS_KEYS = ("name", "parameter", "values", "zip")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_BRACED_RE = re.compile(r"^\{[^{}]*\}$")  # looks like a placeholder: checked as one
# Image parameters that take one image: {images} (a list) is for vl_image only.
_ONE_IMAGE = ("style_image", "neutral_image", "init_image")
# Axis names become results.csv columns next to these, and parts of image names.
_RESERVED_AXIS_NAMES = ("experiment", "prompt", "prompt_id", "prompt_text", "seed", "run_id", "image", "image_name")
BUILTIN_SOURCE = "built-in"


class _Loader:
    """Validates one parsed experiment file, collecting every problem with its file:line."""

    def __init__(self, text: str, label: str, source: str, default_name: str, folder: Path | None = None) -> None:
        self.label = label
        self.folder = folder  # the file's folder: relative image paths in it are relative to it
        self.source = source
        self.text = text
        self.data = parse_toml(text, label)
        self._lines: TomlLines | None = None
        self.errors: list[tuple[int, str]] = []
        raw_name = self.data.get("name", default_name)
        self.name = raw_name if isinstance(raw_name, str) and raw_name else default_name

    @property
    def lines(self) -> TomlLines:
        # Built on the first error only: locating lines is a pass over the whole text (0.5 s for a 2 MB file).
        if self._lines is None:
            self._lines = TomlLines(self.text)
        return self._lines

    def error(self, path: TomlPath, message: str) -> None:
        self.errors.append((self.lines.line_of(*path), f"{self.lines.where(self.label, *path)}: {message}"))

    def check_size(self, max_runs: int) -> None:
        """Refuse a file whose own seeds x combinations exceed ``max_runs`` (a plan holds at least that many runs:
        one per prompt), counted from the raw lists before any value is validated. A malformed file is left to
        the validation, which names what is wrong."""
        seeds, axes = self.data.get("seeds", [42]), self.data.get("axes", [])
        if not isinstance(seeds, list) or not isinstance(axes, list):
            return
        groups: dict[str, int] = {}  # zip group (or the axis's own position) -> values
        for i, table in enumerate(axes):
            values = table.get("values") if isinstance(table, dict) else None
            if not isinstance(values, list):
                return
            group = table.get("zip")
            key = f"zip:{group}" if isinstance(group, str) and group else f"axis:{i}"
            groups[key] = max(groups.get(key, 0), len(values))
        combinations = math.prod(groups.values()) + ("baseline" in self.data)
        total = len(seeds) * combinations
        if total > max_runs:
            raise ConfigError(
                f"{self.label}: {len(seeds)} seeds x {combinations} combinations = {total} runs per prompt, above "
                f"the limit of {max_runs} runs (limits.max_runs); if you mean it, raise it in the config file: "
                f"[default.limits] max_runs = {total}"
            )

    def load(self) -> Experiment:
        data = self.data
        for key in data:
            if key in _TOP_KEYS:
                continue
            if key in SETTABLE_PARAMETERS:
                hint = f"parameters go in [base] or in an axis: [base] {key} = {toml_value(data[key])}"
            elif key in NOT_PARAMETERS:
                hint = NOT_PARAMETERS[key]
            else:
                near = closest(key, _TOP_KEYS)
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(_TOP_KEYS)}"
            self.error((key,), f"unknown key '{key}' in experiment '{self.name}'; {hint}")

        name = data.get("name", self.name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            self.error(
                ("name",), f"name {toml_value(name)} must be letters, digits, '_' or '-', starting with a letter"
            )
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
        for key, message in parameter_errors(base):
            self.error(("base", key), f"{self.name} [base] {key} = {toml_value(base[key])}: {message}")
        self._check_placeholders(("base",), base)
        images = self._images(data.get("images", []))
        axes = self._axes(data.get("axes", []))
        baseline = self._baseline(data["baseline"], axes) if "baseline" in data else None
        baseline_is_reference = self._baseline_is_reference(data.get("baseline"))
        if self.errors:
            self.errors.sort(key=lambda e: e[0])
            raise ConfigError("\n".join(dict.fromkeys(msg for _, msg in self.errors)))
        experiment = Experiment(
            name=self.name,
            description=description.strip(),
            seeds=seeds,
            prompt_ids=ids,
            prompt_category=category,
            max_prompts=max_prompts,
            base=self._rebased(base),
            axes=axes,
            source=self.source,
            images=images,
            baseline=baseline,
            baseline_is_reference=baseline_is_reference,
        )
        self._check_images_used(experiment)
        if self.errors:
            raise ConfigError("\n".join(msg for _, msg in self.errors))
        return experiment

    def _rebased(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with relative input-image paths made relative to the file's folder (where its author put them;
        a ``--set`` path stays relative to the working directory)."""
        if self.folder is None:
            return dict(params)

        def rebase(path: Any) -> Any:
            if not isinstance(path, str) or not path.strip() or image_placeholder(path) is not None:
                return path
            full = Path(path).expanduser()
            return path if full.is_absolute() else os.path.normpath(self.folder / full)

        out = dict(params)
        for name in IMAGE_SETTINGS:
            value = out.get(name)
            if value is not None:
                out[name] = [rebase(v) for v in value] if isinstance(value, list) else rebase(value)
        return out

    def _images(self, raw: Any) -> tuple[str, ...]:
        """``images = [...]``: paths, relative ones to the file's folder (checked, like every input image, when the
        runs are planned)."""
        if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
            self.error(("images",), 'images must be a list of image paths, e.g. images = ["ref.png"]')
            return ()
        return tuple(self._rebased({"vl_image": list(raw)})["vl_image"])

    def _check_placeholders(self, path: TomlPath, params: dict[str, Any]) -> None:
        """Every braced value of an image parameter is a known placeholder, and ``{images}`` only in vl_image."""
        for name in IMAGE_SETTINGS:
            value = params.get(name)
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, str) or not _BRACED_RE.match(item):
                    continue
                index = image_placeholder(item)
                if index is None:
                    self.error(
                        (*path, name),
                        f"{self.name}: {name} = {toml_value(item)} is not a placeholder: use {{image}} (the first "
                        "image), {image2}, {image3}, ... or {images} (all of them, for vl_image)",
                    )
                elif name in _ONE_IMAGE and index < 0:
                    self.error(
                        (*path, name),
                        f"{self.name}: {name} takes one image; {{images}} is the whole list (for vl_image): use "
                        "{image}, {image2}, ...",
                    )

    def _check_images_used(self, experiment: Experiment) -> None:
        """``images`` that no placeholder reads would do nothing: refused, as is a placeholder-free experiment that
        lists images."""
        if not experiment.images:
            return
        needed, open_ended = experiment.images_needed()
        if needed == 0:
            self.error(
                ("images",),
                f"{self.name}: images = [...] is read by no placeholder: write {{image}} (or {{image2}}, ..., "
                "{images}) where an image parameter takes it, or drop images",
            )
        elif len(experiment.images) > needed and not open_ended:
            self.error(
                ("images",),
                f"{self.name}: images lists {len(experiment.images)} images but its placeholders read {needed}; "
                "drop the others",
            )

    def _baseline(self, raw: Any, axes: tuple[Axis, ...]) -> AxisValue | None:
        """``[baseline]``: a label and parameters, like a table value of an axis; its label on no axis."""
        path: TomlPath = ("baseline",)
        if not isinstance(raw, dict):
            self.error(path, 'baseline must be a table: [baseline] with label = "..." and its parameters')
            return None
        if not axes:
            self.error(path, f"{self.name}: a baseline needs an axis (its runs carry its label on every axis)")
            return None
        label = raw.get("label")
        if not isinstance(label, str) or not label.strip():
            self.error((*path, "label"), f'{self.name} baseline needs a label, e.g. label = "qwen3_4b"')
            return None
        params = {k: v for k, v in raw.items() if k not in ("label", "reference")}
        if not params:
            self.error(path, f"{self.name} baseline '{label}' sets no parameter (e.g. conditioning = \"text\")")
            return None
        bad = parameter_errors(params)
        for key, message in bad:
            self.error((*path, key), f"{self.name} baseline '{label}': {message}")
        self._check_placeholders(path, params)
        for axis in axes:
            if file_label(label) in {file_label(v.label) for v in axis.values}:
                self.error(
                    (*path, "label"),
                    f"{self.name}: baseline label '{label}' is also a value of axis '{axis.name}' (in file names at "
                    "least); choose another",
                )
        return None if bad else AxisValue(label, self._rebased(params))

    def _baseline_is_reference(self, raw: Any) -> bool:
        """``reference = true`` in ``[baseline]``: the baseline is every run's reference for the reference metrics
        (a speed study's converged run), whatever the axes' default values."""
        if not isinstance(raw, dict) or "reference" not in raw:
            return False
        if not isinstance(raw["reference"], bool):
            self.error(
                ("baseline", "reference"),
                f"{self.name} baseline: reference = {toml_value(raw['reference'])} must be true or false",
            )
            return False
        return raw["reference"]

    def _seeds(self, raw: Any) -> tuple[int, ...]:
        if not isinstance(raw, list) or not raw:
            self.error(("seeds",), "seeds must be a non-empty list of integers, e.g. seeds = [42, 123]")
            return ()
        out: dict[int, None] = {}  # ordered, with O(1) membership: a file may list 10^5 seeds
        for i, seed in enumerate(raw):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                self.error(("seeds", i), f"seed {toml_value(seed)} must be an integer in 0..{MAX_SEED}")
            elif seed in out:
                self.error(("seeds", i), f"seed {seed} is listed twice")
            else:
                out[seed] = None
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
                    self.error(("prompts", "ids", i), f"prompt id {toml_value(pid)} must be a non-empty string")
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
            self.error(("prompts", "max"), f"max must be a positive integer (got {toml_value(max_prompts)})")
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
        path: TomlPath = ("axes", i)
        if not isinstance(table, dict):
            self.error(path, "each axis must be a table ([[axes]] with name and values)")
            return None
        for key in table:
            if key in _AXIS_KEYS:
                continue
            if key in SETTABLE_PARAMETERS:
                hint = "an axis sets parameters through its values (scalars for `name`/`parameter`, or tables)"
            else:
                near = closest(key, _AXIS_KEYS)
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(_AXIS_KEYS)}"
            self.error((*path, key), f"unknown key '{key}' in [[axes]]; {hint}")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or "__" in name:
            self.error(
                (*path, "name"),
                f"axis name {toml_value(name) if name is not None else '(missing)'} must be letters, digits, '_' or "
                "'-', starting with a letter (no '__': it separates the fields of image names)",
            )
            return None
        if name in _RESERVED_AXIS_NAMES:
            self.error((*path, "name"), f"axis name '{name}' is reserved for a results column; choose another")
            return None
        zip_group = table.get("zip")
        if zip_group is not None and (not isinstance(zip_group, str) or not zip_group):
            self.error(
                (*path, "zip"), f"axis '{name}': zip must be a non-empty group name (got {toml_value(zip_group)})"
            )
            zip_group = None
        parameter = table.get("parameter")
        if parameter is not None and (not isinstance(parameter, str) or parameter not in SETTABLE_PARAMETERS):
            self.error((*path, "parameter"), f"axis '{name}': {unknown_parameter(str(parameter))}")
            parameter = None
        scalar_param = parameter or (name if name in SETTABLE_PARAMETERS else None)
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
                    near = closest(name, SETTABLE_PARAMETERS)
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

    def _scalar_value(self, axis: str, vpath: TomlPath, param: str, value: Any) -> AxisValue | None:
        bad = parameter_errors({param: value})
        for _, message in bad:
            self.error(vpath, f"{self.name} axis '{axis}' value {toml_value(value)}: {message}")
        label = value_label(value)
        if not label:
            self.error(
                vpath,
                f"{self.name} axis '{axis}' value {toml_value(value)} needs a label: write it as a table, e.g. "
                f'{{ label = "none", {param} = {toml_value(value)} }}',
            )
            return None
        self._check_placeholders(vpath, {param: value})
        return None if bad else AxisValue(label, self._rebased({param: value}))

    def _table_value(self, axis: str, vpath: TomlPath, value: dict[str, Any]) -> AxisValue | None:
        params = {k: v for k, v in value.items() if k != "label"}
        raw_label = value.get("label")
        shown = f"'{raw_label}'" if isinstance(raw_label, str) else f"{vpath[-1]}"
        if not params:
            self.error(vpath, f"{self.name} axis '{axis}' value {shown} sets no parameter")
            return None
        bad = parameter_errors(params)
        for key, message in bad:
            self.error((*vpath, key), f"{self.name} axis '{axis}' value {shown}: {message}")
        if raw_label is None:
            if len(params) != 1:
                self.error(vpath, f"{self.name} axis '{axis}' value {shown} sets several parameters; add a label")
                return None
            raw_label = value_label(next(iter(params.values())))
        if not isinstance(raw_label, str) or not raw_label.strip():
            self.error((*vpath, "label"), f"{self.name} axis '{axis}': label must be a non-empty string")
            return None
        self._check_placeholders(vpath, params)
        return None if bad else AxisValue(raw_label, self._rebased(params))

    def _check_labels(self, axis: str, path: TomlPath, values: list[AxisValue]) -> None:
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


def _load_text(
    text: str,
    label: str,
    source: str,
    default_name: str,
    max_runs: int | None = None,
    folder: Path | None = None,
) -> Experiment:
    loader = _Loader(text, label, source, default_name, folder)
    if max_runs is not None:
        loader.check_size(max_runs)
    return loader.load()


def load_experiment_file(path: str | Path, *, max_runs: int | None = None) -> Experiment:
    """Load and validate an experiment TOML file; raise ConfigError listing every problem with file:line.

    ``max_runs`` (``[limits] max_runs``, for a caller that plans with the file's own seeds): refuse, before
    validating any value, a file whose seeds x combinations alone exceed it.
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.toml"))
        example = f", e.g. --experiment-file {found[0]}" if found else ""
        raise ConfigError(f"experiment file '{path}' is a directory; give the TOML file itself{example}")
    if not p.is_file():
        raise ConfigError(f"experiment file '{path}' not found (looked at {p.resolve()})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return _load_text(text, str(path), str(path), p.stem, max_runs, Path(os.path.abspath(p)).parent)


@lru_cache(maxsize=1)
def _builtins() -> tuple[Experiment, ...]:
    folder = resources.files("llm_dit").joinpath("data", "experiments")
    # The package data is a real folder (a regular or editable install): the built-ins' image paths are relative to
    # it (their default images ship in llm_dit/data/inputs).
    where = Path(os.path.abspath(str(folder))) if isinstance(folder, Path) else None
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            stem = entry.name.removesuffix(".toml")
            label = f"llm_dit/data/experiments/{entry.name}"
            out.append(_load_text(entry.read_text("utf-8"), label, BUILTIN_SOURCE, stem, folder=where))
    return tuple(out)


def builtin_experiments() -> dict[str, Experiment]:
    """The built-in experiments (package data), by name, in alphabetical order."""
    return {exp.name: exp for exp in _builtins()}


def get_experiment(
    name: str | None, experiment_file: str | Path | None = None, *, max_runs: int | None = None
) -> Experiment:
    """A built-in experiment by name, or the experiment defined in a file.

    A name ending in ``.toml`` is read as a file. With both a name and a file, the file's name must match.
    ``max_runs``: see :func:`load_experiment_file` (files only: the built-ins are small).
    """
    if experiment_file is not None:
        exp = load_experiment_file(experiment_file, max_runs=max_runs)
        if name is not None and name != exp.name:
            raise ConfigError(f"experiment file '{experiment_file}' defines '{exp.name}', not '{name}'")
        return exp
    builtins = builtin_experiments()
    if name is None:
        raise LlmDitError(f"no experiment given; name a built-in ({', '.join(builtins)}) or pass an experiment file")
    if name.endswith(".toml"):
        return load_experiment_file(name, max_runs=max_runs)
    if name in builtins:
        return builtins[name]
    hint = closest(name, list(builtins))
    extra = f"did you mean '{hint}'? " if hint else ""
    raise LlmDitError(
        f"unknown experiment '{name}'; {extra}built-in experiments: {', '.join(builtins)} (or pass a TOML file)"
    )
