"""Weight-free metrics against known values: identical images, constant images (closed-form SSIM), SSIM against
an independent float64 implementation of Wang et al.'s formula, a known additive distortion (exact MSE, PSNR,
MAD), and the Student-t summary against scipy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from bounds import EPS64
from llm_dit.errors import LlmDitError
from llm_dit.metrics import pixel
from llm_dit.metrics.summary import summarize, t_interval, write_summary

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
# SSIM's rounding bound. Each local moment is a float64 weighted sum of 121 (11x11) terms of at most 255^2, so it
# is off by at most 121 eps 255^2 (~2e-9); a variance or covariance (moment minus product of means) by 3x that.
# The contrast-structure factor (2 s_xy + C2) / (s_x^2 + s_y^2 + C2), in [-1, 1] with a denominator >= C2, then
# moves by at most 2 x (3 x 3 x 121 eps 255^2) / C2 per pixel, the luminance factor by far less; averaging adds
# nothing. Two evaluations compared: twice. About 1.1e-9; the differences seen are ~1e-16.
SSIM_TOL = 2 * 2 * 9 * 121 * EPS64 * 255**2 / C2


def _noise(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _wang_ssim(a: np.ndarray, b: np.ndarray, window: np.ndarray | None = None) -> float:
    """Wang et al. (2004) mean SSIM written out in float64, independently of scikit-image: a normalised 11x11
    Gaussian window of sigma 1.5 (or ``window``), population moments, K1 = 0.01 and K2 = 0.03 of the range 255,
    averaged over the pixels whose window lies inside the image (scikit-image filters the whole image and crops
    the half window, which leaves the same pixels), then over the RGB channels."""
    if window is None:
        r = np.arange(-5, 6, dtype=np.float64)
        g = np.exp(-(r**2) / (2 * 1.5**2))
        window = np.outer(g, g) / np.outer(g, g).sum()

    def local(image: np.ndarray) -> np.ndarray:  # the window's weighted mean around every inside pixel
        views = np.lib.stride_tricks.sliding_window_view(image, window.shape)
        return np.einsum("ijkl,kl->ij", views, window)

    means = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        mx, my = local(x), local(y)
        vx, vy, cxy = local(x * x) - mx * mx, local(y * y) - my * my, local(x * y) - mx * my
        s = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2))
        means.append(s.mean())
    return float(np.mean(means))


def test_identical_images() -> None:
    image = _noise(0)
    assert pixel.ssim(image, image.copy()) == pytest.approx(1.0, rel=0, abs=SSIM_TOL)
    assert pixel.psnr(image, image) == math.inf
    assert pixel.mean_abs_diff(image, image) == 0.0
    assert pixel.ssim_distance(image, image) == pytest.approx(0.0, rel=0, abs=SSIM_TOL)


@pytest.mark.parametrize(("a", "b"), [(100, 150), (0, 255), (30, 31)])
def test_ssim_of_constant_images_is_the_luminance_term(a: int, b: int) -> None:
    # Constant images have zero variance, so contrast and structure terms are C2/C2 = 1 and
    # SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly (Wang et al. 2004, eq. 13).
    x = np.full((32, 32, 3), a, dtype=np.uint8)
    y = np.full((32, 32, 3), b, dtype=np.uint8)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert pixel.ssim(x, y) == pytest.approx(expected, rel=0, abs=SSIM_TOL)


def test_known_additive_distortion() -> None:
    image = np.random.default_rng(1).integers(40, 200, size=(40, 40, 3), dtype=np.uint8)
    offsets = np.random.default_rng(2).choice([-10, 10], size=image.shape)
    distorted = (image.astype(int) + offsets).astype(np.uint8)  # stays inside 0..255 (no clipping) even at 3x
    # Sums of integers, divided by the pixel count: exact. PSNR: a log10 of the exact ratio 650.25 (~1 ulp), x 10.
    assert pixel.mean_abs_diff(image, distorted) == 10.0
    assert pixel.psnr(image, distorted) == pytest.approx(10 * math.log10(255**2 / 100.0), rel=4 * EPS64, abs=0)
    # Noise lowers SSIM; more noise lowers it more (by margins beyond rounding).
    stronger = (image.astype(int) + 3 * offsets).astype(np.uint8)
    slight, strong = pixel.ssim(image, distorted), pixel.ssim(image, stronger)
    assert 1.0 - slight > SSIM_TOL and slight - strong > SSIM_TOL, (slight, strong)
    assert pixel.mean_abs_diff(image, stronger) == 30.0


@pytest.mark.parametrize(("size", "related"), [((48, 48), False), ((23, 31), True)])
def test_ssim_equals_an_independent_implementation_of_wang_et_al(size: tuple[int, int], related: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    if related:  # a blurred, brightened copy: SSIM well away from 0
        smooth = (a.astype(int) + np.roll(a, 1, axis=0) + np.roll(a, 1, axis=1)) // 3
        b = np.clip(smooth + 20, 0, 255).astype(np.uint8)
    else:  # independent noise: SSIM near 0, where cancellation matters most
        b = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = _wang_ssim(a, b)
    assert pixel.ssim(a, b) == pytest.approx(expected, rel=0, abs=SSIM_TOL)
    # The comparison tells windows apart: the code's SSIM is far (> 1000 bounds) from one with scikit-image's
    # default uniform 7x7 window.
    uniform = _wang_ssim(a, b, window=np.full((7, 7), 1 / 49))
    assert abs(pixel.ssim(a, b) - uniform) > 1000 * SSIM_TOL, (pixel.ssim(a, b), uniform)


def test_inputs_paths_pil_and_errors(tmp_path: Path) -> None:
    image = _noise(5)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    rgba = Image.fromarray(image).convert("RGBA")
    assert pixel.mean_abs_diff(path, rgba) == 0.0
    with pytest.raises(LlmDitError, match="differ in size"):
        pixel.ssim(image, _noise(5, size=32))
    with pytest.raises(LlmDitError, match="at least 11x11"):
        pixel.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(LlmDitError, match="cannot read image"):
        pixel.psnr(tmp_path / "missing.png", image)
    with pytest.raises(LlmDitError, match="8-bit RGB"):
        pixel.psnr(image.astype(np.float32), image)


def test_t_interval_matches_scipy() -> None:
    values = [0.61, 0.72, 0.55, 0.80, 0.67]
    got = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["n"] == 5
    # Other summation orders over n = 5 values: (n + 4) eps relative for a mean; a std also loses the
    # cancellation factor 1 + mean^2 / var of its squared deviations (~56 here), and so do the interval ends
    # (mean +- t sem, t from the same scipy function: no further error).
    n, mean, var = len(values), float(np.mean(values)), float(np.var(values, ddof=1))
    rel = (n + 4) * EPS64 * (1 + mean**2 / var)
    assert got["mean"] == pytest.approx(mean, rel=(n + 4) * EPS64, abs=0)
    assert got["std"] == pytest.approx(np.std(values, ddof=1), rel=rel, abs=0)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((low, high), rel=rel, abs=0)
    one = t_interval([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci95_low"])
    assert t_interval([])["n"] == 0


def _run(prompt: str, seed: int, layer: str, metrics: dict[str, float], status: str = "done") -> dict:
    return {
        "prompt_id": prompt,
        "seed": seed,
        "variables": {"hidden_layer": layer},
        "metrics": metrics,
        "status": status,
        "seconds_per_image_batched": 1.0 + seed,
    }


def test_summarize_groups_by_value_and_conditions(tmp_path: Path) -> None:
    runs = [
        _run("a", 1, "-2", {"ssim": 1.0, "diversity_ssim": 0.4}),
        _run("a", 2, "-2", {"ssim": 1.0, "diversity_ssim": 0.4}),
        _run("b", 1, "-2", {"ssim": 1.0, "diversity_ssim": 0.2}),
        _run("b", 2, "-2", {"ssim": 1.0, "diversity_ssim": 0.2}),
        _run("a", 1, "-6", {"ssim": 0.5}),
        _run("a", 2, "-6", {"ssim": 0.7}),
        _run("b", 1, "-6", {"ssim": 0.9, "diversity_ssim": float("nan")}),
        _run("b", 2, "-6", {"ssim": 0.1}, status="failed"),
    ]
    metrics = ["ssim", "diversity_ssim", "seconds_per_image_batched"]
    rows = summarize(runs, ["hidden_layer"], metrics, {"diversity_ssim"})
    by = {(r["metric"], r["value"]): r for r in rows}
    assert [r["value"] for r in rows if r["metric"] == "ssim"] == ["-2", "-6"]  # planned order
    assert by["ssim", "-6"]["n"] == 3  # the failed run is left out
    assert by["ssim", "-6"]["mean"] == pytest.approx(0.7)
    # Diversity: one sample per condition (prompt a and b), not per run.
    assert by["diversity_ssim", "-2"]["n"] == 2
    assert by["diversity_ssim", "-2"]["mean"] == pytest.approx(0.3)
    assert ("diversity_ssim", "-6") not in by  # NaN is no value
    assert by["seconds_per_image_batched", "-2"]["mean"] == pytest.approx(2.5)
    path = write_summary(rows, tmp_path / "summary.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "metric,axis,value,n,mean,std,ci95_low,ci95_high"
    assert lines[1].startswith("ssim,hidden_layer,-2,4,1.0,0.0,")
