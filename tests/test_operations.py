"""Tests for the conditioning sources' pure operations (llm_dit.conditioning.embeddings: resample, mix, normalize,
mask_outliers, style_delta, intra_blend, weighted_sum) and the reference statistics (reference_stats).

Expectations are computed independently in float64 numpy with explicit loops over the formulas in the
docstrings. Tolerances (tests/README.md, "Tolerance policy"): the operations run in float32, so each comparison
allows ``EPS32 * factor * scale``, with the factor counted from the float32 roundings along the longest path of
the computation (stated next to each helper call) and ``scale`` the largest magnitude involved.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bounds import EPS32, assert_bit_equal
from llm_dit.conditioning import reference_stats as rs
from llm_dit.conditioning.embeddings import (
    OutlierReport,
    global_std,
    intra_blend,
    mask_outliers,
    mix,
    normalize,
    resample,
    style_delta,
    weighted_sum,
)
from llm_dit.constants import GRADUATED_CURVES, OUTLIER_MASKS, VL_BLENDS, VL_NORMALIZATIONS
from llm_dit.errors import LlmDitError

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

LOW_PRECISION = [torch.bfloat16, torch.float16]


def values(rows: int, dim: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Distinct, sign-mixed fp32 values (a fixed generator: the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g) * scale).to(torch.float32)


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def assert_near(got: torch.Tensor, expected: np.ndarray, factor: float, scale: float) -> None:
    """max |got - expected| <= EPS32 * factor * scale (got: the float32 result; expected: float64)."""
    assert tuple(got.shape) == expected.shape, (tuple(got.shape), expected.shape)
    err = float(np.abs(np64(got) - expected).max())
    bound = EPS32 * factor * scale
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} (factor {factor:g}, scale {scale:.3g})"


def np_resample(x: np.ndarray, length: int) -> np.ndarray:
    """align_corners=True linear resampling, written out: output row i sits at p = i (L - 1) / (length - 1)."""
    rows, dim = x.shape
    out = np.zeros((length, dim))
    for i in range(length):
        p = 0.0 if length == 1 else i * (rows - 1) / (length - 1)
        lo = min(math.floor(p), rows - 1)
        hi = min(lo + 1, rows - 1)
        f = p - lo
        for d in range(dim):
            out[i, d] = (1 - f) * x[lo, d] + f * x[hi, d]
    return out


# Resampling rounds the position p (|p| <= L) and the fraction f in float32: |df| <= 2 L eps, moving a row by at
# most 2 L eps |x[hi] - x[lo]| <= 4 L eps max|x|; the two products and the sum add 3 eps max|x|.
def resample_factor(rows: int) -> float:
    return 4 * rows + 3


def np_pop_std(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.std(a, axis=axis, ddof=0)


# ---------------------------------------------------------------------------------------------
# resample, global_std


@pytest.mark.parametrize(("rows", "length"), [(5, 9), (9, 5), (7, 3), (1, 4), (4, 1), (2, 2)])
def test_resample_matches_linear_formula(rows: int, length: int) -> None:
    x = values(rows, 3, seed=rows * 10 + length)
    out = resample(x, length)
    scale = float(x.abs().max())
    assert_near(out, np_resample(np64(x), length), resample_factor(rows), scale)
    # align_corners=True keeps the end rows exactly.
    assert_bit_equal(out[0], x[0])
    if length > 1:
        assert_bit_equal(out[-1], x[-1])


def test_resample_same_length_is_a_copy() -> None:
    x = values(4, 3, seed=1)
    out = resample(x, 4)
    assert_bit_equal(out, x)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_resample_refuses_bad_length(bad: object) -> None:
    with pytest.raises(LlmDitError, match="length"):
        resample(values(3, 2, seed=0), bad)  # type: ignore[arg-type]


def test_global_std_population() -> None:
    x = values(6, 5, seed=2, scale=3.0)
    # Welford or pairwise, the fp32 std of 30 values is within ~30 eps relative of the float64 one.
    expected = float(np_pop_std(np64(x)))
    assert abs(global_std(x) - expected) <= EPS32 * 30 * expected


# ---------------------------------------------------------------------------------------------
# mix: alpha 0 and 1


@pytest.mark.parametrize("blend", VL_BLENDS)
@pytest.mark.parametrize(("lt", "lv"), [(5, 5), (5, 8), (7, 3)])
def test_mix_alpha_zero_is_text_bit_for_bit(blend: str, lt: int, lv: int) -> None:
    t, v = values(lt, 6, seed=3), values(lv, 6, seed=4, scale=5.0)
    out = mix(t, v, 0.0, blend)
    assert_bit_equal(out, t)
    assert out.data_ptr() != t.data_ptr()
    assert_bit_equal(mix(t, v, 0, blend, curve="ease_out"), t)  # an int 0 too


@pytest.mark.parametrize(("lt", "lv"), [(5, 8), (7, 3)])
def test_mix_alpha_one_is_the_source_where_defined(lt: int, lv: int) -> None:
    t, v = values(lt, 6, seed=5), values(lv, 6, seed=6, scale=5.0)
    n = min(lt, lv)
    # 1 * v + 0 * t is v exactly (finite t).
    assert_bit_equal(mix(t, v, 1.0, "linear"), v[:n])
    assert_bit_equal(mix(t, v, 1.0, "interpolate"), resample(v, lt))


# ---------------------------------------------------------------------------------------------
# mix: each blend against its formula


ALPHAS = [0.25, 0.7, 1.0]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("lt", "lv"), [(5, 8), (7, 3), (4, 4)])
def test_mix_linear(alpha: float, lt: int, lv: int) -> None:
    t, v = values(lt, 4, seed=7), values(lv, 4, seed=8, scale=3.0)
    tn, vn = np64(t), np64(v)
    n = min(lt, lv)
    expected = np.zeros((n, 4))
    for i in range(n):
        for d in range(4):
            expected[i, d] = alpha * vn[i, d] + (1 - alpha) * tn[i, d]
    # 1 - a, two products, one sum: 4 roundings of values <= max|t|, max|v|.
    assert_near(mix(t, v, alpha, "linear"), expected, 4, max(float(t.abs().max()), float(v.abs().max())))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("lt", "lv"), [(5, 8), (7, 3)])
def test_mix_interpolate(alpha: float, lt: int, lv: int) -> None:
    t, v = values(lt, 4, seed=9), values(lv, 4, seed=10, scale=3.0)
    vr = np_resample(np64(v), lt)
    tn = np64(t)
    expected = alpha * vr + (1 - alpha) * tn
    scale = max(float(t.abs().max()), float(v.abs().max()))
    assert_near(mix(t, v, alpha, "interpolate"), expected, resample_factor(lv) + 4, scale)


def np_adain(t: np.ndarray, s: np.ndarray, alpha: float, axis: int) -> np.ndarray:
    """AdaIN with explicit loops: axis 1 = stats of each row over D, axis 0 = stats of each dim over rows."""
    out = np.zeros_like(t)
    if axis == 1:
        for i in range(t.shape[0]):
            tm, ts = t[i].mean(), np_pop_std(t[i])
            vm, vs = s[i].mean(), np_pop_std(s[i])
            for d in range(t.shape[1]):
                r = (t[i, d] - tm) / (ts + 1e-5) * vs + vm
                out[i, d] = alpha * r + (1 - alpha) * t[i, d]
    else:
        for d in range(t.shape[1]):
            tm, ts = t[:, d].mean(), np_pop_std(t[:, d])
            vm, vs = s[:, d].mean(), np_pop_std(s[:, d])
            for i in range(t.shape[0]):
                r = (t[i, d] - tm) / (ts + 1e-5) * vs + vm
                out[i, d] = alpha * r + (1 - alpha) * t[i, d]
    return out


# AdaIN: the means and stds are reductions of n <= 8 terms (<= 2n roundings each, the std's square root one more);
# the normalised value (t - m) / (s + eps) carries their relative errors (<= 4n + 4 eps), times the style std and
# plus its mean (another 2n + 2), then the mix (4). With |z| <= sqrt(n), scale = sqrt(n) max|v| + max|t|.
def adain_factor(n: int) -> float:
    return 6 * n + 10


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("lt", "lv"), [(5, 8), (6, 3)])
def test_mix_adain_per_token(alpha: float, lt: int, lv: int) -> None:
    dim = 6
    t, v = values(lt, dim, seed=11, scale=2.0), values(lv, dim, seed=12, scale=7.0)
    expected = np_adain(np64(t), np_resample(np64(v), lt), alpha, axis=1)
    scale = math.sqrt(dim) * float(v.abs().max()) + float(t.abs().max())
    assert_near(mix(t, v, alpha, "adain"), expected, adain_factor(dim) + resample_factor(lv), scale)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("lt", "lv"), [(5, 8), (6, 3)])
def test_mix_adain_per_dim(alpha: float, lt: int, lv: int) -> None:
    t, v = values(lt, 4, seed=13, scale=2.0), values(lv, 4, seed=14, scale=7.0)
    # Per-dimension stats of v over its own rows (not resampled).
    expected = np_adain(np64(t), np64(v), alpha, axis=0)
    n = max(lt, lv)
    scale = math.sqrt(n) * float(v.abs().max()) + float(t.abs().max())
    assert_near(mix(t, v, alpha, "adain_per_dim"), expected, adain_factor(n), scale)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_mix_style_only_blends_the_last_third(alpha: float) -> None:
    lt, lv, dim = 5, 7, 8  # dims 2 * 8 // 3 = 5 .. 7 are blended
    t, v = values(lt, dim, seed=15), values(lv, dim, seed=16, scale=3.0)
    vr, tn = np_resample(np64(v), lt), np64(t)
    expected = tn.copy()
    for i in range(lt):
        for d in range(5, dim):
            expected[i, d] = alpha * vr[i, d] + (1 - alpha) * tn[i, d]
    out = mix(t, v, alpha, "style_only")
    assert_bit_equal(out[:, :5], t[:, :5])
    assert_near(out, expected, resample_factor(lv) + 4, max(float(t.abs().max()), float(v.abs().max())))


def np_curve(s: float, curve: str) -> float:
    return {"linear": s, "ease_in": s * s, "ease_out": 1 - (1 - s) ** 2}[curve]


@pytest.mark.parametrize("curve", GRADUATED_CURVES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_mix_graduated(curve: str, alpha: float) -> None:
    lt, lv = 6, 4
    t, v = values(lt, 3, seed=17), values(lv, 3, seed=18, scale=3.0)
    vr, tn = np_resample(np64(v), lt), np64(t)
    expected = np.zeros_like(tn)
    for i in range(lt):
        a = alpha * np_curve(i / (lt - 1), curve)
        expected[i] = a * vr[i] + (1 - a) * tn[i]
    out = mix(t, v, alpha, "graduated", curve=curve)
    # The weights: linspace and the curve (<= 4 roundings), times alpha (1), then the mix (4).
    assert_near(out, expected, resample_factor(lv) + 9, max(float(t.abs().max()), float(v.abs().max())))
    assert_bit_equal(out[0], t[0])  # weight 0 on the first row


def test_mix_graduated_one_row_is_text() -> None:
    t, v = values(1, 3, seed=19), values(4, 3, seed=20)
    assert_bit_equal(mix(t, v, 1.0, "graduated"), t)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("lt", "lv"), [(4, 6), (5, 2)])
def test_mix_attention_weighted(alpha: float, lt: int, lv: int) -> None:
    dim = 5
    t, v = values(lt, dim, seed=21), values(lv, dim, seed=22, scale=4.0)
    tn, vn = np64(t), np64(v)
    expected = np.zeros_like(tn)
    for i in range(lt):
        cos = [
            float(np.dot(tn[i], vn[j]) / max(np.linalg.norm(tn[i]) * np.linalg.norm(vn[j]), 1e-8)) for j in range(lv)
        ]
        e = [math.exp(c) for c in cos]
        att = sum(e[j] / sum(e) * vn[j] for j in range(lv))
        expected[i] = alpha * att + (1 - alpha) * tn[i]
    # Each cosine is a D-term dot product over two D-term norms: <= 3 D + 4 eps absolute (|cos| <= 1); exp turns
    # that into the same relative error of each weight (e^c, c bounded), the softmax's Lv-term sum and division add
    # Lv + 1, the Lv-term weighted sum of v rows Lv more, the mix 4.
    factor = 2 * (3 * dim + 4) + 2 * lv + 5
    assert_near(
        mix(t, v, alpha, "attention_weighted"), expected, factor, max(float(t.abs().max()), float(v.abs().max()))
    )


# ---------------------------------------------------------------------------------------------
# mix: dtypes, inputs, refusals


def _ops(t: torch.Tensor, v: torch.Tensor) -> dict[str, object]:
    ref_std = torch.full((t.shape[1],), 0.5, dtype=torch.float32)
    ref_mean = torch.linspace(-1, 1, t.shape[1])
    ops: dict[str, object] = {f"mix-{b}": (lambda b=b: mix(t, v, 0.6, b, curve="ease_in")) for b in VL_BLENDS}
    ops |= {
        f"normalize-{m}": (
            lambda m=m: normalize(v, m, ref_mean=ref_mean, ref_std=ref_std, target_std=3.0, hybrid_weight=0.3)
        )
        for m in VL_NORMALIZATIONS
    }
    ops |= {f"mask-{m}": (lambda m=m: mask_outliers(v, ref_std, m, 1.5, rows=[0, 2])[0]) for m in OUTLIER_MASKS}
    ops |= {
        "resample": lambda: resample(v, 7),
        "style_delta": lambda: style_delta(t, v, v.flip(0), 0.4),
        "intra_blend": lambda: intra_blend(v, t, 0.3),
        "weighted_sum": lambda: weighted_sum([t, v], [1.0, 2.0]),
    }
    return ops


OP_NAMES = list(_ops(values(2, 3, 0), values(3, 3, 0)))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", OP_NAMES)
def test_low_precision_is_the_fp32_computation_rounded(dtype: torch.dtype, name: str) -> None:
    t32 = values(5, 6, seed=23).to(dtype).float()
    v32 = values(4, 6, seed=24, scale=3.0).to(dtype).float()
    expected = _ops(t32, v32)[name]()  # type: ignore[operator]
    got = _ops(t32.to(dtype), v32.to(dtype))[name]()  # type: ignore[operator]
    assert got.dtype == dtype and got.device == t32.device
    # The same fp32 computation on the same (upcast) values, rounded once: bit-equal.
    assert_bit_equal(got, expected.to(dtype))


@pytest.mark.parametrize("name", OP_NAMES)
def test_inputs_unchanged_and_outputs_fresh(name: str) -> None:
    t, v = values(5, 6, seed=25), values(4, 6, seed=26, scale=3.0)
    t0, v0 = t.clone(), v.clone()
    out = _ops(t, v)[name]()  # type: ignore[operator]
    assert_bit_equal(t, t0)
    assert_bit_equal(v, v0)
    assert out.data_ptr() not in (t.data_ptr(), v.data_ptr())
    out.add_(1.0)  # writing the output must not reach an input
    assert_bit_equal(t, t0)
    assert_bit_equal(v, v0)


def test_mix_refusals() -> None:
    t, v = values(3, 4, seed=0), values(3, 4, seed=1)
    with pytest.raises(LlmDitError, match="unknown vl_blend 'lerp'"):
        mix(t, v, 0.5, "lerp")
    with pytest.raises(LlmDitError, match="unknown graduated curve"):
        mix(t, v, 0.5, "graduated", curve="cubic")
    for alpha in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(LlmDitError, match="alpha"):
            mix(t, v, alpha, "linear")  # type: ignore[arg-type]
    with pytest.raises(LlmDitError, match="width"):
        mix(t, values(3, 5, seed=2), 0.5, "linear")
    with pytest.raises(LlmDitError, match="move one with"):
        mix(t, torch.empty(3, 4, device="meta"), 0.5, "linear")
    with pytest.raises(LlmDitError, match=r"source must have shape \[L, D\]"):
        mix(t, v[0], 0.5, "linear")


# ---------------------------------------------------------------------------------------------
# normalize


def test_normalize_none_is_a_copy() -> None:
    x = values(4, 3, seed=27)
    out = normalize(x, "none")
    assert_bit_equal(out, x)
    assert out.data_ptr() != x.data_ptr()


def test_normalize_global() -> None:
    x = values(5, 4, seed=28, scale=13.0)
    xn = np64(x)
    expected = xn * 61.0 / np_pop_std(xn)
    # The std of 20 values (<= 2 * 20 + 1 roundings relative), the ratio and the product (2).
    assert_near(normalize(x, "global", target_std=61.0), expected, 43, float(np.abs(expected).max()))
    assert abs(float(np_pop_std(np64(normalize(x, "global", target_std=61.0)))) - 61.0) <= EPS32 * 43 * 61.0


def np_per_dim(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for d in range(x.shape[1]):
        m, s = x[:, d].mean(), np_pop_std(x[:, d])
        for i in range(x.shape[0]):
            z = 0.0 if s == 0 else (x[i, d] - m) / s
            out[i, d] = min(max(z, -3.0), 3.0) * std[d] + mean[d]
    return out


def test_normalize_per_dim_clips_at_three_sigma() -> None:
    rows, dim = 20, 3
    x = values(rows, dim, seed=29)
    x[7, 1] = 100.0  # z = ~sqrt(19) ~ 4.36 before clipping
    x[:, 2] = 4.0  # a constant dimension: z = 0, the reference mean
    mean, std = torch.tensor([1.0, -2.0, 5.0]), torch.tensor([2.0, 0.5, 3.0])
    out = normalize(x, "per_dim", ref_mean=mean, ref_std=std)
    expected = np_per_dim(np64(x), np64(mean), np64(std))
    assert expected[7, 1] == 3.0 * 0.5 - 2.0  # the clip engaged
    # Mean and std of 20 rows (<= 2 * 20 + 1 relative each), z (|z| <= 3, so <= 3 * 83 absolute), times std + mean.
    assert_near(out, expected, 3 * 83 + 4, 3 * 3.0 + 5.0)
    assert torch.all(out[:, 2] == 5.0)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_normalize_hybrid(weight: float) -> None:
    x = values(6, 3, seed=30, scale=9.0)
    mean, std = torch.tensor([1.0, -2.0, 5.0]), torch.tensor([2.0, 0.5, 3.0])
    xn = np64(x)
    glob = xn * 40.0 / np_pop_std(xn)
    expected = weight * np_per_dim(xn, np64(mean), np64(std)) + (1 - weight) * glob
    out = normalize(x, "hybrid", ref_mean=mean, ref_std=std, target_std=40.0, hybrid_weight=weight)
    assert_near(out, expected, 3 * 83 + 43 + 4, float(np.abs(glob).max()) + 3 * 3.0 + 5.0)


def test_normalize_accepts_references_of_other_dtypes() -> None:
    x = values(6, 3, seed=31)
    mean, std = torch.tensor([1.0, -2.0, 5.0]), torch.tensor([2.0, 0.5, 3.0])
    a = normalize(x, "per_dim", ref_mean=mean.double(), ref_std=std.bfloat16())
    b = normalize(x, "per_dim", ref_mean=mean, ref_std=std.bfloat16().float())
    assert_bit_equal(a, b)


def test_normalize_refusals() -> None:
    x = values(4, 3, seed=32)
    good = torch.ones(3)
    with pytest.raises(LlmDitError, match="unknown vl_normalize"):
        normalize(x, "zscore")
    with pytest.raises(LlmDitError, match="needs target_std"):
        normalize(x, "global")
    with pytest.raises(LlmDitError, match="needs target_std"):
        normalize(x, "hybrid", ref_mean=good, ref_std=good)
    with pytest.raises(LlmDitError, match="target_std must be > 0"):
        normalize(x, "global", target_std=0.0)
    with pytest.raises(LlmDitError, match="ref_mean is required"):
        normalize(x, "per_dim", ref_std=good)
    with pytest.raises(LlmDitError, match="ref_std is required"):
        normalize(x, "per_dim", ref_mean=good)
    with pytest.raises(LlmDitError, match="ref_std has 4 entries, the features have width 3"):
        normalize(x, "per_dim", ref_mean=good, ref_std=torch.ones(4))
    with pytest.raises(LlmDitError, match=r"floating-point \[D\] tensor"):
        normalize(x, "per_dim", ref_mean=good, ref_std=torch.ones(1, 3))
    with pytest.raises(LlmDitError, match="hybrid_weight"):
        normalize(x, "hybrid", ref_mean=good, ref_std=good, target_std=1.0, hybrid_weight=1.5)
    with pytest.raises(LlmDitError, match="zero std"):
        normalize(torch.full((3, 3), 2.0), "global", target_std=1.0)


# ---------------------------------------------------------------------------------------------
# mask_outliers


def outlier_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 rows x 5 dims, reference std 1 except dim 3 (2.0); rows 1, 2, 4 are the 'image rows'.

    On the image rows: dim 0 spreads ~ 50 (ratio > 10), dim 3 ~ 30 / 2 (ratio between 10 and 50 / 2), dim 4 small.
    """
    x = values(6, 5, seed=33)
    x[[1, 2, 4], 0] = torch.tensor([-60.0, 40.0, 70.0])
    x[[1, 2, 4], 3] = torch.tensor([50.0, -20.0, 10.0])
    ref_std = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0])
    rows = torch.tensor([False, True, True, False, True, False])
    return x, ref_std, rows


