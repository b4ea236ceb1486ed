"""Which image each run is compared with by the reference-based metrics (SSIM, PSNR, MAD, LPIPS).

The reference of a run is, by default, the run of the same prompt and seed whose swept variables are at their
default value, i.e. "what changed against the default?". The defaults are those stored with the experiment's
plan (``store.PlanDefaults``: the official recipe, hidden_layer -2, think_block none, shift 3.0, ...), never
those of the code reading the store, so a later change of a default does not move an old experiment's
reference. ``--reference AXIS=LABEL`` picks another value of an axis; axes not named and without a
default value are held at the run's own value (so a shift x steps grid can be compared per steps value).
``--reference-image [PROMPT_ID=]PATH`` compares with a source image instead (one for every prompt, or per
prompt), as in the caption-regeneration study.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.config import split_assignment
from llm_dit.errors import LlmDitError


@dataclass(frozen=True)
class ReferenceChoice:
    """What the user asked for: axis labels to set, and/or source images (prompt id None = every prompt)."""

    axes: dict[str, str] = field(default_factory=dict)
    images: dict[str | None, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A source image replaces the reference run, so axis labels would be silently ignored.
        if self.axes and self.images:
            given = ", ".join(f"{axis}={label}" for axis, label in self.axes.items())
            raise LlmDitError(
                f"--reference {given} and --reference-image cannot be combined: a source image replaces the "
                "reference run; pass one or the other"
            )


@dataclass(frozen=True)
class Reference:
    """One run's reference: another run of the experiment, or an image file. ``key`` goes into the stored
    metric's params, so changing the reference recomputes the value."""

    key: str
    path: Path
    run_id: str | None = None


def parse_reference(items: Sequence[str] | None) -> dict[str, str]:
    """``AXIS=LABEL`` items -> {axis: label}. The label is taken verbatim (it may contain commas or be '')."""
    example = "AXIS=LABEL, e.g. --reference hidden_layer=-2"
    return dict(split_assignment(item, "--reference", example) for item in items or [])


def parse_reference_images(items: Sequence[str] | None, prompt_ids: Sequence[str] = ()) -> dict[str | None, Path]:
    """``PATH`` (every prompt) or ``PROMPT_ID=PATH`` items -> {prompt id or None: path}; files must exist."""
    out: dict[str | None, Path] = {}
    for item in items or []:
        prompt_id, sep, rest = item.partition("=")
        key: str | None = None
        path = Path(item)
        # A path may itself contain '=': only a known prompt id before the first '=' makes it per-prompt.
        if sep and (prompt_id in prompt_ids or not path.exists()):
            key, path = prompt_id, Path(rest)
        if key is not None and prompt_ids and key not in prompt_ids:
            raise LlmDitError(
                f"--reference-image {item!r}: no prompt {key!r} in this experiment; prompts: {', '.join(prompt_ids)}"
            )
        if not path.is_file():
            raise LlmDitError(f"--reference-image {item!r}: {path} is not a file")
        out[key] = path
    return out


def file_key(path: Path) -> str:
    """A content key of an image file: replacing the source image recomputes its metrics."""
    return "image:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def axis_parameters(definition: Mapping[str, Any]) -> dict[str, list[str]]:
    """axis name -> the parameters any of its values sets (from the stored experiment definition)."""
    out: dict[str, list[str]] = {}
    for axis in definition.get("axes", []):
        params = out.setdefault(axis["name"], [])
        for value in axis.get("values", []):
            params.extend(k for k in value.get("params", {}) if k not in params)
    return out


def default_labels(
    runs: Sequence[Mapping[str, Any]], definition: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, str]:
    """axis -> the label whose runs have the default value of every parameter the axis sets.

    Compared on the runs' resolved params (canonical, inert values None), so a label spelt differently from
    the value (e.g. 'none' for system_prompt unset) is still found. Axes with no such value are left out.
    """
    out: dict[str, str] = {}
    for axis, params in axis_parameters(definition).items():
        for run in runs:
            label = run["variables"].get(axis)
            if label is None:
                continue
            if all(run["params"].get(p) == defaults.get(p) for p in params):
                out[axis] = label
                break
    return out


def check_choice(choice: ReferenceChoice, runs: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> None:
    """Every named axis exists and every label is one of its values (in the stored runs)."""
    for axis, label in choice.axes.items():
        if axis not in axes:
            raise LlmDitError(
                f"--reference {axis}={label}: the experiment has no axis {axis!r}; axes: {', '.join(axes) or 'none'}"
            )
        labels = list(dict.fromkeys(run["variables"].get(axis) for run in runs if axis in run["variables"]))
        if label not in labels:
            raise LlmDitError(
                f"--reference {axis}={label}: no such value; values of {axis}: {', '.join(map(repr, labels))}"
            )


def resolve_references(
    runs: Sequence[Mapping[str, Any]],
    reference_axes: Mapping[str, str],
    images: Mapping[str | None, Path],
    experiment_dir: Path,
    swept: frozenset[str] = frozenset(),
) -> dict[str, Reference]:
    """run id -> its reference, for done runs whose reference exists (a reference run must be done too).

    With ``images``: the prompt's image (or the one for every prompt). Otherwise the run with the same prompt,
    seed, unswept parameters (all but ``swept``, see :func:`swept_parameters`) and variables except
    ``reference_axes``; a run is its own reference when it is at those values.
    """
    done = [run for run in runs if run["status"] == "done" and run.get("image_path")]
    out: dict[str, Reference] = {}
    if images:
        keys = {prompt: file_key(path) for prompt, path in images.items()}
        for run in done:
            prompt = run["prompt_id"] if run["prompt_id"] in images else None
            if prompt in images:
                out[run["run_id"]] = Reference(keys[prompt], images[prompt])
        return out
    if not reference_axes:
        return out
    index = {(run["prompt_id"], run["seed"], _frozen(run["variables"]), fixed_params(run, swept)): run for run in done}
    for run in done:
        target = {**run["variables"], **{a: label for a, label in reference_axes.items() if a in run["variables"]}}
        ref = index.get((run["prompt_id"], run["seed"], _frozen(target), fixed_params(run, swept)))
        if ref is not None:
            out[run["run_id"]] = Reference(f"run:{ref['run_id']}", experiment_dir / ref["image_path"], ref["run_id"])
    return out


def swept_parameters(definition: Mapping[str, Any], replaces: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Parameters the axes set, plus those they replace (``replaces``, as stored with the plan: hidden_layer <->
    layer_weights, sigmas <-> steps/shift)."""
    params = {p for names in axis_parameters(definition).values() for p in names}
    return frozenset(params | {r for p in params for r in replaces.get(p, ())})


def fixed_params(run: Mapping[str, Any], swept: frozenset[str]) -> str:
    """The run's parameters that no axis sets (size, steps, ... and anything --set changed), as a key.

    Runs of older plans stay in the store; two runs compare (or form a seed group) only if these agree, so a
    256x256 re-run of an experiment is never compared with its earlier 512x512 images.
    """
    return json.dumps({k: v for k, v in run["params"].items() if k not in swept and k != "seed"}, sort_keys=True)


def condition_key(run: Mapping[str, Any]) -> str:
    """The run's condition: its prompt, variables and every parameter but the seed, as a key.

    The runs sharing it are the seeds of one condition (a diversity group, one summary sample of a diversity
    metric); runs of an older plan at another size or step count form another condition.
    """
    params = {k: v for k, v in (run.get("params") or {}).items() if k != "seed"}
    return json.dumps([run["prompt_id"], params, run["variables"]], sort_keys=True)


def _frozen(variables: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(variables.items()))
