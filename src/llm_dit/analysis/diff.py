"""Pixel differences between two images of one size, as pictures: pure numpy functions on uint8 RGB arrays.

Three pictures of "what changed between A and B":

- ``highlight``: A in grey (ITU-R 601 luma, as PIL's "L" mode) with every changed pixel painted red; a pixel is
  changed when any channel differs by more than ``threshold`` 8-bit levels.
- ``absolute``: ``|A - B|`` per channel (times ``gain``, clipped to 255): black where equal.
- ``heatmap``: the per-pixel mean of ``|A - B|`` over channels, divided by its maximum over the image, through
  the ``inferno`` colour map (black = equal, pale yellow = the largest difference in this pair). The scale is
  per pair, so read it with ``DiffStats.max_mean_diff``.

Used by ``llm-dit compare --mode diff`` and the web viewer's diff overlay, so both show the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from llm_dit.errors import LlmDitError

DIFF_MODES: tuple[str, ...] = ("highlight", "absolute", "heatmap")
DEFAULT_THRESHOLD = 8  # 8-bit levels: above JPEG-like noise, below any visible change
HIGHLIGHT_RGB = (255, 0, 0)
HEATMAP_CMAP = "inferno"


@dataclass(frozen=True)
class DiffStats:
    """Numbers that go with a diff picture."""

    max_abs_diff: int  # the largest channel difference, 0..255
    mean_abs_diff: float  # mean over pixels and channels (the 'mad' metric)
    max_mean_diff: float  # the largest per-pixel mean over channels: the heatmap's top colour
    changed_fraction: float  # share of pixels with a channel difference above the threshold
    threshold: int


def check_mode(mode: str) -> str:
    if mode not in DIFF_MODES:
        raise LlmDitError(f"diff mode {mode!r} is not valid; use one of: {', '.join(DIFF_MODES)}")
    return mode


def abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` per channel as int16 (no uint8 wrap-around). Both HxWx3 uint8 of one size."""
    for name, image in (("A", a), ("B", b)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise LlmDitError(f"image {name} must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    if a.shape != b.shape:
        raise LlmDitError(
            f"images differ in size ({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}); "
            "a pixel diff needs two images of one size"
        )
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def changed_mask(a: np.ndarray, b: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """HxW bool: pixels where any channel differs by more than ``threshold``."""
    return abs_diff(a, b).max(axis=2) > threshold


def luma(image: np.ndarray) -> np.ndarray:
    """HxW uint8 grey, exactly as PIL's ``convert("L")``: (R*19595 + G*38470 + B*7471 + 2**15) >> 16."""
    rgb = image.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


@cache
def heatmap_lut() -> np.ndarray:
    """256x3 uint8: the inferno colour map sampled at 256 levels."""
    from matplotlib import colormaps

    return colormaps[HEATMAP_CMAP].resampled(256)(np.arange(256), bytes=True)[:, :3].copy()


def check_diff_params(mode: str, threshold: int, gain: float) -> None:
    """The one check of a diff request (compare and the viewer call it before loading images)."""
    check_mode(mode)
    if not 0 <= threshold <= 255:
        raise LlmDitError(f"--threshold must be 0..255 (8-bit levels), got {threshold}")
    if not (gain > 0 and math.isfinite(gain)):
        raise LlmDitError(f"--gain must be a finite number > 0, got {gain}")


def diff_stats(a: np.ndarray, b: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> DiffStats:
    return _stats(abs_diff(a, b), threshold)


def diff_image(
    a: np.ndarray, b: np.ndarray, mode: str = "highlight", threshold: int = DEFAULT_THRESHOLD, gain: float = 1.0
) -> np.ndarray:
    """The diff picture of A and B (HxWx3 uint8) in ``mode`` (see the module docstring)."""
    return diff_with_stats(a, b, mode, threshold, gain)[0]


def diff_with_stats(
    a: np.ndarray, b: np.ndarray, mode: str = "highlight", threshold: int = DEFAULT_THRESHOLD, gain: float = 1.0
) -> tuple[np.ndarray, DiffStats]:
    """The diff picture and its numbers from one ``|A - B|``."""
    check_diff_params(mode, threshold, gain)
    diff = abs_diff(a, b)
    stats = _stats(diff, threshold)
    if mode == "absolute":
        return np.clip(np.rint(diff * gain), 0, 255).astype(np.uint8), stats
    if mode == "heatmap":
        per_pixel = diff.mean(axis=2)
        top = per_pixel.max()
        index = np.zeros(per_pixel.shape, np.int64) if top == 0 else np.rint(per_pixel / top * 255).astype(np.int64)
        return heatmap_lut()[index], stats
    out = np.repeat(luma(a)[..., None], 3, axis=2)
    out[diff.max(axis=2) > threshold] = HIGHLIGHT_RGB
    return out, stats


def _stats(diff: np.ndarray, threshold: int) -> DiffStats:
    return DiffStats(
        max_abs_diff=int(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_mean_diff=float(diff.mean(axis=2).max()),
        changed_fraction=float((diff.max(axis=2) > threshold).mean()),
        threshold=threshold,
    )
