"""``llm-dit plot`` and ``llm_dit.analysis.plots``: the plotted numbers against hand computations on small
synthetic stores, the Pareto frontier on hand-made points, what each figure draws, and the command end to end on
the tiny model's results (PNG and SVG files, notes, errors).

Synthetic stores hold hand-chosen metric values; their runs need no image (plots read numbers only). Figures are
drawn small (dpi 40) and only the CLI tests render files.
"""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from cli_helpers import assert_user_error, results_snapshot, run, subprocess_env
from llm_dit.analysis import plots
from llm_dit.analysis.plots import Stat, heatmap_table, line_series, pareto_front, pareto_points
from llm_dit.analysis.results import ExperimentResults, load_experiment
from llm_dit.cli import plot as cli_plot
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming, TimedStats

EXP = "synthetic"
DPI = 40
PNG_SIZE = (round(plots.FIGSIZE[0] * DPI), round(plots.FIGSIZE[1] * DPI))


# -- synthetic stores ------------------------------------------------------------------------------------------


def make_results(root: Path, axes: Sequence[str], rows: Sequence[dict[str, Any]], name: str = EXP) -> ExperimentResults:
    """A results store with one run per row (prompt, seed, variables, metrics, time, status), loaded back.

    ``params`` follow the variables (as the runner's do), so runs differing only in seed share a condition.
    """
    store = ResultsStore(root)
    store.start_experiment(name, "synthetic plot data", {"axes": [{"name": axis} for axis in axes]}, {})
    planned = []
    for i, row in enumerate(rows):
        variables = row["variables"]
        params = {**variables, "seed": row["seed"], "width": 64}
        planned.append(
            PlannedRun(f"r{i}", row["prompt"], f"text of {row['prompt']}", row["seed"], variables, params, f"r{i}.png")
        )
    store.plan_runs(name, planned)
    for i, row in enumerate(rows):
        if row.get("status", "done") == "done":
            # No image file: a plot reads numbers only, so the image's hash is a stand-in.
            store.mark_done(
                name, f"r{i}", image_path=f"r{i}.png", image_sha256=f"image {i}", token_count=None, record={},
                timing=RunTiming(row.get("time", 1.0), 1, timed=row.get("timed")),
            )  # fmt: skip
        elif row["status"] == "failed":
            store.mark_failed(name, f"r{i}", "boom")
        if row.get("metrics"):
            store.add_metrics(name, f"r{i}", row["metrics"])
    store.close()
    return load_experiment(root, name)


def t_stat(values: Sequence[float]) -> tuple[int, float, float, float]:
    """n, mean and the 95% t-interval, computed with scipy's own interval (not the code under test)."""
    n, m = len(values), mean(values)
    if n == 1:
        return n, m, math.nan, math.nan
    low, high = stats.t.interval(0.95, n - 1, loc=m, scale=stats.sem(values))
    return n, m, low, high


def assert_stat(stat: Stat, label: str, values: Sequence[float]) -> None:
    n, m, low, high = t_stat(values)
    assert (stat.label, stat.n) == (label, n)
    assert stat.mean == pytest.approx(m)
    if math.isnan(low):
        assert math.isnan(stat.ci_low) and math.isnan(stat.ci_high)
    else:
        assert (stat.ci_low, stat.ci_high) == pytest.approx((low, high))


# animal_001/animal_002 are 'animals' and simple_001 'simple' in the packaged library; custom_001 is not in it.
SSIM = {  # (prompt, shift, seed) -> ssim
    ("animal_001", "2.0", 1): 0.50, ("animal_001", "2.0", 2): 0.60,
    ("animal_002", "2.0", 1): 0.70, ("animal_002", "2.0", 2): 0.95,
    ("animal_001", "3.0", 1): 0.80, ("animal_001", "3.0", 2): 0.82,
    ("animal_002", "3.0", 1): 0.90, ("animal_002", "3.0", 2): 0.81,
    ("simple_001", "2.0", 1): 0.30, ("simple_001", "2.0", 2): 0.40,
    ("simple_001", "3.0", 1): 0.55, ("simple_001", "3.0", 2): 0.65,
    ("custom_001", "2.0", 1): 0.10, ("custom_001", "2.0", 2): 0.20,
    ("custom_001", "3.0", 1): 0.15, ("custom_001", "3.0", 2): 0.25,
}  # fmt: skip


