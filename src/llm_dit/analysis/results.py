"""Experiment results as the comparison tools see them: read-only, with every dimension a run varies along.

A run varies along the experiment's axes (``hidden_layer``, ``shift``, ...), its prompt and its seed. These are
the *dimensions* of an experiment: ``prompt`` (prompt ids, in planned order), each axis (value labels, in
planned order), then ``seed``. Grids put any two dimensions on rows and columns, and filters pick values of any
dimension. ``prompt`` and ``seed`` are reserved axis names (see ``llm_dit.experiments.loader``), so they never clash.

Everything here reads the results store through a read-only connection: comparing never changes results.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.config import split_assignment
from llm_dit.errors import LlmDitError, did_you_mean
from llm_dit.experiments.store import STATUSES, ResultsStore

PROMPT = "prompt"
SEED = "seed"
CUSTOM_CATEGORY = "custom"


@dataclass(frozen=True)
class ExperimentSummary:
    """One line of ``compare --list``: an experiment found in the results store (counts: its latest plan)."""

    name: str
    description: str
    counts: dict[str, int]  # planned / done / failed / total
    started_at: str | None
    finished_at: str | None

    @property
    def status(self) -> str:
        """'complete' (every run done), 'failed' (some failed), 'incomplete' (runs left to do), 'empty'."""
        if not self.counts["total"]:
            return "empty"
        if self.counts["done"] == self.counts["total"]:
            return "complete"
        if self.counts["failed"]:
            return "failed"
        return "incomplete"


@dataclass(frozen=True)
class ExperimentResults:
    """One experiment's runs and the dimensions they vary along.

    ``runs`` are the store's run dicts (``run_id``, ``prompt_id``, ``prompt_text``, ``seed``, ``variables``,
    ``params``, ``status``, ``image_path``, ``image_sha256``, ``seconds_per_image_batched``, ``timed_median_s``,
    ``record``, ``execution``, ``metrics``: current values only), all statuses, in planned order.
    ``dimensions`` maps ``prompt``, each axis and ``seed`` to their values (text labels) in planned order.
    """

    root: Path
    name: str
    description: str
    runs: list[dict[str, Any]]
    axes: list[str]  # the experiment's swept axes, in definition order
    dimensions: dict[str, list[str]]
    metrics: list[str]  # metric names with at least one value, sorted
    prompt_texts: dict[str, str] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)  # prompt id -> library category ('custom')
    # The reference the experiment names for the reference metrics (axis -> label: a speed study's converged
    # baseline, a caption study's sources) and that baseline's own parameters; empty when the axes' defaults are.
    reference: dict[str, str] = field(default_factory=dict)
    reference_params: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.root / self.name

    @property
    def counts(self) -> dict[str, int]:
        return _counts(self.runs)

    def image_path(self, run: Mapping[str, Any]) -> Path | None:
        """The run's image file, or None if the run has none or it was deleted."""
        if not run.get("image_path"):
            return None
        path = self.directory / run["image_path"]
        return path if path.is_file() else None

    def has_image(self, run: Mapping[str, Any]) -> bool:
        """The run is done and its image file exists."""
        return run["status"] == "done" and self.image_path(run) is not None

    def done(self) -> list[dict[str, Any]]:
        """Runs that are done and whose image exists, in planned order."""
        return [run for run in self.runs if self.has_image(run)]

    def category(self, prompt_id: str) -> str:
        return self.categories.get(prompt_id, CUSTOM_CATEGORY)

    def select(
        self,
        filters: Mapping[str, Sequence[str]] | None = None,
        runs: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Done runs (with images) whose value along each filtered dimension is one of the given values.

        Unknown dimensions or values are errors that list what exists (a typo never silently selects nothing).
        """
        filters = dict(filters or {})
        for dim, values in filters.items():
            self.check_values(dim, values)
        pool = self.done() if runs is None else list(runs)
        return [run for run in pool if all(dimension_value(run, dim) in set(values) for dim, values in filters.items())]

    def check_dimension(self, dim: str) -> str:
        if dim not in self.dimensions:
            raise LlmDitError(
                f"experiment {self.name!r} has no dimension {dim!r}{did_you_mean(dim, list(self.dimensions))}; "
                f"dimensions: {', '.join(self.dimensions)}"
            )
        return dim

    def check_values(self, dim: str, values: Sequence[str]) -> None:
        known = self.dimensions[self.check_dimension(dim)]
        for value in values:
            if value not in known:
                shown = ", ".join(repr(v) for v in known)
                raise LlmDitError(
                    f"{dim} has no value {value!r} in experiment {self.name!r}{did_you_mean(value, known)}; "
                    f"values: {shown}"
                )


def dimension_value(run: Mapping[str, Any], dim: str) -> str:
    """The run's value along a dimension, as text: prompt id, seed, or the axis label (None if not on it)."""
    if dim == PROMPT:
        return str(run["prompt_id"])
    if dim == SEED:
        return str(run["seed"])
    return run["variables"].get(dim)


def list_experiments(root: str | Path) -> list[ExperimentSummary]:
    """Every experiment in the results store under ``root`` (not directories: the store is the source)."""
    with ResultsStore(root, read_only=True) as store:
        out = []
        for name in store.experiments():
            info = store.experiment(name)
            latest = [run for run in store.runs(name) if run["in_plan"]]
            out.append(
                ExperimentSummary(name, info["description"], _counts(latest), info["started_at"], info["finished_at"])
            )
    return out


def load_experiment(root: str | Path, name: str, *, earlier_plans: bool = False) -> ExperimentResults:
    """An experiment's runs and dimensions, read through a read-only connection.

    Only the runs of the latest plan, unless ``earlier_plans``: a re-run at another size or with other seeds
    keeps its predecessors' runs in the store, and they would fill the same grid cells twice.
    """
    root = Path(root)
    with ResultsStore(root, read_only=True) as store:
        names = store.experiments()
        if name not in names:
            raise LlmDitError(
                f"no experiment {name!r} in {store.db_path}{did_you_mean(name, names)}; "
                f"experiments: {', '.join(names) or 'none'}"
            )
        info = store.experiment(name)
        runs = [run for run in store.runs(name) if earlier_plans or run["in_plan"]]
    axes = [axis["name"] for axis in (info["definition"] or {}).get("axes", [])]
    for run in runs:  # axes of older plans (or definitions without them) still show
        axes.extend(axis for axis in run["variables"] if axis not in axes)
    dimensions: dict[str, list[str]] = {PROMPT: _ordered(run["prompt_id"] for run in runs)}
    for axis in axes:
        dimensions[axis] = _ordered(run["variables"][axis] for run in runs if axis in run["variables"])
    dimensions[SEED] = _ordered(str(run["seed"]) for run in runs)
    metrics = sorted({m for run in runs for m, v in run["metrics"].items() if v is not None})
    texts = {run["prompt_id"]: run["prompt_text"] for run in runs}
    definition = info["definition"] or {}
    return ExperimentResults(
        root, name, info["description"], runs, axes, dimensions, metrics, texts, prompt_categories(texts),
        reference=dict(definition.get("reference") or {}),
        reference_params=dict((definition.get("baseline") or {}).get("params") or {}),
    )  # fmt: skip


def prompt_categories(prompt_ids: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Prompt id -> category of the packaged library; ids not in it (custom prompts) are 'custom'."""
    from llm_dit.experiments.prompts import load_library

    library = load_library()
    return {pid: library[pid].category if pid in library else CUSTOM_CATEGORY for pid in prompt_ids}


def parse_values(items: Sequence[str] | None) -> list[str]:
    """``--values`` items -> value labels. Each item is one CSV row, so any label can be written:

    ``-1,-2`` -> ['-1', '-2']; ``,none`` -> ['', 'none'] (an empty label); ``'"-2:0.7,-5:0.3",-2'`` -> a label
    with a comma, then '-2'; ``""`` -> [''] (the empty label alone). The option may be repeated.
    """
    out: list[str] = []
    for item in items or []:
        if item == "":
            out.append("")
            continue
        try:
            rows = list(csv.reader([item], strict=True))
        except csv.Error as exc:
            raise LlmDitError(
                f"--values {item!r}: {exc}; separate values by commas and put a value containing a comma in "
                "double quotes, e.g. --values '\"-2:0.7,-5:0.3\",-2'"
            ) from None
        out.extend(rows[0] if rows else [""])
    return list(dict.fromkeys(out))


def parse_filters(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``--where DIM=VALUES`` items -> {dimension: labels}; VALUES as in ``parse_values``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        dim, values = split_assignment(item, "--where", "DIMENSION=VALUES, e.g. --where steps=8 or --where seed=42")
        out.setdefault(dim, []).extend(parse_values([values]))
    return out


def _counts(runs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = {status: sum(run["status"] == status for run in runs) for status in STATUSES}
    return {**counts, "total": len(runs)}


def _ordered(values: Any) -> list[str]:
    return list(dict.fromkeys(values))
