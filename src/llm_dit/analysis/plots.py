"""Figures of an experiment's metrics: metric vs an axis, prompt category x axis heatmaps, quality-speed Pareto fronts.

The numbers are kept apart from the drawing: ``line_series``, ``heatmap_table`` and ``pareto_points`` return the
plotted data (pure functions of the stored results, testable against hand computations), and ``draw_line``,
``draw_heatmap`` and ``draw_pareto`` turn that data into a ``matplotlib.figure.Figure`` through the object API
(never pyplot's global state), which ``save_figure`` writes as PNG or SVG.

Statistics are those of ``summary.csv`` (``llm_dit.metrics.summary.group_stats``): the mean of the runs with a
value and its two-sided 95% Student-t interval; diversity metrics are first averaged per condition (the seeds of
one condition are not independent samples), so their n counts conditions. Values that are not finite (PSNR of an
image identical to its reference is inf) cannot be drawn: they are left out and every figure and command says
so in a note, as are selected runs with no value at all.

Only done runs are plotted (their images are not needed: the numbers live in the results store, which is opened
read-only), and only metric values of the runs' current images (the store hides the others).

Time: a run's ``seconds_per_image_batched`` is its batch's time over its size, so it moves with batching;
``timed_median_s`` (``ablate --timing``: batch 1, warmed up, synchronised, the median of repeats) is what a speed
comparison should use. The Pareto plot uses the timed medians when every plotted run has one, else the batched
figure, and its x label says which.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from llm_dit.analysis.results import CUSTOM_CATEGORY, PROMPT, ExperimentResults
from llm_dit.errors import LlmDitError, did_you_mean
from llm_dit.files import write_atomic
from llm_dit.metrics.preferences import PREFERENCE_METRICS, WIN_METRIC
from llm_dit.metrics.registry import DIVERSITY_METRICS, METRICS
from llm_dit.metrics.summary import (
    RUN_FIELDS,
    SECONDS_PER_IMAGE_BATCHED,
    TIMED_MEDIAN,
    group_stats,
    metric_value,
    raw_value,
    run_fields,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS: tuple[str, ...] = ("line", "heatmap", "pareto")
FORMATS: tuple[str, ...] = (".png", ".svg")
# The default --metric: the first of these with values. Text-image alignment says most about a condition (it
# needs no reference), then perceptual distance, then the weight-free reference metrics (SSIM first: bounded
# and never inf, unlike PSNR), then seed diversity.
DEFAULT_METRICS: tuple[str, ...] = (
    "siglip", "clip_score", "lpips", "ssim", "psnr", "mad", "diversity_lpips", "diversity_ssim", "diversity_mad",
)  # fmt: skip
FIGSIZE = (8.0, 5.0)  # inches; PNG pixels = FIGSIZE x dpi (the layout is constrained, never cropped)
DEFAULT_DPI = 150
MIN_DPI, MAX_DPI = 20, 600
INTERVAL_TEXT = "mean with its 95% t-interval"
# What each time field is, for axis labels: the batched figure moves with the batch size; the timed one does not.
TIME_LABELS = {
    SECONDS_PER_IMAGE_BATCHED: "s per image, batched (batch time / batch size)",
    TIMED_MEDIAN: "s per image, timed (median of repeats at batch 1, warmed up)",
}
_FOOTNOTE_PT = 7.0


class Stat(NamedTuple):
    """One plotted mean: the group's label, n (runs; for diversity metrics: conditions), mean and 95% interval
    (NaN with n = 1)."""

    label: str
    n: int
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class LineSeries:
    """Metric vs axis, one series per prompt category: ``series[category]`` holds a Stat per axis value with
    values, in x order. ``numeric``: every axis label is a number, so x positions are those numbers."""

    experiment: str
    metric: str
    axis: str
    labels: list[str]  # axis values with at least one value, in planned order
    numeric: bool
    series: dict[str, list[Stat]]
    filters: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def x_position(self, label: str) -> float:
        """Where a label sits on the x axis: its number, or its index among the labels (categorical)."""
        return float(label) if self.numeric else float(self.labels.index(label))


@dataclass(frozen=True)
class HeatmapTable:
    """Prompt category (rows) x axis value (columns) -> Stat; missing cells are absent from ``cells``."""

    experiment: str
    metric: str
    axis: str
    rows: list[str]  # categories
    columns: list[str]  # axis labels in planned order
    cells: dict[tuple[str, str], Stat]
    filters: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    left_out: dict[tuple[str, str], int] = field(default_factory=dict)  # non-finite values per cell

    def means(self) -> list[list[float]]:
        """Row-major cell means, NaN where a cell has no value."""
        return [
            [self.cells[(r, c)].mean if (r, c) in self.cells else math.nan for c in self.columns] for r in self.rows
        ]


class ParetoPoint(NamedTuple):
    """One condition (a combination of the swept axes' values), averaged over prompts and seeds."""

    label: str  # e.g. "shift=3.0, steps=8": the axes that vary between the points
    condition: dict[str, str]  # axis -> label, every swept axis
    time: Stat  # the ParetoData's time_source of the runs that have a metric value
    value: Stat


@dataclass(frozen=True)
class ParetoData:
    """Every condition's point and which of them are on the frontier (indices into ``points``, by time)."""

    experiment: str
    metric: str
    axes: list[str]
    points: list[ParetoPoint]
    front: list[int]
    higher_is_better: bool
    filters: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    time_source: str = SECONDS_PER_IMAGE_BATCHED  # the run field on x: TIMED_MEDIAN or SECONDS_PER_IMAGE_BATCHED


@dataclass(frozen=True)
class Plot:
    """A drawn figure, what it shows and the notes to tell the user (left-out values)."""

    figure: Figure
    kind: str
    metric: str
    axis: str | None
    notes: list[str]


# -- checking the request -------------------------------------------------------------------------------------


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise LlmDitError(f"--kind {kind!r} is not a plot kind{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")
    return kind


def check_output(path: str | Path) -> str:
    """The output format ('png' or 'svg') from the file name's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise LlmDitError(f"--output {path}: use a .png or .svg file name (matplotlib writes the format it names)")
    return suffix[1:]


def check_dpi(dpi: int) -> int:
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise LlmDitError(f"--dpi must be {MIN_DPI}..{MAX_DPI}, got {dpi}")
    return dpi


def higher_is_better(metric: str) -> bool | None:
    """The metric's direction: the registry's, False for the time fields, None for a metric it does not know."""
    if metric in RUN_FIELDS:
        return False
    if metric in PREFERENCE_METRICS:
        return True
    spec = METRICS.get(metric)
    return spec.higher_is_better if spec else None


def resolve_metric(results: ExperimentResults, metric: str | None) -> str:
    """``metric`` if the experiment has values of it (or it is a time field with values); None: the default
    (``DEFAULT_METRICS`` order, then any other stored metric)."""
    available = [*results.metrics, *run_fields(results.runs)]
    if metric is None:
        for name in [*DEFAULT_METRICS, *results.metrics]:
            if name in results.metrics:
                return name
        raise LlmDitError(
            f"experiment {results.name!r} has no metric values yet; compute them with 'llm-dit metrics "
            f"{results.name}' (or plot --metric {SECONDS_PER_IMAGE_BATCHED})"
        )
    if metric in available:
        return metric
    if metric in PREFERENCE_METRICS:  # from the judgements, read once by preference_series
        return metric
    if metric == TIMED_MEDIAN:
        raise LlmDitError(
            f"experiment {results.name!r} has no timed runs; time them with 'llm-dit ablate ... --timing' (or plot "
            f"--metric {SECONDS_PER_IMAGE_BATCHED}, the batch time over its size)"
        )
    if metric in METRICS:
        raise LlmDitError(
            f"experiment {results.name!r} has no {metric} values; compute them with 'llm-dit metrics "
            f"{results.name} --metric {metric}'; it has: {', '.join(available)}"
        )
    raise LlmDitError(
        f"unknown metric {metric!r}{did_you_mean(metric, [*available, *METRICS])}; experiment {results.name!r} has: "
        f"{', '.join(available)}"
    )


def resolve_axis(results: ExperimentResults, axis: str | None) -> str:
    """``axis`` if it is one of the experiment's swept axes; None: the first swept axis."""
    if not results.axes:
        raise LlmDitError(f"experiment {results.name!r} sweeps no axis, so there is nothing to plot a metric against")
    if axis is None:
        return results.axes[0]
    if axis not in results.axes:
        raise LlmDitError(
            f"experiment {results.name!r} has no axis {axis!r}{did_you_mean(axis, results.axes)}; axes: "
            f"{', '.join(results.axes)} (filter prompts and seeds with --where)"
        )
    return axis


# -- the numbers ----------------------------------------------------------------------------------------------


def is_numeric(labels: Sequence[str]) -> bool:
    """Whether every label is a finite number (shift, steps, hidden_layer), so x positions can be the numbers."""
    if not labels:
        return False
    for label in labels:
        try:
            number = float(label)
        except ValueError:
            return False
        if not math.isfinite(number):
            return False
    return True


def line_series(
    results: ExperimentResults, metric: str, axis: str, filters: Mapping[str, Sequence[str]] | None = None
) -> LineSeries:
    """Mean metric (95% interval) per axis value, one series per prompt category, over the done runs passing the
    filters; x order is numeric when every label is a number, else planned order."""
    table = heatmap_table(results, metric, axis, filters)
    numeric = is_numeric(table.columns)
    series = {}
    for category in table.rows:
        stats = [table.cells[(category, label)] for label in table.columns if (category, label) in table.cells]
        series[category] = sorted(stats, key=lambda s: float(s.label)) if numeric else stats
    return LineSeries(
        results.name, metric, axis, table.columns, numeric, series, dict(table.filters), list(table.notes)
    )


def preference_rows_of(results: ExperimentResults) -> list[dict[str, Any]]:
    """The experiment's preference summary rows (win rates, Bradley-Terry scores), as in summary.csv."""
    from llm_dit.analysis.preferences import experiment_preferences

    return experiment_preferences(results)["rows"]


def preference_series(results: ExperimentResults, metric: str, axis: str) -> LineSeries:
    """Win rate or Bradley-Terry score (95% interval) per value of ``axis``, from every current judgement of that
    axis: one series, since a judgement compares two images of one prompt and seed and is not split by category."""
    current = [row for row in preference_rows_of(results) if row["metric"] == metric]
    if not current:
        raise LlmDitError(
            f"experiment {results.name!r} has no current A/B judgements; rate its images with 'llm-dit view "
            "--rate' (judgements of images regenerated since do not count)"
        )
    rows = [row for row in current if row["axis"] == axis]
    if not rows:
        raise LlmDitError(
            f"no A/B judgements of axis {axis!r} in experiment {results.name!r}; rate pairs that differ in {axis} "
            "with 'llm-dit view --rate' or pick another --axis"
        )
    order = results.dimensions.get(axis, [])
    rows.sort(key=lambda row: order.index(row["value"]) if row["value"] in order else len(order))
    labels = [row["value"] for row in rows]
    numeric = is_numeric(labels)
    stats = [_stat(row["value"], row) for row in rows]
    if numeric:
        stats.sort(key=lambda s: float(s.label))
    note = (
        "ties count half a win"
        if metric == WIN_METRIC
        else f"log-strength, {labels[0]} pinned at 0 (the first value in planned order); ties count half a win"
    )
    return LineSeries(results.name, metric, axis, labels, numeric, {"all prompts and seeds": stats}, {}, [note])


def heatmap_table(
    results: ExperimentResults, metric: str, axis: str, filters: Mapping[str, Sequence[str]] | None = None
) -> HeatmapTable:
    """Mean metric (95% interval) per (prompt category, axis value) over the done runs passing the filters."""
    resolve_axis(results, axis)
    filters = {dim: list(values) for dim, values in (filters or {}).items()}
    runs, notes = _selected(results, metric, filters)
    finite = _finite(runs, metric)
    finite_ids = {id(run) for run in finite}
    stats = _grouped(finite, lambda run: _pair(results, run, axis), metric)
    if not stats:
        raise _no_values(results, metric, filters, notes)
    # Rows and columns: every category and axis value among the selected runs, also those without a finite value
    # (the reference column of PSNR): an empty cell says so, a missing column would hide it.
    selected = {key for key in (_pair(results, run, axis) for run in runs) if key is not None}
    categories = _ordered_categories(results, {category for category, _ in selected})
    columns = [label for label in results.dimensions[axis] if any(key[1] == label for key in selected)]
    cells = {key: _stat(key[1], row) for key, row in stats.items()}
    left_out: dict[tuple[str, str], int] = {}
    for run in runs:
        key = _pair(results, run, axis)
        if key is not None and id(run) not in finite_ids:
            left_out[key] = left_out.get(key, 0) + 1
    return HeatmapTable(results.name, metric, axis, categories, columns, cells, filters, notes, left_out)


def pareto_points(
    results: ExperimentResults, metric: str, filters: Mapping[str, Sequence[str]] | None = None
) -> ParetoData:
    """One point per condition (combination of every swept axis' values), averaged over prompts and seeds:
    mean seconds per image (of the runs with a metric value) vs mean metric, and the frontier's indices.

    The time is the timed median (``ablate --timing``) when every such run has one, else the batched seconds per
    image for all of them, with a note when only some were timed: the two are never mixed in one plot.
    """
    direction = higher_is_better(metric)
    if metric in RUN_FIELDS:
        raise LlmDitError(f"a Pareto plot puts time on x, so {metric} cannot be its y; pick a metric with --metric")
    if direction is None:
        raise LlmDitError(f"metric {metric!r} has no known direction (higher or lower is better); cannot rank it")
    filters = {dim: list(values) for dim, values in (filters or {}).items()}
    runs, notes = _selected(results, metric, filters)
    with_value = [run for run in _finite(runs, metric) if metric_value(run, metric) is not None]

    def condition_of(run: Mapping[str, Any]) -> tuple[str, ...] | None:
        labels = tuple(run["variables"].get(axis) for axis in results.axes)
        return None if None in labels else labels

    values = _grouped(with_value, condition_of, metric)
    if not values:
        raise _no_values(results, metric, filters, notes)
    timed = sum(run.get(TIMED_MEDIAN) is not None for run in with_value)
    source = TIMED_MEDIAN if timed == len(with_value) else SECONDS_PER_IMAGE_BATCHED
    if 0 < timed < len(with_value):
        notes.append(
            f"only {timed} of the {len(with_value)} plotted runs were timed (ablate --timing): time is the batched "
            "seconds per image for all of them; time the others to plot timed medians"
        )
    times = _grouped(with_value, condition_of, source)
    conditions = [key for key in _planned_conditions(results) if key in values and key in times]
    reference = tuple(results.reference.get(axis) for axis in results.axes) if results.reference else None
    if reference is not None and METRICS.get(metric) is not None and METRICS[metric].kind == "reference":
        # The reference's own value is the metric's maximum by construction: a point for it would only say so.
        conditions = [key for key in conditions if key != reference]
        given = ", ".join(f"{k}={v}" for k, v in results.reference_params.items() if k != "conditioning")
        label = next(iter(results.reference.values()))
        notes.append(
            f"{metric} is against each prompt and seed's '{label}' run ({given}), the experiment's reference, which is "
            "left out of the points"
        )
    varying = [i for i, _ in enumerate(results.axes) if len({key[i] for key in conditions}) > 1]
    points = []
    for key in conditions:
        label = ", ".join(f"{results.axes[i]}={key[i]}" for i in varying) or "all runs"
        points.append(
            ParetoPoint(
                label, dict(zip(results.axes, key, strict=True)), _stat(label, times[key]), _stat(label, values[key])
            )
        )
    front = pareto_front([(p.time.mean, p.value.mean) for p in points], direction)
    return ParetoData(results.name, metric, list(results.axes), points, front, direction, filters, notes, source)


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the non-dominated (x, y) points, by increasing x; x is a cost (lower is better), y is better
    higher or lower as told.

    A point is dominated when another is at least as good on both and better on one; equal points do not
    dominate each other, so ties all stay on the front. Points with a non-finite coordinate are never on it.
    """
    sign = 1.0 if higher_is_better else -1.0
    finite = [(i, x, sign * y) for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = [
        (x, -gain, i)
        for i, x, gain in finite
        if not any(ox <= x and og >= gain and (ox < x or og > gain) for _, ox, og in finite)
    ]
    return [i for _, _, i in sorted(front)]


def _selected(
    results: ExperimentResults, metric: str, filters: Mapping[str, Sequence[str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Done runs passing the filters (images not needed), and notes saying which values statistics leave out."""
    runs = results.select(filters, runs=[run for run in results.runs if run["status"] == "done"])
    notes = []
    raw = [_raw(run, metric) for run in runs]
    missing = sum(value is None for value in raw)
    infinite = [value for value in raw if value is not None and not math.isfinite(value)]
    if infinite:
        kinds = sorted({repr(value) for value in infinite})
        why = (
            "; PSNR is inf where an image equals its reference (the reference runs themselves)"
            if metric == "psnr"
            else ""
        )
        notes.append(
            f"left out {len(infinite)} of {len(runs)} {metric} values that are not finite: {', '.join(kinds)}{why}"
        )
    if missing:
        notes.append(
            f"{missing} of {len(runs)} selected runs have no {metric} value (llm-dit metrics {results.name} "
            "computes missing values)"
        )
    return runs, notes


def _raw(run: Mapping[str, Any], metric: str) -> float | None:
    """The stored value, NaN included (it says "not finite" in notes): metric_value maps NaN to None."""
    raw = raw_value(run, metric)
    return None if raw is None else float(raw)


def _finite(runs: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The runs whose value is not a non-finite number (those are left out of every statistic, with a note)."""
    return [run for run in runs if (value := _raw(run, metric)) is None or math.isfinite(value)]


def _grouped(
    runs: Sequence[Mapping[str, Any]], group_of: Callable[[Mapping[str, Any]], Hashable | None], metric: str
) -> dict[Any, dict[str, Any]]:
    """summary.csv's statistics (``group_stats``) per group of the runs, diversity metrics per condition first."""
    return group_stats(runs, group_of, metric, per_condition=metric in DIVERSITY_METRICS)


def _pair(results: ExperimentResults, run: Mapping[str, Any], axis: str) -> tuple[str, str] | None:
    label = run["variables"].get(axis)
    return None if label is None else (results.category(run["prompt_id"]), label)


def _stat(label: str, row: Mapping[str, Any]) -> Stat:
    return Stat(label, int(row["n"]), float(row["mean"]), float(row["ci95_low"]), float(row["ci95_high"]))


def _ordered_categories(results: ExperimentResults, present: set[str]) -> list[str]:
    """Categories in the order their first prompt was planned; 'custom' last."""
    order = [results.category(pid) for pid in results.dimensions[PROMPT]]
    ordered = [c for c in dict.fromkeys(order) if c in present and c != CUSTOM_CATEGORY]
    return ordered + ([CUSTOM_CATEGORY] if CUSTOM_CATEGORY in present else [])


def _planned_conditions(results: ExperimentResults) -> list[tuple[str, ...]]:
    conditions = (tuple(run["variables"].get(axis) for axis in results.axes) for run in results.runs)
    return list(dict.fromkeys(conditions))


def _no_values(
    results: ExperimentResults, metric: str, filters: Mapping[str, Sequence[str]], notes: Sequence[str]
) -> LlmDitError:
    where = " ".join(f"--where {dim}={_csv_row(values)}" for dim, values in filters.items())
    scope = f"the runs selected by {where}" if where else "its done runs"
    infinite = [note for note in notes if "not finite" in note]
    fix = (
        f"{infinite[0]}; select other runs or pick another --metric"
        if infinite
        else f"compute metrics with 'llm-dit metrics {results.name}' or pick another --metric"
    )
    return LlmDitError(f"experiment {results.name!r} has no finite {metric} values among {scope}: {fix}")


def _csv_row(values: Sequence[str]) -> str:
    """Labels as --values / --where take them back (a label with a comma in double quotes)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


# -- drawing --------------------------------------------------------------------------------------------------


def metric_label(metric: str) -> str:
    """Axis / colour bar label: the metric and which direction is better."""
    direction = higher_is_better(metric)
    if metric in TIME_LABELS:
        return f"{TIME_LABELS[metric]} (lower is better)"
    if direction is None:
        return metric
    return f"{metric} ({'higher' if direction else 'lower'} is better)"


def draw_line(data: LineSeries, dpi: int = DEFAULT_DPI) -> Figure:
    """One line per category with 95% interval error bars; categories dodge sideways a little so bars at the
    same x stay readable."""
    from matplotlib.transforms import ScaledTranslation

    fig, ax = _figure(dpi)
    count = len(data.series)
    for i, (category, stats) in enumerate(data.series.items()):
        xs = [data.x_position(s.label) for s in stats]
        means = [s.mean for s in stats]
        below = [s.mean - s.ci_low for s in stats]  # NaN (n = 1): no bar
        above = [s.ci_high - s.mean for s in stats]
        bars = ax.errorbar(
            xs, means, yerr=[below, above], marker="o", markersize=4, capsize=3, linewidth=1.5,
            label=f"{category} ({_n_text(stats)})",
        )  # fmt: skip
        # Shift after drawing: autoscaling has seen the data coordinates; the offset is in points, so it is the
        # same on numeric and categorical axes.
        dodge = ScaledTranslation((i - (count - 1) / 2) * 4 / 72, 0, fig.dpi_scale_trans)  # 4 pt apart
        for artist in bars.get_children():
            artist.set_transform(artist.get_transform() + dodge)
    if data.numeric:
        if len(data.labels) <= 15:
            ax.set_xticks([float(label) for label in data.labels], data.labels)
    else:
        ax.set_xticks(range(len(data.labels)), data.labels)
        ax.set_xlim(-0.5, len(data.labels) - 0.5)
    _rotate_long(ax, data.labels)
    ax.set_xlabel(data.axis)
    ax.set_ylabel(metric_label(data.metric))
    ax.set_title(_title(data.experiment, f"{data.metric} by {data.axis}", data.filters))
    ax.grid(alpha=0.3)
    group = "judged pairs" if data.metric in PREFERENCE_METRICS else "prompt category"
    ax.legend(title=f"{group} (n per point)", fontsize=8, title_fontsize=8)
    _footnote(fig, [f"{_interval_text(data.metric)}{_n_meaning(data.metric)}", *data.notes])
    return fig


def draw_heatmap(data: HeatmapTable, dpi: int = DEFAULT_DPI) -> Figure:
    """Categories x axis values, each cell its mean and n; better is always the bright (yellow) end of viridis,
    and the colour bar has its better end on top."""
    import matplotlib as mpl
    import numpy as np

    fig, ax = _figure(dpi)
    direction = higher_is_better(data.metric)
    cmap = mpl.colormaps["viridis" if direction is not False else "viridis_r"].with_extremes(bad="#dddddd")
    means = np.ma.masked_invalid(np.array(data.means(), dtype=float))
    image = ax.imshow(means, cmap=cmap, aspect="auto")
    size = max(5.0, min(9.0, 70 / max(len(data.columns), 2 * len(data.rows))))
    decimals = _decimals([stat.mean for stat in data.cells.values()])
    for (row, column), stat in data.cells.items():
        r, c = data.rows.index(row), data.columns.index(column)
        red, green, blue, _ = cmap(image.norm(stat.mean))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.55  # ITU-R 601 luma: white text on dark cells
        ax.text(
            c, r, f"{stat.mean:.{decimals}f}\nn={stat.n}", ha="center", va="center", fontsize=size,
            color="white" if dark else "black",
        )  # fmt: skip
    for row in range(len(data.rows)):
        for column in range(len(data.columns)):
            key = (data.rows[row], data.columns[column])
            if key not in data.cells:
                text = f"{data.left_out[key]} not finite\n(left out)" if key in data.left_out else "no value"
                ax.text(column, row, text, ha="center", va="center", fontsize=size, color="0.35")
    ax.set_xticks(range(len(data.columns)), data.columns)
    ax.set_yticks(range(len(data.rows)), data.rows)
    _rotate_long(ax, data.columns)
    ax.set_xlabel(data.axis)
    ax.set_ylabel("prompt category")
    ax.set_title(_title(data.experiment, f"{data.metric} by prompt category x {data.axis}", data.filters))
    bar = fig.colorbar(image, ax=ax, label=metric_label(data.metric))
    if direction is False:
        bar.ax.invert_yaxis()  # better (lower) on top, as for higher-is-better metrics
    _footnote(fig, [f"cell: mean and n{_n_meaning(data.metric)}", *data.notes])
    return fig


def draw_pareto(data: ParetoData, dpi: int = DEFAULT_DPI) -> Figure:
    """All conditions as points (dominated ones faded), the frontier as a staircase through the non-dominated
    ones, each of those labelled with its condition."""
    fig, ax = _figure(dpi)
    on_front = set(data.front)
    faded = [p for i, p in enumerate(data.points) if i not in on_front]
    if faded:
        ax.scatter(
            [p.time.mean for p in faded], [p.value.mean for p in faded], s=18, color="0.55", alpha=0.45,
            label=f"dominated ({len(faded)})",
        )  # fmt: skip
    front = [data.points[i] for i in data.front]
    # steps-post: from each point right at its level, then up/down to the next; the region below-right is
    # what the frontier dominates.
    ax.plot(
        [p.time.mean for p in front], [p.value.mean for p in front], drawstyle="steps-post", marker="o",
        color="C3", markersize=5, linewidth=1.5, label=f"Pareto frontier ({len(front)})",
    )  # fmt: skip
    # The staircase reaches each frontier point from below (higher is better) or above, then leaves it to the
    # right: the quadrant up-left (down-left) of the point is free of it, and of dominated points.
    vertical = (6, "bottom") if data.higher_is_better else (-6, "top")
    for point in front:
        ax.annotate(
            point.label, (point.time.mean, point.value.mean), xytext=(-5, vertical[0]), textcoords="offset points",
            fontsize=7, color="C3", ha="right", va=vertical[1],
        )  # fmt: skip
    ax.margins(x=0.18, y=0.08)  # room for the leftmost label
    ax.set_xlabel(f"{TIME_LABELS[data.time_source]} (mean over runs; lower is better)")
    ax.set_ylabel(metric_label(data.metric))
    what = "timed seconds per image" if data.time_source == TIMED_MEDIAN else "seconds per image, batched"
    ax.set_title(_title(data.experiment, f"{data.metric} vs {what}, per {' x '.join(data.axes)}", data.filters))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    n_values = sorted({p.value.n for p in data.points})
    n_text = str(n_values[0]) if len(n_values) == 1 else f"{n_values[0]}-{n_values[-1]}"
    _footnote(
        fig,
        [f"each point: a condition's means over prompts and seeds (n = {n_text}{_n_meaning(data.metric, short=True)})",
         *data.notes],
    )  # fmt: skip
    return fig


def make_plot(
    results: ExperimentResults,
    kind: str,
    metric: str | None = None,
    axis: str | None = None,
    filters: Mapping[str, Sequence[str]] | None = None,
    dpi: int = DEFAULT_DPI,
) -> Plot:
    """Check the request against the experiment, compute the numbers and draw them."""
    check_kind(kind)
    check_dpi(dpi)
    filters = dict(filters or {})
    for dim, values in filters.items():
        results.check_values(dim, values)
    metric = resolve_metric(results, metric)
    if metric in PREFERENCE_METRICS:
        if kind != "line" or filters:
            raise LlmDitError(
                f"{metric} is one number per axis value over every A/B judgement of that axis (no per-run values "
                "to filter, group by category or put on a Pareto front); plot it with --kind line and no --where"
            )
        line = preference_series(results, metric, resolve_axis(results, axis))
        return Plot(draw_line(line, dpi), kind, metric, line.axis, line.notes)
    if kind == "pareto":
        if axis is not None:
            raise LlmDitError(
                "--axis does not apply to --kind pareto: its points are combinations of every swept axis "
                f"({', '.join(results.axes)}); fix axes with --where AXIS=VALUE"
            )
        pareto = pareto_points(results, metric, filters)
        return Plot(draw_pareto(pareto, dpi), kind, metric, None, pareto.notes)
    axis = resolve_axis(results, axis)
    if kind == "line":
        line = line_series(results, metric, axis, filters)
        return Plot(draw_line(line, dpi), kind, metric, axis, line.notes)
    table = heatmap_table(results, metric, axis, filters)
    return Plot(draw_heatmap(table, dpi), kind, metric, axis, table.notes)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the figure as PNG or SVG (by suffix), atomically. SVG keeps text as text (searchable, editable) and
    carries no date, so the same data gives the same file."""
    import matplotlib as mpl

    path = Path(path)
    fmt = check_output(path)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "llm-dit"}):
        figure.savefig(buffer, format=fmt, metadata=metadata)
    write_atomic(path, buffer.getvalue())
    return path


