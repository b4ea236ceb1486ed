"""Embedding statistics (metrics/embedding_stats.py): hand-computed values for the tensor functions, condition
parsing, and compare_embeddings on the tiny checkpoint checked against a direct computation from encoder.encode.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from bounds import EPS32, EPS64, probable, transformer_length
from llm_dit.conditioning.embedding_stats import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    Condition,
    aligned_token_cosine,
    compare_embeddings,
    content_rows,
    dim_stats,
    outlier_dims,
    parse_condition,
    pooled_cosine,
    token_cosine,
)
from llm_dit.conditioning.text_encoder import ZImageTextEncoder
from llm_dit.config import parse_scalar
from llm_dit.errors import LlmDitError

# float results within derived bounds: CI runs these again with 2 threads
pytestmark = [pytest.mark.usefixtures("cached_tokenizer"), pytest.mark.numerics]

PROMPTS = ["A tabby cat sleeping on a sunlit windowsill", "red"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- pure functions ---------------------------------------------------------------------------------------------


def test_identical_sequences_have_cosine_exactly_one():
    # Qwen3-4B's width: cosine_similarity or dot / (|a| |b|) give 1 +- 1 ulp for most such rows.
    x = torch.randn(64, 2560, generator=_gen())
    assert aligned_token_cosine(x, x.clone()) == (1.0, 64)
    # Row by row too (a mean over many rows would round 1 - 1 ulp back to 1).
    for i in range(32):
        row = x[i : i + 1]
        assert token_cosine(row, row.clone()) == pooled_cosine(row, row.clone()) == 1.0
    assert pooled_cosine(x, x.clone()) == 1.0


def test_orthogonal_tokens_have_cosine_zero():
    a = torch.zeros(4, 3)
    b = torch.zeros(4, 3)
    a[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b[:, 1] = torch.tensor([5.0, -1.0, 2.0, 7.0])
    assert token_cosine(a, b) == 0.0
    assert pooled_cosine(a, b) == 0.0


def test_known_rotation_and_scale():
    # Token i lies in the (0, 1) plane at angle phi_i; b rotates it by theta_i and scales it by s_i (one negative,
    # which flips the sign of its cosine). Expected token cosine: mean of sign(s_i) * cos(theta_i).
    phi = torch.tensor([0.1, 1.0, 2.0, -0.5], dtype=torch.float64)
    theta = torch.tensor([0.0, math.pi / 3, math.pi / 2, math.pi / 4], dtype=torch.float64)
    r = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    s = torch.tensor([4.0, 0.1, 2.0, -3.0], dtype=torch.float64)
    a = torch.zeros(4, 5, dtype=torch.float64)
    b = torch.zeros(4, 5, dtype=torch.float64)
    a[:, 0], a[:, 1] = r * phi.cos(), r * phi.sin()
    b[:, 0], b[:, 1] = s * (phi + theta).cos(), s * (phi + theta).sin()
    expected = (1.0 + 0.5 + 0.0 - math.sqrt(0.5)) / 4
    # Each cosine: inputs from cos/sin (1 ulp each), a dot product and norms over D = 5, a division: ~(D + 4) eps;
    # the mean of 4 adds 4 eps, the hand value's own pi / 3, cos and sqrt a few more: 16 eps64 in all.
    assert token_cosine(a, b) == pytest.approx(expected, rel=0, abs=16 * EPS64)
    # Scaling a whole sequence changes no cosine (up to the rounding of 5 a and of the D = 5 dot products).
    assert token_cosine(a, 5 * a) == pytest.approx(1.0, rel=0, abs=16 * EPS64)
    assert pooled_cosine(a, -2 * a) == pytest.approx(-1.0, rel=0, abs=16 * EPS64)


def test_pooled_cosine_of_mean_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 1.0]])  # mean (1, 1); lengths may differ
    assert pooled_cosine(a, b) == pytest.approx(1 / math.sqrt(2), rel=0, abs=8 * EPS64)  # D = 2: a few ulps


def test_length_mismatch_aligns_on_the_prefix():
    a = torch.randn(6, 8, generator=_gen(1))
    tail = torch.randn(3, 8, generator=_gen(2))
    b = torch.cat([a[:4], -a[4:], tail])  # 4 equal rows, 2 opposite rows, 3 extra rows
    # Cosines of equal / opposite rows (D = 8) are +-1 to (D + 4) eps; the mean of 6 adds 6 eps.
    assert aligned_token_cosine(a, b) == pytest.approx(((4 - 2) / 6, 6), rel=0, abs=(8 + 4 + 6) * EPS64)
    assert aligned_token_cosine(b, a)[1] == 6
    # Appended rows alone leave the token cosine at 1 and pull the pooled cosine below 1.
    longer = torch.cat([a, tail])
    assert aligned_token_cosine(a, longer) == (1.0, 6)
    assert pooled_cosine(a, longer) < 0.999  # ~0.8 here: 0.2 away, float64 noise ~1e-15


def test_bf16_input():
    x = torch.randn(5, 16, generator=_gen(3)).to(torch.bfloat16)
    # bf16 -> float64 and bf16 -> float32 -> float64 are the same values: exactly 1.
    assert token_cosine(x, x.float()) == 1.0
    stats, ref = dim_stats(x), dim_stats(x.double())
    assert torch.equal(stats.std, ref.std) and stats.mean.dtype == torch.float64
    assert stats.max_abs == ref.max_abs == float(x.float().abs().max())
    y = torch.randn(5, 16, generator=_gen(4))
    # bf16 -> float64 and float32 -> float64 are exact: the same float64 inputs, the same computation.
    assert token_cosine(x, y) == token_cosine(x.double(), y.double())


def test_dim_stats_known_values():
    s = dim_stats(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert (s.tokens, s.dims) == (2, 2)
    assert s.mean.tolist() == [1.5, 2.0]
    assert s.std.tolist() == [1.5, 2.0]  # population std over tokens
    assert (s.token_norm_mean, s.token_norm_min, s.token_norm_max) == (2.5, 0.0, 5.0)
    assert s.value_mean == 1.75
    assert s.value_std == pytest.approx(math.sqrt(12.75 / 4), rel=8 * EPS64, abs=0)  # a std over 4 values
    assert s.max_abs == 4.0
    one = dim_stats(torch.tensor([[1.0, -2.0]]))  # one token: std 0, not NaN
    assert one.std.tolist() == [0.0, 0.0]


def test_a_dimension_scaled_100x_is_the_outlier():
    x = torch.randn(200, 16, generator=_gen(5))
    y = x.clone()
    y[:, 7] *= 100
    out = outlier_dims(dim_stats(y).std, dim_stats(x).std, threshold=10.0, top=3)
    assert [d for d, _ in out.dims] == [7]
    # y[:, 7] = 100 x rounded to float32: each value off by eps32 / 2 relative, so its std by at most that times
    # |x| / |x - mean| (~1.05 for 200 normal samples); float64 arithmetic adds ~200 eps64. Bound: 2 eps32.
    assert out.dims[0][1] == pytest.approx(100.0, rel=2 * EPS32)
    assert out.max_ratio == pytest.approx(100.0, rel=2 * EPS32)
    assert out.top[0][0] == 7 and len(out.top) == 3
    # The other dims are unchanged: a ratio of two float64 stds of the same 200 values (maybe reduced in other
    # vector lanes), 2 x 200 eps64.
    assert out.top[1][1] == pytest.approx(1.0, rel=0, abs=2 * 200 * EPS64)
    # Above the threshold nothing is an outlier, but the top ratios are still reported.
    high = outlier_dims(dim_stats(y).std, dim_stats(x).std, threshold=150.0)
    assert high.dims == [] and high.top[0][0] == 7 and len(high.top) == 5


def test_outliers_sorted_descending_and_scalar_reference():
    std = torch.tensor([1.0, 50.0, 1.0, 20.0, 20.0, 1.0])
    out = outlier_dims(std, 1.0, threshold=10.0)
    assert out.dims == [(1, 50.0), (3, 20.0), (4, 20.0)]  # ties: lower dim first
    within = outlier_dims(std, std.median(), threshold=10.0)  # outliers within one embedding
    assert [d for d, _ in within.dims] == [1, 3, 4]


def test_zero_reference_std_is_floored_not_inf():
    out = outlier_dims(torch.tensor([1.0, 0.0]), torch.zeros(2))
    assert all(math.isfinite(r) for r in out.ratios.tolist())
    assert out.ratios[0] > 1e9 and out.ratios[1] == 0.0
    assert [d for d, _ in out.dims] == [0]


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(4), torch.zeros(4, 2), "rank 2"),
        (torch.zeros(1, 4, 2), torch.zeros(4, 2), "rank 2"),
        (torch.zeros(3, 4), torch.zeros(3, 5), r"D=4.*D=5"),
        (torch.zeros(0, 4), torch.zeros(3, 4), "empty"),
        (torch.zeros(3, 0), torch.zeros(3, 0), "empty"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), "floating-point"),
        ([[1.0, 2.0]], torch.zeros(1, 2), "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("fn", [token_cosine, pooled_cosine, aligned_token_cosine])
def test_bad_input(fn, a, b, match):
    with pytest.raises(LlmDitError, match=match):
        fn(a, b)


def test_bad_input_stats_and_outliers():
    with pytest.raises(LlmDitError, match="rank 2"):
        dim_stats(torch.zeros(3))
    with pytest.raises(LlmDitError, match="empty"):
        dim_stats(torch.zeros(0, 3))
    with pytest.raises(LlmDitError, match=r"D=3.*D=4"):
        outlier_dims(torch.ones(3), torch.ones(4))
    with pytest.raises(LlmDitError, match="vector"):
        outlier_dims(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(LlmDitError, match="threshold"):
        outlier_dims(torch.ones(3), torch.ones(3), threshold=0)
    with pytest.raises(LlmDitError, match="top"):
        outlier_dims(torch.ones(3), torch.ones(3), top=-1)


def test_content_rows():
    x = torch.arange(10.0).reshape(5, 2)
    assert content_rows(x, 1, 2).tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert content_rows(x, 3, 2) is None  # an empty prompt has no content rows


# -- conditions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("think_block=empty", {"think_block": "empty"}),
        ("hidden_layer=-6", {"hidden_layer": -6}),
        ("hidden_layer=-2,think_block=empty", {"hidden_layer": -2, "think_block": "empty"}),
        (" hidden_layer = -2 , encoder.think_block = empty ", {"hidden_layer": -2, "think_block": "empty"}),
        ("layer_weights=-2:0.7,-5:0.3", {"layer_weights": "-2:0.7,-5:0.3"}),
        ('think_block="a, b=c",hidden_layer=-3', {"think_block": "a, b=c", "hidden_layer": -3}),
        ("think_block=The user wants a cat.", {"think_block": "The user wants a cat."}),
        ("default", {}),
    ],
)
def test_parse_condition(text, overrides):
    cond = parse_condition(text)
    assert cond.overrides == overrides
    assert cond.label == text.strip()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hiden_layer=-6", "unknown encoder setting 'hiden_layer'; did you mean 'hidden_layer'"),
        ("hidden_layer=99", "out of range"),
        ("hidden_layer=abc", "must be an integer"),
        ("think_block=", "ambiguous"),
        ("long_prompt_mode=squash", "long_prompt_mode"),
        ("hidden_layer", "not key=value"),
        ("hidden_layer=-2,hidden_layer=-3", "given twice"),
        ("torch_dtype=bfloat16", "fixed when the encoder loads"),
    ],
)
def test_parse_condition_errors(text, match):
    with pytest.raises(LlmDitError, match=match):
        parse_condition(text)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("-6", -6),
        (" 2.5 ", 2.5),
        ("true", True),
        ('"a, b"', "a, b"),
        ("[1, 2]", [1, 2]),
        ("{a = 1}", {"a": 1}),
        ("empty", "empty"),
        ("-2:0.7,-5:0.3", "-2:0.7,-5:0.3"),
        (" The user wants a cat. ", "The user wants a cat."),
        ("", ""),
    ],
)
def test_parse_scalar(raw, value):
    # TOML value syntax; anything TOML rejects is the bare (stripped) string. cli's --set parses values the same.
    assert parse_scalar(raw) == value and type(parse_scalar(raw)) is type(value)


# -- compare_embeddings on the tiny checkpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(cached_tokenizer, tiny_checkpoint):
    return ZImageTextEncoder.from_pretrained(tiny_checkpoint, device="cpu", torch_dtype="float32")


@pytest.fixture(scope="module")
def report(encoder):
    conditions = [parse_condition(t) for t in ("default", "think_block=empty", "hidden_layer=-6")]
    return compare_embeddings(encoder, PROMPTS, conditions, outlier_threshold=1.2, top_outliers=3)


def _rows(report, label):
    return [row for row in report.rows if row["condition"] == label]


def test_report_shape_and_columns(report):
    assert [list(row) for row in report.rows] == [list(ROW_COLUMNS)] * 6
    assert [(r["prompt_index"], r["condition"]) for r in report.rows] == [
        (p, c) for p in range(2) for c in ("default", "think_block=empty", "hidden_layer=-6")
    ]
    assert [list(s) for s in report.summary] == [list(SUMMARY_COLUMNS)] * 3
    assert report.reference.label == "default"


def test_reference_rows_are_exactly_one(report):
    for row in _rows(report, "default"):
        assert row["token_cosine"] == row["pooled_cosine"] == row["content_cosine"] == 1.0
        assert row["max_std_ratio"] == 1.0 and row["outlier_dims"] == 0 and row["top_outliers"] == ""
        assert row["std_ratio"] == row["mean_correlation"] == row["std_correlation"] == 1.0
        assert row["aligned_tokens"] == row["tokens"]


def _cosine_noise(encoder, tokens: int) -> float:
    """How far float32 rounding can move a cosine between two encodings of the same tokens made in other batch
    shapes (bounds.probable of the encoder's summed reduction length, for each of the two embeddings).

    Not count_reductions/rounding_bound, as test_encoder.py uses for the encoder's states: that worst-case bound
    is per element, eps * factor * max |states| (factor ~12700 for the first prompt here); carried through
    each row's norm it allows a relative error of 0.4-0.7% per row, a cosine bound of ~3e-2, 400x this one, and
    this test would no longer tell rounding from a real change of the shared rows. What is compared here is a
    cosine of two float32 forwards of one network, whose worst case is as large as the value compared: the case
    probable() is for, as for the metric towers (scorer_tolerance), the relative error of each unit-normalised
    row, summed over the two rows."""
    return 2 * probable(transformer_length(encoder.model.config, tokens))


def test_think_block_adds_tokens_and_changes_the_pooled_embedding(report, encoder):
    for ref, row in zip(_rows(report, "default"), _rows(report, "think_block=empty"), strict=True):
        assert row["tokens"] > ref["tokens"]
        assert row["aligned_tokens"] == ref["tokens"]
        assert row["pooled_cosine"] < 0.999  # the extra rows move the mean far more than noise (~7e-5, _cosine_noise)
        # Causal attention: the shared prefix (everything before the think block) is computed from the same
        # tokens, so the aligned rows agree, up to rounding (a longer, differently padded batch); the think
        # block's effect is the extra rows.
        assert row["token_cosine"] == pytest.approx(1.0, rel=0, abs=_cosine_noise(encoder, row["tokens"]))


def test_other_layer_changes_every_token(report):
    for ref, row in zip(_rows(report, "default"), _rows(report, "hidden_layer=-6"), strict=True):
        assert row["tokens"] == ref["tokens"]
        # Another layer's features: cosines far below 1 and std ratios far from 1 (float noise is ~1e-5 at most).
        assert row["token_cosine"] < 0.99 and row["pooled_cosine"] < 0.99 and row["content_cosine"] < 0.99
        assert abs(row["max_std_ratio"] - 1.0) > 0.01


def _independent_row(enc, ref, threshold: float, top: int) -> tuple[dict, dict, np.ndarray, list[int]]:
    """A report row recomputed in numpy float64 from the two encodings, by other formulas than the module's
    (norms via np.linalg.norm, cosines as dot / (|a| |b|), two-pass np.std, a stable argsort for the ranking).

    Returns (exact columns, float columns, the std ratios, the dimensions shown in top_outliers)."""
    x = enc.embeddings.double().numpy()
    r = ref.embeddings.double().numpy()

    def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        return float(np.mean(np.einsum("ld,ld->l", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    def pooled(a: np.ndarray, b: np.ndarray) -> float:
        pa, pb = a.mean(axis=0), b.mean(axis=0)
        return float(pa @ pb / (np.linalg.norm(pa) * np.linalg.norm(pb)))

    content = x[enc.prefix_len : len(x) - enc.suffix_len]
    ref_content = r[ref.prefix_len : len(r) - ref.suffix_len]
    ratios = np.std(x, axis=0) / np.std(r, axis=0)
    order = np.argsort(-ratios, kind="stable")  # descending, ties by dimension
    outliers = [int(d) for d in order if ratios[d] > threshold]
    exact = {
        "tokens": len(x),
        "aligned_tokens": min(len(x), len(r)),
        "content_tokens": min(len(content), len(ref_content)),
        "max_abs": float(np.abs(x).max()),  # a max: no rounding
        "outlier_dims": len(outliers),
        "top_outliers": " ".join(f"{d}:{ratios[d]:.1f}" for d in outliers[:top]),
    }
    floats = {
        "token_cosine": mean_cos(x, r),
        "pooled_cosine": pooled(x, r),
        "content_cosine": mean_cos(content, ref_content),
        "mean_token_norm": float(np.linalg.norm(x, axis=1).mean()),
        "value_mean": float(x.mean()),
        "value_std": float(x.std()),
        "max_std_ratio": float(ratios.max()),
        "std_ratio": float(x.std() / r.std()),
        "mean_correlation": float(np.corrcoef(x.mean(axis=0), r.mean(axis=0))[0, 1]),
        "std_correlation": float(np.corrcoef(x.std(axis=0), r.std(axis=0))[0, 1]),
    }
    return exact, floats, ratios, outliers[:top]


def test_rows_equal_an_independent_computation(report, encoder):
    # The same encodings (same prompts, same batch: the same forward), statistics recomputed independently.
    direct = {c.label: encoder.encode(PROMPTS, **c.overrides) for c in report.conditions}
    threshold, top = report.outlier_threshold, 3
    for row in report.rows:
        enc = direct[row["condition"]][row["prompt_index"]]
        ref = direct["default"][row["prompt_index"]]
        exact, floats, ratios, shown = _independent_row(enc, ref, threshold, top)
        assert row["prompt"] == PROMPTS[row["prompt_index"]]
        assert {k: row[k] for k in exact} == exact, row["condition"]
        # Bound: every column is a float64 reduction over at most n = L*D exactly converted float32 values (two
        # passes for a std, a ratio of two such for the std ratios), so two summation orders differ by at most
        # 4 n eps64 relative to the magnitude: |value| for the norms, stds and ratios, 1 for a cosine (|cos| <= 1)
        # and a correlation (a cosine of centred vectors), and the mean |value| for value_mean (a mean of mixed-sign
        # values may cancel to ~0).
        n = max(enc.embeddings.numel(), ref.embeddings.numel())
        scale = {
            "token_cosine": 1.0,
            "pooled_cosine": 1.0,
            "content_cosine": 1.0,
            "mean_correlation": 1.0,  # a cosine of centred vectors
            "std_correlation": 1.0,
            "value_mean": float(enc.embeddings.double().abs().mean()),
        }
        for key, want in floats.items():
            bound = 4 * n * EPS64 * scale.get(key, abs(want))
            assert abs(row[key] - want) <= bound, (row["condition"], key, row[key], want, bound)
        # The outlier count and the "%.1f" ratios are only comparable if no ratio sits within float noise of the
        # threshold or of a rounding boundary of the format: checked, so the exact comparison above is sound.
        noise = 4 * n * EPS64 * ratios.max()
        assert np.abs(ratios - threshold).min() > noise
        assert all(abs((ratios[d] * 10) % 1 - 0.5) > 10 * noise for d in shown)
    # The outlier threshold is low enough here that the other layer has outliers: the column is exercised.
    assert any(row["outlier_dims"] > 0 for row in _rows(report, "hidden_layer=-6"))


def test_summary_is_the_mean_over_prompts(report):
    for entry in report.summary:
        own = _rows(report, entry["condition"])
        assert entry["prompts"] == len(own) == 2
        for col in ("tokens", "token_cosine", "pooled_cosine", "max_std_ratio", "value_std"):
            # (a + b) / 2 is one correctly rounded sum and an exact halving, however it is written: bit-equal.
            assert entry[col] == (own[0][col] + own[1][col]) / 2
    assert report.summary[0]["top_outliers"] == ""


def test_layer_variants_share_one_forward(encoder):
    calls = []
    handle = encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        labels = ("default", "hidden_layer=-6", "hidden_layer=-10", "layer_weights=-2:0.5,-3:0.5")
        compare_embeddings(encoder, PROMPTS, [parse_condition(t) for t in labels])
        assert len(calls) == 1
        compare_embeddings(encoder, PROMPTS, [parse_condition(t) for t in (*labels, "think_block=empty")])
        assert len(calls) == 3  # the think block changes the tokens: a second forward
    finally:
        handle.remove()


def _no_model():
    raise AssertionError("the text encoder model must not be loaded here")


@pytest.mark.parametrize(
    ("conditions", "prompts", "match"),
    [
        ([Condition("far", {"hidden_layer": -37}), Condition("x", {"hidden_layer": 30})], PROMPTS, None),
        ([Condition("a", {}), Condition("bad", {"hidden_layer": 40})], PROMPTS, "out of range"),
        ([Condition("a", {}), Condition("b", {"hiden_layer": 1})], PROMPTS, "did you mean 'hidden_layer'"),
        ([Condition("a", {}), Condition("b", {"device": "cpu"})], PROMPTS, "fixed when the encoder loads"),
        ([Condition("a", {}), Condition("a", {"hidden_layer": -6})], PROMPTS, "given twice"),
        # The first group is fine; the second cannot tokenize: still no forward of the first group.
        (
            [
                Condition("a", {}),
                Condition("b", {"think_block": "empty", "long_prompt_mode": "none", "max_text_tokens": 12}),
            ],
            PROMPTS,
            "over the cap",
        ),
        ([Condition("a", {})], [], "at least one prompt"),
        ([], PROMPTS, "at least one condition"),
    ],
)
def test_errors_before_the_model_loads(encoder, conditions, prompts, match):
    cold = ZImageTextEncoder(encoder.tokenizer, model_loader=_no_model, num_layers=encoder.num_layers)
    if match is None:
        # Valid conditions do reach the model (proves the cold encoder would notice a load).
        with pytest.raises(AssertionError, match="must not be loaded"):
            compare_embeddings(cold, prompts, conditions)
        return
    with pytest.raises(LlmDitError, match=match):
        compare_embeddings(cold, prompts, conditions)


def test_to_csv_and_json_round_trip(encoder, tmp_path):
    conditions = [parse_condition("default"), parse_condition("hidden_layer=-6")]
    rep = compare_embeddings(encoder, ['a "quoted", comma prompt', ""], conditions)
    empty = [r for r in rep.rows if r["prompt"] == ""]
    assert all(r["content_cosine"] is None and r["content_tokens"] == 0 for r in empty)

    with open(rep.to_csv(tmp_path / "rows.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(ROW_COLUMNS) and len(table) == 4
    for row, got in zip(rep.rows, table, strict=True):
        assert got["prompt"] == row["prompt"]
        assert float(got["token_cosine"]) == row["token_cosine"]  # full precision
        assert got["content_cosine"] == ("" if row["content_cosine"] is None else repr(row["content_cosine"]))
    with open(rep.to_csv(tmp_path / "summary.csv", table="summary"), newline="") as f:
        summary = list(csv.DictReader(f))
    assert [s["condition"] for s in summary] == ["default", "hidden_layer=-6"]

    data = json.loads(rep.to_json(tmp_path / "report.json").read_text())
    assert data["rows"] == rep.rows and data["summary"] == rep.summary
    assert data["columns"] == list(ROW_COLUMNS) and data["reference"] == "default"
    assert data["conditions"][1] == {"label": "hidden_layer=-6", "overrides": {"hidden_layer": -6}}
    assert not list(tmp_path.glob(".*.tmp"))
