"""``sharpness`` (``llm_dit.metrics.sharpness``): the variance of the 3 x 3 Laplacian of the luma, on a hand
computation, closed forms, real photographs under Gaussian blur, and through the metrics pass (stored, resumable,
versioned)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import metrics_helpers
from bounds import EPS64, worst_case
from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.planner import REPLACES, default_params
from llm_dit.experiments.store import PlanDefaults, ResultsStore, file_sha256
from llm_dit.metrics import sharpness
from llm_dit.metrics.compute import MetricsPass
from llm_dit.metrics.registry import METRICS, select_metrics
from metrics_helpers import Run, axis

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

WEIGHTS = (0.299, 0.587, 0.114)  # Rec. 601 luma, written out (not read from the code)
# Each Laplacian value: the code's is exact in integers, then 3 products and 2 sums of magnitude <= 4 x 255 and a
# division (6 roundings of a value <= 4 in luma units: <= 24 eps64); the reference's luma has <= 6 roundings per pixel
# (<= 6 eps64 each, luma <= 1), combined with weights of total 8 and 4 sums of partial values <= 8 (<= 48 + 32 eps64).
# So the two Laplacians differ by at most DELTA per pixel.
DELTA = (24 + 48 + 32) * EPS64


def variance_tolerance(n: int, variance: float) -> float:
    """How far two float64 evaluations of the variance of ``n`` Laplacian values may differ: each value moved by
    at most DELTA moves mean((L - m)^2) by at most 2 DELTA max|L - m| + DELTA^2 (|L - m| <= 8: L lies in [-4, 4]),
    plus each evaluation's two n-term sums (the mean, the sum of squares), n eps64 relative each."""
    return 2 * DELTA * 8 + DELTA**2 + 2 * 2 * worst_case(n, EPS64) * variance


def by_hand(rgb: np.ndarray) -> float:
    """The definition, written out with loops over pixels in float64."""
    height, width = rgb.shape[:2]
    luma = [[sum(WEIGHTS[c] * float(rgb[i, j, c]) for c in range(3)) / 255.0 for j in range(width)]
            for i in range(height)]  # fmt: skip
    values = [
        luma[i - 1][j] + luma[i + 1][j] + luma[i][j - 1] + luma[i][j + 1] - 4.0 * luma[i][j]
        for i in range(1, height - 1)
        for j in range(1, width - 1)
    ]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


@pytest.mark.parametrize(("height", "width"), [(5, 7), (3, 3), (9, 4)])
def test_sharpness_equals_a_hand_computation(height: int, width: int) -> None:
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    want = by_hand(rgb)
    n = (height - 2) * (width - 2)
    assert sharpness.sharpness(rgb) == pytest.approx(want, rel=0, abs=variance_tolerance(n, want))
    if n > 1:  # a random image has detail: far from 0, so a constant result would fail
        assert want > 100 * variance_tolerance(n, want)


def test_sharpness_closed_forms() -> None:
    # One lit pixel in a black 5 x 5 image: on the 3 x 3 interior L = -4 y at the centre, +y at its four
    # neighbours, 0 at the corners; mean 0, variance (16 + 4) y^2 / 9, y its luma.
    for colour in ((255, 255, 255), (255, 0, 0), (0, 0, 255), (10, 200, 30)):
        rgb = np.zeros((5, 5, 3), np.uint8)
        rgb[2, 2] = colour
        y = sum(w * c for w, c in zip(WEIGHTS, colour, strict=True)) / 255.0
        want = 20.0 * y * y / 9.0
        assert sharpness.sharpness(rgb) == pytest.approx(want, rel=0, abs=variance_tolerance(9, want)), colour
    # A linear ramp has a zero Laplacian (exactly, in integers) inside; its borders are never read.
    ramp = np.broadcast_to((np.arange(32) * 8)[None, :, None], (16, 32, 3)).astype(np.uint8)
    assert sharpness.sharpness(ramp) == 0.0


@pytest.mark.parametrize("value", [(0, 0, 0), (7, 7, 7), (255, 255, 255), (200, 30, 60)])
def test_sharpness_of_a_constant_image_is_zero(value: tuple[int, int, int]) -> None:
    assert sharpness.sharpness(np.full((24, 40, 3), value, np.uint8)) == 0.0


