"""The artifact metrics (``llm_dit.metrics.artifacts``) on synthetic images with planted patterns of known amplitude,
and both through the metrics pass on a small stored experiment.

``grid_artifact``: natural-like images (a colour gradient, a field with a 1/f amplitude spectrum, hard-edged discs;
each from a seeded numpy Generator) with a 16 px tile added at amplitudes 0..16 levels rank by amplitude; clean
images stay under a bound derived from the statistic's null distribution; tiles of another period raise only the
lattice points they share with the 16 px grid; a grid in chroma alone is not seen (a documented blind spot).
``color_shift``: constant images against an independent sRGB -> CIE Lab conversion, a two-colour case by hand,
scipy's Wasserstein distance, a planted colour cast, symmetry, and its blindness to where colours are.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import stats

import metrics_helpers
from bounds import EPS64
from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.planner import REPLACES, default_params
from llm_dit.experiments.store import PlanDefaults, ResultsStore, file_sha256
from llm_dit.metrics import artifacts
from llm_dit.metrics.compute import MetricsPass
from llm_dit.metrics.registry import METRICS, select_metrics
from metrics_helpers import Run, axis

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

SIZE = 256
AMPLITUDES = (0, 1, 2, 4, 8, 16)  # 8-bit levels: the tile's values are amplitude x uniform(-1, 1)
# Null bound of grid_artifact, derived. Without a pattern a lattice point's ratio R = E / expected has mean ~1; its
# block sums 9 bins whose powers, under the periodic Hann window, correlate like rho^2 with rho = -2/3 for
# neighbours and 1/6 two bins apart (per axis, separable): Var(E) / E[E]^2 = (sum over block pairs of rho^2) / 81
# = (3 + 16/9 + 1/18)^2 / 81. Doubled for the points on the axes and at Nyquist, whose block holds mirror-image
# (conjugate, equal-power) bins, plus the median's relative variance ~ 1 / (n ln^2 2) <= 0.01 over its >= 200
# neighbours. Then E[max(0, log10 R)] <= E[(R - 1)+] / ln 10 <= sd(R) / (2 ln 10) (log R <= R - 1; for a mean-0
# variable E[X+] = E|X| / 2 <= sd / 2): about 0.17, for every point, so for their mean.
_BLOCK_RHO2 = (3 + 2 * 2 * (2 / 3) ** 2 + 2 * (1 / 6) ** 2) ** 2
NULL_BOUND = math.sqrt(2 * _BLOCK_RHO2 / 81 + 0.01) / (2 * math.log(10))
# A pattern of another period p' shares a lattice frequency with the 16 px grid where m / p' = k / 16; for 12 and 20
# px only multiples of 1/4 cycle/px: kx, ky in {0, +-4, 8}, 15 of the 255 points.
SHARED_WITH_12_AND_20 = (0, 4, -4, 8)


# ------------------------------------------------------------------------------------------------ images


def natural(seed: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """A natural-like float RGB image in 8-bit levels (not yet rounded): a colour gradient, a field with a 1/f
    amplitude spectrum (std 30, mostly shared by the channels) and six hard-edged discs of random colour."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    y, x = np.mgrid[0:height, 0:width]
    shared = rng.normal(size=(height, width))
    out = np.empty((height, width, 3))
    for c in range(3):
        spectrum = np.fft.fft2(0.7 * shared + 0.3 * rng.normal(size=(height, width))) / f
        spectrum[0, 0] = 0.0
        field = np.real(np.fft.ifft2(spectrum))
        out[..., c] = 60 + 80 * (rng.uniform() * x / width + rng.uniform() * y / height) + 30 * field / field.std()
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(min(height, width) / 16, min(height, width) / 4)
        out[(y - cy) ** 2 + (x - cx) ** 2 < r * r] += rng.uniform(-50, 50, 3)
    return out