def np_ratios(x: np.ndarray, ref: np.ndarray, rows: list[int]) -> list[float]:
    return [float(np_pop_std(x[rows, d]) / max(ref[d], 1e-12)) for d in range(x.shape[1])]


def test_mask_outliers_report() -> None:
    x, ref_std, rows = outlier_case()
    ratios = np_ratios(np64(x), np64(ref_std), [1, 2, 4])
    expected_dims = sorted((d for d in range(5) if ratios[d] > 10.0), key=lambda d: -ratios[d])
    assert expected_dims == [0, 3]  # the case is built so: dim 0 then dim 3
    _, report = mask_outliers(x, ref_std, "zero", 10.0, rows=rows)
    assert report.dims == expected_dims
    for got, d in zip(report.ratios, expected_dims, strict=True):
        # A 3-row std (<= 2 * 3 + 1 roundings relative) and one division.
        assert abs(got - ratios[d]) <= EPS32 * 8 * ratios[d]
    assert (report.mode, report.threshold, report.rows_selected, report.rows_touched) == ("zero", 10.0, 3, 3)
    record = report.to_record()
    assert json.loads(json.dumps(record)) == record
    assert record["dims"] == [0, 3] and record["rows_touched"] == 3


@pytest.mark.parametrize("mode", ["zero", "clamp", "scale"])
def test_mask_outliers_touches_only_selected_rows_and_dims(mode: str) -> None:
    x, ref_std, rows = outlier_case()
    out, report = mask_outliers(x, ref_std, mode, 10.0, rows=rows)
    xn, ref = np64(x), np64(ref_std)
    ratios = np_ratios(xn, ref, [1, 2, 4])
    expected = xn.copy()
    for i in (1, 2, 4):
        for d in report.dims:
            if mode == "zero":
                expected[i, d] = 0.0
            elif mode == "clamp":
                expected[i, d] = min(max(xn[i, d], -10.0 * ref[d]), 10.0 * ref[d])
            else:
                expected[i, d] = xn[i, d] * 10.0 / ratios[d]
    # Untouched values are copied bit for bit.
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[torch.tensor([1, 2, 4]).unsqueeze(1), torch.tensor(report.dims).unsqueeze(0)] = False
    assert torch.equal(out[keep], x[keep])
    # The ratio's 8 roundings (above) plus the division threshold / r and the product.
    assert_near(out, expected, 10, float(x.abs().max()))
    if mode == "scale":  # the masked dims' spread over the rows becomes threshold * ref_std
        for d in report.dims:
            spread = float(np_pop_std(np64(out)[[1, 2, 4], d]))
            assert abs(spread - 10.0 * ref[d]) <= EPS32 * 20 * 10.0 * ref[d]


