"""A/B preference judgements (llm_dit.analysis.preferences): the append-only file, the pairs to rate, win rates with
Wilson intervals by hand, and Bradley-Terry fits against closed forms and a brute-force likelihood maximisation."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from llm_dit.analysis.preferences import rating_pairs
from llm_dit.analysis.results import load_experiment
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming
from llm_dit.files import write_atomic
from llm_dit.metrics.preferences import (
    BT_METRIC,
    WIN_METRIC,
    Judgement,
    append_judgement,
    bradley_terry,
    bt_standard_errors,
    current_judgements,
    preference_rows,
    read_judgements,
    strongly_connected,
    wilson_interval,
)


def judgement(run_a: str = "r1", run_b: str = "r2", choice: str = "a", **kw: str) -> Judgement:
    base = dict(experiment="e", axis="x", run_a=run_a, run_b=run_b, sha256_a="h1", sha256_b="h2", shown_left="a",
                choice=choice, rater="ann", time="2025-01-01T00:00:00+00:00", session="s")  # fmt: skip
    base.update(kw)
    return Judgement(**base)


# ---- storage -------------------------------------------------------------------------------------------------------


def test_judgements_round_trip_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "preferences.jsonl"
    written = [judgement(choice="a"), judgement(choice="tie", rater="bob <b>"), judgement(choice="b")]
    for item in written:
        append_judgement(path, item)
    assert read_judgements(path) == written
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3
    with open(path, "ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"experiment": "e", "ax')
    assert read_judgements(path) == written
    assert read_judgements(tmp_path / "nothing.jsonl") == []


def test_appends_never_rewrite_earlier_lines(tmp_path: Path) -> None:
    path = tmp_path / "preferences.jsonl"
    append_judgement(path, judgement())
    first = path.read_bytes()
    inode = os.stat(path).st_ino
    append_judgement(path, judgement(choice="b"))
    assert path.read_bytes().startswith(first)
    assert os.stat(path).st_ino == inode  # appended in place, not replaced


@pytest.mark.parametrize(
    "bad",
    [{"choice": "left"}, {"shown_left": "c"}, {"rater": " "}, {"rater": "x" * 101}, {"rater": "a\nb"}, {"run_b": "r1"}],
)
def test_bad_judgements_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(LlmDitError):
        judgement(**bad)


def test_stale_judgements_are_left_out() -> None:
    items = [judgement(), judgement(sha256_a="old"), judgement(run_b="gone")]
    kept, stale = current_judgements(items, {"r1": "h1", "r2": "h2"})
    assert kept == items[:1] and stale == 2


# ---- pairs ---------------------------------------------------------------------------------------------------------


def build_two_axes(root: Path) -> None:
    """'ab': axes x (x0, x1) and y (y0, y1), prompts p1, seed 1 and 2; (p1, seed 2, x1, y1) failed."""
    store = ResultsStore(root)
    store.start_experiment("ab", "pairs", {"axes": [{"name": "x"}, {"name": "y"}]}, {})
    plan = [
        PlannedRun(f"r{seed}{x}{y}", "p1", "a prompt", seed, {"x": f"x{x}", "y": f"y{y}"})
        for seed in (1, 2)
        for x in (0, 1)
        for y in (0, 1)
    ]
    store.plan_runs("ab", plan)
    for run in plan:
        if run.run_id == "r211":
            store.mark_failed("ab", run.run_id, "boom")
            continue
        write_atomic(root / "ab" / f"{run.run_id}.png", b"not really a png")
        store.mark_done(
            "ab", run.run_id, image_path=f"{run.run_id}.png", timing=RunTiming(0.1, 1), token_count=1, record={}
        )
    store.close()


def test_pairs_share_prompt_seed_and_the_other_axes(tmp_path: Path) -> None:
    build_two_axes(tmp_path)
    results = load_experiment(tmp_path, "ab")
    pairs = rating_pairs(results)
    assert sorted(pairs) == sorted(
        [("x", "r100", "r110"), ("x", "r101", "r111"), ("x", "r200", "r210"),
         ("y", "r100", "r101"), ("y", "r110", "r111"), ("y", "r200", "r201")]
    )  # fmt: skip
    assert rating_pairs(results, ["y"]) == [p for p in pairs if p[0] == "y"]
    with pytest.raises(LlmDitError, match="no axis 'z'"):
        rating_pairs(results, ["z"])


# ---- win rates -----------------------------------------------------------------------------------------------------


def test_wilson_interval_by_hand() -> None:
    # 7 of 10: p = 0.7, z = 1.96: centre (0.7 + 0.19208) / 1.38416, half 1.96 * sqrt(0.021 + 0.0009604) / 1.38416
    low, high = wilson_interval(7, 10)
    z = 1.959963984540054
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.7 * 0.3 / 10 + z * z / 400) / (1 + z * z / 10)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_win_rates_and_counts_by_hand() -> None:
    # x0 vs x1: x0 wins 3, x1 wins 1, 2 ties. x0: (3 + 1) / 6; x1: (1 + 1) / 6.
    values_of = {"r1": {"x": "x0"}, "r2": {"x": "x1"}}
    items = [judgement(choice="a")] * 3 + [judgement(choice="b")] + [judgement(choice="tie")] * 2
    rows = preference_rows(items, values_of, {"x": ["x0", "x1"]})
    wins = {row["value"]: row for row in rows if row["metric"] == WIN_METRIC}
    assert wins["x0"]["mean"] == pytest.approx(4 / 6) and wins["x1"]["mean"] == pytest.approx(2 / 6)
    assert (wins["x0"]["wins"], wins["x0"]["ties"], wins["x0"]["losses"], wins["x0"]["n"]) == (3, 2, 1, 6)
    assert (wins["x1"]["wins"], wins["x1"]["ties"], wins["x1"]["losses"]) == (1, 2, 3)
    assert (wins["x0"]["ci95_low"], wins["x0"]["ci95_high"]) == pytest.approx(wilson_interval(4, 6))
    bt = {row["value"]: row for row in rows if row["metric"] == BT_METRIC}
    # Two values: the MLE of P(x1 beats x0) is its wins over all games, ties half: 2 / 6.
    assert bt["x0"]["mean"] == 0.0
    assert bt["x1"]["mean"] == pytest.approx(math.log(2 / 4))
    # The observed information of the log-odds is n p q: standard error sqrt(1/W0 + 1/W1).
    assert bt["x1"]["std"] == pytest.approx(math.sqrt(1 / 4 + 1 / 2))
    assert bt["x1"]["ci95_low"] == pytest.approx(math.log(0.5) - 1.959963984540054 * math.sqrt(0.75))
    assert set(rows[0]) >= {"metric", "axis", "value", "n", "mean", "std", "ci95_low", "ci95_high"}


# ---- Bradley-Terry -------------------------------------------------------------------------------------------------


def test_two_conditions_closed_form() -> None:
    for w01, w10 in [(3, 1), (1, 7), (5, 5), (2.5, 0.5)]:
        theta = bradley_terry(np.array([[0, w01], [w10, 0]]))
        assert theta[0] == 0.0
        assert theta[1] == pytest.approx(math.log(w10 / w01), abs=1e-9)


def test_three_conditions_with_a_known_solution() -> None:
    # Strengths 1, 2, 4 and counts equal to their expectations: W_i = Σ_j n_ij p_i / (p_i + p_j) holds exactly, so
    # the MLE is (0, log 2, log 4). n_01 = 3 (1 : 2), n_02 = 5 (1 : 4), n_12 = 3 (1 : 2).
    wins = np.array([[0, 1, 1], [2, 0, 1], [4, 2, 0]], dtype=float)
    theta = bradley_terry(wins)
    assert theta == pytest.approx([0.0, math.log(2), math.log(4)], abs=1e-9)


def neg_log_likelihood(free: np.ndarray, wins: np.ndarray) -> float:
    theta = np.concatenate([[0.0], free])
    diff = theta[:, None] - theta[None, :]
    return float(np.sum(wins * np.logaddexp(0.0, -diff)))  # -Σ w_ij log σ(θ_i - θ_j)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_brute_force_maximisation_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 6))
    wins = rng.integers(1, 9, (k, k)).astype(float)
    wins[rng.random((k, k)) < 0.2] = 0
    wins += 0.5 * rng.integers(0, 3, (k, k))  # ties: half a win each way
    wins = np.triu(wins, 1) + np.tril(wins, -1)
    np.fill_diagonal(wins, 0)
    assert strongly_connected(wins)
    theta = bradley_terry(wins)
    best = optimize.minimize(neg_log_likelihood, np.zeros(k - 1), args=(wins,), method="BFGS", options={"gtol": 1e-10})
    assert theta[1:] == pytest.approx(best.x, abs=1e-5)
    # The Fisher-information errors equal the inverse Hessian of the likelihood, taken numerically here.
    errors = bt_standard_errors(wins, theta)
    step = 1e-4
    hessian = np.zeros((k - 1, k - 1))
    for i in range(k - 1):
        for j in range(k - 1):
            e_i, e_j = np.eye(k - 1)[i] * step, np.eye(k - 1)[j] * step
            f = [
                neg_log_likelihood(theta[1:] + si * e_i + sj * e_j, wins)
                for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1))
            ]
            hessian[i, j] = (f[0] - f[1] - f[2] + f[3]) / (4 * step * step)
    assert errors[0] == 0.0
    assert errors[1:] == pytest.approx(np.sqrt(np.diag(np.linalg.inv(hessian))), rel=1e-4)


@pytest.mark.parametrize(
    "wins",
    [
        [[0, 0, 1], [3, 0, 2], [1, 0, 0]],  # 1 beat everyone and never lost
        [[0, 2, 1], [1, 0, 3], [0, 0, 0]],  # 2 lost to everyone and never won
    ],
)
def test_no_maximum_when_a_value_never_loses_or_never_wins(wins: list[list[float]]) -> None:
    matrix = np.array(wins, dtype=float)
    assert not strongly_connected(matrix)
    assert np.isnan(bradley_terry(matrix)).all()
    assert np.isnan(bt_standard_errors(matrix, bradley_terry(matrix))).all()


def test_report_section_appears_only_with_judgements(tmp_path: Path) -> None:
    from llm_dit.analysis.preferences import image_hashes, preferences_path
    from llm_dit.analysis.report import preferences_section

    build_two_axes(tmp_path)
    results = load_experiment(tmp_path, "ab")
    assert preferences_section(results) == []
    hashes = image_hashes(results)
    for choice in ("a", "a", "b", "tie"):
        append_judgement(
            preferences_path(results),
            judgement("r100", "r110", choice, axis="x", sha256_a=hashes["r100"], sha256_b=hashes["r110"]),
        )
    text = "\n".join(preferences_section(results))
    assert "## Human preference" in text and "4 blind A/B judgements by 1 rater(s)" in text
    assert "| `x` | `x0` | win rate | 0.625 |" in text  # (2 + 0.5) / 4
    assert "| `x` | `x1` | Bradley-Terry | -0.5108 |" in text  # log(1.5 / 2.5)


def test_metrics_pass_puts_current_preferences_in_summary_csv(tmp_path: Path) -> None:
    import csv

    from llm_dit.analysis.preferences import image_hashes, preferences_path
    from llm_dit.metrics.compute import MetricsPass
    from llm_dit.metrics.reference import ReferenceChoice

    build_two_axes(tmp_path)
    results = load_experiment(tmp_path, "ab")
    hashes = image_hashes(results)
    for choice in ("a", "a", "b", "tie"):
        append_judgement(
            preferences_path(results),
            judgement("r100", "r110", choice, axis="x", sha256_a=hashes["r100"], sha256_b=hashes["r110"]),
        )
    # A judgement of an image since regenerated is stale: it must not count.
    append_judgement(preferences_path(results), judgement("r100", "r110", "b", axis="x", sha256_a="old", sha256_b="o"))
    with ResultsStore(tmp_path) as store:
        report = MetricsPass(store).run("ab", [], ReferenceChoice())
    assert report.summary_csv is not None
    with open(report.summary_csv, newline="", encoding="utf-8") as handle:
        rows = {(r["metric"], r["axis"], r["value"]): r for r in csv.DictReader(handle)}
    # x0 won 2, lost 1, tied 1 of 4: (2 + 0.5) / 4; Bradley-Terry x1 vs x0 = log(1.5 / 2.5) with x0 pinned to 0.
    assert float(rows[("win_rate", "x", "x0")]["mean"]) == 0.625
    assert float(rows[("win_rate", "x", "x1")]["mean"]) == 0.375
    assert int(rows[("win_rate", "x", "x0")]["n"]) == 4
    assert math.isclose(float(rows[("preference_bt", "x", "x1")]["mean"]), math.log(1.5 / 2.5), rel_tol=1e-9)
    assert float(rows[("preference_bt", "x", "x0")]["mean"]) == 0.0
    # No judgement of axis y: no preference rows for it (its time rows are there as always).
    assert {axis for metric, axis, _ in rows if metric in (WIN_METRIC, BT_METRIC)} == {"x"}


def test_plot_draws_preference_scores_per_axis_value(tmp_path: Path) -> None:
    from llm_dit.analysis import plots
    from llm_dit.analysis.preferences import image_hashes, preferences_path

    build_two_axes(tmp_path)
    results = load_experiment(tmp_path, "ab")
    with pytest.raises(LlmDitError, match=r"no current A/B judgements; rate its images with 'llm-dit view --rate'"):
        plots.make_plot(results, "line", WIN_METRIC, "x")
    hashes = image_hashes(results)
    for choice in ("a", "a", "b", "tie"):
        append_judgement(
            preferences_path(results),
            judgement("r100", "r110", choice, axis="x", sha256_a=hashes["r100"], sha256_b=hashes["r110"]),
        )
    plot = plots.make_plot(results, "line", WIN_METRIC, "x")
    (bars,) = plot.figure.axes[0].containers
    assert list(bars.lines[0].get_ydata()) == [0.625, 0.375]  # (2 + 0.5) / 4 and (1 + 0.5) / 4
    low, high = wilson_interval(2.5, 4)
    (caps,) = [c for c in bars.lines[2]]  # the error bar segments: [x0's, x1's]
    segment = caps.get_segments()[0]
    assert segment[0][1] == pytest.approx(low) and segment[1][1] == pytest.approx(high)
    assert bars.get_label() == "all prompts and seeds (n=4)"
    assert plot.figure.axes[0].get_ylabel() == "win_rate (higher is better)"
    bt = plots.make_plot(results, "line", BT_METRIC, "x")
    assert list(bt.figure.axes[0].containers[0].lines[0].get_ydata()) == pytest.approx([0.0, math.log(1.5 / 2.5)])
    assert any("x0 pinned at 0" in note for note in bt.notes)
    with pytest.raises(LlmDitError, match="no A/B judgements of axis 'y'"):
        plots.make_plot(results, "line", WIN_METRIC, "y")
    for kind, filters in (("heatmap", None), ("pareto", None), ("line", {"seed": ["1"]})):
        with pytest.raises(LlmDitError, match="plot it with --kind line and no --where"):
            plots.make_plot(results, kind, WIN_METRIC, None, filters)
