"""The read-only view of results that compare, view and plot share: dimensions, filters, --values parsing, and a
store opened read-only that cannot write."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from llm_dit.analysis.results import (
    CUSTOM_CATEGORY,
    PROMPT,
    SEED,
    dimension_value,
    list_experiments,
    load_experiment,
    parse_filters,
    parse_values,
)
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DB_NAME, PlannedRun, ResultsStore, RunTiming
from llm_dit.files import write_atomic

EXP = "grid"


def build(root: Path) -> ResultsStore:
    """prompts animal_001 + custom_001, axes think ('', 'a,b', 'none') x steps (4, 8), seeds 7 and 3 (in that
    order); every run done except (custom_001, think='none', steps=8, seed 3), which failed."""
    store = ResultsStore(root)
    definition = {"axes": [{"name": "think"}, {"name": "steps"}]}
    store.start_experiment(EXP, "a test grid", definition, {})
    runs = []
    for prompt in ("animal_001", "custom_001"):
        for think in ("", "a,b", "none"):
            for steps in ("4", "8"):
                for seed in (7, 3):
                    run_id = f"{prompt}-{len(runs)}"
                    runs.append(PlannedRun(run_id, prompt, f"text of {prompt}", seed, {"think": think, "steps": steps}))
    store.plan_runs(EXP, runs)
    for run in runs:
        if (run.prompt_id, run.variables["think"], run.variables["steps"], run.seed) == ("custom_001", "none", "8", 3):
            store.mark_failed(EXP, run.run_id, "boom")
            continue
        write_atomic(store.experiment_dir(EXP) / f"{run.run_id}.png", b"png")
        store.mark_done(
            EXP, run.run_id, image_path=f"{run.run_id}.png", timing=RunTiming(1.0, 1), token_count=3, record={}
        )
    store.add_metrics(EXP, runs[0].run_id, {"ssim": 0.5})
    store.close()
    return store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    build(tmp_path / "results")
    return tmp_path / "results"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dimensions_in_planned_order(root: Path) -> None:
    results = load_experiment(root, EXP)
    assert results.axes == ["think", "steps"]
    assert results.dimensions == {
        PROMPT: ["animal_001", "custom_001"],
        "think": ["", "a,b", "none"],
        "steps": ["4", "8"],
        SEED: ["7", "3"],  # planned order, not sorted
    }
    assert results.metrics == ["ssim"]
    assert results.categories == {"animal_001": "animals", "custom_001": CUSTOM_CATEGORY}
    assert results.counts == {"planned": 0, "done": 23, "failed": 1, "total": 24}
    assert len(results.done()) == 23


def test_select_by_any_dimension(root: Path) -> None:
    results = load_experiment(root, EXP)
    picked = results.select({"think": ["", "a,b"], SEED: ["3"], PROMPT: ["custom_001"]})
    assert [(dimension_value(r, "think"), dimension_value(r, "steps")) for r in picked] == [
        ("", "4"),
        ("", "8"),
        ("a,b", "4"),
        ("a,b", "8"),
    ]
    # The failed run is never selected; a deleted image drops its run too.
    assert results.select({"think": ["none"], SEED: ["3"], PROMPT: ["custom_001"]}) == [
        r for r in results.done() if (r["prompt_id"], r["variables"]["think"], r["seed"]) == ("custom_001", "none", 3)
    ]
    assert len(results.select({"think": ["none"], SEED: ["3"], PROMPT: ["custom_001"]})) == 1
    victim = results.select({"think": ["none"], SEED: ["3"], PROMPT: ["custom_001"]})[0]
    (root / EXP / victim["image_path"]).unlink()
    assert results.select({"think": ["none"], SEED: ["3"], PROMPT: ["custom_001"]}) == []


def test_unknown_dimension_or_value_is_named(root: Path) -> None:
    results = load_experiment(root, EXP)
    with pytest.raises(LlmDitError, match=r"no dimension 'thnik' \(did you mean 'think'\?\); dimensions: prompt"):
        results.select({"thnik": ["a"]})
    with pytest.raises(LlmDitError, match=r"steps has no value '5'.*values: '4', '8'"):
        results.select({"steps": ["5"]})
    with pytest.raises(LlmDitError, match=r"no experiment 'gird' .*did you mean 'grid'"):
        load_experiment(root, "gird")


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["-1,-2"], ["-1", "-2"]),
        ([",none"], ["", "none"]),
        (['"-2:0.7,-5:0.3",-2'], ["-2:0.7,-5:0.3", "-2"]),
        (['""'], [""]),
        ([""], [""]),
        (["a", "b,a"], ["a", "b"]),  # repeatable; duplicates dropped, first order kept
        (None, []),
    ],
)
def test_parse_values(items: list[str] | None, expected: list[str]) -> None:
    assert parse_values(items) == expected


def test_parse_values_refuses_a_broken_quote() -> None:
    with pytest.raises(LlmDitError, match="double quotes"):
        parse_values(['"a,b'])


def test_parse_filters() -> None:
    assert parse_filters(["steps=4,8", "think=", 'think="a,b"']) == {"steps": ["4", "8"], "think": ["", "a,b"]}
    with pytest.raises(LlmDitError, match="DIMENSION=VALUES"):
        parse_filters(["steps"])


def test_list_experiments_status(root: Path) -> None:
    (summary,) = list_experiments(root)
    assert (summary.name, summary.status, summary.counts["done"], summary.counts["failed"]) == (EXP, "failed", 23, 1)


def test_read_only_store_cannot_write(root: Path) -> None:
    before = digest(root / DB_NAME)
    store = ResultsStore(root, read_only=True)
    assert len(store.runs(EXP)) == 24
    for attempt in (
        lambda: store.finish_experiment(EXP, {}),
        lambda: store.mark_failed(EXP, store.runs(EXP)[0]["run_id"], "x"),
        lambda: store.add_metrics(EXP, store.runs(EXP)[0]["run_id"], {"ssim": 1.0}),
        lambda: store.export(EXP),
        lambda: store.lock(EXP).__enter__(),
    ):
        with pytest.raises(LlmDitError, match="read-only"):
            attempt()
    # Even raw SQL through its connection is refused by SQLite (mode=ro).
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._connection().execute("DELETE FROM runs")
    store.close()
    assert digest(root / DB_NAME) == before
    assert not (root / EXP / ".lock").exists()


def test_read_only_store_needs_an_existing_database(tmp_path: Path) -> None:
    with pytest.raises(LlmDitError, match=r"no results database .*--output-dir"):
        ResultsStore(tmp_path / "nowhere", read_only=True)
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_read_only_store_refuses_an_old_schema(root: Path) -> None:
    conn = sqlite3.connect(root / DB_NAME)
    conn.execute("UPDATE schema_version SET version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(LlmDitError, match=r"schema version 1, this llm-dit reads versions 2 to 5.*llm-dit metrics"):
        ResultsStore(root, read_only=True)


def test_runs_of_earlier_plans_are_left_out_unless_asked(root: Path) -> None:
    store = ResultsStore(root)
    replanned = [r for r in store.runs(EXP) if r["prompt_id"] == "animal_001"]
    store.plan_runs(
        EXP, [PlannedRun(r["run_id"], r["prompt_id"], r["prompt_text"], r["seed"], r["variables"]) for r in replanned]
    )
    store.close()
    results = load_experiment(root, EXP)
    assert results.dimensions[PROMPT] == ["animal_001"]
    assert len(results.done()) == 12
    assert load_experiment(root, EXP, earlier_plans=True).dimensions[PROMPT] == ["animal_001", "custom_001"]
    (summary,) = list_experiments(root)
    assert summary.counts == {"planned": 0, "done": 12, "failed": 0, "total": 12}