def test_mask_outliers_rows_forms_agree() -> None:
    x, ref_std, rows = outlier_case()
    by_mask = mask_outliers(x, ref_std, "zero", rows=rows)[0]
    assert_bit_equal(mask_outliers(x, ref_std, "zero", rows=torch.tensor([4, 1, 2]))[0], by_mask)
    assert_bit_equal(mask_outliers(x, ref_std, "zero", rows=[1, 2, 4])[0], by_mask)


def test_mask_outliers_all_rows_by_default() -> None:
    x, ref_std, _ = outlier_case()
    _, report = mask_outliers(x, ref_std, "clamp")
    ratios = np_ratios(np64(x), np64(ref_std), list(range(6)))
    assert report.dims == sorted((d for d in range(5) if ratios[d] > 10.0), key=lambda d: -ratios[d])
    assert report.rows_selected == 6


def test_mask_outliers_none_and_empty_selection() -> None:
    x, ref_std, rows = outlier_case()
    out, report = mask_outliers(x, ref_std, "none", rows=rows)
    assert_bit_equal(out, x)
    assert report == OutlierReport(mode="none", threshold=10.0)
    assert report.to_record()["dims"] == []
    out, report = mask_outliers(x, ref_std, "zero", rows=torch.zeros(6, dtype=torch.bool))
    assert_bit_equal(out, x)
    assert (report.dims, report.rows_selected, report.rows_touched) == ([], 0, 0)
    out, report = mask_outliers(x, ref_std, "zero", 1000.0, rows=rows)  # nothing over the threshold
    assert_bit_equal(out, x)
    assert (report.dims, report.rows_selected, report.rows_touched) == ([], 3, 0)


