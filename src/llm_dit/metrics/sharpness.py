"""Weight-free detail score of one image: ``sharpness``, the variance of the Laplacian of its luma.

1. luma ``Y = (0.299 R + 0.587 G + 0.114 B) / 255`` of the 8-bit values (Rec. 601, as ``grid_artifact`` reads it),
   in [0, 1];
2. the 3 x 3 four-neighbour Laplacian ``L = Y[i-1, j] + Y[i+1, j] + Y[i, j-1] + Y[i, j+1] - 4 Y[i, j]`` (the
   kernel ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``, scipy.ndimage's ``laplace``) at the interior pixels only, the
   ``(H - 2) x (W - 2)`` of them whose neighbours all exist: no border rule (reflection, zero padding) enters;
3. ``sharpness = mean((L - mean(L))^2)`` over those pixels (the population variance), in (luma units)^2.

Higher means more fine detail: more power at high spatial frequencies, which a Gaussian blur of any width takes away
(the Laplacian's variance is the power spectrum weighted by ``|omega|^4``, and a blur multiplies every frequency's
power by ``exp(-sigma^2 |omega|^2) < 1``). A constant image scores exactly 0. Noise, grain, aliasing and a patch grid
raise it too: it measures detail, not whether the detail is wanted. The Laplacian is linear, so it is taken of each
8-bit channel in integers (exact) and the channels are then combined with the luma weights: the same number as the
Laplacian of the luma, without its rounding.
"""

from __future__ import annotations

import numpy as np

from llm_dit.errors import LlmDitError
from llm_dit.metrics.artifacts import LUMA
from llm_dit.metrics.pixel import ImageLike, load_rgb

# The Laplacian needs a pixel with all four neighbours: at least 3 x 3.
MIN_SIDE = 3


def laplacian_of_luma(image: ImageLike) -> np.ndarray:
    """The 4-neighbour Laplacian of the image's luma in [0, 1] at its interior pixels, ``[H - 2, W - 2]`` float64."""
    from scipy import ndimage

    rgb = load_rgb(image)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise LlmDitError(f"sharpness needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}")
    channels = rgb.astype(np.int32)
    # Integer Laplacian of each channel (exact; values within +-4 x 255), cropped to the interior, where the border
    # mode never reaches; then the luma combination, which commutes with the linear Laplacian.
    per_channel = np.stack([ndimage.laplace(channels[..., c])[1:-1, 1:-1] for c in range(3)], axis=-1)
    return per_channel.astype(np.float64) @ LUMA / 255.0


def sharpness(image: ImageLike) -> float:
    """Variance of the 3 x 3 Laplacian of the luma in [0, 1] over the interior pixels (module docstring): 0 for a
    constant image, higher for more fine detail."""
    return float(np.var(laplacian_of_luma(image)))
