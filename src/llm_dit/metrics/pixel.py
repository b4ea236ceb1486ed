"""Weight-free image metrics between two images: SSIM, PSNR, mean absolute difference, and ``1 - SSIM`` as a
distance for diversity. Pure functions over 8-bit RGB arrays; no model, no torch.

SSIM is scikit-image's implementation with the settings of Wang et al. (2004): an 11x11 Gaussian window with
sigma 1.5, population covariances, K1 = 0.01, K2 = 0.03, data range 255, averaged over the RGB channels. It is
never replaced by a proxy: without scikit-image the metric refuses to run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from llm_dit.errors import LlmDitError

DATA_RANGE = 255.0
# SSIM needs its 11x11 Gaussian window (the window is 2 * truncate * sigma + 1 = 11 pixels wide).
MIN_SSIM_SIDE = 11

ImageLike = np.ndarray | Image.Image | str | Path


def load_rgb(image: ImageLike) -> np.ndarray:
    """An 8-bit RGB array ``[H, W, 3]`` from a path, a PIL image or an array (uint8 RGB or RGBA)."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return np.asarray(opened.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise LlmDitError(f"cannot read image {image}: {exc}") from exc
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise LlmDitError(f"expected an 8-bit RGB array [H, W, 3], got {array.dtype} {tuple(array.shape)}")
    return array[..., :3]


def same_size_pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_rgb(a), load_rgb(b)
    if x.shape != y.shape:
        raise LlmDitError(
            f"images differ in size ({x.shape[1]}x{x.shape[0]} vs {y.shape[1]}x{y.shape[0]}); "
            "compare images generated at the same width and height"
        )
    return x, y


def ssim(a: ImageLike, b: ImageLike) -> float:
    """Structural similarity in [-1, 1] (1 = identical), Wang et al.'s Gaussian-window SSIM over RGB."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # never silently fall back to a proxy
        raise LlmDitError("SSIM needs scikit-image: pip install scikit-image") from exc
    x, y = same_size_pair(a, b)
    if min(x.shape[:2]) < MIN_SSIM_SIDE:
        raise LlmDitError(f"SSIM needs images of at least {MIN_SSIM_SIDE}x{MIN_SSIM_SIDE} pixels, got {x.shape[:2]}")
    return float(
        structural_similarity(
            x,
            y,
            channel_axis=2,
            data_range=DATA_RANGE,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def mean_abs_diff(a: ImageLike, b: ImageLike) -> float:
    """Mean absolute difference in 8-bit levels (0 = identical, 255 = black vs white)."""
    x, y = same_size_pair(a, b)
    return float(np.abs(x.astype(np.int16) - y.astype(np.int16)).mean())


def psnr(a: ImageLike, b: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(255^2 / MSE)``; ``inf`` for identical images."""
    x, y = same_size_pair(a, b)
    mse = float(((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def ssim_distance(a: ImageLike, b: ImageLike) -> float:
    """``1 - SSIM``: 0 for identical images, larger for more different ones."""
    return 1.0 - ssim(a, b)