def test_mask_outliers_refusals() -> None:
    x, ref_std, _ = outlier_case()
    with pytest.raises(LlmDitError, match="unknown outlier_mask"):
        mask_outliers(x, ref_std, "drop")
    with pytest.raises(LlmDitError, match="outlier threshold must be > 0"):
        mask_outliers(x, ref_std, "zero", 0.0)
    with pytest.raises(LlmDitError, match="ref_std has 4 entries"):
        mask_outliers(x, ref_std[:4], "zero")
    with pytest.raises(LlmDitError, match="rows mask has 5 entries"):
        mask_outliers(x, ref_std, "zero", rows=torch.ones(5, dtype=torch.bool))
    with pytest.raises(LlmDitError, match=r"rows indices must be in 0\.\.5"):
        mask_outliers(x, ref_std, "zero", rows=[1, 6])
    with pytest.raises(LlmDitError, match="duplicates"):
        mask_outliers(x, ref_std, "zero", rows=[1, 1])
    with pytest.raises(LlmDitError, match="bool mask or integer"):
        mask_outliers(x, ref_std, "zero", rows=torch.tensor([1.0]))


# ---------------------------------------------------------------------------------------------
# style_delta, intra_blend, weighted_sum


@pytest.mark.parametrize("alpha", [0.5, 1.0, -0.3, 2.0])
def test_style_delta(alpha: float) -> None:
    t, s, n = values(5, 3, seed=34), values(7, 3, seed=35, scale=4.0), values(3, 3, seed=36, scale=4.0)
    expected = np64(t) + alpha * (np_resample(np64(s), 5) - np_resample(np64(n), 5))
    scale = float(t.abs().max()) + abs(alpha) * 2 * float(max(s.abs().max(), n.abs().max()))
    assert_near(style_delta(t, s, n, alpha), expected, resample_factor(7) + 3, scale)


