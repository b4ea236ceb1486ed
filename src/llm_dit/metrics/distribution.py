"""Set-level distribution metrics over feature arrays: the Fréchet distance (FID's formula) and the unbiased KID.

These are the parts of FID and KID that need no network: each takes two ``[n, d]`` arrays of image features (one
row per image; for FID/KID proper, the 2048-dim pool3 features of the TF-ported Inception-v3,
``weights-inception-2015-12-05``, computed by :mod:`llm_dit.metrics.inception`) and returns one number for the pair
of sets. :mod:`llm_dit.metrics.sets` pairs an experiment's sets and runs the size checks here before any network
loads; the weights-file check lives here too, so that path imports no torch.

- ``frechet_distance(mean1, cov1, mean2, cov2)``: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, the squared
  2-Wasserstein distance between two Gaussians (Dowson & Landau 1982), in float64. ``Tr (S1 S2)^(1/2)`` is taken as
  the sum of the square roots of the eigenvalues of the symmetric ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``, so
  the same eigenvalues), which are real and >= 0 for covariances: no complex parts to drop, as ``scipy.linalg.sqrtm``
  of the non-symmetric product leaves.
- ``fid(features_a, features_b)``: the Fréchet distance of the sets' sample means and covariances (ddof = 1, as
  pytorch-fid, torch-fidelity and torchmetrics). Each set needs at least ``d + 1`` rows (``fid_min_samples``): a
  sample covariance of ``n`` rows has rank at most ``n - 1``, so below ``d + 1`` it is singular and the distance is
  dominated by the estimate's bias, not by the images. Above it FID is still biased upwards, by roughly
  ``c / n`` (Chong & Forsyth 2020): compare FIDs of sets of the same size only.
- ``kid(features_a, features_b, subset_size, subsets, seed)``: the Kernel Inception Distance of Bińkowski et al.
  (2018) as torch-fidelity and torchmetrics compute it: ``subsets`` times, draw ``subset_size`` rows of each set
  without replacement, take the unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``;
  report the mean and the population std (ddof = 0, as both libraries) of those values. The estimator is
  unbiased for any subset size >= 2 (it divides by ``m (m - 1)``), so KID suits small sets where FID does not;
  each set needs at least ``subset_size`` rows. The subsets come from ``numpy.random.default_rng(seed)``: the
  same inputs and seed give the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_dit.errors import LlmDitError

# The features FID and KID are defined on: pool3 of the TF-ported Inception-v3 (2015-12-05 graph).
INCEPTION_FEATURE_DIM = 2048
# torch-fidelity's FID Inception weights (its v0.2.0 release asset), which llm_dit.metrics.inception loads.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FIX = (
    f"set inception_weights in [default.metrics] (or [PROFILE.metrics]) to torch-fidelity's {INCEPTION_WEIGHTS_FILE}"
)
# The libraries' defaults (torch-fidelity's kid_subset_size / kid_subsets, torchmetrics' subset_size / subsets).
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
# The unbiased MMD^2 averages over pairs of distinct rows of a subset: it needs two.
KID_MIN_SUBSET_SIZE = 2


def fid_min_samples(dim: int) -> int:
    """The fewest rows per set for which a ``dim``-dimensional sample covariance can have full rank."""
    return dim + 1


def check_fid_sizes(sizes: Mapping[str, int], dim: int = INCEPTION_FEATURE_DIM) -> None:
    """Refuse sets (name -> image count) too small for a ``dim``-dim FID (see the module docstring); cheap, so
    it runs before any network loads as well as in :func:`fid`."""
    need = fid_min_samples(dim)
    small = [f"{name!r} has {n}" for name, n in sizes.items() if n < need]
    if small:
        raise LlmDitError(
            f"FID needs at least {need} images per set for {dim}-dim features (a sample covariance of n images has "
            f"rank <= n - 1, so fewer give a singular covariance and a number dominated by bias): set "
            f"{' and set '.join(small)}; generate more images per set, or use kid, which is unbiased for small sets"
        )


def check_kid_sizes(sizes: Mapping[str, int], subset_size: int, subsets: int) -> None:
    """Refuse a KID of sets (name -> image count) smaller than ``subset_size``, or a subset size below 2."""
    if subset_size < KID_MIN_SUBSET_SIZE:
        raise LlmDitError(
            f"KID's subset size must be at least {KID_MIN_SUBSET_SIZE} (the unbiased estimator averages over pairs "
            f"of distinct images), got {subset_size}; pass a subset size of 2 or more"
        )
    if subsets < 1:
        raise LlmDitError(f"KID needs at least 1 subset, got {subsets}; pass subsets of 1 or more")
    small = [f"{name!r} has {n}" for name, n in sizes.items() if n < subset_size]
    if small:
        raise LlmDitError(
            f"KID with subset size {subset_size} needs at least {subset_size} images per set (subsets are drawn "
            f"without replacement): set {' and set '.join(small)}; pass a subset size of at most "
            f"{min(sizes.values())} (and at least {KID_MIN_SUBSET_SIZE}), or generate more images"
        )


def _features(features: object, name: str) -> np.ndarray:
    """The set as a float64 ``[n, d]`` array, or a one-line error naming the set."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise LlmDitError(
            f"set {name!r}: features must be a 2-D array of shape [images, dims], got shape {array.shape}; "
            "pass one feature row per image"
        )
    if not np.all(np.isfinite(array)):
        raise LlmDitError(f"set {name!r}: features contain NaN or inf; recompute the features of that set")
    return array


