"""Set-level distribution metrics (``llm_dit.metrics.distribution``): the Fréchet distance against closed forms of
Gaussians, FID's sample statistics on sets built with exactly known means and covariances, the unbiased KID against
hand computations and an exhaustive enumeration of its subsets, the minimum-set-size refusals, and (where
torchmetrics imports) torchmetrics' own functions."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from bounds import EPS64, worst_case
from llm_dit.errors import LlmDitError
from llm_dit.metrics import distribution
from llm_dit.metrics.distribution import fid, fid_min_samples, frechet_distance, kid, mmd2_unbiased
from llm_dit.metrics.registry import SET_METRICS, select_metrics

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads


def frechet_bound(d: int, scale: float, smallest: float) -> float:
    """How far the float64 Fréchet distance of d x d covariances may be from the exact value.

    Each step is backward stable to first order: the symmetric eigendecompositions (LAPACK's syev*: computed
    eigenvalues within about ``d eps ||A||_2`` of the exact ones, Golub & Van Loan, section 8.1), the products
    ``R S2 R`` (length-d dot products: ``d eps`` relative to ``||R||^2 ||S2||``), each a ``d eps scale``-sized error
    with ``scale`` the largest eigenvalue of the matrices (and of their product). Four such steps put each
    eigenvalue of ``S1^(1/2) S2 S1^(1/2)`` within ``4 d eps scale``; its square root moves by that over
    ``2 sqrt(smallest)`` (``smallest``: its least eigenvalue), and the trace of d of them, doubled, by d times twice
    that. The traces and the squared mean difference add ``3 d eps scale``.
    """
    per_eigenvalue = worst_case(4 * d, EPS64) * scale
    return d * per_eigenvalue / math.sqrt(smallest) + worst_case(3 * d, EPS64) * scale


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_diagonal_gaussians_rotated_alike_give_the_closed_form() -> None:
    # Commuting covariances Q A Q^T and Q B Q^T (A, B diagonal): FID = |mu1 - mu2|^2 + sum (sqrt a_i - sqrt b_i)^2.
    rng = np.random.default_rng(1)
    d = 6
    a, b = rng.uniform(0.5, 4.0, d), rng.uniform(0.5, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    q = random_rotation(d, rng)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, abs=frechet_bound(d, 16.0, 0.25) + worst_case(2 * d, EPS64) * expected)


def test_non_commuting_2x2_covariances_give_the_closed_form() -> None:
    # For 2 x 2: Tr (S1 S2)^(1/2) = sqrt(Tr(S1 S2) + 2 sqrt(det S1 det S2)) (the square root's eigenvalues are sqrt l1,
    # sqrt l2, and (sqrt l1 + sqrt l2)^2 = l1 + l2 + 2 sqrt(l1 l2)); S1 S2 here is not symmetric.
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([1.5, 2.0])
    trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 1.0 + 9.0 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    # smallest eigenvalue of S1^(1/2) S2 S1^(1/2): det / largest >= det(S1) det(S2) / (||S1|| ||S2||) > 0.5
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=frechet_bound(2, 8.0, 0.5) + 20 * EPS64)


def test_identical_gaussians_are_zero_and_the_distance_is_symmetric() -> None:
    rng = np.random.default_rng(2)
    d = 5
    x = rng.standard_normal((d, d))
    s1, s2 = x @ x.T + np.eye(d), np.diag(rng.uniform(1.0, 2.0, d))
    mu = rng.standard_normal(d)
    scale = float(np.linalg.eigvalsh(s1).max()) * 2
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=frechet_bound(d, scale, 1.0))
    forward, backward = frechet_distance(mu, s1, 0 * mu, s2), frechet_distance(0 * mu, s2, mu, s1)
    assert forward == pytest.approx(backward, abs=2 * frechet_bound(d, scale, 1.0))


def exact_sample(n: int, mean: np.ndarray, chol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n rows whose sample mean is ``mean`` and sample covariance (ddof = 1) is ``chol chol^T``, up to rounding."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (n - 1))).T  # sample covariance I
    return mean + white @ chol.T


def test_fid_of_feature_sets_uses_their_sample_mean_and_ddof_1_covariance() -> None:
    rng = np.random.default_rng(3)
    d, n = 4, 9  # n = 9 >= d + 1; small enough that ddof 0 vs 1 moves the covariance by 9/8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    l1 = np.linalg.cholesky(np.diag([1.0, 2.0, 0.5, 1.5]))
    l2 = np.linalg.cholesky(np.array([[1.0, 0.3, 0, 0], [0.3, 1.0, 0, 0], [0, 0, 2.0, 0.5], [0, 0, 0.5, 1.0]]))
    a, b = exact_sample(n, mu1, l1, rng), exact_sample(n, mu2, l2, rng)
    expected = frechet_distance(mu1, l1 @ l1.T, mu2, l2 @ l2.T)
    # The exact sample's own rounding (whitening: a d x d inverse and products of length n): n d eps per entry of the
    # covariance, carried like the bound's steps.
    bound = 2 * frechet_bound(d, 4.0, 0.25) + worst_case(n * d, EPS64) * 4.0 * d
    assert fid(a, b) == pytest.approx(expected, abs=bound)
    # ddof 0 would give a visibly different number (the bug this test is for)
    biased = frechet_distance(mu1, l1 @ l1.T * (n - 1) / n, mu2, l2 @ l2.T * (n - 1) / n)
    assert abs(biased - expected) > 10 * bound


def test_fid_refuses_sets_smaller_than_dims_plus_one() -> None:
    rng = np.random.default_rng(4)
    d = 8
    assert fid_min_samples(d) == 9
    big, small = rng.standard_normal((9, d)), rng.standard_normal((8, d))
    fid(big, big + 1)  # exactly the minimum is accepted
    with pytest.raises(LlmDitError) as caught:
        fid(big, small)
    message = str(caught.value)
    assert "\n" not in message and "at least 9 images per set" in message and "'b' has 8" in message
    assert "'a' has" not in message and "kid" in message
    assert fid_min_samples(distribution.INCEPTION_FEATURE_DIM) == 2049


def test_bad_feature_arrays_are_refused_in_one_line() -> None:
    good = np.zeros((10, 3))
    for a, b, needle in (
        (np.zeros(10), good, "2-D array"),
        (good, np.zeros((10, 4)), "different sizes (3 and 4)"),
        (np.full((10, 3), np.nan), good, "NaN or inf"),
    ):
        with pytest.raises(LlmDitError, match=re.escape(needle)) as caught:
            fid(a, b)
        assert "\n" not in str(caught.value)
        with pytest.raises(LlmDitError, match=re.escape(needle)):
            kid(a, b, subset_size=5, subsets=1)


def mmd_by_hand(x: list[list[float]], y: list[list[float]]) -> float:
    """The unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, one loop per sum, in Python floats."""
    d, m = len(x[0]), len(x)

    def k(u: list[float], v: list[float]) -> float:
        return (sum(p * q for p, q in zip(u, v, strict=True)) / d + 1) ** 3

    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return same - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)


def test_kid_of_a_one_dimensional_pair_by_hand() -> None:
    # x = {0, 1}, y = {0, -1}, k(u, v) = (uv + 1)^3: off-diagonal k_xx = k(0, 1) = 1 twice, k_yy = 1 twice,
    # k_xy = 1 + 1 + 1 + k(1, -1) = 0 -> 3; MMD^2 = (2 + 2) / 2 - 2 * 3 / 4 = 0.5. Every subset of size 2 is the
    # whole set, so all values are 0.5 and the std is 0 (exact: small integers).
    result = kid([[0.0], [1.0]], [[0.0], [-1.0]], subset_size=2, subsets=3)
    assert result.values == (0.5, 0.5, 0.5) and result.mean == 0.5 and result.std == 0.0


def kid_bound(m: int, scale: float) -> float:
    """Two float64 evaluations of an MMD^2 of m rows: each kernel value has a length-d dot product, a division, an
    addition and a cube (d + 5 roundings, relative); the sums have m^2 terms; values up to ``scale``."""
    return 2 * worst_case(m * m + 16, EPS64) * scale * 4


def test_kid_with_the_whole_sets_equals_the_unbiased_mmd_by_hand() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 0.5
    scale = float(np.abs((np.vstack([x, y]) @ np.vstack([x, y]).T / 3 + 1) ** 3).max())
    expected = mmd_by_hand(x.tolist(), y.tolist())
    result = kid(x, y, subset_size=6, subsets=2)
    assert result.mean == pytest.approx(expected, abs=kid_bound(6, scale))
    # the estimator is the unbiased one: the biased V-statistic (diagonals kept, / m^2) differs by more than the bound
    kxx, kyy = (x @ x.T / 3 + 1) ** 3, (y @ y.T / 3 + 1) ** 3
    biased = (kxx.sum() + kyy.sum()) / 36 - 2 * ((x @ y.T / 3 + 1) ** 3).sum() / 36
    assert abs(biased - expected) > 10 * kid_bound(6, scale)


def test_kid_subsets_are_drawn_without_replacement_and_std_is_ddof_0() -> None:
    # Sets of 4, subsets of 2: every subset value must be the MMD^2 of one of the C(4, 2)^2 = 36 pairs of 2-row
    # subsets (a row drawn twice would give a value outside them).
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)) * 2
    scale = float(np.abs((np.vstack([x, y]) @ np.vstack([x, y]).T / 2 + 1) ** 3).max())
    allowed = np.array(
        [mmd_by_hand(x[list(i)].tolist(), y[list(j)].tolist()) for i in itertools.combinations(range(4), 2)
         for j in itertools.combinations(range(4), 2)]
    )  # fmt: skip
    result = kid(x, y, subset_size=2, subsets=50, seed=11)
    assert len(result.values) == 50
    for value in result.values:
        assert np.abs(allowed - value).min() <= kid_bound(2, scale)
    assert len({round(v, 9) for v in result.values}) > 1  # the subsets do vary
    values = np.array(result.values)
    assert result.mean == pytest.approx(values.mean(), abs=worst_case(50, EPS64) * scale)
    # population variance (ddof 0): two evaluations of 50 squared deviations (<= 4 scale^2 each) and their sums
    ddof0 = ((values - values.mean()) ** 2).mean()
    assert result.std**2 == pytest.approx(ddof0, abs=2 * worst_case(4 * 50, EPS64) * 4 * scale**2)
    assert abs(ddof0 * 50 / 49 - ddof0) > 10 * 2 * worst_case(4 * 50, EPS64) * 4 * scale**2  # ddof 1 would show
    assert kid(x, y, subset_size=2, subsets=50, seed=11) == result  # seeded: reproducible


def test_kid_refuses_sets_smaller_than_the_subset_size_and_tiny_subsets() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((12, 3)), rng.standard_normal((7, 3))
    with pytest.raises(LlmDitError) as caught:
        kid(a, b, subset_size=10, subsets=1)
    message = str(caught.value)
    assert "\n" not in message and "at least 10 images per set" in message and "'b' has 7" in message
    assert "'a' has" not in message and "at most 7" in message
    kid(a, b, subset_size=7, subsets=1)  # the smaller set's size is accepted
    with pytest.raises(LlmDitError, match="at least 2") as caught:
        kid(a, b, subset_size=1, subsets=1)
    with pytest.raises(LlmDitError, match="at least 1 subset"):
        kid(a, b, subset_size=2, subsets=0)
    # the library default subset size (1000) refuses experiment-sized sets with the minimum named
    with pytest.raises(LlmDitError, match="at least 1000 images per set"):
        kid(a, b)


def test_fid_and_kid_by_name_point_at_set_metric() -> None:
    from llm_dit.config import MetricsSettings

    for name in SET_METRICS:
        with pytest.raises(LlmDitError) as caught:
            select_metrics([name, "ssim"], MetricsSettings())
        message = str(caught.value)
        assert "\n" not in message and "set-level" in message
        assert f"--set-metric {name} --against AXIS=LABEL" in message


def test_against_torchmetrics_functions() -> None:
    """torchmetrics 1.9's own FID formula and KID estimator on random float64 features (only where torchmetrics
    imports: it is not an llm-dit dependency; it imports without torchvision when torch-fidelity is absent)."""
    torch = pytest.importorskip("torch")
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(8)
    d = 6
    x, y = rng.standard_normal((40, d)), rng.standard_normal((40, d)) @ np.diag(rng.uniform(0.5, 2, d)) + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    theirs = float(
        fid_module._compute_fid(*(torch.from_numpy(v) for v in (x.mean(0), s1, y.mean(0), s2)))
    )  # eigenvalues of the non-symmetric S1 S2 (torch.linalg.eigvals): about d eps cond relative per eigenvalue
    scale = float(max(np.linalg.eigvalsh(s1).max(), np.linalg.eigvalsh(s2).max())) ** 2
    smallest = float(np.linalg.eigvalsh(s1).min() * np.linalg.eigvalsh(s2).min())
    assert fid(x, y) == pytest.approx(theirs, abs=2 * frechet_bound(d, scale, smallest))
    theirs_mmd = float(kid_module.poly_mmd(torch.from_numpy(x[:10]), torch.from_numpy(y[:10])))
    kscale = float(np.abs((np.vstack([x, y]) @ np.vstack([x, y]).T / d + 1) ** 3).max())
    assert mmd2_unbiased(x[:10], y[:10]) == pytest.approx(theirs_mmd, abs=kid_bound(10, kscale))