@pytest.fixture
def shift_results(tmp_path: Path) -> ExperimentResults:
    """Four prompts (custom first, to show 'custom' is ordered last) x shift 2.0, 3.0 x seeds 1, 2, with ssim, plus
    a failed run that must not count."""
    rows = [
        {"prompt": p, "seed": seed, "variables": {"shift": shift}, "metrics": {"ssim": value}}
        for (p, shift, seed), value in sorted(SSIM.items(), key=lambda item: item[0][0] != "custom_001")
    ]
    rows.append({"prompt": "animal_001", "seed": 3, "variables": {"shift": "2.0"}, "status": "failed"})
    return make_results(tmp_path / "results", ["shift"], rows)


def values_of(category_prompts: Sequence[str], shift: str, seeds: Sequence[int] = (1, 2)) -> list[float]:
    return [SSIM[(p, shift, s)] for p in category_prompts for s in seeds]


# -- line and heatmap data -------------------------------------------------------------------------------------


def test_line_series_is_mean_and_t_interval_per_category_and_value(shift_results: ExperimentResults) -> None:
    data = line_series(shift_results, "ssim", "shift")
    assert list(data.series) == ["animals", "simple", "custom"]  # planned order, custom last
    assert data.labels == ["2.0", "3.0"] and data.numeric
    groups = {"animals": ["animal_001", "animal_002"], "simple": ["simple_001"], "custom": ["custom_001"]}
    for category, prompts in groups.items():
        for stat, shift in zip(data.series[category], ["2.0", "3.0"], strict=True):
            assert_stat(stat, shift, values_of(prompts, shift))
    assert data.notes == []


def test_filters_restrict_the_runs_and_a_single_value_has_no_interval(shift_results: ExperimentResults) -> None:
    data = line_series(shift_results, "ssim", "shift", {"seed": ["2"], "prompt": ["simple_001", "animal_002"]})
    assert list(data.series) == ["animals", "simple"]
    assert_stat(data.series["animals"][1], "3.0", [SSIM[("animal_002", "3.0", 2)]])  # n = 1: NaN interval
    assert_stat(data.series["simple"][0], "2.0", [SSIM[("simple_001", "2.0", 2)]])
    assert data.filters == {"seed": ["2"], "prompt": ["simple_001", "animal_002"]}


def test_heatmap_table_cells_are_mean_and_t_interval_per_category_and_value(shift_results: ExperimentResults) -> None:
    table = heatmap_table(shift_results, "ssim", "shift")
    assert (table.rows, table.columns) == (["animals", "simple", "custom"], ["2.0", "3.0"])
    assert_stat(table.cells[("custom", "3.0")], "3.0", values_of(["custom_001"], "3.0"))
    means = table.means()
    assert means[0][1] == pytest.approx(mean(values_of(["animal_001", "animal_002"], "3.0")))
    for label in table.columns:  # hand-computed, not the line series (which is built from these cells)
        assert_stat(table.cells[("simple", label)], label, values_of(["simple_001"], label))


def test_numeric_labels_are_ordered_by_value_and_others_keep_planned_order(tmp_path: Path) -> None:
    def rows(axis: str, labels: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {"prompt": "animal_001", "seed": 1, "variables": {axis: label}, "metrics": {"mad": float(i)}}
            for i, label in enumerate(labels)
        ]

    steps = make_results(tmp_path / "a", ["steps"], rows("steps", ["10", "2", "5"]))
    data = line_series(steps, "mad", "steps")
    assert data.numeric and data.labels == ["10", "2", "5"]  # planned order; x positions are the numbers
    assert [s.label for s in data.series["animals"]] == ["2", "5", "10"]
    assert [data.x_position(s.label) for s in data.series["animals"]] == [2.0, 5.0, 10.0]

    layers = make_results(tmp_path / "b", ["layer"], rows("layer", ["-2:0.5,-5:0.5", "-2"]))
    data = line_series(layers, "mad", "layer")
    assert not data.numeric
    assert [s.label for s in data.series["animals"]] == ["-2:0.5,-5:0.5", "-2"]
    assert [data.x_position(s.label) for s in data.series["animals"]] == [0.0, 1.0]

    assert plots.is_numeric(["-1", "2.5", "1e3"])
    assert not plots.is_numeric(["1", "inf"]) and not plots.is_numeric(["nan"]) and not plots.is_numeric([])


