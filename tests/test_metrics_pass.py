"""The metrics pass (``llm_dit.metrics.compute.MetricsPass``) over results stores populated without a model.

Each test builds an experiment the way the runner stores one: ``start_experiment`` with a definition shaped like
``Experiment.to_dict()``, ``plan_runs`` with runs whose params are the resolved built-in defaults
(``default_params()``) with the swept key changed, small PNGs made from numpy arrays, ``mark_done``. Expected
values come from ``llm_dit.metrics.pixel`` applied by hand to the right pair of files, or from closed forms
(constant images: MAD = the level difference, PSNR = 20 log10(255 / d)).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import stats

import metrics_helpers
from bounds import EPS64
from llm_dit.errors import LlmDitError
from llm_dit.experiments.planner import REPLACES, default_params
from llm_dit.experiments.store import (
    DB_NAME,
    SCHEMA_VERSION,
    MetricValue,
    PlanDefaults,
    PlannedRun,
    ResultsStore,
    file_sha256,
)
from llm_dit.metrics import compute, pixel
from llm_dit.metrics.compute import MetricsPass
from llm_dit.metrics.reference import ReferenceChoice
from llm_dit.metrics.registry import METRICS, MetricSpec
from metrics_helpers import Run, axis

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

EXP = "exp"
SIZE = 32
REFERENCE = ("ssim", "psnr", "mad")
DIVERSITY = ("diversity_ssim", "diversity_mad")
WEIGHT_FREE = (*REFERENCE, *DIVERSITY)


# ------------------------------------------------------------------------------------------------ helpers


def specs(*names: str) -> list[MetricSpec]:
    return [METRICS[name] for name in names or WEIGHT_FREE]


def params(**changes: Any) -> dict[str, Any]:
    """A run's resolved params: the built-in defaults at SIZE x SIZE with ``changes``."""
    out = default_params()
    out.update(width=SIZE, height=SIZE)
    out.update(changes)
    return out


def definition(*axes: dict[str, Any]) -> dict[str, Any]:
    """Shaped like ``Experiment.to_dict()``."""
    return {
        "name": EXP,
        "description": "test",
        "seeds": [],
        "prompts": {"ids": [], "category": None, "max": None},
        "base": {},
        "axes": list(axes),
        "source": "test",
    }


def noise(*key: Any) -> np.ndarray:
    """A distinct, deterministic SIZE x SIZE RGB image per key: a smooth gradient plus noise."""
    rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
    ramp = np.linspace(0, 200, SIZE)[None, :, None] + rng.integers(0, 40, (SIZE, 1, 3))
    return np.clip(ramp + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def flat(level: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), level, dtype=np.uint8)


def populate(store: ResultsStore, defn: dict[str, Any], runs: Sequence[Run], *, start: bool = True) -> None:
    """Plan ``runs`` (and start the experiment, with the defaults the plan resolved against, as the runner stores
    them), write the images of done runs (noise() of the run's id unless given) and mark them done/failed."""
    runs = [dataclasses.replace(r, image=noise(r.run_id)) if r.image is None else r for r in runs]
    defaults = PlanDefaults(default_params(), dict(REPLACES))
    metrics_helpers.populate(store, EXP, runs, definition=defn if start else None, defaults=defaults)


def hidden_layer_axis(labels: Sequence[str] = ("-1", "-2", "-3")) -> dict[str, Any]:
    return axis("hidden_layer", [(label, {"hidden_layer": int(label)}) for label in labels])


def hidden_layer_runs(
    labels: Sequence[str] = ("-1", "-2", "-3"), seeds: Sequence[int] = (1, 2), prompts: Sequence[str] = ("p1",)
) -> list[Run]:
    return [
        Run(prompt, seed, {"hidden_layer": label}, params(hidden_layer=int(label)))
        for prompt in prompts
        for label in labels
        for seed in seeds
    ]


def image(store: ResultsStore, run: Run | str) -> Path:
    run_id = run if isinstance(run, str) else run.run_id
    return store.experiment_dir(EXP) / f"{run_id}.png"


def stored(store: ResultsStore, name: str) -> dict[str, float | None]:
    """run id -> the value results.csv shows (newest version), for runs that have one."""
    return {r["run_id"]: r["metrics"][name] for r in store.runs(EXP) if name in r["metrics"]}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def approx(value: float, terms: int = 6, spread: float = 1.0) -> Any:
    """``value`` up to another float64 evaluation order: the same pixel functions on the same images, a mean or
    std over at most ``terms`` values summed in another order, a log10 written another way. Bound: (terms + 4)
    eps64 relative, times ``spread`` = 1 + mean^2 / var for a std and what is built from it (the cancellation
    in its squared deviations). No absolute slack: a value that should be 0 is a sum of exact zeros."""
    return pytest.approx(value, rel=(terms + 4) * EPS64 * spread, abs=0)


def check_against(store: ResultsStore, pairs: dict[str, str | Path], names: Sequence[str] = REFERENCE) -> None:
    """Every run in ``pairs`` has ssim/psnr/mad equal to pixel.* against its reference (a run id or a file)."""
    functions = {"ssim": pixel.ssim, "psnr": pixel.psnr, "mad": pixel.mean_abs_diff}
    for name in names:
        fn = functions[name]
        values = stored(store, name)
        for run_id, ref in pairs.items():
            ref_path = ref if isinstance(ref, Path) else image(store, ref)
            want = fn(image(store, run_id), ref_path)
            assert values[run_id] == approx(want), (name, run_id, ref)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultsStore]:
    with ResultsStore(tmp_path / "results") as s:
        yield s