def _figure(dpi: int) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    # Figure() itself, not pyplot: no global figure manager, no GUI backend; savefig renders with Agg / SVG.
    fig = Figure(figsize=FIGSIZE, dpi=dpi, layout="constrained")
    return fig, fig.add_subplot()


def _footnote(fig: Figure, lines: Sequence[str]) -> None:
    """Small print under the axes; the constrained layout keeps its band free."""
    wrapped = [part for line in lines for part in textwrap.wrap(line, 140)]
    height = (len(wrapped) * _FOOTNOTE_PT * 1.35 + 6) / (FIGSIZE[1] * 72)
    fig.get_layout_engine().set(rect=(0, height, 1, 1 - height))
    fig.text(0.01, 0.008, "\n".join(wrapped), fontsize=_FOOTNOTE_PT, color="0.3", ha="left", va="bottom")


def _title(experiment: str, what: str, filters: Mapping[str, Sequence[str]]) -> str:
    where = "; ".join(f"{dim} = {', '.join(values)}" for dim, values in filters.items())
    return f"{experiment}: {what}" + (f"\nwhere {where}" if where else "")


def _n_text(stats: Sequence[Stat]) -> str:
    ns = sorted({s.n for s in stats})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _interval_text(metric: str) -> str:
    if metric == WIN_METRIC:
        return "win rate with its 95% Wilson interval"
    if metric in PREFERENCE_METRICS:
        return "Bradley-Terry score with its 95% Wald interval (observed Fisher information)"
    return INTERVAL_TEXT


def _n_meaning(metric: str, short: bool = False) -> str:
    if metric in PREFERENCE_METRICS:
        return " judgements" if short else "; n = A/B judgements the value took part in"
    if metric in DIVERSITY_METRICS:
        return (
            " conditions"
            if short
            else "; n = conditions (seed groups): diversity values are averaged per condition first"
        )
    return " runs" if short else "; n = runs"


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the largest value about four significant digits, the same for every cell."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if largest == 0:
        return 2
    return max(0, min(6, 3 - math.floor(math.log10(largest))))


def _rotate_long(ax: Any, labels: Sequence[str]) -> None:
    if sum(len(label) for label in labels) > 60:
        for tick in ax.get_xticklabels():
            tick.set_rotation(25)
            tick.set_horizontalalignment("right")