def tile(seed: int, period: int = 16) -> np.ndarray:
    """A random ``period`` x ``period`` tile, values uniform in [-1, 1], the same in R, G and B."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (period, period, 1))


def lines(period: int = 16) -> np.ndarray:
    """A tile of one-pixel lines every ``period`` px, both directions (values 0 and 1)."""
    out = np.zeros((period, period, 1))
    out[0, :] = out[:, 0] = 1.0
    return out


def plant(base: np.ndarray, amplitude: float, pattern: np.ndarray, direction: np.ndarray | None = None) -> np.ndarray:
    """``base`` plus ``amplitude`` x the pattern tiled over it (times an RGB ``direction``), as 8-bit RGB."""
    h, w = base.shape[:2]
    p, q = pattern.shape[:2]
    tiled = np.tile(pattern, (h // p + 1, w // q + 1, 1))[:h, :w]
    added = amplitude * tiled * (np.ones(3) if direction is None else direction)
    return np.clip(np.rint(base + added), 0, 255).astype(np.uint8)


def increasing(values: list[float]) -> bool:
    return all(low < high for low, high in itertools.pairwise(values))


# ------------------------------------------------------------------------------------------ grid_artifact


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_artifact_ranks_planted_tiles_by_amplitude(seed: int) -> None:
    base, pattern = natural(seed), tile(100 + seed)
    scores = [artifacts.grid_artifact(plant(base, a, pattern)) for a in AMPLITUDES]
    assert increasing(scores), scores
    assert scores[0] < NULL_BOUND, scores  # the clean image: nothing stands out
    # From +-4 levels (std 2.3) on, the 256 px grid clears the null bound: it is found, not just ranked.
    assert all(s > NULL_BOUND for a, s in zip(AMPLITUDES, scores, strict=True) if a >= 4), scores


def test_grid_artifact_of_a_pure_tone_by_hand() -> None:
    # A grey image that varies along x with period 8 px (a lattice sub-period of 16), on 64 x 64 px: after 8-bit
    # rounding it is still exactly 8-periodic, so all its power lies on the 16 px lattice bins (c = 8 m, ky = 0) and
    # every neighbourhood bin is 0: each R_q is the block's power over 9 bins of the rounding-noise floor F.
    n = 64
    x = np.arange(n)
    row = np.rint(128 + 40 * np.cos(2 * np.pi * x / 8) + 9 * np.sin(2 * np.pi * 3 * x / 8))
    image = np.repeat(np.broadcast_to(row, (n, n))[..., None], 3, axis=2).astype(np.uint8)
    # The unwindowed 2-D DFT of the mean-free image at column bin c, row bin 0, written out: n sum_x v(x) e^-i...
    centred = row - row.mean()
    alpha = {c: n * complex(np.sum(centred * np.exp(-2j * np.pi * c * x / n))) for c in range(0, n, 8)}
    # The periodic Hann window spreads a bin's amplitude as (-1/4, 1/2, -1/4) along each axis: the 3 x 3 block keeps
    # |alpha|^2 (1/4 + 2/16)^2. F: luma rounding variance times sum(window^2) = (3 n / 8)^2.
    floor = (0.299**2 + 0.587**2 + 0.114**2) / 12 * (3 * n / 8) ** 2
    ks, got = artifacts.lattice_scores(image)
    want = np.full_like(got, np.nan)
    for i, ky in enumerate(ks):
        for j, kx in enumerate(ks):
            if kx == ky == 0:
                continue
            c = (int(kx) * n // 16) % n
            block = abs(alpha[c]) ** 2 * (1 / 4 + 2 / 16) ** 2 if ky == 0 and kx % 2 == 0 else 0.0
            # Where block is 0 the code sees FFT rounding (~1e-20 of |alpha|^2), far below the floor: clipped to 0.
            want[i, j] = max(0.0, math.log10(block / (9 * floor))) if block > 0 else 0.0
    # The two tones (1/8 and 3/8 cycle/px: kx = +-2, +-6) stand out; the rounding's harmonics stay under the floor.
    on_axis = dict(zip(ks.tolist(), want[list(ks).index(0)], strict=True))
    assert all(on_axis[k] > 0 for k in (-6, -2, 2, 6)), on_axis
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)  # NaN at DC in both
    assert artifacts.grid_artifact(image) == pytest.approx(np.nansum(want) / 255, rel=1e-9)


def test_grid_artifact_ranks_thin_lines_and_odd_sizes() -> None:
    base = natural(3)
    scores = [artifacts.grid_artifact(plant(base, a, lines())) for a in AMPLITUDES]
    assert increasing(scores), scores
    # Sides that are no multiple of 16 (the lattice falls between bins) and not square.
    odd = natural(4, height=200, width=136)
    scores = [artifacts.grid_artifact(plant(odd, a, tile(7))) for a in AMPLITUDES]
    assert increasing(scores), scores
    assert scores[0] < NULL_BOUND < scores[-1], scores


def test_grid_artifact_is_near_zero_on_clean_images() -> None:
    for seed in range(10, 16):
        assert 0.0 <= artifacts.grid_artifact(plant(natural(seed), 0, tile(0))) < NULL_BOUND, seed
    for seed in range(3):  # white noise: a flat spectrum, the null case exactly
        noise = np.random.default_rng(seed).normal(128, 20, (SIZE, SIZE, 3))
        assert artifacts.grid_artifact(np.clip(np.rint(noise), 0, 255).astype(np.uint8)) < NULL_BOUND, seed
    # A constant image has no power anywhere: exactly 0 (the rounding-noise floor keeps 0 / 0 away).
    assert artifacts.grid_artifact(np.full((64, 64, 3), 7, np.uint8)) == 0.0


@pytest.mark.parametrize("other", [12, 20])
def test_grid_artifact_ignores_other_periods_but_their_shared_harmonics(other: int) -> None:
    base = natural(5)
    ks, clean = artifacts.lattice_scores(plant(base, 0, tile(0)))
    _, foreign = artifacts.lattice_scores(plant(base, 16, tile(8, other)))
    _, own = artifacts.lattice_scores(plant(base, 16, tile(8, 16)))
    rise = foreign - clean
    shared = np.isin(ks, SHARED_WITH_12_AND_20)
    # A point that does not share a frequency with the foreign pattern never gains a doubling of its power;
    # some shared ones do (the pattern is there, at a frequency the 16 px grid also has).
    assert np.nanmax(rise[~np.outer(shared, shared)]) < math.log10(2), rise
    assert np.nanmax(rise[np.outer(shared, shared)]) > math.log10(2), rise
    # Averaged over the lattice, the foreign pattern moves the score by under a quarter of what the same
    # amplitude at 16 px does (the shared points are 15 of 255: a fully shared 16 px tile would give ~6%).
    assert np.nanmean(rise) < 0.25 * np.nanmean(own - clean), (np.nanmean(rise), np.nanmean(own - clean))


def test_grid_artifact_misses_a_grid_in_chroma_alone() -> None:
    # Documented blind spot: the metric reads luminance. R and G moved against each other with equal luma
    # weight (0.299 x 0.587 / 0.587 - 0.587 x 0.299 / 0.587 = 0) leave luma unchanged up to 8-bit rounding.
    chroma = np.array([1.0, -0.299 / 0.587, 0.0])
    base, pattern = natural(6), tile(9)
    assert artifacts.grid_artifact(plant(base, 16, pattern, chroma)) < NULL_BOUND
    assert artifacts.grid_artifact(plant(base, 16, pattern)) > NULL_BOUND  # the same tile in luminance is seen


def test_grid_artifact_period_parameter_and_refusals(tmp_path: Path) -> None:
    base = natural(7)
    scores = [artifacts.grid_artifact(plant(base, a, tile(3, 8)), period=8) for a in AMPLITUDES]
    assert increasing(scores), scores
    assert artifacts.min_side() == artifacts.MIN_PERIODS * artifacts.PATCH_PERIOD_PX == 64
    smallest = plant(natural(8, 64, 64), 0, tile(0))
    assert 0.0 <= artifacts.grid_artifact(smallest) < math.inf
    path = tmp_path / "x.png"
    Image.fromarray(smallest).save(path)
    assert artifacts.grid_artifact(path) == artifacts.grid_artifact(smallest)
    with pytest.raises(LlmDitError, match=r"at least 64x64 pixels \(4 periods of 16 px\), got 80x63"):
        artifacts.grid_artifact(np.zeros((63, 80, 3), np.uint8))
    for period in (1, 2.5, True):
        with pytest.raises(LlmDitError, match="period must be an integer of at least 2"):
            artifacts.grid_artifact(smallest, period=period)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- color_shift

# scikit-image's sRGB -> XYZ matrix and D65 white (2 degree observer), as published; the conversion below is
# written from the CIE formulas, not through scikit-image.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """CIE Lab of one 8-bit sRGB colour, by the formulas."""
    c = np.array(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    t = (_XYZ_FROM_RGB @ linear) / _D65
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    return np.array([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])


# Lab values are O(100); the formulas evaluated twice (another order, a cube root vs a power) differ by a few ulp
# of that, averaged: 100 x 64 eps is ~1.4e-12, far below any colour difference tested.
LAB_TOL = 100 * 64 * EPS64


def test_color_shift_of_identical_and_rearranged_images_is_zero() -> None:
    image = plant(natural(20, 64, 64), 0, tile(0))
    assert artifacts.color_shift(image, image.copy()) == 0.0
    # Blind spot, by design: a distribution distance does not see where colours are.
    shuffled = np.random.default_rng(0).permutation(image.reshape(-1, 3)).reshape(image.shape)
    assert artifacts.color_shift(image, shuffled) == 0.0
    assert artifacts.color_shift(image, image[::-1, ::-1]) == 0.0


@pytest.mark.parametrize(("one", "two"), [((128, 128, 128), (140, 140, 140)), ((200, 30, 60), (180, 60, 40))])
def test_color_shift_of_constant_images_is_the_mean_lab_difference(one: tuple, two: tuple) -> None:
    # Every pixel moves by the same Lab difference: each channel's distance is |difference|, and the metric
    # their mean (for the grey pair, L moves and a, b stay ~0).
    a, b = np.full((32, 32, 3), one, np.uint8), np.full((32, 32, 3), two, np.uint8)
    expected = float(np.abs(_lab(one) - _lab(two)).mean())
    assert artifacts.color_shift(a, b) == pytest.approx(expected, rel=0, abs=LAB_TOL)


def test_color_shift_two_colour_case_by_hand() -> None:
    # A quarter of the pixels change colour (c2 -> c3), the rest stay c1: in each channel the two distributions
    # differ by a mass of 1/4 moved from c2's value to c3's, a distance of |c2 - c3| / 4 whatever c1 is.
    c1, c2, c3 = (30, 90, 200), (240, 200, 20), (10, 120, 60)
    a = np.full((16, 16, 3), c1, np.uint8)
    b = a.copy()
    a[:4], b[:4] = c2, c3  # rows 0-3: 64 of 256 pixels
    expected = float(np.abs(_lab(c2) - _lab(c3)).mean()) / 4
    assert artifacts.color_shift(a, b) == pytest.approx(expected, rel=0, abs=LAB_TOL)


def test_color_shift_equals_scipy_wasserstein_and_is_symmetric() -> None:
    from skimage.color import rgb2lab

    rng = np.random.default_rng(21)
    a = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 60, a.shape), 0, 255).astype(np.uint8)
    la, lb = (rgb2lab(x / 255.0).reshape(-1, 3) for x in (a, b))
    want = np.mean([stats.wasserstein_distance(la[:, c], lb[:, c]) for c in range(3)])
    # scipy integrates |CDF difference| over 1920 + 1920 sorted values; the code sums |sorted differences|: two
    # float64 sums of ~2000 terms of magnitude <= ~200, relative error <= 2000 eps each.
    assert artifacts.color_shift(a, b) == pytest.approx(want, rel=2 * 2000 * EPS64, abs=0)
    assert artifacts.color_shift(a, b) == artifacts.color_shift(b, a)  # |x - y| sorted both ways: bit for bit
    with pytest.raises(LlmDitError, match="differ in size"):
        artifacts.color_shift(a, b[:, :20])


def test_color_shift_grows_with_a_planted_cast() -> None:
    base = plant(natural(22, 64, 64), 0, tile(0))
    warm = np.array([1.0, 0.3, -0.6])  # a warm cast: red up, blue down
    scores = [artifacts.color_shift(base, plant(base.astype(float), c, np.ones((1, 1, 1)), warm)) for c in AMPLITUDES]
    assert scores[0] == 0.0
    assert increasing(scores), scores


# ------------------------------------------------------------------------------------------- the pass

EXP = "exp"


def _definition(*labels: str) -> dict[str, Any]:
    """Shaped like ``Experiment.to_dict()``: one hidden_layer axis."""
    values = [(label, {"hidden_layer": int(label)}) for label in labels]
    return {"name": EXP, "description": "test", "seeds": [], "prompts": {"ids": [], "category": None, "max": None},
            "base": {}, "axes": [axis("hidden_layer", values)], "source": "test"}  # fmt: skip


def _params(size: int, layer: int) -> dict[str, Any]:
    out = default_params()
    out.update(width=size, height=size, hidden_layer=layer)
    return out


def test_both_metrics_through_the_pass(tmp_path: Path) -> None:
    # hidden_layer -1 carries a planted grid and a warm cast, -2 (the default, so the reference) is clean.
    grid, warm = tile(1), np.array([1.0, 0.3, -0.6])
    images = {seed: natural(30 + seed, 64, 64) for seed in (1, 2)}

    def make(layer: str, seed: int) -> np.ndarray:
        if layer == "-2":
            return plant(images[seed], 0, grid)
        return plant(plant(images[seed], 24, grid).astype(float), 12, np.ones((1, 1, 1)), warm)

    runs = [
        Run("p1", seed, {"hidden_layer": layer}, _params(64, int(layer)), image=make(layer, seed))
        for layer in ("-1", "-2")
        for seed in (1, 2)
    ]
    definition = _definition("-1", "-2")
    names = ["color_shift", "grid_artifact"]
    with ResultsStore(tmp_path / "results") as store:
        metrics_helpers.populate(
            store, EXP, runs, definition=definition, defaults=PlanDefaults(default_params(), dict(REPLACES))
        )
        directory = store.experiment_dir(EXP)
        report = MetricsPass(store).run(EXP, [METRICS[n] for n in names])
        assert report.computed == {"color_shift": 4, "grid_artifact": 4}
        values = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
        for run in runs:
            path = directory / f"{run.run_id}.png"
            ref = directory / f"p1_hidden_layer-2_s{run.seed}.png"
            grid_value = values[(run.run_id, "grid_artifact")]
            assert grid_value.value == artifacts.grid_artifact(path)  # the same function of the same pixels
            assert grid_value.params == {"period_px": artifacts.PATCH_PERIOD_PX}
            assert grid_value.image_sha256 == file_sha256(path)
            shift = values[(run.run_id, "color_shift")]
            assert shift.value == artifacts.color_shift(path, ref)
            assert shift.params["reference"] == f"run:p1_hidden_layer-2_s{run.seed}"
        assert values[("p1_hidden_layer-2_s1", "color_shift")].value == 0.0
        by = {(row["metric"], row["value"]): row for row in report.summary}
        for name in names:  # the summary ranks the planted condition above the clean one
            assert by[(name, "-1")]["mean"] > by[(name, "-2")]["mean"], name
        # Resumable: nothing new; a regenerated run (clean now) gets both of its values again, nothing else.
        assert MetricsPass(store).run(EXP, [METRICS[n] for n in names]).computed == {
            "color_shift": 0,
            "grid_artifact": 0,
        }
        again = "p1_hidden_layer-1_s1"
        Image.fromarray(make("-2", 1)).save(directory / f"{again}.png")
        store.mark_done(EXP, again, image_path=f"{again}.png", token_count=5, record={})
        report = MetricsPass(store).run(EXP, [METRICS[n] for n in names])
        assert report.computed == {"color_shift": 1, "grid_artifact": 1}
        after = {(v.run_id, v.name): v.value for v in store.metric_values(EXP)}
        assert after[(again, "color_shift")] == 0.0  # now the same image as its reference
        assert after[(again, "grid_artifact")] < values[(again, "grid_artifact")].value


def test_images_too_small_for_the_grid_have_no_value(tmp_path: Path) -> None:
    runs = [Run("p1", seed, {"hidden_layer": "-2"}, _params(32, -2), image=plant(natural(seed, 32, 32), 0, tile(0)))
            for seed in (1, 2)]  # fmt: skip
    definition = _definition("-2")
    with ResultsStore(tmp_path / "results") as store:
        metrics_helpers.populate(
            store, EXP, runs, definition=definition, defaults=PlanDefaults(default_params(), dict(REPLACES))
        )
        report = MetricsPass(store).run(EXP, [METRICS["grid_artifact"], METRICS["mad"]])
        assert report.unavailable == {"grid_artifact": 2, "mad": 0}
        assert report.computed == {"grid_artifact": 0, "mad": 2}
    from llm_dit.cli.metrics import _unavailable_why

    assert _unavailable_why(METRICS["grid_artifact"]) == "images smaller than 64x64 px"


def test_registry_kinds_and_the_default_set() -> None:
    assert (METRICS["color_shift"].kind, METRICS["grid_artifact"].kind) == ("reference", "image")
    assert not METRICS["color_shift"].higher_is_better and not METRICS["grid_artifact"].higher_is_better
    chosen, _ = select_metrics(None, MetricsSettings())  # weight-free: always in a pass without --metric
    assert {"color_shift", "grid_artifact"} <= {spec.name for spec in chosen}
    assert [s.name for s in select_metrics(["grid_artifact", "color_shift"], MetricsSettings())[0]] == [
        "grid_artifact",
        "color_shift",
    ]
