"""Set-level metrics of an experiment: FID and KID of each condition's images against a reference set.

A set is the images of one condition: every prompt and seed of one combination of the swept axes' values (done runs
of the latest plan whose image is there). The reference set is another condition, named as ``--reference`` names
one (``AXIS=LABEL``: each condition is compared with the condition that has that label and the same values of the
other axes), or a folder of images (every condition against it).

The features are the 2048-dim pool3 features of the FID Inception-v3 (:mod:`llm_dit.metrics.inception`, a port of
torch-fidelity's, from ``inception_weights``); the numbers are :mod:`llm_dit.metrics.distribution`'s. Every size
check (FID's ``d + 1`` images per set, KID's subset size) runs on the counts before the network loads.

Values are not stored per run (they belong to a pair of sets): each pass computes them from the images as they are
now and writes ``<results>/<experiment>/set_metrics.csv`` whole (atomically), one row per (metric, condition,
reference) with the parameters that define the number (weights fingerprint, resize, KID's subset size, subsets and
seed) and a digest of both sets' image hashes, so a row always says exactly which images it is of. Rows of other
metrics or references from earlier passes are kept; a row of the same metric, condition and reference is replaced.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError, did_you_mean
from llm_dit.files import write_csv
from llm_dit.metrics.distribution import (
    INCEPTION_FEATURE_DIM,
    INCEPTION_FIX,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    check_fid_sizes,
    check_inception_weights,
    check_kid_sizes,
)
from llm_dit.metrics.registry import SET_METRICS

SET_METRIC_VERSION = 1  # bump when the computation changes (a row records the version it was computed by)
SET_METRICS_NAME = "set_metrics.csv"
SET_COLUMNS = (
    "metric", "condition", "reference", "n", "n_reference", "value", "std", "subset_size", "subsets", "seed",
    "resize", "weights", "version", "images_sha256",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """A named set of images: ``label`` is ``axis=value,...`` of a condition or ``folder DIR``."""

    label: str
    paths: tuple[Path, ...]
    sha256: tuple[str, ...]  # one per path: the store's hash of a run's image, a folder file's bytes hashed


@dataclass(frozen=True)
class SetComparison:
    """One set against its reference set."""

    images: ImageSet
    reference: ImageSet

    def digest(self) -> str:
        """A digest of both sets' image hashes (order-free within each set)."""
        text = "\n".join([*sorted(self.images.sha256), "--", *sorted(self.reference.sha256)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SetPlan:
    """What a set-level pass will compute, checked before any network loads."""

    experiment: str
    metric: str
    comparisons: list[SetComparison]
    subset_size: int | None = None  # kid only
    subsets: int | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def condition_label(axes: Sequence[str], variables: Mapping[str, Any]) -> str:
    """``axis=value,...`` in the axes' order; 'all runs' for an experiment that sweeps no axis."""
    return ",".join(f"{axis}={variables.get(axis)}" for axis in axes) or "all runs"


def folder_set(folder: Path) -> ImageSet:
    """Every image file directly in ``folder`` (sorted by name), hashed; refuses a folder without images."""
    from llm_dit.experiments.store import file_sha256

    if not folder.is_dir():
        raise LlmDitError(f"--against-folder {folder} is not a directory; give a folder of PNG, JPEG or WebP images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise LlmDitError(
            f"--against-folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images"
        )
    return ImageSet(f"folder {folder}", tuple(paths), tuple(file_sha256(p) for p in paths))


def current_sha256(directory: Path, run: Mapping[str, Any]) -> str:
    """The sha256 of a run's image file now; refuses one that differs from the hash the store recorded (as the
    per-run metrics pass does): the file was changed after it was written."""
    from llm_dit.experiments.store import file_sha256

    found = file_sha256(directory / run["image_path"])
    if run.get("image_sha256") and run["image_sha256"] != found:
        raise LlmDitError(
            f"image {run['image_path']} of run {run['run_id']} changed on disk since written; restore the file, or "
            "regenerate the run with 'llm-dit ablate ... --force'"
        )
    return found


def plan_sets(
    experiment: str,
    runs: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    directory: Path,
    metric: str,
    *,
    against: Mapping[str, str] | None = None,
    folder: Path | None = None,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> SetPlan:
    """The comparisons of one set-level metric over ``runs`` (the experiment's runs; done runs of the latest plan
    with an image count), refusing in one line whatever cannot be computed: an unknown metric, axis or label, both
    or neither reference kind, no comparison at all, sets too small for FID or for KID's subset size (default: the
    libraries' 1000, or the smallest set when that is smaller, with a note)."""
    if metric not in SET_METRICS:
        hint = did_you_mean(metric, list(SET_METRICS))
        raise LlmDitError(f"unknown set-level metric {metric!r}{hint}; use {' or '.join(SET_METRICS)}")
    if bool(against) == (folder is not None):
        raise LlmDitError(
            f"--set-metric {metric} needs one reference set: --against AXIS=LABEL (another condition) or "
            "--against-folder DIR (a folder of images)"
        )
    done = [run for run in runs if run["status"] == "done" and run.get("in_plan", True) and run.get("image_path")]
    done = [run for run in done if (directory / run["image_path"]).is_file()]
    if not done:
        raise LlmDitError(f"experiment {experiment!r} has no done runs with images; run it first")
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for run in done:
        groups.setdefault(tuple(str(run["variables"].get(axis)) for axis in axes), []).append(run)

    def as_set(key: tuple[str, ...]) -> ImageSet:
        members = groups[key]
        return ImageSet(
            condition_label(axes, dict(zip(axes, key, strict=True))),
            tuple(directory / run["image_path"] for run in members),
            tuple(current_sha256(directory, run) for run in members),
        )

    notes: list[str] = []
    comparisons: list[SetComparison] = []
    if folder is not None:
        reference = folder_set(folder)
        comparisons = [SetComparison(as_set(key), reference) for key in groups]
    else:
        assert against is not None
        for axis, label in against.items():
            if axis not in axes:
                raise LlmDitError(
                    f"--against {axis}={label}: experiment {experiment!r} has no axis {axis!r}"
                    f"{did_you_mean(axis, axes)}; axes: {', '.join(axes) or 'none'}"
                )
            labels = list(dict.fromkeys(str(run["variables"].get(axis)) for run in done))
            if label not in labels:
                raise LlmDitError(
                    f"--against {axis}={label}: axis {axis!r} has no done runs with value {label!r}"
                    f"{did_you_mean(label, labels)}; values: {', '.join(labels)}"
                )
        for key in groups:
            target = tuple(against.get(axis, value) for axis, value in zip(axes, key, strict=True))
            if target == key:
                continue
            if target not in groups:
                notes.append(f"{condition_label(axes, dict(zip(axes, key, strict=True)))}: no reference condition")
                continue
            comparisons.append(SetComparison(as_set(key), as_set(target)))
        if not comparisons:
            raise LlmDitError(
                f"--against {', '.join(f'{a}={v}' for a, v in against.items())}: no other condition to compare "
                "with it; the experiment has only that condition"
            )
    sizes = {c.images.label: len(c.images.paths) for c in comparisons}
    sizes |= {c.reference.label: len(c.reference.paths) for c in comparisons}
    plan = SetPlan(experiment, metric, comparisons, seed=seed, notes=notes)
    if metric == "fid":
        check_fid_sizes(sizes, INCEPTION_FEATURE_DIM)
        return plan
    if subset_size is None:
        subset_size = min(KID_SUBSET_SIZE, *sizes.values())
        if subset_size < KID_SUBSET_SIZE:
            notes.append(
                f"kid: subset size {subset_size} (the smallest set; the libraries' default is {KID_SUBSET_SIZE}): "
                "compare KIDs of one subset size only"
            )
    check_kid_sizes(sizes, subset_size, subsets)
    plan.subset_size, plan.subsets = subset_size, subsets
    return plan


def read_set_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``set_metrics.csv`` (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def compute_sets(
    plan: SetPlan,
    features: Callable[[Sequence[Path]], Any],
    *,
    resize: str,
    weights: str,
    output: Path,
) -> list[dict[str, Any]]:
    """Compute the plan's values with ``features`` (paths -> ``[n, 2048]`` array), write ``output`` (earlier rows
    of other (metric, condition, reference) kept) and return this pass's rows."""
    import numpy as np

    from llm_dit.metrics.distribution import fid, kid

    cache: dict[Path, np.ndarray] = {}

    def of(image_set: ImageSet) -> np.ndarray:
        missing = [p for p in image_set.paths if p not in cache]
        if missing:
            for path, row in zip(missing, np.asarray(features(missing)), strict=True):
                cache[path] = row
        return np.stack([cache[p] for p in image_set.paths])

    rows: list[dict[str, Any]] = []
    for comparison in plan.comparisons:
        a, b = of(comparison.images), of(comparison.reference)
        std: float | str = ""
        if plan.metric == "fid":
            value = fid(a, b)
        else:
            assert plan.subset_size is not None and plan.subsets is not None
            result = kid(a, b, plan.subset_size, plan.subsets, plan.seed)
            value, std = result.mean, result.std
        rows.append(
            {"metric": plan.metric, "condition": comparison.images.label, "reference": comparison.reference.label,
             "n": len(a), "n_reference": len(b), "value": value, "std": std,
             "subset_size": plan.subset_size or "", "subsets": plan.subsets or "",
             "seed": plan.seed if plan.metric == "kid" else "", "resize": resize, "weights": weights,
             "version": SET_METRIC_VERSION, "images_sha256": comparison.digest()}
        )  # fmt: skip
    replaced = {(row["metric"], row["condition"], row["reference"]) for row in rows}
    kept = [row for row in read_set_rows(output) if (row["metric"], row["condition"], row["reference"]) not in replaced]
    everything = [*kept, *rows]
    write_csv(output, SET_COLUMNS, [[row.get(c, "") for c in SET_COLUMNS] for row in everything])
    return rows


@dataclass
class SetReport:
    """What a set-level pass computed and where it wrote it."""

    plan: SetPlan
    rows: list[dict[str, Any]]
    path: Path


def set_metrics_pass(
    root: str | Path,
    experiment: str,
    metric: str,
    settings: MetricsSettings,
    *,
    against: Mapping[str, str] | None = None,
    folder: Path | None = None,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> SetReport:
    """Plan (every refusal first, the store opened read-only), load the Inception network, compute the values and
    write ``set_metrics.csv`` (see the module docstring)."""
    from llm_dit.experiments.store import ResultsStore

    weights = settings.inception_weights
    if weights is None:
        raise LlmDitError(f"{metric} needs local Inception weights: {INCEPTION_FIX}, and pass --config FILE")
    path = check_inception_weights(weights)
    with ResultsStore(root, read_only=True) as store:
        definition = store.require_experiment(experiment)["definition"] or {}
        runs = store.runs(experiment)
        directory = store.experiment_dir(experiment)
    axes = [axis["name"] for axis in definition.get("axes", [])]
    plan = plan_sets(
        experiment, runs, axes, directory, metric, against=against, folder=folder, subset_size=subset_size,
        subsets=subsets, seed=seed,
    )  # fmt: skip
    from llm_dit.metrics.compute import weights_key
    from llm_dit.metrics.inception import InceptionFeatures

    network = InceptionFeatures.from_weights(
        path, device=settings.device, batch_size=settings.batch_size, resize=settings.inception_resize
    )
    try:
        rows = compute_sets(
            plan, network.features, resize=settings.inception_resize, weights=weights_key(path),
            output=directory / SET_METRICS_NAME,
        )  # fmt: skip
    finally:
        network.unload()
    return SetReport(plan, rows, directory / SET_METRICS_NAME)