def test_non_finite_and_missing_values_are_left_out_with_notes(tmp_path: Path) -> None:
    rows = [
        {"prompt": "animal_001", "seed": 1, "variables": {"shift": "3.0"}, "metrics": {"psnr": math.inf}},
        {"prompt": "animal_001", "seed": 2, "variables": {"shift": "3.0"}, "metrics": {"psnr": math.inf}},
        {"prompt": "animal_001", "seed": 1, "variables": {"shift": "2.0"}, "metrics": {"psnr": 20.0}},
        {"prompt": "animal_001", "seed": 2, "variables": {"shift": "2.0"}, "metrics": {"psnr": 24.0}},
        {"prompt": "animal_001", "seed": 3, "variables": {"shift": "2.0"}, "metrics": {"psnr": math.inf}},
        {"prompt": "animal_001", "seed": 4, "variables": {"shift": "2.0"}},  # never computed
    ]
    results = make_results(tmp_path / "r", ["shift"], rows)
    table = heatmap_table(results, "psnr", "shift")
    assert table.columns == ["3.0", "2.0"]  # the all-inf value keeps its (empty) column
    assert list(table.cells) == [("animals", "2.0")]
    assert_stat(table.cells[("animals", "2.0")], "2.0", [20.0, 24.0])
    assert math.isnan(table.means()[0][0])
    assert table.left_out == {("animals", "3.0"): 2, ("animals", "2.0"): 1}
    left_out, missing = table.notes
    assert "left out 3 of 6 psnr values" in left_out and "inf" in left_out
    assert "1 of 6 selected runs have no psnr value" in missing and f"llm-dit metrics {EXP}" in missing
    with pytest.raises(LlmDitError, match=r"no finite psnr values .*--where shift=3\.0.*left out 2 of 2"):
        heatmap_table(results, "psnr", "shift", {"shift": ["3.0"]})


def test_diversity_metrics_are_averaged_per_condition_first(tmp_path: Path) -> None:
    # Two conditions of 'animals' at one shift: 3 seeds of animal_001, 1 seed of animal_002. Per run the mean
    # would weigh animal_001 three times; per condition each prompt counts once (as in summary.csv).
    values = {("animal_001", 1): 10.0, ("animal_001", 2): 20.0, ("animal_001", 3): 30.0, ("animal_002", 1): 50.0}
    rows = [
        {"prompt": p, "seed": s, "variables": {"shift": "3.0"}, "metrics": {"diversity_mad": v, "mad": v}}
        for (p, s), v in values.items()
    ]
    results = make_results(tmp_path / "r", ["shift"], rows)
    (stat,) = line_series(results, "diversity_mad", "shift").series["animals"]
    assert_stat(stat, "3.0", [20.0, 50.0])
    (stat,) = line_series(results, "mad", "shift").series["animals"]  # a reference metric: per run
    assert_stat(stat, "3.0", list(values.values()))


# -- Pareto -----------------------------------------------------------------------------------------------------


def test_pareto_front_keeps_non_dominated_points_in_time_order() -> None:
    points = [(3.0, 0.9), (1.0, 0.5), (2.0, 0.8), (2.5, 0.7), (1.0, 0.4), (4.0, 0.9)]
    # (2.5, 0.7) is beaten by (2.0, 0.8); (1.0, 0.4) by (1.0, 0.5) (same time, worse); (4.0, 0.9) by (3.0, 0.9).
    assert pareto_front(points, higher_is_better=True) == [1, 2, 0]
    # Lower is better: the fastest point with the lowest value dominates everything at or above it.
    assert pareto_front(points, higher_is_better=False) == [4]
    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 1.0)], higher_is_better=False) == [0, 1, 2]
    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 1.0)], higher_is_better=True) == [0]