def _pair(features_a: object, features_b: object) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(features_a, "a"), _features(features_b, "b")
    if a.shape[1] != b.shape[1]:
        raise LlmDitError(
            f"the two sets have features of different sizes ({a.shape[1]} and {b.shape[1]}); compute both sets' "
            "features with the same network and layer"
        )
    return a, b


@dataclass(frozen=True)
class GaussianStats:
    """Sample mean and covariance (ddof = 1) of one set's features, and how many rows they came from."""

    mean: np.ndarray  # [d]
    cov: np.ndarray  # [d, d]
    n: int


def feature_stats(features: object, name: str = "a") -> GaussianStats:
    """Mean and sample covariance (ddof = 1) of ``[n, d]`` features, in float64; needs n >= 2."""
    array = _features(features, name)
    n = array.shape[0]
    if n < 2:
        raise LlmDitError(f"set {name!r} has {n} image(s); a covariance needs at least 2")
    mean = array.mean(axis=0)
    centred = array - mean
    cov = centred.T @ centred / (n - 1)
    return GaussianStats(mean, (cov + cov.T) / 2, n)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding
    are taken as 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean1: object, cov1: object, mean2: object, cov2: object) -> float:
    """``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^(1/2)`` in float64 (>= 0: a negative rounding residue of
    identical inputs is returned as 0)."""
    m1, m2 = np.asarray(mean1, dtype=np.float64), np.asarray(mean2, dtype=np.float64)
    s1, s2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise LlmDitError(
            f"frechet_distance needs means of shape [d] and covariances of shape [d, d] of one d; got "
            f"{m1.shape}, {s1.shape}, {m2.shape}, {s2.shape}"
        )
    root1 = _sqrt_psd((s1 + s1.T) / 2)
    middle = root1 @ ((s2 + s2.T) / 2) @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * trace_sqrt
    return max(value, 0.0)


def fid(features_a: object, features_b: object) -> float:
    """The Fréchet distance between the sample Gaussians of two feature sets (FID when the features are Inception
    pool3's); refuses a set with fewer than ``d + 1`` rows (see the module docstring)."""
    a, b = _pair(features_a, features_b)
    check_fid_sizes({"a": len(a), "b": len(b)}, a.shape[1])
    first, second = feature_stats(a, "a"), feature_stats(b, "b")
    return frechet_distance(first.mean, first.cov, second.mean, second.cov)


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    """``(x y^T / d + coef) ^ degree``, KID's kernel (gamma = 1 / d, as Bińkowski et al. and both libraries)."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 of two equal-sized samples: the mean of ``k(x_i, x_j)`` and of ``k(y_i, y_j)`` over pairs
    ``i != j``, minus twice the mean of ``k(x_i, y_j)`` over all ``m^2`` pairs (torch-fidelity's and torchmetrics'
    estimator)."""
    m = x.shape[0]
    k_xx = polynomial_kernel(x, x, degree, coef)
    k_yy = polynomial_kernel(y, y, degree, coef)
    k_xy = polynomial_kernel(x, y, degree, coef)
    off_diagonal = (k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))
    return float(off_diagonal / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


@dataclass(frozen=True)
class KidResult:
    """KID's mean and population std (ddof = 0) over its subsets, and each subset's value."""

    mean: float
    std: float
    values: tuple[float, ...]
    subset_size: int


def kid(
    features_a: object,
    features_b: object,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> KidResult:
    """KID of two feature sets (see the module docstring); refuses sets smaller than ``subset_size`` and a
    ``subset_size`` below 2."""
    a, b = _pair(features_a, features_b)
    check_kid_sizes({"a": len(a), "b": len(b)}, subset_size, subsets)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), subset_size, replace=False)]
        y = b[rng.choice(len(b), subset_size, replace=False)]
        values.append(mmd2_unbiased(x, y))
    array = np.asarray(values)
    return KidResult(float(array.mean()), float(array.std()), tuple(values), subset_size)


def check_inception_weights(weights: str | Path) -> Path:
    """The expanded path of the Inception weights file, or a one-line refusal (loads nothing, imports no torch)."""
    target = Path(weights).expanduser()
    if not target.exists():
        raise LlmDitError(f"inception: weights file {target} not found; {INCEPTION_FIX}")
    if not target.is_file():
        raise LlmDitError(f"inception: weights file {target} is not a file; {INCEPTION_FIX}")
    return target
