"""A reference that means something for speed studies (issue 15): the step and shift built-ins plan the converged
solution of the same ODE (50 steps at shift 3.0, the baseline ``converged_50``, ``reference = true``) for each prompt
and seed, the reference metrics compare every run with it, and the Pareto plot leaves it out of its points and says
which reference and which timing it uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import flat, run
from llm_dit.analysis.plots import pareto_points
from llm_dit.analysis.results import load_experiment
from llm_dit.config import Settings
from llm_dit.errors import ConfigError
from llm_dit.experiments.loader import get_experiment, load_experiment_file
from llm_dit.experiments.planner import plan
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.store import ResultsStore

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

SPEED_STUDIES = ("shift_steps_grid", "steps_only", "shift_sweep")


@pytest.mark.parametrize("name", SPEED_STUDIES)
def test_speed_builtins_plan_the_converged_run_as_every_runs_reference(name: str) -> None:
    exp = get_experiment(name)
    assert exp.baseline is not None and exp.baseline.label == "converged_50" and exp.baseline_is_reference
    assert exp.to_dict()["reference"] == {axis.name: "converged_50" for axis in exp.axes}
    runs = plan(exp, [Prompt("p", "a cat")], [42], Settings(), model_fingerprint="fp")
    first, *grid = runs
    assert set(first.variables.values()) == {"converged_50"}
    assert (first.params["steps"], first.params["shift"]) == (50, 3.0)
    assert all(r.params["steps"] < 50 for r in grid) and len(grid) == exp.combination_count() - 1


def _write(tmp_path: Path, baseline: str) -> Path:
    path = tmp_path / "speed.toml"
    path.write_text(
        'name = "speed"\nseeds = [1]\n[prompts]\nids = ["animal_001"]\n'
        f"{baseline}\n"
        '[[axes]]\nname = "steps"\nvalues = [2, 3]\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("baseline", "needle"),
    [
        ('[baseline]\nlabel = "converged"\nsteps = 6\nreference = "yes"', 'reference = "yes" must be true or false'),
        ('[baseline]\nlabel = "converged"\nreference = true', "sets no parameter"),
    ],
)
def test_bad_reference_flags_are_refused(tmp_path: Path, baseline: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_experiment_file(_write(tmp_path, baseline))


def test_runs_are_compared_with_the_converged_run_and_the_pareto_plot_says_so(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = _write(tmp_path, '[baseline]\nlabel = "converged"\nsteps = 6\nreference = true')
    results = tmp_path / "results"
    argv = ("ablate", "--experiment-file", toml, "--model-path", tiny_checkpoint, "--output-dir", results)
    argv += ("--set", "width=16", "--set", "height=16", "--compute-metrics", "--metric", "ssim,mad")
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    with ResultsStore(results, read_only=True) as store:
        runs = {r["run_id"]: r for r in store.runs("speed")}
        values = store.metric_values("speed")
    (converged,) = [r for r in runs.values() if r["variables"] == {"steps": "converged"}]
    assert converged["params"]["steps"] == 6
    for value in values:
        assert value.params["reference"] == f"run:{converged['run_id']}"
        if value.run_id == converged["run_id"] and value.name == "mad":
            assert value.value == 0.0
    data = pareto_points(load_experiment(results, "speed"), "ssim")
    assert [p.label for p in data.points] == ["steps=2", "steps=3"]  # the reference is not a point
    assert any("against each prompt and seed's 'converged' run (steps=6)" in note for note in data.notes)
    rc, _, err = run(capsys, "plot", "speed", "--kind", "pareto", "-m", "ssim", "--output-dir", results,
                       "-o", tmp_path / "p.png")  # fmt: skip
    assert rc == 0, err
    assert "'converged' run (steps=6), the experiment's reference" in flat(err)
    # Without reference = true the axes' defaults decide, as before: here no value of steps is the default
    plain = _write(tmp_path, '[baseline]\nlabel = "converged"\nsteps = 6')
    assert "reference" not in load_experiment_file(plain).to_dict()