def test_style_delta_alpha_zero_and_refusals() -> None:
    t, s = values(5, 3, seed=37), values(7, 3, seed=38)
    assert_bit_equal(style_delta(t, s, s, 0.0), t)
    with pytest.raises(LlmDitError, match="neutral has width 4"):
        style_delta(t, s, values(2, 4, seed=0), 0.5)
    with pytest.raises(LlmDitError, match="alpha must be finite"):
        style_delta(t, s, s, float("inf"))


@pytest.mark.parametrize("ratio", [0.0, 0.4, 1.0])
def test_intra_blend(ratio: float) -> None:
    image, text = values(9, 4, seed=39, scale=5.0), values(4, 4, seed=40)
    out = intra_blend(image, text, ratio)
    expected = ratio * np_resample(np64(image), 4) + (1 - ratio) * np64(text)
    assert_near(out, expected, resample_factor(9) + 4, 5.0 * float(image.abs().max()))
    if ratio == 0.0:
        assert_bit_equal(out, text)
    if ratio == 1.0:
        assert_bit_equal(out, resample(image, 4))


def test_intra_blend_refusals() -> None:
    with pytest.raises(LlmDitError, match="intra_vl_ratio must be in"):
        intra_blend(values(3, 2, 0), values(3, 2, 1), 1.1)


