"""Set-level metrics (FID, KID) of an experiment: which sets are compared, every refusal before a network loads,
the values against llm_dit.metrics.distribution on the same features, and set_metrics.csv."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming, file_sha256
from llm_dit.metrics.distribution import kid
from llm_dit.metrics.sets import SET_METRICS_NAME, compute_sets, plan_sets, set_metrics_pass


def _png(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return file_sha256(path)


def build(root: Path, seeds: Sequence[int] = (1, 2, 3)) -> None:
    """'sets': axes x (x0, x1, x2) and y (y0, y1), prompt p1, the given seeds; every run done with its own PNG."""
    store = ResultsStore(root)
    store.start_experiment("sets", "sets", {"axes": [{"name": "x"}, {"name": "y"}]}, {})
    plan = [
        PlannedRun(f"r{seed}{x}{y}", "p1", "a prompt", seed, {"x": f"x{x}", "y": f"y{y}"})
        for seed in seeds
        for x in range(3)
        for y in range(2)
    ]
    store.plan_runs("sets", plan)
    (root / "sets").mkdir(exist_ok=True)
    for i, run in enumerate(plan):
        sha = _png(root / "sets" / f"{run.run_id}.png", i)
        store.mark_done(
            "sets", run.run_id, image_path=f"{run.run_id}.png", image_sha256=sha, timing=RunTiming(0.1, 1),
            token_count=1, record={},
        )  # fmt: skip
    store.close()


def _runs(root: Path) -> list[dict]:
    with ResultsStore(root, read_only=True) as store:
        return store.runs("sets")


def test_against_a_label_pairs_each_condition_with_the_same_other_axes(tmp_path: Path) -> None:
    build(tmp_path)
    plan = plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", against={"x": "x0"})
    pairs = [(c.images.label, c.reference.label, len(c.images.paths)) for c in plan.comparisons]
    assert pairs == [
        ("x=x1,y=y0", "x=x0,y=y0", 3), ("x=x1,y=y1", "x=x0,y=y1", 3),
        ("x=x2,y=y0", "x=x0,y=y0", 3), ("x=x2,y=y1", "x=x0,y=y1", 3),
    ]  # fmt: skip
    first = plan.comparisons[0]
    assert sorted(p.name for p in first.images.paths) == ["r110.png", "r210.png", "r310.png"]
    assert sorted(p.name for p in first.reference.paths) == ["r100.png", "r200.png", "r300.png"]
    # KID's subset size defaults to the smallest set (3 < 1000), and says so.
    assert plan.subset_size == 3 and any("subset size 3" in note for note in plan.notes)
    both = plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", against={"x": "x0", "y": "y1"})
    assert [(c.images.label, c.reference.label) for c in both.comparisons][:2] == [
        ("x=x0,y=y0", "x=x0,y=y1"), ("x=x1,y=y0", "x=x0,y=y1")
    ]  # fmt: skip


def test_a_folder_is_every_condition_s_reference(tmp_path: Path) -> None:
    build(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"{i}.png", 100 + i)
    (folder / "notes.txt").write_text("not an image")
    plan = plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", folder=folder, subset_size=2)
    assert len(plan.comparisons) == 6
    assert all(c.reference.label == f"folder {folder}" and len(c.reference.paths) == 4 for c in plan.comparisons)
    assert plan.subset_size == 2 and not plan.notes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"against": {"z": "z0"}}, r"--against z=z0: experiment 'sets' has no axis 'z'; axes: x, y"),
        ({"against": {"x": "x9"}}, r"axis 'x' has no done runs with value 'x9'.*values: x0, x1, x2"),
        ({}, r"needs one reference set: --against AXIS=LABEL .* or --against-folder DIR"),
        (
            {"against": {"x": "x0"}, "subset_size": 4},
            r"subset size 4 needs at least 4 images per set.*at most 3",
        ),
        ({"against": {"x": "x0"}, "subset_size": 1}, r"subset size must be at least 2"),
        ({"against": {"x": "x0"}, "subsets": 0}, r"at least 1 subset"),
        ({"folder": Path("nowhere")}, r"--against-folder nowhere is not a directory"),
    ],
)
def test_refusals(tmp_path: Path, kwargs: dict, message: str) -> None:
    build(tmp_path)
    with pytest.raises(LlmDitError, match=message):
        plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", **kwargs)


def test_fid_refuses_sets_below_the_covariance_rank_before_loading(tmp_path: Path) -> None:
    build(tmp_path)
    with pytest.raises(LlmDitError, match=r"FID needs at least 2049 images per set .* set 'x=x1,y=y0' has 3"):
        plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "fid", against={"x": "x0"})
    with pytest.raises(LlmDitError, match=r"unknown set-level metric 'kd' \(did you mean 'kid'\?\)"):
        plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kd", against={"x": "x0"})


def test_a_changed_image_is_refused(tmp_path: Path) -> None:
    build(tmp_path)
    _png(tmp_path / "sets" / "r100.png", 999)
    with pytest.raises(LlmDitError, match=r"image r100\.png of run r100 changed on disk since written"):
        plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", against={"x": "x1"})


def _mean_colour(paths: Sequence[Path]) -> np.ndarray:
    """A stand-in feature map for the bookkeeping tests (the network is tests/test_inception.py's): per-channel
    means and stds of each image."""
    out = []
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        out.append([*array.mean(axis=(0, 1)), *array.std(axis=(0, 1))])
    return np.asarray(out)


def test_values_are_distribution_s_on_the_same_features_and_the_csv_keeps_other_rows(tmp_path: Path) -> None:
    build(tmp_path)
    runs, output = _runs(tmp_path), tmp_path / "sets" / SET_METRICS_NAME
    plan = plan_sets("sets", runs, ["x", "y"], tmp_path / "sets", "kid", against={"x": "x0"}, subsets=7, seed=3)
    rows = compute_sets(plan, _mean_colour, resize="antialias", weights="w1", output=output)
    for row, comparison in zip(rows, plan.comparisons, strict=True):
        expected = kid(_mean_colour(comparison.images.paths), _mean_colour(comparison.reference.paths), 3, 7, 3)
        assert (row["value"], row["std"]) == (expected.mean, expected.std)
    other = plan_sets("sets", runs, ["x", "y"], tmp_path / "sets", "kid", against={"y": "y0"}, subsets=7)
    compute_sets(other, _mean_colour, resize="antialias", weights="w1", output=output)
    again = compute_sets(plan, _mean_colour, resize="antialias", weights="w1", output=output)  # replaces its rows
    with open(output, newline="", encoding="utf-8") as handle:
        stored = list(csv.DictReader(handle))
    assert len(stored) == len(rows) + len(other.comparisons) == 4 + 3
    by_key = {(r["condition"], r["reference"]): r for r in stored}
    assert float(by_key[("x=x1,y=y0", "x=x0,y=y0")]["value"]) == again[0]["value"]
    assert by_key[("x=x1,y=y0", "x=x0,y=y0")]["subset_size"] == "3"
    assert re.fullmatch(r"[0-9a-f]{16}", by_key[("x=x1,y=y0", "x=x0,y=y0")]["images_sha256"])


def test_the_pass_refuses_missing_weights_before_opening_anything(tmp_path: Path) -> None:
    build(tmp_path)
    with pytest.raises(LlmDitError, match=r"kid needs local Inception weights: set inception_weights"):
        set_metrics_pass(tmp_path, "sets", "kid", MetricsSettings(), against={"x": "x0"})
    settings = MetricsSettings(inception_weights=str(tmp_path / "none.pth"))
    with pytest.raises(LlmDitError, match=r"inception: weights file .*none\.pth not found; set inception_weights"):
        set_metrics_pass(tmp_path, "sets", "kid", settings, against={"x": "x0"})
    (tmp_path / "w.pth").write_bytes(b"x")
    settings = MetricsSettings(inception_weights=str(tmp_path / "w.pth"))
    with pytest.raises(LlmDitError, match=r"no experiment 'nope'"):
        set_metrics_pass(tmp_path, "nope", "kid", settings, against={"x": "x0"})


def test_the_command_on_the_tiny_model_s_results(
    tiny_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: `metrics look --set-metric kid --against shift=2.0` with the real (ported) Inception network on
    seeded random weights; each value is distribution.kid of the features the same network gives each image."""
    import shutil

    import torch

    from cli_helpers import run
    from llm_dit.metrics.inception import InceptionFeatures
    from test_inception import random_inception_state

    root = tmp_path / "results"
    shutil.copytree(tiny_results, root, ignore=shutil.ignore_patterns("*.db-shm"))
    weights = tmp_path / "inception.pth"
    torch.save(random_inception_state(0), weights)
    config = tmp_path / "config.toml"
    # batch_size 1: every image through the network alone, so the direct computation below is the same one.
    config.write_text(f'[default.metrics]\ninception_weights = "{weights}"\ndevice = "cpu"\nbatch_size = 1\n')
    before = (root / "results.db").read_bytes()
    argv = [
        "metrics",
        "look",
        "--output-dir",
        root,
        "--config",
        config,
        "--set-metric",
        "kid",
        "--against",
        "shift=2.0",
    ]
    rc, out, err = run(capsys, *argv, "--kid-subsets", "5")
    assert rc == 0, err
    assert "subset size 6" in err and "wrote" in err and SET_METRICS_NAME in err and "kid of each condition" in out
    with open(root / "look" / SET_METRICS_NAME, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert (root / "results.db").read_bytes() == before  # the store is only read
    runs = [r for r in _look_runs(root) if r["status"] == "done"]
    network = InceptionFeatures.from_weights(weights, device="cpu", batch_size=1)
    paths = [root / "look" / r["image_path"] for r in runs]
    features = dict(zip(paths, network.features(paths), strict=True))  # each image alone (batch 1), as the pass
    assert len(rows) == 4  # shift 3.0 and 6.0, each at two layers, against shift 2.0 at the same layer
    for row in rows:
        shift, layer = (part.split("=", 1)[1] for part in row["condition"].split(",", 1))
        members = [r for r in runs if r["variables"] == {"shift": shift, "layer": layer}]
        reference = [r for r in runs if r["variables"] == {"shift": "2.0", "layer": layer}]
        assert row["reference"] == f"shift=2.0,layer={layer}" and int(row["n"]) == len(members) == 6
        a = np.stack([features[root / "look" / r["image_path"]] for r in members])
        b = np.stack([features[root / "look" / r["image_path"]] for r in reference])
        expected = kid(a, b, 6, 5, 0)
        assert float(row["value"]) == expected.mean and float(row["std"]) == expected.std
        assert (row["resize"], row["subsets"], row["subset_size"]) == ("antialias", "5", "6")


def _look_runs(root: Path) -> list[dict]:
    with ResultsStore(root, read_only=True) as store:
        return store.runs("look")


def test_the_report_shows_the_stored_rows(tmp_path: Path) -> None:
    from llm_dit.analysis.report import set_metrics_section
    from llm_dit.analysis.results import load_experiment

    build(tmp_path)
    results = load_experiment(tmp_path, "sets")
    assert set_metrics_section(results) == []
    plan = plan_sets("sets", _runs(tmp_path), ["x", "y"], tmp_path / "sets", "kid", against={"x": "x0"}, subsets=7)
    output = tmp_path / "sets" / SET_METRICS_NAME
    rows = compute_sets(plan, _mean_colour, resize="tf1", weights="w1", output=output)
    text = "\n".join(set_metrics_section(results))
    assert "## Set-level metrics" in text
    first = rows[0]
    assert "| `kid` | `x=x1,y=y0` | `x=x0,y=y0` | 3/3 |" in text
    assert f"{first['value']:.4g}" in text and "`subset 3 x 7`" in text and "`tf1`" in text