def test_pareto_front_ties_and_non_finite_points() -> None:
    tied = [(1.0, 0.5), (2.0, 0.9), (1.0, 0.5)]
    assert pareto_front(tied, higher_is_better=True) == [0, 2, 1]  # equal points do not dominate each other
    assert pareto_front([(1.0, math.nan), (2.0, 0.1), (math.inf, 1.0)], higher_is_better=True) == [1]
    assert pareto_front([], higher_is_better=True) == []


def test_pareto_points_average_each_condition_over_prompts_and_seeds(tmp_path: Path) -> None:
    ssim = {
        ("2.0", "4"): [0.6, 0.7, 0.65, 0.75],
        ("2.0", "8"): [0.9, 0.8, 0.85, 0.95],
        ("3.0", "4"): [0.5, 0.55, 0.6, 0.5],
    }
    time = {"4": [1.0, 1.2, 1.1, 1.3], "8": [2.0, 2.2, 2.1, 2.3]}
    rows = []
    for (shift, steps), values in ssim.items():
        for k, value in enumerate(values):
            prompt, seed = ["animal_001", "animal_001", "simple_001", "simple_001"][k], 1 + k % 2
            rows.append({
                "prompt": prompt, "seed": seed, "variables": {"shift": shift, "steps": steps},
                "metrics": {"ssim": value}, "time": time[steps][k],
            })  # fmt: skip
    results = make_results(tmp_path / "r", ["shift", "steps"], rows)
    data = pareto_points(results, "ssim")
    assert [p.label for p in data.points] == ["shift=2.0, steps=4", "shift=2.0, steps=8", "shift=3.0, steps=4"]
    assert data.points[1].condition == {"shift": "2.0", "steps": "8"}
    for point, (key, values) in zip(data.points, ssim.items(), strict=True):
        assert_stat(point.value, point.label, values)
        assert_stat(point.time, point.label, time[key[1]])
    assert data.front == [0, 1]  # shift=3.0 steps=4: as fast as shift=2.0 steps=4, worse
    assert data.higher_is_better

    fixed = pareto_points(results, "ssim", {"shift": ["2.0"]})
    assert [p.label for p in fixed.points] == ["steps=4", "steps=8"]  # shift no longer varies
    with pytest.raises(LlmDitError, match="puts time on x"):
        pareto_points(results, "seconds_per_image_batched")
    assert data.time_source == "seconds_per_image_batched" and not data.notes


