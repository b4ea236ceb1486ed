"""Weight-free artifact metrics: ``grid_artifact`` (a periodic pattern at the DiT's patch period, from the image's own
spectrum) and ``color_shift`` (how far the colours moved from a reference). Pure functions over 8-bit RGB arrays
(numpy and scikit-image); no model, no torch. docs/metrics.md gives the definitions and what they miss.

grid_artifact
    A DiT that decodes patch by patch can leave a faint tile pattern whose period is its patch size in pixels. A
    pattern of period ``p`` px in both directions is a sum of the 2-D frequencies ``(kx / p, ky / p)`` cycles/px
    (its *lattice*), so the metric compares the power at each lattice frequency with the power of the frequencies
    around it, which a natural image fills smoothly:

    1. luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (Rec. 601 luma of the 8-bit values), minus its mean;
    2. a separable periodic Hann window (the DFT-even one: a frequency on a bin leaks into its two neighbours only);
    3. the power spectrum ``P = |FFT2(window * Y)|^2`` (full, both signs of each frequency);
    4. for each lattice point ``q = (kx, ky) != (0, 0)``, ``kx, ky`` in ``-ceil(p/2)+1 .. floor(p/2)`` (every
       harmonic below Nyquist and, for even ``p``, the Nyquist one: a tile can hold a one-pixel alternation), at the
       nearest bin ``c = (round(kx W / p), round(ky H / p))``:
       ``E_q`` = the sum of ``P`` over the 3 x 3 bins around ``c`` (all of an on-bin tone's power, most of another's);
       ``B_q`` = the median of ``P`` over the other bins within ``r = min(8, floor(min(W, H) / p / 2))`` bins of
       ``c`` (Chebyshev distance; at most half the lattice spacing, so no other lattice point's block is among them);
       ``R_q = E_q / (9 max(B_q / ln 2, F))``: a periodogram bin of a locally smooth spectrum is exponentially
       distributed, whose mean is its median / ln 2, so ``R_q`` is the block's power over what its neighbourhood
       predicts (about 1 without a pattern); ``F = (0.299^2 + 0.587^2 + 0.114^2) / 12 * sum(window^2)`` is the mean
       power per bin of 8-bit rounding noise, below which an 8-bit image holds nothing;
    5. ``grid_artifact = mean over q of max(0, log10 R_q)``: the excess power at the lattice in decades, averaged
       over the lattice points (``p^2 - 1`` of them; a point and its mirror image ``-q``, of equal power, both count).

    It is 0 when no lattice frequency stands out (without a pattern the clipping leaves a small positive floor,
    ~0.05-0.1) and grows with the pattern's amplitude. A fixed pattern stands out more in a larger image (its power
    is concentrated in one bin, the image's spread over more), so compare images of one size. Sides of at least
    ``MIN_PERIODS`` periods are needed: neighbouring lattice points then lie >= 4 bins apart and leave each one
    neighbours that belong to no lattice block.

color_shift
    Per CIE Lab channel (scikit-image's ``rgb2lab``, D65, 2 degree observer, of sRGB values in [0, 1]) the 1-D earth
    mover's (Wasserstein-1) distance between the two images' distributions of that channel over their pixels,
    averaged over L, a and b, in Lab units. For images of equal size it is exact: ``mean(|sort(x) - sort(y)|)``.
"""

from __future__ import annotations

import math

import numpy as np

from llm_dit.errors import LlmDitError
from llm_dit.metrics.pixel import ImageLike, load_rgb, same_size_pair

# The DiT's patch in pixels: the VAE downsamples by 8 and the transformer patchifies 2 x 2 latents.
PATCH_PERIOD_PX = 16
# Sides of at least 4 periods: lattice points >= 4 bins apart, so each has neighbours outside every 3 x 3 block.
MIN_PERIODS = 4
# Neighbourhood half-width in bins: wide enough for a stable median (up to 17 x 17 - 9 bins), narrow enough that
# a natural image's power (falling like 1/f^2) is about constant over it.
NEIGHBOURHOOD_BINS = 8
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601
_EXPONENTIAL_MEDIAN = math.log(2.0)  # median / mean of an exponential distribution


