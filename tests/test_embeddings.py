"""Tests for llm_dit.conditioning.embeddings: hand-computed expectations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from bounds import EPS32
from llm_dit.conditioning.embeddings import (
    apply_fill_mode,
    blend_layers,
    compress,
    compress_sequence,
)
from llm_dit.constants import FILL_MODES, LONG_PROMPT_MODES
from llm_dit.errors import LlmDitError

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
COMPRESSING_MODES = [m for m in LONG_PROMPT_MODES if m != "none"]


def ramp(rows: int, dim: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row j is [dim*j, dim*j + 1, ...]: every row is distinct and exactly representable."""
    return torch.arange(rows * dim, dtype=dtype).reshape(rows, dim)


def adaptive_windows(length: int, target: int) -> list[range]:
    return [range(math.floor(i * length / target), math.ceil((i + 1) * length / target)) for i in range(target)]


# ---------------------------------------------------------------------------------------------
# blend_layers


def test_blend_weighted_average() -> None:
    a = ramp(2, 3)  # [[0,1,2],[3,4,5]]
    b = torch.full((2, 3), 10.0)
    out = blend_layers({-2: a, -5: b}, {-2: 0.7, -5: 0.3})
    expected = torch.tensor([[3.0, 3.7, 4.4], [5.1, 5.8, 6.5]])
    torch.testing.assert_close(out, expected)


def test_blend_normalises_by_sum() -> None:
    a = ramp(2, 3)
    b = torch.full((2, 3), 10.0)
    # Weights 2 and 2 are the same blend as 0.5 and 0.5.
    out = blend_layers({-2: a, -5: b}, {-2: 2.0, -5: 2.0})
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.5, 6.0], [6.5, 7.0, 7.5]]))


def test_blend_negative_weight_and_unused_layers() -> None:
    a = ramp(2, 3)
    b = torch.full((2, 3), 10.0)
    unused = torch.full((2, 3), 1e6)
    # (2a - b) / (2 - 1); layer 0 has no weight and must not contribute.
    out = blend_layers({-2: a, -5: b, 0: unused}, {-2: 2.0, -5: -1.0})
    torch.testing.assert_close(out, torch.tensor([[-10.0, -8.0, -6.0], [-4.0, -2.0, 0.0]]))


def test_blend_single_layer_is_identity_and_not_aliased() -> None:
    a = ramp(3, 4)
    out = blend_layers({-2: a}, {-2: 0.25})
    assert torch.equal(out, a)
    out.add_(1.0)
    assert torch.equal(a, ramp(3, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_blend_dtype_and_fp32_accumulation(dtype: torch.dtype) -> None:
    x = torch.linspace(-3, 3, 64).reshape(8, 8).to(dtype)
    out = blend_layers({-1: x, -2: x, -3: x}, {-1: 1 / 3, -2: 1 / 3, -3: 1 / 3})
    assert out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, x)
    else:
        # Three thirds of one tensor, summed in fp32, round back to the tensor itself.
        assert torch.equal(out, x)


@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        ({}, "empty"),
        ({-2: 1.0, -7: 1.0}, "not provided"),
        ({-2: float("nan"), -5: 1.0}, "not finite"),
        ({-2: float("inf"), -5: 1.0}, "not finite"),
        ({-2: 1.0, -5: -1.0}, "layer weights sum to zero; they are normalised by their sum"),
        ({-2: 1.0, -5: -1.0 + 1e-10}, "layer weights sum to zero"),
    ],
)
def test_blend_errors(weights: dict[int, float], needle: str) -> None:
    layers = {-2: ramp(2, 3), -5: torch.ones(2, 3)}
    with pytest.raises(LlmDitError, match=needle):
        blend_layers(layers, weights)


def test_blend_shape_mismatch() -> None:
    with pytest.raises(LlmDitError, match="shape"):
        blend_layers({-2: torch.ones(2, 3), -5: torch.ones(3, 3)}, {-2: 1.0, -5: 1.0})


# ---------------------------------------------------------------------------------------------
# compress


def test_truncate_keeps_first_rows() -> None:
    x = ramp(10)
    out = compress(x, 4, "truncate")
    assert torch.equal(out, x[:4])


def test_interpolate_exact_on_linear_ramp_and_keeps_ends() -> None:
    x = ramp(8)  # row j = [2j, 2j+1]; sampled at positions i * 7/3
    out = compress(x, 4, "interpolate")
    expected = torch.tensor([[0.0, 1.0], [14 / 3, 17 / 3], [28 / 3, 31 / 3], [14.0, 15.0]])
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[-1], x[-1])