def test_pareto_uses_timed_medians_when_every_run_has_one_and_never_mixes(tmp_path: Path) -> None:
    def rows(timed_steps: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for steps, batched, medians in (("4", [1.0, 1.2], [0.4, 0.6]), ("8", [2.0, 2.2], [0.9, 1.1])):
            for k in range(2):
                timed = TimedStats(medians[k], medians[k] / 2, medians[k] * 2, 3) if steps in timed_steps else None
                out.append({
                    "prompt": "animal_001", "seed": 1 + k, "variables": {"steps": steps}, "metrics": {"ssim": 0.5 + k},
                    "time": batched[k], "timed": timed,
                })  # fmt: skip
        return out

    all_timed = make_results(tmp_path / "all", ["steps"], rows(["4", "8"]))
    timed = pareto_points(all_timed, "ssim")
    assert timed.time_source == "timed_median_s" and not timed.notes
    assert_stat(timed.points[0].time, "steps=4", [0.4, 0.6])
    assert_stat(timed.points[1].time, "steps=8", [0.9, 1.1])
    figure = plots.draw_pareto(timed)
    assert figure.axes[0].get_xlabel() == (
        "s per image, timed (median of repeats at batch 1, warmed up) (mean over runs; lower is better)"
    )
    some = pareto_points(make_results(tmp_path / "some", ["steps"], rows(["8"])), "ssim")
    assert some.time_source == "seconds_per_image_batched"
    assert_stat(some.points[1].time, "steps=8", [2.0, 2.2])  # the batched figure for every run, timed or not
    assert some.notes == [
        "only 2 of the 4 plotted runs were timed (ablate --timing): time is the batched seconds per image for all "
        "of them; time the others to plot timed medians"
    ]
    assert plots.draw_pareto(some).axes[0].get_xlabel().startswith("s per image, batched (batch time / batch size)")
    untimed = make_results(tmp_path / "none", ["steps"], rows([]))
    with pytest.raises(LlmDitError, match="has no timed runs; time them with 'llm-dit ablate"):
        plots.resolve_metric(untimed, "timed_median_s")
    assert plots.resolve_metric(all_timed, "timed_median_s") == "timed_median_s"


# -- choosing metric and axis ----------------------------------------------------------------------------------


def test_default_metric_and_axis_and_their_errors(tmp_path: Path) -> None:
    rows = [
        {"prompt": "animal_001", "seed": 1, "variables": {"shift": "3.0", "steps": "8"},
         "metrics": {"mad": 1.0, "psnr": 30.0, "diversity_mad": 2.0}},
    ]  # fmt: skip
    results = make_results(tmp_path / "r", ["shift", "steps"], rows)
    assert plots.resolve_metric(results, None) == "psnr"  # before mad and the diversity metrics
    assert plots.resolve_metric(results, "seconds_per_image_batched") == "seconds_per_image_batched"
    assert plots.resolve_axis(results, None) == "shift"
    with pytest.raises(LlmDitError, match=rf"no ssim values; compute them with 'llm-dit metrics {EXP} --metric ssim'"):
        plots.resolve_metric(results, "ssim")
    with pytest.raises(LlmDitError, match=r"unknown metric 'madd' \(did you mean 'mad'\?\).*has: diversity_mad, mad"):
        plots.resolve_metric(results, "madd")
    with pytest.raises(LlmDitError, match=r"no axis 'seed'.*axes: shift, steps"):
        plots.resolve_axis(results, "seed")

    bare = make_results(tmp_path / "b", ["shift"], [{"prompt": "animal_001", "seed": 1, "variables": {"shift": "1"}}])
    with pytest.raises(LlmDitError, match=rf"no metric values yet; compute them with 'llm-dit metrics {EXP}'"):
        plots.resolve_metric(bare, None)


# -- what the figures draw --------------------------------------------------------------------------------------


def test_figures_draw_the_computed_numbers(shift_results: ExperimentResults, tmp_path: Path) -> None:
    data = line_series(shift_results, "ssim", "shift")
    ax = plots.draw_line(data, dpi=DPI).axes[0]
    drawn = {
        bars.get_label(): (list(bars.lines[0].get_xdata()), list(bars.lines[0].get_ydata())) for bars in ax.containers
    }
    assert drawn["simple (n=2)"] == ([2.0, 3.0], pytest.approx([s.mean for s in data.series["simple"]]))
    assert ax.get_ylabel() == "ssim (higher is better)" and ax.get_xlabel() == "shift"

    table = heatmap_table(shift_results, "ssim", "shift")
    image = plots.draw_heatmap(table, dpi=DPI).axes[0].get_images()[0]
    np.testing.assert_allclose(image.get_array().filled(np.nan), np.array(table.means()))

    rows = [
        {"prompt": "animal_001", "seed": 1, "variables": {"steps": steps}, "metrics": {"mad": mad}, "time": time}
        for steps, mad, time in [("4", 9.0, 1.0), ("8", 5.0, 2.0), ("12", 6.0, 3.0)]
    ]
    pareto = pareto_points(make_results(tmp_path / "p", ["steps"], rows), "mad")
    assert pareto.front == [0, 1] and not pareto.higher_is_better
    ax = plots.draw_pareto(pareto, dpi=DPI).axes[0]
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto frontier")]
    assert (list(front.get_xdata()), list(front.get_ydata())) == ([1.0, 2.0], [9.0, 5.0])
    assert sorted(text.get_text() for text in ax.texts) == ["steps=4", "steps=8"]


# -- the command ------------------------------------------------------------------------------------------------


def svg_texts(path: Path) -> str:
    """Every text of an SVG, joined (svg.fonttype 'none' keeps text as <text> elements)."""
    root = ET.parse(path).getroot()  # also proves the file is well-formed XML
    return " | ".join("".join(element.itertext()) for element in root.iter("{http://www.w3.org/2000/svg}text"))


@pytest.mark.parametrize("kind", plots.KINDS)
def test_cli_writes_png_and_svg_of_each_kind(
    kind: str, tiny_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = results_snapshot(tiny_results)
    png, svg = tmp_path / f"{kind}.png", tmp_path / "sub" / f"{kind}.svg"
    common = ["plot", "look", "--kind", kind, "--output-dir", tiny_results, "--dpi", str(DPI)]
    rc, out, err = run(capsys, *common, "-o", png)
    assert (rc, out.strip(), err) == (0, str(png), "")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == PNG_SIZE

    rc, out, err = run(capsys, *common, "-o", svg, "--metric", "psnr")
    assert (rc, out.strip()) == (0, str(svg))
    inf_runs = sum(run["metrics"].get("psnr") == math.inf for run in load_experiment(tiny_results, "look").runs)
    assert inf_runs > 0  # the reference runs
    assert err.startswith(f"note: left out {inf_runs} of 36 psnr values that are not finite: inf")
    texts = svg_texts(svg)
    assert "psnr (higher is better)" in texts and f"left out {inf_runs} of 36 psnr values" in texts
    if kind == "pareto":
        assert "look: psnr vs seconds per image, batched, per shift x layer" in texts and "Pareto frontier" in texts
        assert "s per image, batched (batch time / batch size) (mean over runs; lower is better)" in texts
        assert "shift=" in texts and "layer=" in texts  # frontier labels
    else:
        assert f"look: psnr by {'prompt category x ' if kind == 'heatmap' else ''}shift" in texts
        assert "animals" in texts and "simple" in texts and "-2:0.5,-5:0.5" not in texts  # x is shift
    assert results_snapshot(tiny_results) == before  # read-only


def test_cli_defaults_filters_and_custom_category(
    tiny_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "plot", "look", "--output-dir", tiny_results, "--dpi", str(DPI))
    assert (rc, out.strip(), err) == (0, "look_line_ssim.png", "")  # default kind, metric and place
    assert (tmp_path / "look_line_ssim.png").is_file()

    argv = ["plot", "look_custom", "--output-dir", tiny_results, "-m", "seconds_per_image_batched", "-k", "heatmap"]
    rc, out, _ = run(capsys, *argv, "-a", "layer", "-w", 'shift="3.0"', "-o", "custom.svg")
    assert rc == 0
    texts = svg_texts(tmp_path / "custom.svg")
    assert "custom" in texts and "-2:0.5,-5:0.5" in texts and "where shift = 3.0" in texts
    assert "s per image, batched (batch time / batch size) (lower is better)" in texts

    run(capsys, *argv, "-a", "layer", "-w", "shift=3.0", "-o", "again.svg")  # same data, same bytes
    assert (tmp_path / "again.svg").read_bytes() == (tmp_path / "custom.svg").read_bytes()


# The refusals of `plot` (one line, exit 2, nothing written, no model library imported) are cases of the
# bad-input table: tests/test_bad_input.py PLOT_ERRORS.


def test_help_stays_light_and_defaults_agree() -> None:
    assert cli_plot.DEFAULT_DPI == plots.DEFAULT_DPI
    assert cli_plot.METRIC_HELP.endswith(f"the first with values of {', '.join(plots.DEFAULT_METRICS)}.")
    code = "import sys, llm_dit.cli; print(sorted(m for m in ('matplotlib', 'scipy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert result.stdout.strip() == "[]", result.stderr


def test_cli_never_replaces_a_file_or_writes_into_the_results(
    tiny_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "kept.png"
    existing.write_bytes(b"mine")
    common = ["plot", "look", "--metric", "mad", "--output-dir", tiny_results, "--dpi", str(DPI)]
    assert_user_error(*run(capsys, *common, "-o", existing), "kept.png already exists", "--overwrite")
    assert existing.read_bytes() == b"mine"
    rc, out, _err = run(capsys, *common, "-o", existing, "--overwrite")
    assert (rc, out.strip()) == (0, str(existing)) and existing.read_bytes().startswith(b"\x89PNG")
    inside = tiny_results / "look" / "plot.png"
    assert_user_error(*run(capsys, *common, "-o", inside), "inside the results directory")
    assert not inside.exists()
    # The default name (known once the metric is resolved) is checked too.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "look_line_mad.png").write_bytes(b"mine")
    assert_user_error(*run(capsys, *common), "look_line_mad.png already exists")
    assert (tmp_path / "look_line_mad.png").read_bytes() == b"mine"