# ------------------------------------------------------------------------------------------ 1. references


def test_default_reference_is_found_from_params(store: ResultsStore) -> None:
    runs = hidden_layer_runs()  # -1 first: the default (-2) is not found by position
    populate(store, definition(hidden_layer_axis()), runs)
    report = MetricsPass(store).run(EXP, specs(*REFERENCE))
    assert report.reference == "hidden_layer=-2"
    assert report.computed == {"ssim": 6, "psnr": 6, "mad": 6}
    assert report.kept == {"ssim": 0, "psnr": 0, "mad": 0}
    by_id = {r.run_id: r for r in runs}
    check_against(store, {rid: f"p1_hidden_layer-2_s{r.seed}" for rid, r in by_id.items()})
    for seed in (1, 2):
        ref = f"p1_hidden_layer-2_s{seed}"
        assert stored(store, "ssim")[ref] == 1.0
        assert stored(store, "mad")[ref] == 0.0
        assert stored(store, "psnr")[ref] == math.inf
        other = f"p1_hidden_layer-1_s{seed}"
        assert stored(store, "ssim")[other] < 0.99  # really compared with another image
        assert stored(store, "mad")[other] > 1.0
    # The stored params say which run was the reference: changing it recomputes the value.
    values = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
    reference = "p1_hidden_layer-2_s2"
    assert values[("p1_hidden_layer-3_s2", "ssim")].params == {
        "reference": f"run:{reference}",
        "input_sha256": {reference: file_sha256(image(store, reference))},  # and which image of it
    }
    assert values[("p1_hidden_layer-3_s2", "ssim")].image_sha256 == file_sha256(image(store, "p1_hidden_layer-3_s2"))
    assert values[("p1_hidden_layer-3_s2", "ssim")].version == METRICS["ssim"].version


def test_default_reference_label_differs_from_value(store: ResultsStore) -> None:
    # Like the built-in system_prompt experiment: 'none' is written as "" and resolved to None (the default).
    defn = definition(axis("system", [("painter", {"system_prompt": "You paint."}), ("none", {"system_prompt": ""})]))
    runs = [
        Run("p1", seed, {"system": label}, params(system_prompt=value))
        for label, value in (("painter", "You paint."), ("none", None))
        for seed in (1, 2)
    ]
    populate(store, defn, runs)
    report = MetricsPass(store).run(EXP, specs(*REFERENCE))
    assert report.reference == "system=none"
    check_against(store, {r.run_id: f"p1_systemnone_s{r.seed}" for r in runs})
    assert stored(store, "ssim")["p1_systemnone_s1"] == 1.0
    assert stored(store, "psnr")["p1_systempainter_s1"] < 40


def test_reference_choice_picks_another_label_and_recomputes(store: ResultsStore) -> None:
    runs = hidden_layer_runs()
    populate(store, definition(hidden_layer_axis()), runs)
    MetricsPass(store).run(EXP, specs(*REFERENCE))
    report = MetricsPass(store).run(EXP, specs(*REFERENCE), ReferenceChoice(axes={"hidden_layer": "-3"}))
    assert report.reference == "hidden_layer=-3"
    # -3 runs were compared with -2 before and with themselves now: every value depends on the reference.
    assert report.computed == {"ssim": 6, "psnr": 6, "mad": 6}
    check_against(store, {r.run_id: f"p1_hidden_layer-3_s{r.seed}" for r in runs})
    assert stored(store, "ssim")["p1_hidden_layer-3_s1"] == 1.0
    assert stored(store, "ssim")["p1_hidden_layer-2_s1"] < 0.99


def test_grid_holds_the_axis_without_default_fixed(store: ResultsStore) -> None:
    # shift has a default value (3.0); steps does not (the default is 8): compare per steps value.
    defn = definition(
        axis("shift", [("6.0", {"shift": 6.0}), ("3.0", {"shift": 3.0})]),
        axis("steps", [("4", {"steps": 4}), ("6", {"steps": 6})]),
    )
    runs = [
        Run("p1", 1, {"shift": shift, "steps": steps}, params(shift=float(shift), steps=int(steps)))
        for shift in ("6.0", "3.0")
        for steps in ("4", "6")
    ]
    populate(store, defn, runs)
    report = MetricsPass(store).run(EXP, specs(*REFERENCE))
    assert report.reference == "shift=3.0"
    check_against(store, {r.run_id: f"p1_shift3.0_steps{r.variables['steps']}_s1" for r in runs})
    assert stored(store, "mad")["p1_shift3.0_steps4_s1"] == 0.0
    assert stored(store, "mad")["p1_shift3.0_steps6_s1"] == 0.0
    assert stored(store, "mad")["p1_shift6.0_steps6_s1"] > 1.0
    # Both axes named: everything against one run.
    MetricsPass(store).run(EXP, specs(*REFERENCE), ReferenceChoice(axes={"shift": "6.0", "steps": "4"}))
    check_against(store, {r.run_id: "p1_shift6.0_steps4_s1" for r in runs})