def test_interpolate_keeps_ends_on_random_input() -> None:
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
    out = compress(x, 11, "interpolate")
    assert out.shape == (11, 5)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[-1], x[-1])


def test_pool_hand_computed() -> None:
    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0]).unsqueeze(1)
    # L=6, T=4: windows [0,1] [1,2] [3,4] [4,5] (floor(i*L/T) .. ceil((i+1)*L/T)-1).
    out = compress(x, 4, "pool")
    torch.testing.assert_close(out, torch.tensor([[0.5], [2.5], [12.5], [20.5]]))
    # L=5, T=2: overlapping windows [0,1,2] [2,3,4].
    out = compress(ramp(5, 1), 2, "pool")
    torch.testing.assert_close(out, torch.tensor([[1.0], [3.0]]))


def test_attention_pool_hand_computed() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # mean = [0.75, 0.25]; cos(row0) = 0.75/|m|, cos(row1) = 0.25/|m|; window 0 = rows 0, 1.
    norm = math.sqrt(0.75**2 + 0.25**2)
    e0, e1 = math.exp(0.75 / norm), math.exp(0.25 / norm)
    out = compress(x, 2, "attention_pool")
    expected = torch.tensor([[e0 / (e0 + e1), e1 / (e0 + e1)], [1.0, 0.0]])
    torch.testing.assert_close(out, expected)
    # Row 0 is closer to the mean than row 1, so it outweighs it (plain pool would give 0.5).
    assert out[0, 0] > 0.6


def test_attention_pool_equals_pool_when_all_rows_equally_similar() -> None:
    # Positive multiples of one direction: every cosine is 1, so the weights are uniform.
    x = torch.arange(1, 10, dtype=torch.float32).unsqueeze(1) * torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(compress(x, 4, "attention_pool"), compress(x, 4, "pool"))


def test_attention_pool_rows_are_convex_combinations_of_their_window() -> None:
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    out = compress(x, 7, "attention_pool")
    assert out.shape == (7, 6)
    for i, window in enumerate(adaptive_windows(50, 7)):
        rows = x[window.start : window.stop]
        # A K-term weighted sum with softmax weights (their sum off 1 by ~K eps) is off by <= 2 K eps max|x|.
        slack = 2 * len(rows) * EPS32 * rows.abs().max()
        assert torch.all(out[i] >= rows.min(dim=0).values - slack)
        assert torch.all(out[i] <= rows.max(dim=0).values + slack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", COMPRESSING_MODES)
def test_compress_dtypes_and_length(mode: str, dtype: torch.dtype) -> None:
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(2)).to(dtype)
    before = x.clone()
    out = compress(x, 13, mode)
    assert out.dtype == dtype
    assert out.device == x.device
    assert out.shape == (13, 16)
    assert torch.isfinite(out.float()).all()
    assert torch.equal(x, before)  # input untouched


@pytest.mark.parametrize("mode", LONG_PROMPT_MODES)
def test_compress_under_cap_returns_copy(mode: str) -> None:
    x = ramp(5)
    out = compress(x, 5, mode)
    assert torch.equal(out, x)
    out.add_(1.0)
    assert torch.equal(x, ramp(5))  # not aliased


def test_compress_none_over_cap_raises() -> None:
    with pytest.raises(LlmDitError, match="content is 9 tokens, over the cap of 8; choose a long_prompt_mode"):
        compress(ramp(9), 8, "none")


def test_compress_argument_errors() -> None:
    with pytest.raises(LlmDitError) as info:
        compress(ramp(5), 3, "squash")
    for mode in LONG_PROMPT_MODES:
        assert mode in str(info.value)
    with pytest.raises(LlmDitError, match="target must be >= 1"):
        compress(ramp(5), 0, "pool")
    with pytest.raises(LlmDitError, match="rank"):
        compress(torch.zeros(1, 5, 2), 3, "pool")
    with pytest.raises(LlmDitError, match="rank"):
        compress(torch.zeros(5), 3, "pool")
    with pytest.raises(LlmDitError, match="floating-point"):
        compress(torch.zeros(5, 2, dtype=torch.long), 3, "pool")


# ---------------------------------------------------------------------------------------------
# compress_sequence


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", COMPRESSING_MODES)
def test_compress_sequence_keeps_prefix_and_suffix(mode: str, dtype: torch.dtype) -> None:
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(3)).to(dtype)
    out = compress_sequence(x, 3, 2, 20, mode)
    assert out.shape == (20, 8)
    assert out.dtype == dtype
    assert torch.equal(out[:3], x[:3])
    assert torch.equal(out[-2:], x[-2:])
    torch.testing.assert_close(out[3:-2], compress(x[3:-2], 15, mode))