# Rounding each blurred channel to 8 bits adds an error e, uniform on [-1/2, 1/2] level and independent between
# pixels and channels, so luma error variance sum(w^2) / 12 / 255^2 and, through the Laplacian (weights 1, 1, 1, 1,
# -4: squares sum to 20), an expected ROUNDING_FLOOR to the variance: the score a blur cannot take away.
ROUNDING_FLOOR = 20 * sum(w * w for w in WEIGHTS) / 12 / 255**2
SIGMAS = (0.0, 0.5, 1.0, 2.0, 4.0)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_sharpness_falls_strictly_with_gaussian_blur(name: str) -> None:
    import skimage.data

    image = getattr(skimage.data, name)().astype(np.float64)  # photographs shipped with scikit-image
    scores = []
    for sigma in SIGMAS:
        blurred = (
            image if sigma == 0 else np.stack([ndimage.gaussian_filter(image[..., c], sigma) for c in range(3)], -1)
        )
        scores.append(sharpness.sharpness(np.clip(np.rint(blurred), 0, 255).astype(np.uint8)))
    n = (image.shape[0] - 2) * (image.shape[1] - 2)
    for sharper, blurrier in itertools.pairwise(scores):
        # Each value is within variance_tolerance of its exact value: a decrease beyond both is a real one ...
        assert sharper - blurrier > variance_tolerance(n, sharper) + variance_tolerance(n, blurrier), scores
        # ... and larger than what 8-bit rounding adds on average, so the blur, not the rounding, makes it.
        assert sharper - blurrier > 3 * ROUNDING_FLOOR, scores
    assert scores[-1] > 0.0


def test_sharpness_refuses_tiny_images_and_reads_paths(tmp_path: Path) -> None:
    with pytest.raises(LlmDitError, match=r"sharpness needs images of at least 3x3 pixels, got 5x2"):
        sharpness.sharpness(np.zeros((2, 5, 3), np.uint8))
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    assert sharpness.sharpness(path) == sharpness.sharpness(rgb)  # the same pixels: the same computation


# ------------------------------------------------------------------------------------------- the pass

EXP = "exp"


def _definition() -> dict[str, Any]:
    """Shaped like ``Experiment.to_dict()``: one hidden_layer axis."""
    values = [(label, {"hidden_layer": int(label)}) for label in ("-1", "-2")]
    return {"name": EXP, "description": "test", "seeds": [], "prompts": {"ids": [], "category": None, "max": None},
            "base": {}, "axes": [axis("hidden_layer", values)], "source": "test"}  # fmt: skip


def _image(layer: str, seed: int) -> np.ndarray:
    """hidden_layer -1: random detail; -2: the same blurred (sigma 2), so it ranks lower."""
    rgb = np.random.default_rng(seed).integers(0, 256, (64, 64, 3)).astype(np.float64)
    if layer == "-2":
        rgb = np.stack([ndimage.gaussian_filter(rgb[..., c], 2.0) for c in range(3)], -1)
    return np.rint(rgb).astype(np.uint8)


def test_sharpness_through_the_pass(tmp_path: Path) -> None:
    params = default_params()
    params.update(width=64, height=64)
    runs = [
        Run("p1", seed, {"hidden_layer": layer}, {**params, "hidden_layer": int(layer)}, image=_image(layer, seed))
        for layer in ("-1", "-2")
        for seed in (1, 2)
    ]
    spec = METRICS["sharpness"]
    assert (spec.kind, spec.setting, spec.higher_is_better, spec.version) == ("image", None, True, 1)
    with ResultsStore(tmp_path / "results") as store:
        metrics_helpers.populate(
            store, EXP, runs, definition=_definition(), defaults=PlanDefaults(default_params(), dict(REPLACES))
        )
        directory = store.experiment_dir(EXP)
        report = MetricsPass(store).run(EXP, [spec])
        assert report.computed == {"sharpness": 4} and report.unavailable == {"sharpness": 0}
        values = {v.run_id: v for v in store.metric_values(EXP) if v.name == "sharpness"}
        for run in runs:
            path = directory / f"{run.run_id}.png"
            assert values[run.run_id].value == sharpness.sharpness(path)  # the same function of the same pixels
            assert values[run.run_id].params == {}  # it depends on the image alone
            assert values[run.run_id].image_sha256 == file_sha256(path)
        by = {row["value"]: row for row in report.summary if row["metric"] == "sharpness"}
        assert by["-1"]["mean"] > by["-2"]["mean"]
        # Resumable: nothing new; a regenerated run gets its value again, nothing else; a new version recomputes all.
        assert MetricsPass(store).run(EXP, [spec]).computed == {"sharpness": 0}
        again = "p1_hidden_layer-1_s1"
        Image.fromarray(_image("-2", 1)).save(directory / f"{again}.png")
        store.mark_done(EXP, again, image_path=f"{again}.png", token_count=5, record={})
        assert MetricsPass(store).run(EXP, [spec]).computed == {"sharpness": 1}
        after = {v.run_id: v.value for v in store.metric_values(EXP) if v.name == "sharpness"}
        assert after[again] == sharpness.sharpness(directory / f"{again}.png") < values[again].value
        assert MetricsPass(store).run(EXP, [dataclasses.replace(spec, version=2)]).computed == {"sharpness": 4}


def test_sharpness_is_in_the_default_set_and_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.cli.metrics import _print_metric_list

    chosen, _ = select_metrics(None, MetricsSettings())  # weight-free: always in a pass without --metric
    assert "sharpness" in {s.name for s in chosen}
    _print_metric_list(MetricsSettings(), "json")
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["sharpness"]["status"] == "ready" and rows["sharpness"]["kind"] == "image"
    assert rows["pickscore"]["status"] == "set pickscore_path" and rows["pickscore"]["kind"] == "text_image"