def test_weighted_sum() -> None:
    a, b, c = values(4, 3, seed=41), values(6, 3, seed=42, scale=2.0), values(2, 3, seed=43, scale=3.0)
    weights = [2.0, 1.0, -0.5]
    total = sum(weights)
    expected = np.zeros((4, 3))
    for f, w in zip((a, b, c), weights, strict=True):
        expected += w / total * np_resample(np64(f), 4)
    # Each term: resampled, times w / total (2 roundings), summed over 3 (3 more).
    scale = sum(abs(w) / total for w in weights) * 3.0 * float(max(a.abs().max(), b.abs().max(), c.abs().max()))
    assert_near(weighted_sum([a, b, c], weights), expected, resample_factor(6) + 5, scale)
    assert_bit_equal(weighted_sum([a], [3.0]), a)


def test_weighted_sum_refusals() -> None:
    a, b = values(4, 3, seed=44), values(5, 3, seed=45)
    with pytest.raises(LlmDitError, match="non-empty list"):
        weighted_sum([], [])
    with pytest.raises(LlmDitError, match=r"1 weight\(s\) for 2 feature"):
        weighted_sum([a, b], [1.0])
    with pytest.raises(LlmDitError, match="sum to zero"):
        weighted_sum([a, b], [1.0, -1.0])
    with pytest.raises(LlmDitError, match="weight 1 must be a number"):
        weighted_sum([a, b], [1.0, "2"])  # type: ignore[list-item]
    with pytest.raises(LlmDitError, match=r"features\[1\] has width 2"):
        weighted_sum([a, values(4, 2, seed=0)], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# reference statistics


class FakeEncoder:
    """encode_layers(texts, layers): per text, rows depending on (text, layer); counts its calls."""

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim
        self.calls: list[tuple[list[str], list[int]]] = []

    def rows(self, text: str, layer: int) -> torch.Tensor:
        seed = sum(ord(ch) for ch in text) * 100 + layer + 50
        x = values(len(text) % 5 + 2, self.dim, seed=seed, scale=3.0)
        x[:, 1] *= 200.0  # a massive-activation dimension
        return x.to(torch.bfloat16)

    def __call__(self, texts: list[str], layers: list[int]) -> list[dict[int, torch.Tensor]]:
        self.calls.append((list(texts), list(layers)))
        return [{layer: self.rows(t, layer) for layer in layers} for t in texts]


TEXTS = ["a cat", "a red house by the sea", "fog", "two dogs"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path))
    return tmp_path