def test_unknown_reference_axis_or_label_lists_valid_ones(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    with pytest.raises(LlmDitError, match=r"no axis 'layer'; axes: hidden_layer"):
        MetricsPass(store).run(EXP, specs("ssim"), ReferenceChoice(axes={"layer": "-2"}))
    with pytest.raises(LlmDitError, match=r"no such value; values of hidden_layer: '-1', '-2', '-3'"):
        MetricsPass(store).run(EXP, specs("ssim"), ReferenceChoice(axes={"hidden_layer": "-9"}))
    assert store.metric_values(EXP) == []


def test_no_default_and_no_choice(store: ResultsStore) -> None:
    defn = definition(axis("steps", [("4", {"steps": 4}), ("6", {"steps": 6})]))
    runs = [Run("p1", seed, {"steps": s}, params(steps=int(s))) for s in ("4", "6") for seed in (1, 2)]
    populate(store, defn, runs)
    with pytest.raises(LlmDitError, match=r"no value of steps is the default; choose one with --reference AXIS="):
        MetricsPass(store).run(EXP, specs())
    assert store.metric_values(EXP) == []  # nothing computed before the error
    report = MetricsPass(store).run(EXP, specs(), skip_unreferenced=True)
    assert any(note.startswith("reference metrics skipped: ") and "--reference" in note for note in report.notes)
    assert report.computed == {"diversity_ssim": 4, "diversity_mad": 4}
    assert {v.name for v in store.metric_values(EXP)} == set(DIVERSITY)
    header, _ = read_csv(report.results_csv)
    assert "ssim" not in header and "diversity_mad" in header
    # An experiment without axes points at source images.
    store.start_experiment("flat", "test", definition(), {})
    store.plan_runs("flat", [PlannedRun("r1", "p1", "prompt", 1, {}, params())])
    with pytest.raises(LlmDitError, match=r"sweeps nothing; compare with a source image: --reference-image"):
        MetricsPass(store).run("flat", specs("ssim"))


def test_reference_axes_and_images_cannot_be_combined(store: ResultsStore, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    Image.fromarray(noise("source")).save(source)
    # A source image replaces the reference run: axis labels next to it would be silently ignored.
    with pytest.raises(LlmDitError, match=r"--reference hidden_layer=-1 and --reference-image cannot be combined"):
        ReferenceChoice(axes={"hidden_layer": "-1"}, images={None: source})


def test_unknown_experiment(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    with pytest.raises(LlmDitError, match=r"no experiment 'nope' in .*; experiments there: exp"):
        MetricsPass(store).run("nope", specs())


# -------------------------------------------------------------------------------------- 2. source images


def two_prompt_runs() -> list[Run]:
    return hidden_layer_runs(labels=("-1", "-2"), seeds=(1,), prompts=("p1", "p2"))


def test_source_image_for_every_prompt(store: ResultsStore, tmp_path: Path) -> None:
    runs = two_prompt_runs()
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), runs)
    source = tmp_path / "source.png"
    Image.fromarray(noise("source")).save(source)
    report = MetricsPass(store).run(EXP, specs(*REFERENCE), ReferenceChoice(images={None: source}))
    assert report.reference == f"source image (every prompt: {source})"
    assert report.computed == {"ssim": 4, "psnr": 4, "mad": 4}
    check_against(store, {r.run_id: source for r in runs})
    assert all(v < 0.99 for v in stored(store, "ssim").values())  # no run is its own reference now


def test_source_image_per_prompt(store: ResultsStore, tmp_path: Path) -> None:
    runs = two_prompt_runs()
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), runs)
    sources = {}
    for prompt in ("p1", "p2"):
        sources[prompt] = tmp_path / f"{prompt}.png"
        Image.fromarray(noise("source", prompt)).save(sources[prompt])
    MetricsPass(store).run(EXP, specs(*REFERENCE), ReferenceChoice(images=dict(sources)))
    check_against(store, {r.run_id: sources[r.prompt_id] for r in runs})
    # p2's image is identical to one run of p2: that run is 'identical to its source'.
    Image.fromarray(noise("p2_hidden_layer-1_s1")).save(sources["p2"])
    report = MetricsPass(store).run(EXP, specs(*REFERENCE), ReferenceChoice(images={"p2": sources["p2"]}))
    assert report.unavailable == {"ssim": 2, "psnr": 2, "mad": 2}  # p1 has no source image
    assert report.computed == {"ssim": 2, "psnr": 2, "mad": 2}
    assert stored(store, "psnr")["p2_hidden_layer-1_s1"] == math.inf


def test_source_image_size_mismatch_fails_before_anything_is_stored(store: ResultsStore, tmp_path: Path) -> None:
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), two_prompt_runs())
    source = tmp_path / "small.png"
    Image.fromarray(flat(9, size=16)).save(source)
    with pytest.raises(LlmDitError, match=rf"reference image {source} is 16x16 but run \S+ is 32x32"):
        MetricsPass(store).run(EXP, specs(), ReferenceChoice(images={None: source}))
    assert store.metric_values(EXP) == []  # not even the diversity values


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh-pass", "same-pass"])
def test_replacing_the_source_image_recomputes(store: ResultsStore, tmp_path: Path, reuse: bool) -> None:
    runs = two_prompt_runs()
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), runs)
    source = tmp_path / "source.png"
    Image.fromarray(noise("first")).save(source)
    choice = ReferenceChoice(images={None: source})
    first = MetricsPass(store)
    first.run(EXP, specs(*REFERENCE), choice)
    before = stored(store, "mad")
    Image.fromarray(noise("second")).save(source)
    report = (first if reuse else MetricsPass(store)).run(EXP, specs(*REFERENCE), choice)
    assert report.computed == {"ssim": 4, "psnr": 4, "mad": 4}
    check_against(store, {r.run_id: source for r in runs})
    assert stored(store, "mad") != before
    # Same file again: nothing to do.
    assert MetricsPass(store).run(EXP, specs(*REFERENCE), choice).computed == {"ssim": 0, "psnr": 0, "mad": 0}


