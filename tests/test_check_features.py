"""``conditioning.embeddings.check_features``: the one check that caption features are a float ``[L, D]`` tensor.

Each problem gets one message naming the input, what is wrong and the fix; the pipeline's precomputed
embeddings, the encoder's layer blend, the pure operations, the embedding statistics and
``generate --embeddings`` all raise it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import assert_user_error, forbid_model_loading, run
from llm_dit.conditioning.embedding_stats import dim_stats, token_cosine
from llm_dit.conditioning.embeddings import apply_fill_mode, blend_layers, check_features, compress
from llm_dit.errors import LlmDitError
from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline

SETTINGS = {"encoder": {"device": "cpu", "torch_dtype": "float32"}, "pipeline": {"device": "cpu"}}
BAD = [  # (input, the message check_features gives for name "x")
    (
        [[1.0, 2.0]],
        "x must be a torch.Tensor of shape [L, D], got list; convert it with torch.as_tensor",
    ),
    (
        torch.zeros(4),
        "x must have shape [L, D] (rank 2), got rank 1 (4,); give one sequence: a row per token, a column per feature",
    ),
    (
        torch.zeros(1, 4, 2),
        "x must have shape [L, D] (rank 2), got rank 3 (1, 4, 2); "
        "give one sequence: a row per token, a column per feature",
    ),
    (
        torch.zeros(3, 4, dtype=torch.long),
        "x must be a floating-point tensor, got torch.int64; convert it with .float()",
    ),
    (
        torch.zeros(0, 4),
        "x is empty: shape (0, 4) has 0 rows and 4 columns; give at least one token (row) and one feature (column)",
    ),
    (
        torch.zeros(3, 0),
        "x is empty: shape (3, 0) has 3 rows and 0 columns; give at least one token (row) and one feature (column)",
    ),
]


def message(call, *args, **kwargs) -> str:
    with pytest.raises(LlmDitError) as info:
        call(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(("value", "expected"), BAD)
def test_each_problem_has_one_message_naming_it_and_the_fix(value, expected):
    assert message(check_features, value, "x") == expected


def test_width_and_length_against_the_dit():
    good = torch.zeros(3, 8)
    assert check_features(good, "x", width=8, max_rows=3) is good
    assert message(check_features, good, "x", width=16) == (
        "x has width 8, the DiT expects 16; use features of this checkpoint's text encoder"
    )
    assert message(check_features, good, "x", max_rows=2) == (
        "x has 3 rows, the DiT accepts 1..2; shorten them (e.g. compress_sequence)"
    )
    half = torch.zeros(3, 8, dtype=torch.bfloat16)
    assert check_features(half, "x") is half  # any float dtype, returned as given


@pytest.mark.parametrize(("value", "expected"), BAD)
def test_the_pure_operations_and_the_statistics_raise_the_same_message(value, expected):
    assert message(compress, value, 2, "pool") == expected.replace("x ", "content ", 1)
    assert message(apply_fill_mode, value, 2, "pad_end_zero") == expected.replace("x ", "embeds ", 1)
    assert message(blend_layers, {-2: value, -5: torch.zeros(2, 4)}, {-2: 0.5, -5: 0.5}) == expected.replace(
        "x ", "layer -2 ", 1
    )
    assert message(dim_stats, value) == expected
    assert message(token_cosine, value, torch.zeros(2, 4)) == expected.replace("x ", "a ", 1)


@pytest.fixture(scope="module")
def cold_pipe(tiny_checkpoint: Path) -> LlmDitPipeline:
    return LlmDitPipeline.from_pretrained(tiny_checkpoint, **SETTINGS)


@pytest.mark.parametrize(("value", "expected"), BAD)
def test_the_pipeline_checks_precomputed_embeddings_with_it(cold_pipe, value, expected):
    for name in ("embeddings", "negative_embeddings"):
        params = {"embeddings": torch.zeros(2, cold_pipe.cap_feat_dim), name: value, "guidance_scale": 2.0}
        request = GenerationRequest.build(width=64, height=64, steps=2, **params)
        assert message(cold_pipe.check, [request]) == expected.replace("x ", f"{name} ", 1)


def test_the_pipeline_passes_the_dits_width_and_caption_cap(cold_pipe):
    width, cap = cold_pipe.cap_feat_dim, cold_pipe.encoder.max_caption_tokens
    wide = GenerationRequest.build(embeddings=torch.zeros(2, width + 1), width=64, height=64)
    assert message(cold_pipe.check, [wide]) == (
        f"embeddings has width {width + 1}, the DiT expects {width}; use features of this checkpoint's text encoder"
    )
    long = GenerationRequest.build(embeddings=torch.zeros(cap + 1, width), width=64, height=64)
    assert f"embeddings has {cap + 1} rows, the DiT accepts 1..{cap}" in message(cold_pipe.check, [long])


def test_generate_embeddings_file_is_checked_on_load(capsys, monkeypatch, tiny_checkpoint: Path, tmp_path: Path):
    forbid_model_loading(monkeypatch)
    path = tmp_path / "batched.safetensors"
    save_file({"embeddings": torch.zeros(1, 5, 32)}, str(path))
    argv = ["generate", "--model-path", tiny_checkpoint, "--embeddings", path, "-o", tmp_path / "a.png"]
    rc, out, err = run(capsys, *argv)
    assert_user_error(rc, out, err, f"--embeddings {path} must have shape [L, D] (rank 2), got rank 3 (1, 5, 32)")