def test_reference_stats_match_numpy_over_all_rows() -> None:
    enc = FakeEncoder()
    stats = rs.compute_reference_stats(enc, TEXTS, [-2, -5, -2], encoder_fingerprint="fp", template_key="tk")
    assert list(stats) == [-2, -5] and len(enc.calls) == 1 and enc.calls[0][1] == [-2, -5]
    for layer, s in stats.items():
        rows = np.concatenate([np64(enc.rows(t, layer)) for t in TEXTS], axis=0)
        mean, std = rows.mean(axis=0), np_pop_std(rows, axis=0)
        assert s.mean.dtype == torch.float32 and s.std.dtype == torch.float32
        # float64 accumulation (~100 eps64 over these rows), then one rounding to float32: 0.5 eps32 relative.
        scale = np.abs(rows).max(axis=0)
        assert np.all(np.abs(np64(s.mean) - mean) <= EPS32 * scale)
        assert np.all(np.abs(np64(s.std) - std) <= EPS32 * std + 1e-12 * scale)
        assert (s.layer, s.token_count, s.prompt_count) == (layer, rows.shape[0], len(TEXTS))
        assert (s.encoder_fingerprint, s.template_key) == ("fp", "tk")
        # global_std from the float32 moments: each moment carries eps32 relative, the variance's cancellation
        # multiplies that by E[x^2] / Var(x).
        second, var = float((rows**2).mean()), float(rows.var())
        assert abs(s.global_std - math.sqrt(var)) <= EPS32 * 4 * second / var * math.sqrt(var)
        assert s.top_outliers(1)[0][0] == 1
        order = sorted(range(6), key=lambda d: (-float(s.std[d]), d))
        assert [d for d, _ in s.top_outliers(3)] == order[:3]