# ------------------------------------------------------------------------------------------ 3. diversity


def test_diversity_is_the_mean_distance_to_the_other_seeds(store: ResultsStore) -> None:
    runs = hidden_layer_runs(labels=("-1", "-2"), seeds=(1, 2, 3))
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), runs)
    report = MetricsPass(store).run(EXP, specs(*DIVERSITY))
    assert report.computed == {"diversity_ssim": 6, "diversity_mad": 6}
    assert report.notes == []
    ssim_div, mad_div = stored(store, "diversity_ssim"), stored(store, "diversity_mad")
    for r in runs:
        others = [o for o in runs if o.variables == r.variables and o.seed != r.seed]
        assert len(others) == 2
        want_mad = np.mean([pixel.mean_abs_diff(image(store, r), image(store, o)) for o in others])
        want_ssim = np.mean([1.0 - pixel.ssim(image(store, r), image(store, o)) for o in others])
        assert mad_div[r.run_id] == approx(float(want_mad))
        assert ssim_div[r.run_id] == approx(float(want_ssim))
        assert mad_div[r.run_id] > 1.0


def test_diversity_single_seed_has_no_value_and_a_note(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), hidden_layer_runs(labels=("-1", "-2"), seeds=(1,)))
    report = MetricsPass(store).run(EXP, specs(*DIVERSITY))
    assert report.computed == {"diversity_ssim": 0, "diversity_mad": 0}
    assert report.unavailable == {"diversity_ssim": 2, "diversity_mad": 2}
    assert any("need >= 2 seeds" in note for note in report.notes)
    assert store.metric_values(EXP) == []


def test_adding_a_seed_recomputes_its_group(store: ResultsStore) -> None:
    defn = definition(hidden_layer_axis(("-1", "-2")))
    runs = hidden_layer_runs(labels=("-1", "-2"), seeds=(1, 2))
    populate(store, defn, runs)
    MetricsPass(store).run(EXP, specs(*DIVERSITY))
    before = stored(store, "diversity_mad")
    extra = Run("p1", 3, {"hidden_layer": "-1"}, params(hidden_layer=-1))
    populate(store, defn, [*runs, extra], start=False)
    report = MetricsPass(store).run(EXP, specs(*DIVERSITY))
    # The -1 group (seeds 1, 2 and the new 3) is recomputed; the -2 group is kept.
    assert report.computed == {"diversity_ssim": 3, "diversity_mad": 3}
    assert report.kept == {"diversity_ssim": 2, "diversity_mad": 2}
    after = stored(store, "diversity_mad")
    group = ["p1_hidden_layer-1_s1", "p1_hidden_layer-1_s2", extra.run_id]
    for rid in group:
        others = [o for o in group if o != rid]
        want = np.mean([pixel.mean_abs_diff(image(store, rid), image(store, o)) for o in others])
        assert after[rid] == approx(float(want))
    assert after["p1_hidden_layer-1_s1"] != before["p1_hidden_layer-1_s1"]
    assert after["p1_hidden_layer-2_s1"] == before["p1_hidden_layer-2_s1"]
    params_of = {(v.run_id, v.name): v.params for v in store.metric_values(EXP)}
    assert params_of[(extra.run_id, "diversity_mad")]["n"] == 3
    assert params_of[("p1_hidden_layer-2_s1", "diversity_mad")]["n"] == 2


def test_runs_of_two_plans_are_grouped_apart_and_noted(store: ResultsStore) -> None:
    # Seeds 1, 2 planned at the default steps, then seeds 3, 4 re-planned with --set steps=4: two plans.
    defn = definition(hidden_layer_axis(("-1", "-2")))
    first = hidden_layer_runs(labels=("-1", "-2"), seeds=(1, 2))
    populate(store, defn, first)
    report = MetricsPass(store).run(EXP, specs("mad", "diversity_mad"))
    assert not any("plan" in note for note in report.notes)
    second = [
        Run("p1", seed, {"hidden_layer": h}, params(hidden_layer=int(h), steps=4))
        for h in ("-1", "-2")
        for seed in (3, 4)
    ]
    populate(store, defn, [*first, *second], start=False)
    report = MetricsPass(store).run(EXP, specs("mad", "diversity_mad"))
    assert report.computed == {"mad": 4, "diversity_mad": 4}  # the first plan's values are kept
    # Diversity groups stay within a plan; summary.csv mixes both plans, and the report says so.
    params_of = {(v.run_id, v.name): v.params for v in store.metric_values(EXP)}
    assert {params_of[(r.run_id, "diversity_mad")]["n"] for r in [*first, *second]} == {2}
    notes = [note for note in report.notes if "more than one plan" in note]
    assert len(notes) == 1 and "differ in steps" in notes[0] and "summary.csv averages" in notes[0]
    assert {row["n"] for row in report.summary if row["metric"] == "mad"} == {4}


def test_summary_is_of_the_latest_plan(store: ResultsStore) -> None:
    # Seeds 1, 2 at the default steps, then a re-run that plans only seeds 3, 4 with --set steps=4.
    defn = definition(hidden_layer_axis(("-1", "-2")))
    populate(store, defn, hidden_layer_runs(labels=("-1", "-2"), seeds=(1, 2)))
    second = [
        Run("p1", seed, {"hidden_layer": h}, params(hidden_layer=int(h), steps=4))
        for h in ("-1", "-2")
        for seed in (3, 4)
    ]
    populate(store, defn, second, start=False)
    report = MetricsPass(store).run(EXP, specs("mad"))
    assert report.computed == {"mad": 8}  # every done run keeps its values
    assert {row["n"] for row in report.summary if row["metric"] == "mad"} == {2}  # the summary: seeds 3, 4 only
    want = np.mean([stored(store, "mad")[r.run_id] for r in second if r.variables["hidden_layer"] == "-1"])
    assert next(row["mean"] for row in report.summary if (row["metric"], row["value"]) == ("mad", "-1")) == approx(
        float(want)
    )
    assert any("4 done runs of earlier plans" in note and "left out of summary.csv" in note for note in report.notes)