def min_side(period: int = PATCH_PERIOD_PX) -> int:
    """The smallest width and height :func:`grid_artifact` accepts for ``period``."""
    return MIN_PERIODS * period


def _hann(n: int) -> np.ndarray:
    """The periodic (DFT-even) Hann window of ``n`` samples."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def lattice_scores(image: ImageLike, period: int = PATCH_PERIOD_PX) -> tuple[np.ndarray, np.ndarray]:
    """The harmonics ``ks`` of a ``period``-pixel grid and each lattice point's ``max(0, log10 R_q)`` (module
    docstring) as an array ``[ky, kx]`` over ``ks x ks``, NaN at DC: which harmonics of the grid stand out."""
    if not isinstance(period, int) or isinstance(period, bool) or period < 2:
        raise LlmDitError(f"grid_artifact: the period must be an integer of at least 2 pixels, got {period!r}")
    rgb = load_rgb(image)
    height, width = rgb.shape[:2]
    smallest = min_side(period)
    if min(height, width) < smallest:
        raise LlmDitError(
            f"grid_artifact needs images of at least {smallest}x{smallest} pixels ({MIN_PERIODS} periods of "
            f"{period} px), got {width}x{height}"
        )
    luma = rgb.astype(np.float64) @ LUMA
    luma -= luma.mean()
    window_h, window_w = _hann(height), _hann(width)
    power = np.abs(np.fft.fft2(luma * np.outer(window_h, window_w))) ** 2
    # The mean power per bin of 8-bit rounding noise (uniform, variance 1/12 per channel, independent): an 8-bit
    # image holds nothing below it, and a synthetic neighbourhood of exact zeros would make any peak infinite.
    floor = float(LUMA @ LUMA) / 12.0 * float(window_h @ window_h) * float(window_w @ window_w)

    # The lattice's bins, with the spectrum's wrap-around. A neighbourhood reaches at most half the lattice spacing
    # (itself >= 4 bins) from its point, short of the next point's 3 x 3 block (DC's too): only its own is left out.
    ks = np.arange(-((period - 1) // 2), period // 2 + 1)
    rows = np.rint(ks * height / period).astype(int) % height
    cols = np.rint(ks * width / period).astype(int) % width
    radius = min(NEIGHBOURHOOD_BINS, min(height, width) // period // 2)  # >= 2: MIN_PERIODS
    offsets = np.arange(-radius, radius + 1)
    near = np.abs(offsets) <= 1
    around_mask = ~np.outer(near, near)
    scores = np.full((ks.size, ks.size), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            if ks[i] == 0 and ks[j] == 0:
                continue
            rr, cc = (row + offsets) % height, (col + offsets) % width
            around = power[np.ix_(rr, cc)]
            peak = float(around[np.ix_(near, near)].sum())
            expected = 9.0 * max(float(np.median(around[around_mask])) / _EXPONENTIAL_MEDIAN, floor)
            scores[i, j] = max(0.0, math.log10(peak / expected)) if peak > 0.0 else 0.0
    return ks, scores


def grid_artifact(image: ImageLike, period: int = PATCH_PERIOD_PX) -> float:
    """Excess spectral power at the harmonics of a ``period``-pixel grid over their neighbourhoods, in decades,
    averaged over the lattice points (module docstring): 0 = no grid stands out, larger = a stronger grid."""
    return float(np.nanmean(lattice_scores(image, period)[1]))


def color_shift(a: ImageLike, b: ImageLike) -> float:
    """Mean over CIE L, a, b of the earth mover's distance between the two images' channel distributions, in Lab
    units (0 = the same colours, in any arrangement). The images must have the same size, like every reference
    metric."""
    from skimage.color import rgb2lab

    x, y = same_size_pair(a, b)
    lab_x = rgb2lab(x.astype(np.float64) / 255.0).reshape(-1, 3)
    lab_y = rgb2lab(y.astype(np.float64) / 255.0).reshape(-1, 3)
    # Equal sample sizes: the optimal transport matches the i-th smallest to the i-th smallest.
    per_channel = np.abs(np.sort(lab_x, axis=0) - np.sort(lab_y, axis=0)).mean(axis=0)
    return float(per_channel.mean())
