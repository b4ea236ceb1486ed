"""The A/B pairs of an experiment to rate and its preference summary; the judgements' file and statistics are
:mod:`llm_dit.metrics.preferences` (so the metrics pass can put them in summary.csv).

A pair is two done runs of the same prompt and seed and the same values of every other axis that differ in one axis;
a judgement counts for that axis.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_dit.analysis.results import ExperimentResults
from llm_dit.errors import LlmDitError
from llm_dit.metrics import preferences as stored
from llm_dit.metrics.preferences import PREFERENCES_NAME


def preferences_path(results: ExperimentResults) -> Path:
    """Where an experiment's judgements live: beside its images, never in the results store."""
    return results.directory / PREFERENCES_NAME


# ---- pairs ---------------------------------------------------------------------------------------------------------


def rating_pairs(results: ExperimentResults, axes: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(axis, run A, run B) for every two done runs with an image, of the same prompt and seed and the same values
    of every other axis, that differ in ``axis`` (default: each of the experiment's axes). A is the run whose value
    comes first in planned order, so the order is fixed; showing order and sides are the caller's to randomise."""
    chosen = list(results.axes if axes is None else axes)
    unknown = [axis for axis in chosen if axis not in results.axes]
    if unknown:
        raise LlmDitError(f"experiment {results.name!r} has no axis {unknown[0]!r}; axes: {', '.join(results.axes)}")
    runs = [run for run in results.runs if run["status"] == "done" and run.get("image_path")]
    out: list[tuple[str, str, str]] = []
    for axis in chosen:
        order = {value: i for i, value in enumerate(results.dimensions.get(axis, []))}
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for run in runs:
            variables = run["variables"]
            if axis not in variables:
                continue
            others = tuple(sorted((k, str(v)) for k, v in variables.items() if k != axis))
            groups.setdefault((run["prompt_id"], run["seed"], others), []).append(run)
        for members in groups.values():
            members.sort(key=lambda run: order.get(str(run["variables"][axis]), len(order)))
            for first, second in itertools.combinations(members, 2):
                if str(first["variables"][axis]) != str(second["variables"][axis]):
                    out.append((axis, first["run_id"], second["run_id"]))
    return out


def image_hashes(results: ExperimentResults) -> dict[str, str | None]:
    """run id -> the sha256 of its current image (:func:`llm_dit.metrics.preferences.run_image_sha256`)."""
    return {run["run_id"]: stored.run_image_sha256(results.directory, run) for run in results.runs}


def experiment_preferences(results: ExperimentResults) -> dict[str, Any]:
    """:func:`llm_dit.metrics.preferences.experiment_preferences` of ``results`` (axis values in planned order)."""
    values = {axis: results.dimensions.get(axis, []) for axis in results.axes}
    return stored.experiment_preferences(results.directory, results.runs, values)
