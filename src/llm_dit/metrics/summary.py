"""Per-axis-value summaries of metric columns: mean, standard deviation, n and a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_dit.files import write_csv
from llm_dit.metrics.reference import condition_key

SUMMARY_NAME = "summary.csv"
# Run fields summarized like metrics. The batched figure is a batch's time over its size (it moves with batching);
# the timed median comes from ablate --timing (batch 1, warmed up, synchronised, repeated).
SECONDS_PER_IMAGE_BATCHED = "seconds_per_image_batched"
TIMED_MEDIAN = "timed_median_s"
RUN_FIELDS = (SECONDS_PER_IMAGE_BATCHED, TIMED_MEDIAN)
SUMMARY_COLUMNS = ("metric", "axis", "value", "n", "mean", "std", "ci95_low", "ci95_high")


def t_interval(values: Sequence[float]) -> dict[str, float | int]:
    """n, mean, sample std (ddof 1) and the two-sided 95% Student-t interval of the mean.

    With n = 1 the std and interval are NaN (one sample says nothing about spread). Infinite values (PSNR of an
    image with itself) give an infinite mean and NaN spread.
    """
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    mean = math.fsum(values) / n
    if n == 1 or not math.isfinite(mean):
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def run_fields(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The RUN_FIELDS that some done run has a value of (no timed column without a --timing run)."""
    done = [run for run in runs if run["status"] == "done"]
    return [name for name in RUN_FIELDS if any(run.get(name) is not None for run in done)]


def raw_value(run: Mapping[str, Any], metric: str) -> Any:
    """A run's stored value of ``metric`` as it is (None when missing, NaN kept): one of RUN_FIELDS is a field of
    the run, any other name a stored metric."""
    return run.get(metric) if metric in RUN_FIELDS else run["metrics"].get(metric)


def metric_value(run: Mapping[str, Any], metric: str) -> float | None:
    """A run's value of ``metric`` (a stored metric or one of RUN_FIELDS); None when missing or NaN."""
    raw = raw_value(run, metric)
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    return float(raw)


def group_stats(
    runs: Sequence[Mapping[str, Any]],
    group_of: Callable[[Mapping[str, Any]], Hashable | None],
    metric: str,
    per_condition: bool = False,
) -> dict[Any, dict[str, float | int]]:
    """``t_interval`` of ``metric`` per group of runs (first-seen order; ``group_of`` None = left out), over the
    runs with a value. ``per_condition``: each condition (``condition_key``) is averaged first and n counts
    conditions (diversity values of one condition are not independent samples)."""
    groups: dict[Any, dict[Any, list[float]]] = {}
    for i, run in enumerate(runs):
        group = group_of(run)
        if group is None:
            continue
        samples = groups.setdefault(group, {})
        value = metric_value(run, metric)
        if value is not None:
            samples.setdefault(condition_key(run) if per_condition else i, []).append(value)
    return {
        group: t_interval([math.fsum(v) / len(v) for v in samples.values()])
        for group, samples in groups.items()
        if samples
    }


def summarize(
    runs: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    metrics: Sequence[str],
    per_condition: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One row per (metric, axis, value): statistics over the done runs having that value.

    ``runs`` are the store's run dicts (``variables``, ``metrics``, the RUN_FIELDS, ``status``); a metric may be
    one of RUN_FIELDS. Values keep their first-seen (planned) order; runs without a value (not
    computed, or NULL) are left out of n. Metrics in ``per_condition`` (diversity: each run holds its distance to
    the other seeds of its condition, so the runs of a condition are not independent samples) are first averaged
    per condition (``condition_key``: prompt, variables and every parameter but the seed), and n counts
    conditions.
    """
    rows: list[dict[str, Any]] = []
    done = [run for run in runs if run["status"] == "done"]
    for metric in metrics:
        for axis in axes:
            stats = group_stats(
                done, lambda run, axis=axis: run["variables"].get(axis), metric, metric in per_condition
            )
            rows.extend({"metric": metric, "axis": axis, "value": label, **row} for label, row in stats.items())
    return rows


def write_summary(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``summary.csv`` (columns SUMMARY_COLUMNS), written atomically; floats keep full precision."""
    write_csv(path, SUMMARY_COLUMNS, [[row[c] for c in SUMMARY_COLUMNS] for row in rows])
    return path