def test_compress_sequence_truncate_middle_and_zero_suffix() -> None:
    x = ramp(12, 1)
    out = compress_sequence(x, 2, 0, 6, "truncate")
    assert out.squeeze(1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    out = compress_sequence(x, 2, 3, 8, "truncate")
    assert out.squeeze(1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 10.0, 11.0]


def test_compress_sequence_under_cap_and_errors() -> None:
    x = ramp(10)
    assert torch.equal(compress_sequence(x, 2, 2, 10, "none"), x)
    with pytest.raises(LlmDitError, match="over the cap of 9"):
        compress_sequence(x, 2, 2, 9, "none")
    with pytest.raises(LlmDitError, match="no room"):
        compress_sequence(x, 3, 2, 5, "pool")
    with pytest.raises(LlmDitError, match="valid modes: truncate, interpolate, pool, attention_pool, none"):
        compress_sequence(x, 1, 1, 5, "bogus")


# ---------------------------------------------------------------------------------------------
# fill modes: the seed's 847 -> 1000 example scaled to 7 -> 10 (rows e_j = [2j, 2j+1])


def rows(spec: list[int | None]) -> torch.Tensor:
    """Row j of ramp(7) for an int j, a zero row for None."""
    return torch.tensor([[0.0, 0.0] if j is None else [2.0 * j, 2.0 * j + 1] for j in spec])


FILL_EXPECTED: dict[str, torch.Tensor] = {
    "content_only": rows([0, 1, 2, 3, 4, 5, 6]),
    "pad_end_zero": rows([0, 1, 2, 3, 4, 5, 6, None, None, None]),
    # mean of rows 0..6 = [6, 7], the row of index 3
    "pad_end_mean": rows([0, 1, 2, 3, 4, 5, 6, 3, 3, 3]),
    # half = 7 // 2 = 3 (seed: 847 // 2 = 423)
    "pad_middle_zero": rows([0, 1, 2, None, None, None, 3, 4, 5, 6]),
    "filler_repeat": rows([0, 1, 2, 3, 4, 5, 6, 0, 1, 2]),
}


@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_mode_worked_example(mode: str) -> None:
    assert torch.equal(apply_fill_mode(ramp(7), 10, mode), FILL_EXPECTED[mode])


def test_fill_modes_cover_constants() -> None:
    assert set(FILL_EXPECTED) == set(FILL_MODES)


def test_pad_middle_zero_even_and_filler_many_repeats() -> None:
    out = apply_fill_mode(ramp(4), 7, "pad_middle_zero")
    assert torch.equal(out, rows([0, 1, None, None, None, 2, 3]))
    out = apply_fill_mode(ramp(3), 8, "filler_repeat")
    assert torch.equal(out, rows([0, 1, 2, 0, 1, 2, 0, 1]))


@pytest.mark.parametrize("target", [4, 7])
@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_mode_at_or_over_target_truncates(mode: str, target: int) -> None:
    x = ramp(7)
    assert torch.equal(apply_fill_mode(x, target, mode), x[:target])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", FILL_MODES)
def test_fill_mode_dtypes(mode: str, dtype: torch.dtype) -> None:
    x = ramp(7, dtype=dtype)
    before = x.clone()
    out = apply_fill_mode(x, 10, mode)
    assert out.dtype == dtype
    assert out.device == x.device
    assert out.shape[0] == (7 if mode == "content_only" else 10)
    assert torch.equal(out, FILL_EXPECTED[mode].to(dtype))
    out.add_(1.0)
    assert torch.equal(x, before)  # neither modified nor aliased


def test_pad_end_mean_bf16_uses_fp32_mean() -> None:
    x = torch.tensor([[256.0], [1.0], [1.0]], dtype=torch.bfloat16)
    out = apply_fill_mode(x, 4, "pad_end_mean")
    assert out[3, 0].item() == 86.0  # 258/3 = 86.0 exactly representable in bf16


def test_fill_mode_errors() -> None:
    with pytest.raises(LlmDitError) as info:
        apply_fill_mode(ramp(3), 5, "pad_start")
    for mode in FILL_MODES:
        assert mode in str(info.value)
    with pytest.raises(LlmDitError, match="target_length must be >= 1"):
        apply_fill_mode(ramp(3), 0, "pad_end_zero")
    with pytest.raises(LlmDitError, match="rank"):
        apply_fill_mode(torch.zeros(1, 3, 2), 5, "pad_end_zero")
    with pytest.raises(LlmDitError, match="empty"):
        apply_fill_mode(torch.zeros(0, 2), 5, "filler_repeat")
