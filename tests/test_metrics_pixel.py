"""Weight-free metrics against known values: identical images, constant images (closed-form SSIM), a known
additive distortion (exact MSE, PSNR, MAD), and the Student-t summary against scipy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from llm_dit.errors import LlmDitError
from llm_dit.metrics import pixel
from llm_dit.metrics.summary import summarize, t_interval, write_summary

C1 = (0.01 * 255) ** 2


def _noise(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_identical_images() -> None:
    image = _noise(0)
    assert pixel.ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)
    assert pixel.psnr(image, image) == math.inf
    assert pixel.mean_abs_diff(image, image) == 0.0
    assert pixel.ssim_distance(image, image) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("a", "b"), [(100, 150), (0, 255), (30, 31)])
def test_ssim_of_constant_images_is_the_luminance_term(a: int, b: int) -> None:
    # Constant images have zero variance, so contrast and structure terms are C2/C2 = 1 and
    # SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly (Wang et al. 2004, eq. 13).
    x = np.full((32, 32, 3), a, dtype=np.uint8)
    y = np.full((32, 32, 3), b, dtype=np.uint8)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert pixel.ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_known_additive_distortion() -> None:
    image = np.random.default_rng(1).integers(40, 200, size=(40, 40, 3), dtype=np.uint8)
    offsets = np.random.default_rng(2).choice([-10, 10], size=image.shape)
    distorted = (image.astype(int) + offsets).astype(np.uint8)  # stays inside 0..255 (no clipping) even at 3x
    assert pixel.mean_abs_diff(image, distorted) == pytest.approx(10.0)
    assert pixel.psnr(image, distorted) == pytest.approx(10 * math.log10(255**2 / 100.0))
    # Noise lowers SSIM; more noise lowers it more.
    stronger = (image.astype(int) + 3 * offsets).astype(np.uint8)
    assert 1.0 > pixel.ssim(image, distorted) > pixel.ssim(image, stronger)
    assert pixel.mean_abs_diff(image, stronger) == pytest.approx(30.0)


def test_ssim_is_scikit_image_with_wang_settings() -> None:
    from skimage.metrics import structural_similarity

    a, b = _noise(3), _noise(4)
    expected = structural_similarity(
        a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert pixel.ssim(a, b) == expected
    # ...and not the default uniform 7x7 window, which gives a different number.
    assert pixel.ssim(a, b) != structural_similarity(a, b, channel_axis=2, data_range=255)


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
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["std"] == pytest.approx(np.std(values, ddof=1))
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((low, high))
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
        "generation_time_s": 1.0 + seed,
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
    rows = summarize(runs, ["hidden_layer"], ["ssim", "diversity_ssim", "generation_time_s"], {"diversity_ssim"})
    by = {(r["metric"], r["value"]): r for r in rows}
    assert [r["value"] for r in rows if r["metric"] == "ssim"] == ["-2", "-6"]  # planned order
    assert by["ssim", "-6"]["n"] == 3  # the failed run is left out
    assert by["ssim", "-6"]["mean"] == pytest.approx(0.7)
    # Diversity: one sample per condition (prompt a and b), not per run.
    assert by["diversity_ssim", "-2"]["n"] == 2
    assert by["diversity_ssim", "-2"]["mean"] == pytest.approx(0.3)
    assert ("diversity_ssim", "-6") not in by  # NaN is no value
    assert by["generation_time_s", "-2"]["mean"] == pytest.approx(2.5)
    path = write_summary(rows, tmp_path / "summary.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "metric,axis,value,n,mean,std,ci95_low,ci95_high"
    assert lines[1].startswith("ssim,hidden_layer,-2,4,1.0,0.0,")
