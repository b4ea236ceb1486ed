"""The metrics pass takes the default reference and the replace rules from what the results store holds for the
experiment's plan (``store.PlanDefaults``), never from the defaults of the code that runs it.

Stores are populated by hand as the runner stores an experiment, with constant images so every MAD is a level
difference: a run compared with itself gives 0, with the other shift's image |a - b|.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llm_dit.metrics
import metrics_helpers
from import_scan import imports, top
from llm_dit.config import Settings
from llm_dit.experiments.loader import get_experiment
from llm_dit.experiments.planner import REPLACES, default_params
from llm_dit.experiments.runner import ExperimentRunner
from llm_dit.experiments.store import LEGACY_PLAN_DEFAULTS, PlanDefaults, ResultsStore
from llm_dit.metrics.compute import MetricsPass
from llm_dit.metrics.registry import METRICS
from metrics_helpers import Run, axis

EXP = "exp"
SIZE = 16
MAD = [METRICS["mad"]]
# As a plan made by a future llm-dit whose default shift is 5.0 would store them.
FUTURE = PlanDefaults({**LEGACY_PLAN_DEFAULTS.params, "shift": 5.0}, dict(LEGACY_PLAN_DEFAULTS.replaces))
LEVELS = {"3.0": 10, "5.0": 40}  # shift label -> the constant grey level of its image


def populate(
    store: ResultsStore,
    axes: dict[str, Any],
    runs: Mapping[str, tuple[dict[str, Any], int]],
    defaults: PlanDefaults | None,
) -> None:
    """Start the experiment (with ``defaults`` stored, or none as before plans stored them) and mark ``runs``
    (label -> (params, grey level)) done, one prompt and seed; run ids are "p_<axis><label>_s1"."""
    definition = {"name": EXP, "description": "", "seeds": [1], "prompts": {}, "base": {}, "axes": [axes]}
    planned = [
        Run("p", 1, {axes["name"]: label}, params, image=np.full((SIZE, SIZE, 3), level, np.uint8))
        for label, (params, level) in runs.items()
    ]
    metrics_helpers.populate(store, EXP, planned, definition=definition, defaults=defaults)


def run_params(defaults: PlanDefaults, **changes: Any) -> dict[str, Any]:
    return {**defaults.params, "width": SIZE, "height": SIZE, "seed": 1, **changes}


def shift_store(root: Path, defaults: PlanDefaults | None) -> ResultsStore:
    store = ResultsStore(root)
    base = defaults or LEGACY_PLAN_DEFAULTS
    runs = {label: (run_params(base, shift=float(label)), level) for label, level in LEVELS.items()}
    populate(store, axis("shift", [(label, {"shift": float(label)}) for label in LEVELS]), runs, defaults)
    return store


def mads(store: ResultsStore) -> dict[str, float | None]:
    return {value.run_id: value.value for value in store.metric_values(EXP)}


def test_the_default_reference_is_the_stored_default_not_todays(tmp_path: Path):
    assert FUTURE.params["shift"] != default_params()["shift"]  # else this test would prove nothing
    store = shift_store(tmp_path, FUTURE)
    assert store.plan_defaults(EXP) == FUTURE
    report = MetricsPass(store).run(EXP, MAD)
    assert report.reference == "shift=5.0"
    assert mads(store) == {"p_shift3.0_s1": 30.0, "p_shift5.0_s1": 0.0}
    assert not any("planned before plans stored their defaults" in note for note in report.notes)


def test_a_store_without_stored_defaults_uses_the_legacy_ones_and_says_so(tmp_path: Path):
    store = shift_store(tmp_path, None)
    assert store.plan_defaults(EXP) is LEGACY_PLAN_DEFAULTS and not LEGACY_PLAN_DEFAULTS.stored
    report = MetricsPass(store).run(EXP, MAD)
    assert report.reference == "shift=3.0"
    assert mads(store) == {"p_shift3.0_s1": 0.0, "p_shift5.0_s1": 30.0}
    assert any("planned before plans stored their defaults" in note for note in report.notes)


@pytest.mark.parametrize(("replaces", "compared"), [({"layer_weights": ("hidden_layer",)}, True), ({}, False)])
def test_the_stored_replace_rules_decide_which_runs_compare(tmp_path: Path, replaces, compared):
    """An axis setting only layer_weights: its blend run has hidden_layer None, the default run -2. They compare
    only if the stored rules say layer_weights replaces hidden_layer (else hidden_layer is a fixed parameter that
    differs, as between two plans)."""
    defaults = PlanDefaults(dict(LEGACY_PLAN_DEFAULTS.params), replaces)
    store = ResultsStore(tmp_path)
    blend = {"-2": 0.5, "-5": 0.5}
    runs = {
        "none": (run_params(defaults), 10),
        "mix": (run_params(defaults, layer_weights=blend, hidden_layer=None), 25),
    }
    blend_axis = axis("blend", [("none", {"layer_weights": None}), ("mix", {"layer_weights": blend})])
    populate(store, blend_axis, runs, defaults)
    report = MetricsPass(store).run(EXP, MAD)
    assert report.reference == "blend=none"
    assert mads(store) == ({"p_blendnone_s1": 0.0, "p_blendmix_s1": 15.0} if compared else {"p_blendnone_s1": 0.0})
    assert report.unavailable["mad"] == (0 if compared else 1)


class _NoModels:
    """What the runner reads of a pipeline when every run is already done (nothing to generate)."""

    model_path = "<none>"
    fingerprint = None
    info = None  # no checkpoint configs: the built-in default shift


def test_the_runner_stores_the_defaults_it_planned_with(tmp_path: Path):
    store = ResultsStore(tmp_path)
    experiment = get_experiment("shift_sweep")
    ExperimentRunner(_NoModels(), store).run(experiment, [], Settings())  # type: ignore[arg-type]
    stored = store.plan_defaults(experiment.name)
    assert stored == PlanDefaults(default_params(), dict(REPLACES))
    assert stored.stored


def test_metrics_read_experiments_only_through_the_store():
    """Whatever the planner's defaults or rules become, metrics see only what the store holds."""
    metrics = Path(llm_dit.metrics.__file__).parent
    imported = {name for path in metrics.rglob("*.py") for _, name in imports(path)}
    # Every way in to the experiments layer scans as a name under llm_dit.experiments: "from llm_dit import
    # experiments" as llm_dit.experiments, "from llm_dit.experiments.store import X" as llm_dit.experiments.store.X.
    store = "llm_dit.experiments.store"
    experiments = {name for name in imported if top(name) == "experiments"}
    assert experiments, "the metrics pass no longer reads the store?"
    assert {name for name in experiments if name != store and not name.startswith(f"{store}.")} == set()