def test_reference_stats_refusals() -> None:
    enc = FakeEncoder()
    with pytest.raises(LlmDitError, match="non-empty list of prompts"):
        rs.compute_reference_stats(enc, [], [-2])
    with pytest.raises(LlmDitError, match="non-empty string"):
        rs.compute_reference_stats(enc, ["a", ""], [-2])
    with pytest.raises(LlmDitError, match="layers must be integers"):
        rs.compute_reference_stats(enc, TEXTS, [-2.0])
    with pytest.raises(LlmDitError, match="returned 1 results for 4 texts"):
        rs.compute_reference_stats(lambda texts, layers: enc(texts[:1], layers), TEXTS, [-2])
    with pytest.raises(LlmDitError, match="no layer -2"):
        rs.compute_reference_stats(lambda texts, layers: enc(texts, [-3]), TEXTS, [-2])


def test_reference_texts_are_the_prompt_library() -> None:
    texts = rs.reference_texts()
    assert len(texts) > 10 and all(isinstance(t, str) and t for t in texts)


def test_cache_round_trip_and_partial_hits(cache) -> None:
    enc = FakeEncoder()
    first = rs.load_or_compute("fp", "tk", TEXTS, [-2], enc)
    assert len(enc.calls) == 1
    path = rs.reference_stats_path("fp", -2, "tk", TEXTS)
    assert path.is_file() and path.parent == cache / "reference-stats"
    again = rs.load_or_compute("fp", "tk", TEXTS, [-2], enc)
    assert len(enc.calls) == 1  # served from disk
    for a, b in ((first[-2], again[-2]), (first[-2], rs.load_reference_stats(path))):
        assert_bit_equal(a.mean, b.mean)
        assert_bit_equal(a.std, b.std)
        assert (a.layer, a.token_count, a.prompt_count, a.encoder_fingerprint, a.template_key) == (
            b.layer,
            b.token_count,
            b.prompt_count,
            b.encoder_fingerprint,
            b.template_key,
        )
    both = rs.load_or_compute("fp", "tk", TEXTS, [-5, -2], enc)
    assert list(both) == [-5, -2]
    assert len(enc.calls) == 2 and enc.calls[1][1] == [-5]  # only the missing layer was computed
    rs.load_or_compute("fp", "tk", TEXTS, [-5, -2], enc)
    assert len(enc.calls) == 2


def test_cache_key_changes_with_each_part(cache) -> None:
    base = rs.reference_stats_path("fp", -2, "tk", TEXTS)
    others = [
        rs.reference_stats_path("fp2", -2, "tk", TEXTS),
        rs.reference_stats_path("fp", -3, "tk", TEXTS),
        rs.reference_stats_path("fp", -2, "tk2", TEXTS),
        rs.reference_stats_path("fp", -2, "tk", TEXTS[:-1]),
        rs.reference_stats_path("fp", -2, "tk", [*TEXTS[1:], TEXTS[0]]),
    ]
    assert len({base, *others}) == 6
    assert base == rs.reference_stats_path("fp", -2, "tk", list(TEXTS))


def test_damaged_cache_file_is_recomputed(cache) -> None:
    enc = FakeEncoder()
    rs.load_or_compute("fp", "tk", TEXTS, [-2], enc)
    path = rs.reference_stats_path("fp", -2, "tk", TEXTS)
    path.write_bytes(b"not safetensors")
    with pytest.raises(LlmDitError, match=r"not a readable \.safetensors file"):
        rs.load_reference_stats(path)
    rs.load_or_compute("fp", "tk", TEXTS, [-2], enc)
    assert len(enc.calls) == 2
    rs.load_reference_stats(path)  # rewritten whole


def test_load_refusals(cache) -> None:
    with pytest.raises(LlmDitError, match="no such file"):
        rs.load_reference_stats(cache / "missing.safetensors")
    from safetensors.torch import save_file

    other = cache / "other.safetensors"
    save_file({"embeddings": torch.zeros(2, 3)}, str(other))
    with pytest.raises(LlmDitError, match="not a reference-stats file"):
        rs.load_reference_stats(other)
    with pytest.raises(LlmDitError, match="encoder_fingerprint must be a non-empty string"):
        rs.load_or_compute("", "tk", TEXTS, [-2], FakeEncoder())
