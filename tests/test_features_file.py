"""Caption-feature files: what encode writes, generate --embeddings (or a script) reads back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_dit.conditioning.features_file import load_features, save_features
from llm_dit.errors import LlmDitError


def test_a_saved_file_reads_back_bit_for_bit_with_its_metadata(tmp_path: Path) -> None:
    features = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "sub" / "cat.safetensors"
    save_features(path, features, {"prompt": "A cat", "token_count": 7, "layers": [-2, -6], "missing": None})
    got, meta = load_features(path)
    assert torch.equal(got, features)
    assert meta == {"prompt": "A cat", "token_count": "7", "layers": "[-2, -6]"}
    assert [p.name for p in path.parent.iterdir()] == ["cat.safetensors"]  # no temp file left


def test_bad_files_are_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(LlmDitError, match=r"^--embeddings x: no such file$"):
        load_features(tmp_path / "nope.safetensors", "--embeddings x")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(LlmDitError, match=r"not a readable \.safetensors file"):
        load_features(garbage)
    with pytest.raises(LlmDitError, match="features must have shape"):
        save_features(tmp_path / "bad.safetensors", torch.zeros(2, 3, 4), {})