# ---------------------------------------------------------------------------------------------- 4. resume


def test_second_pass_computes_nothing_and_deleted_values_come_back(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    first = MetricsPass(store).run(EXP, specs())
    assert first.computed == dict.fromkeys(WEIGHT_FREE, 6)
    values = store.metric_values(EXP)
    assert len(values) == 30
    second = MetricsPass(store).run(EXP, specs())
    assert second.computed == dict.fromkeys(WEIGHT_FREE, 0)
    assert second.kept == dict.fromkeys(WEIGHT_FREE, 6)
    assert store.metric_values(EXP) == values
    # Delete one stored value: only that one is computed again, to the same number.
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("DELETE FROM metrics WHERE run_id = 'p1_hidden_layer-3_s1' AND name = 'mad'")
    conn.close()
    assert len(store.metric_values(EXP)) == 29
    third = MetricsPass(store).run(EXP, specs())
    assert third.computed == {**dict.fromkeys(WEIGHT_FREE, 0), "mad": 1}
    assert third.kept == {**dict.fromkeys(WEIGHT_FREE, 6), "mad": 5}
    assert store.metric_values(EXP) == values
    # force: everything again.
    forced = MetricsPass(store).run(EXP, specs(), force=True)
    assert forced.computed == dict.fromkeys(WEIGHT_FREE, 6)
    assert forced.kept == dict.fromkeys(WEIGHT_FREE, 0)


def test_a_new_metric_version_recomputes_and_wins_in_results_csv(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    MetricsPass(store).run(EXP, specs("ssim", "mad"))
    v1 = stored(store, "ssim")
    monkeypatch.setitem(METRICS, "ssim", dataclasses.replace(METRICS["ssim"], version=2))
    monkeypatch.setitem(compute._PIXEL_REFERENCE, "ssim", lambda a, b: 0.25)  # the 'new code'
    report = MetricsPass(store).run(EXP, specs("ssim", "mad"))
    assert report.computed == {"ssim": 6, "mad": 0}
    by_version = {(v.run_id, v.version): v.value for v in store.metric_values(EXP) if v.name == "ssim"}
    assert len(by_version) == 12  # both versions kept
    assert all(by_version[(rid, 1)] == value for rid, value in v1.items())
    assert all(by_version[(rid, 2)] == 0.25 for rid in v1)
    header, rows = read_csv(report.results_csv)
    assert header.count("ssim") == 1
    assert [row["ssim"] for row in rows] == ["0.25"] * 6
    assert MetricsPass(store).run(EXP, specs("ssim")).computed == {"ssim": 0}


def test_a_crash_midway_keeps_finished_batches(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch is a few runs with every missing value of theirs, committed in one transaction: a crash in the
    # second batch keeps the first one whole (both metrics) and nothing of the second; a rerun does the rest.
    runs = hidden_layer_runs()
    populate(store, definition(hidden_layer_axis()), runs)
    monkeypatch.setattr(compute, "BATCH", 2)
    real = compute._PIXEL_REFERENCE["mad"]
    calls = {"n": 0}

    def flaky(a: np.ndarray, b: np.ndarray) -> float:
        calls["n"] += 1
        if calls["n"] == 3:  # mad of the first run of the second batch, after that batch's ssim values
            raise RuntimeError("crash in batch 2")
        return real(a, b)

    monkeypatch.setitem(compute._PIXEL_REFERENCE, "mad", flaky)
    with pytest.raises(RuntimeError, match="crash in batch 2"):
        MetricsPass(store).run(EXP, specs("ssim", "mad"))
    first_batch = set(stored(store, "ssim"))
    assert len(first_batch) == 2
    assert set(stored(store, "mad")) == first_batch
    monkeypatch.setitem(compute._PIXEL_REFERENCE, "mad", real)
    report = MetricsPass(store).run(EXP, specs("ssim", "mad"))
    assert report.computed == {"ssim": 4, "mad": 4}
    assert report.kept == {"ssim": 2, "mad": 2}
    check_against(store, {r.run_id: f"p1_hidden_layer-2_s{r.seed}" for r in runs}, ("ssim", "mad"))


@pytest.mark.parametrize(("batch", "cache"), [(32, 0), (2, compute.IMAGE_CACHE)], ids=["one-batch", "batches"])
def test_each_image_is_decoded_once(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch, batch: int, cache: int
) -> None:
    # Every weight-free metric of a batch is computed from one decode of each image it needs (even with no cache
    # across batches); the cache carries references and seed groups into the next batches.
    runs = hidden_layer_runs(seeds=(1, 2, 3))
    populate(store, definition(hidden_layer_axis()), runs)
    monkeypatch.setattr(compute, "BATCH", batch)
    monkeypatch.setattr(compute, "IMAGE_CACHE", cache)
    decoded: list[Path] = []
    real = compute.read_image

    def counting(path: Path, sha256: str | None = None) -> np.ndarray:
        decoded.append(Path(path))
        return real(path, sha256)

    monkeypatch.setattr(compute, "read_image", counting)
    report = MetricsPass(store).run(EXP, specs())
    assert report.computed == dict.fromkeys(WEIGHT_FREE, 9)
    assert sorted(decoded) == sorted(image(store, r) for r in runs)


def test_progress_reports_every_value(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    seen: list[tuple[int, int]] = []
    MetricsPass(store, progress=lambda done, total: seen.append((done, total))).run(EXP, specs("ssim", "mad"))
    assert seen[0] == (0, 12)
    assert seen[-1] == (12, 12)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


# ------------------------------------------------------------------------------------ 5. what is skipped


def test_failed_planned_and_imageless_runs_are_skipped(store: ResultsStore) -> None:
    runs = hidden_layer_runs(seeds=(1, 2, 3))
    by_id = {r.run_id: r for r in runs}
    by_id["p1_hidden_layer-1_s3"].status = "failed"
    by_id["p1_hidden_layer-3_s3"].status = "planned"
    populate(store, definition(hidden_layer_axis()), runs)
    image(store, "p1_hidden_layer-2_s2").unlink()  # the reference of -1/-3 seed 2
    image(store, "p1_hidden_layer-3_s1").unlink()
    report = MetricsPass(store).run(EXP, specs("ssim", "diversity_mad"))
    skipped = {"p1_hidden_layer-1_s3", "p1_hidden_layer-3_s3", "p1_hidden_layer-2_s2", "p1_hidden_layer-3_s1"}
    assert {v.run_id for v in store.metric_values(EXP)}.isdisjoint(skipped)
    # 5 usable runs: -1 s1, s2; -2 s1, s3; -3 s2. ssim: -1 s2 and -3 s2 have lost their reference.
    assert set(stored(store, "ssim")) == {"p1_hidden_layer-1_s1", "p1_hidden_layer-2_s1", "p1_hidden_layer-2_s3"}
    assert report.unavailable["ssim"] == 2
    # diversity: -3 has one usable seed left; -1 (s1, s2) and -2 (s1, s3) have two.
    assert set(stored(store, "diversity_mad")) == {
        "p1_hidden_layer-1_s1",
        "p1_hidden_layer-1_s2",
        "p1_hidden_layer-2_s1",
        "p1_hidden_layer-2_s3",
    }
    assert report.unavailable["diversity_mad"] == 1
    assert report.computed == {"ssim": 3, "diversity_mad": 4}
    # results.csv still lists every run; the skipped ones have empty metric cells.
    _, rows = read_csv(report.results_csv)
    assert len(rows) == 9
    assert {row["run_id"] for row in rows if row["ssim"] == ""} == {r.run_id for r in runs} - set(stored(store, "ssim"))


# -------------------------------------------------------------------------------------- 6. exports


def test_results_and_summary_csv_hand_made_case(store: ResultsStore) -> None:
    # Constant images: the reference (-2) is level 100; -1 differs by d levels, so MAD = d and PSNR = 20 log10(255/d).
    offsets = {("p1", 1): 2, ("p1", 2): 4, ("p1", 3): 9, ("p2", 1): 1, ("p2", 2): 3, ("p2", 3): 5}
    runs = []
    for (prompt, seed), d in offsets.items():
        runs.append(Run(prompt, seed, {"hidden_layer": "-1"}, params(hidden_layer=-1), flat(100 + d), seconds=seed))
        runs.append(Run(prompt, seed, {"hidden_layer": "-2"}, params(hidden_layer=-2), flat(100), seconds=10.0))
    populate(store, definition(hidden_layer_axis(("-1", "-2"))), runs)
    report = MetricsPass(store).run(EXP, specs("mad", "psnr", "diversity_mad"))
    assert report.summary_csv == store.experiment_dir(EXP) / "summary.csv"

    header, rows = read_csv(report.results_csv)
    assert header[-3:] == ["diversity_mad", "mad", "psnr"]
    by_id = {row["run_id"]: row for row in rows}
    for (prompt, seed), d in offsets.items():
        row = by_id[f"{prompt}_hidden_layer-1_s{seed}"]
        assert float(row["mad"]) == d
        assert float(row["psnr"]) == approx(20 * math.log10(255 / d))
        assert by_id[f"{prompt}_hidden_layer-2_s{seed}"]["psnr"] == "inf"

    _, summary = read_csv(report.summary_csv)
    table = {(row["metric"], row["axis"], row["value"]): row for row in summary}
    assert {row["metric"] for row in summary} == {"mad", "psnr", "diversity_mad", "seconds_per_image_batched"}

    def check(key: tuple[str, str, str], samples: Sequence[float]) -> None:
        row = table[key]
        n, mean, std = len(samples), float(np.mean(samples)), float(np.std(samples, ddof=1))
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
        spread = 1 + mean**2 / std**2
        assert int(row["n"]) == n
        assert float(row["mean"]) == approx(mean, n)
        assert float(row["std"]) == approx(std, n, spread)
        # The t quantile comes from the same scipy function on both sides; repr() in the CSV is exact.
        assert float(row["ci95_low"]) == approx(low, n, spread)
        assert float(row["ci95_high"]) == approx(high, n, spread)

    check(("mad", "hidden_layer", "-1"), [2, 4, 9, 1, 3, 5])
    check(("psnr", "hidden_layer", "-1"), [20 * math.log10(255 / d) for d in (2, 4, 9, 1, 3, 5)])
    # Diversity: per run the mean |d_i - d_j| to the other seeds, then averaged per condition (prompt): n = 2.
    p1 = np.mean([(2 + 7) / 2, (2 + 5) / 2, (7 + 5) / 2])  # offsets 2, 4, 9
    p2 = np.mean([(2 + 4) / 2, (2 + 2) / 2, (4 + 2) / 2])  # offsets 1, 3, 5
    check(("diversity_mad", "hidden_layer", "-1"), [p1, p2])
    check(("seconds_per_image_batched", "hidden_layer", "-1"), [1, 2, 3, 1, 2, 3])
    # The reference value: MAD 0 with no spread, PSNR infinite (mean inf, spread undefined), diversity 0.
    ref = table[("mad", "hidden_layer", "-2")]
    assert (ref["n"], float(ref["mean"]), float(ref["std"])) == ("6", 0.0, 0.0)
    assert table[("psnr", "hidden_layer", "-2")]["mean"] == "inf"
    assert table[("psnr", "hidden_layer", "-2")]["std"] == "nan"
    assert table[("diversity_mad", "hidden_layer", "-2")]["n"] == "2"
    assert float(table[("seconds_per_image_batched", "hidden_layer", "-2")]["mean"]) == 10.0
    # The report carries the same rows.
    assert len(report.summary) == len(summary)


# ------------------------------------------------------------------------------------ 7. v1 migration


def test_v1_database_is_migrated(tmp_path: Path) -> None:
    root = tmp_path / "results"
    with ResultsStore(root) as store:
        populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    # Turn it into a version 1 database: the old metrics table (no version, params, computed_at).
    with sqlite3.connect(root / DB_NAME) as conn:
        conn.execute("DROP TABLE metrics")
        conn.execute(
            """CREATE TABLE metrics (experiment TEXT NOT NULL, run_id TEXT NOT NULL, name TEXT NOT NULL,
                   value REAL, PRIMARY KEY (experiment, run_id, name))"""
        )
        conn.executemany(
            "INSERT INTO metrics VALUES (?, ?, ?, ?)",
            [(EXP, "p1_hidden_layer-1_s1", "ssim", 0.75), (EXP, "p1_hidden_layer-1_s1", "clip", None)],
        )
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()

    with ResultsStore(root) as store:
        assert store.metric_values(EXP) == [
            MetricValue("p1_hidden_layer-1_s1", "clip", None, 1, {}, None),
            MetricValue("p1_hidden_layer-1_s1", "ssim", 0.75, 1, {}, None),
        ]
        # Values from before image hashes (schema 4) are of no known image: never shown, computed again.
        assert store.runs(EXP)[0]["metrics"] == {}
        # The migrated value has no params: a pass recomputes it (under the current version) instead of trusting it.
        report = MetricsPass(store).run(EXP, specs("ssim"))
        assert report.computed == {"ssim": 6}
        assert stored(store, "ssim")["p1_hidden_layer-1_s1"] == approx(
            pixel.ssim(image(store, "p1_hidden_layer-1_s1"), image(store, "p1_hidden_layer-2_s1"))
        )
    with sqlite3.connect(root / DB_NAME) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 5
        columns = [row[1] for row in conn.execute("PRAGMA table_info(metrics)")]
        assert {"version", "params", "computed_at"} <= set(columns)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'metrics_v1'").fetchone() == (0,)
    conn.close()


# --------------------------------------------------------------------------- 8. image hashes and one pass at a time


def test_an_image_changed_on_disk_is_reported_and_nothing_that_reads_it_is_stored(store: ResultsStore) -> None:
    runs = hidden_layer_runs()
    populate(store, definition(hidden_layer_axis()), runs)
    changed, reference = "p1_hidden_layer-1_s1", "p1_hidden_layer-2_s2"
    for run_id in (changed, reference):  # a pixel moved behind the store's back
        pixels = pixel.load_rgb(image(store, run_id)).copy()
        pixels[0, 0] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(image(store, run_id))
    report = MetricsPass(store).run(EXP, specs())
    assert report.changed_on_disk == {run_id: str(image(store, run_id)) for run_id in sorted((changed, reference))}
    (line,) = [note for note in report.notes if "changed on disk" in note]
    assert changed in line and reference in line and "--force" in line
    # Nothing stored for the changed runs, nor for the runs whose reference is one of them (the -1 and -3 of seed
    # 2 compare with -2 of seed 2), nor for the diversity of a changed run's seed group-mate.
    keys = {(v.run_id, v.name) for v in store.metric_values(EXP)}
    assert not {run_id for run_id, _ in keys} & {changed, reference}
    for run_id in ("p1_hidden_layer-1_s2", "p1_hidden_layer-3_s2"):
        assert not {name for rid, name in keys if rid == run_id} & set(REFERENCE)
    assert not {name for rid, name in keys if rid == "p1_hidden_layer-1_s2"} & set(DIVERSITY)
    check_against(store, {"p1_hidden_layer-3_s1": "p1_hidden_layer-2_s1"})  # the rest is scored as usual
    assert report.computed["mad"] == 2  # -2 and -3 of seed 1


def test_an_image_changed_after_the_check_fails_its_batch_and_stores_nothing(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    real = MetricsPass._changed_on_disk
    target = image(store, "p1_hidden_layer-3_s2")

    def check_then_change(self: MetricsPass, *args: Any) -> dict[str, str]:
        found = real(self, *args)
        Image.fromarray(noise("later")).save(target)  # written between the check and the decode
        return found

    monkeypatch.setattr(MetricsPass, "_changed_on_disk", check_then_change)
    with pytest.raises(LlmDitError, match=f"image {target} changed on disk during the metrics pass"):
        MetricsPass(store).run(EXP, specs())
    assert store.metric_values(EXP) == []  # one batch (BATCH runs): nothing of it stored


@pytest.mark.parametrize(
    ("regenerated", "compared"),
    [("p1_hidden_layer-1_s1", set()), ("p1_hidden_layer-2_s1", {"p1_hidden_layer-1_s1", "p1_hidden_layer-3_s1"})],
    ids=["a run", "a reference run"],
)
def test_regenerating_one_run_recomputes_exactly_the_values_that_read_its_image(
    store: ResultsStore, regenerated: str, compared: set[str]
) -> None:
    runs = hidden_layer_runs(seeds=(1, 2, 3))
    populate(store, definition(hidden_layer_axis()), runs)
    MetricsPass(store).run(EXP, specs())
    before = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
    # Made again with other pixels under the same run id (``compared``: the runs whose reference it is).
    Image.fromarray(noise("again")).save(image(store, regenerated))
    store.mark_done(EXP, regenerated, image_path=f"{regenerated}.png", token_count=5, record={})
    assert stored(store, "mad").keys() == {r.run_id for r in runs} - {regenerated} - compared
    report = MetricsPass(store).run(EXP, specs())
    # Its own values, the reference values of the runs compared with it, and the diversity of the other seeds of
    # its condition (they compare with it too); nothing else.
    prefix = regenerated.rsplit("_s", 1)[0]
    mates = {f"{prefix}_s{seed}" for seed in (1, 2, 3)} - {regenerated}
    assert report.computed == {**dict.fromkeys(REFERENCE, 1 + len(compared)), **dict.fromkeys(DIVERSITY, 3)}
    after = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
    redone = {key for key in after if after[key] != before[key]}
    want = {(regenerated, name) for name in WEIGHT_FREE} | {(m, n) for m in mates for n in DIVERSITY}
    assert redone == want | {(run_id, name) for run_id in compared for name in REFERENCE}
    check_against(store, {run_id: "p1_hidden_layer-2_s1" for run_id in {regenerated, *compared}})


def test_runs_made_before_image_hashes_are_scored_as_found_and_said_unverified(store: ResultsStore) -> None:
    runs = hidden_layer_runs()
    populate(store, definition(hidden_layer_axis()), runs)
    MetricsPass(store).run(EXP, specs("mad"))
    with sqlite3.connect(store.db_path) as conn:  # as a schema 3 database migrated to 4 holds them
        conn.execute("UPDATE runs SET image_sha256 = NULL, image_hash_origin = NULL")
        conn.execute("UPDATE metrics SET image_sha256 = NULL")
    conn.close()
    assert stored(store, "mad") == {}  # values of no known image
    report = MetricsPass(store).run(EXP, specs("mad"))
    assert report.computed == {"mad": 6} and report.unverified == 6
    (line,) = [note for note in report.notes if "unverified" in note]
    assert "6 done runs" in line and "--force" in line
    found = {r["run_id"]: (r["image_sha256"], r["image_hash_origin"]) for r in store.runs(EXP)}
    assert found == {r.run_id: (file_sha256(image(store, r)), "found") for r in runs}
    again = MetricsPass(store).run(EXP, specs("mad"))
    assert again.computed == {"mad": 0} and again.kept == {"mad": 6} and again.unverified == 6


def test_a_second_pass_on_the_same_experiment_is_refused(store: ResultsStore) -> None:
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    busy = f"metrics of experiment '{EXP}' .* are being computed by another"
    with ResultsStore(store.root) as other, other.metrics_lock(EXP), pytest.raises(LlmDitError, match=busy):
        MetricsPass(store).run(EXP, specs())
    assert store.metric_values(EXP) == []
    with pytest.raises(LlmDitError, match="no experiment 'missing'"):
        MetricsPass(store).run("missing", specs())
    assert not (store.root / "missing").exists()  # refused before any lock file is made


def test_a_pass_hashes_each_file_it_adopts_once(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of runs made before image hashes are hashed when adopted, not checked again in the same pass
    (read_image still checks the bytes it decodes)."""
    runs = hidden_layer_runs()
    populate(store, definition(hidden_layer_axis()), runs)
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("UPDATE runs SET image_sha256 = NULL, image_hash_origin = NULL")
    conn.close()
    hashed: list[str] = []
    real = compute.file_sha256

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(compute, "file_sha256", counting)
    report = MetricsPass(store).run(EXP, specs("mad"))
    assert report.computed == {"mad": 6} and report.unverified == 6
    assert sorted(hashed) == sorted(image(store, r).name for r in runs)  # once each


def test_a_pass_fingerprints_each_setting_s_weights_once(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The weights' fingerprint is what model-based values depend on: taken once per pass, not once per plan."""
    populate(store, definition(hidden_layer_axis()), hidden_layer_runs())
    weights = tmp_path / "lpips.pth"
    weights.write_bytes(b"stand-in weights")
    keys: list[str] = []
    real = compute.weights_key

    def counting(path: str | Path) -> str:
        keys.append(str(path))
        return real(path)

    class Distance:
        def distance(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> list[float]:
            return [0.5] * len(a)

        def unload(self) -> None:
            pass

    monkeypatch.setattr(compute, "weights_key", counting)
    monkeypatch.setattr(MetricsPass, "_model", lambda self, spec: Distance())
    settings = compute.MetricsSettings(lpips_backbone=str(weights))
    report = MetricsPass(store, settings).run(EXP, specs("lpips", "diversity_lpips"))
    assert sum(report.computed.values()) > 0
    assert keys == [str(weights)]
