"""Checkpoint validation (no weights), fingerprint, device/dtype resolution and loaders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.models import checkpoint, tiny
from llm_dit.models.checkpoint import (
    CheckpointInfo,
    fingerprint,
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vae,
    resolve_model_path,
    validate_checkpoint,
)
from llm_dit.models.devices import resolve_device, resolve_dtype


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # cheap; every test that damages a file replaces it instead of editing in place
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture
def ckpt_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint (hard links) that a test may damage."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, dest, copy_function=_link_or_copy)
    return dest


def _replace(path: Path, data: bytes) -> None:
    """Write a file without touching its hard-linked original."""
    path.unlink()
    path.write_bytes(data)


def test_validate_tiny_checkpoint(tiny_checkpoint: Path):
    info = validate_checkpoint(tiny_checkpoint)
    assert isinstance(info, CheckpointInfo)
    assert info.path == tiny_checkpoint
    assert info.num_text_layers == 36
    assert info.text_hidden_size == 32
    assert info.cap_feat_dim == 32
    assert info.vae_scale_factor == 8
    assert info.size_multiple == 16
    assert info.max_caption_tokens == 1504
    assert info.scheduler_config["shift"] == 3.0
    assert info.model_index["_class_name"] == "ZImagePipeline"
    assert info.tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer"


def test_properties_of_the_real_configs(tmp_path: Path):
    """The same properties computed from the full-size (Turbo) configs."""
    full = tiny.component_configs("full")
    info = CheckpointInfo(
        path=tmp_path,
        model_index={},
        transformer_config=full["transformer"],
        text_encoder_config=full["text_encoder"],
        vae_config=full["vae"],
        scheduler_config=full["scheduler"],
        tokenizer_config={},
    )
    assert (info.num_text_layers, info.text_hidden_size, info.cap_feat_dim) == (36, 2560, 2560)
    assert (info.vae_scale_factor, info.size_multiple, info.max_caption_tokens) == (8, 16, 1504)
    assert info.scheduler_config["shift"] == 3.0


@pytest.mark.parametrize(
    ("axes_lens", "cap"), [([1536, 512, 512], 1504), ([1024, 512, 512], 992), ([1540, 64, 64], 1536), (None, 992)]
)
def test_caption_cap_from_the_rope_axis(axes_lens, cap):
    # P (caption length rounded up to 32) + 1 <= axes_lens[0] - 1; a missing key means diffusers' default axis.
    config = {} if axes_lens is None else {"axes_lens": axes_lens}
    assert checkpoint.dit_max_caption_tokens(config) == cap
    assert (cap + 1) <= (axes_lens or [1024])[0] - 1 < cap + 33


def test_module_level_helpers_match_checkpoint_info(tiny_checkpoint: Path):
    """LlmDitPipeline.from_components uses the same helpers on in-memory configs."""
    info = validate_checkpoint(tiny_checkpoint)
    assert checkpoint.dit_cap_feat_dim(info.transformer_config) == info.cap_feat_dim == 32
    assert checkpoint.dit_max_caption_tokens(info.transformer_config) == info.max_caption_tokens
    assert checkpoint.vae_size_multiple(info.vae_config) == info.size_multiple == 16
    assert checkpoint.vae_size_multiple({"block_out_channels": [8, 8, 8]}) == 8  # 3 blocks: /4 VAE, 2x2 patches


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model_index.json", "missing model_index.json"),
        ("transformer/config.json", "missing transformer/config.json"),
        ("text_encoder/config.json", "missing text_encoder/config.json"),
        ("vae/config.json", "missing vae/config.json"),
        ("scheduler/scheduler_config.json", "missing scheduler/scheduler_config.json"),
        ("scheduler", "missing scheduler/scheduler_config.json"),
        ("tokenizer", "missing tokenizer/"),
        ("tokenizer/tokenizer.json", "missing tokenizer/tokenizer.json"),
        ("transformer/diffusion_pytorch_model.safetensors", "missing transformer/*.safetensors"),
        ("text_encoder/model.safetensors", "missing text_encoder/*.safetensors"),
        ("vae/diffusion_pytorch_model.safetensors", "missing vae/*.safetensors"),
        ("transformer", "missing transformer/config.json"),
    ],
)
def test_missing_part_is_named(ckpt_copy: Path, remove: str, named: str):
    target = ckpt_copy / remove
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(CheckpointError) as excinfo:
        validate_checkpoint(ckpt_copy)
    message = str(excinfo.value)
    assert named in message
    assert str(ckpt_copy) in message and "diffusers layout" in message
    assert "\n" not in message


def test_all_missing_parts_are_listed(ckpt_copy: Path):
    (ckpt_copy / "vae/config.json").unlink()
    (ckpt_copy / "text_encoder/model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing vae/config.json, text_encoder/\*\.safetensors"):
        validate_checkpoint(ckpt_copy)


def test_sharded_weights_need_every_shard(ckpt_copy: Path):
    weights = ckpt_copy / "transformer/diffusion_pytorch_model.safetensors"
    shard = ckpt_copy / "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"
    weights.rename(shard)
    index = {
        "metadata": {},
        "weight_map": {
            "a": shard.name,
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        },
    }
    (ckpt_copy / "transformer/diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing transformer/diffusion_pytorch_model-00002-of-00002"):
        validate_checkpoint(ckpt_copy)


def test_tokenizer_vocab_files_are_accepted(ckpt_copy: Path):
    (ckpt_copy / "tokenizer/tokenizer.json").unlink()
    (ckpt_copy / "tokenizer/vocab.json").write_text("{}")
    (ckpt_copy / "tokenizer/merges.txt").write_text("")
    assert validate_checkpoint(ckpt_copy).num_text_layers == 36


def test_nonexistent_path(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=r"nope does not exist \(expected a Z-Image checkpoint"):
        validate_checkpoint(missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        validate_checkpoint(a_file)


def test_malformed_config_is_named(ckpt_copy: Path):
    _replace(ckpt_copy / "vae/config.json", b"{ not json")
    with pytest.raises(CheckpointError, match=r"cannot read vae/config\.json"):
        validate_checkpoint(ckpt_copy)


def test_text_width_must_match_the_dit(ckpt_copy: Path):
    path = ckpt_copy / "transformer/config.json"
    config = json.loads(path.read_text())
    config["cap_feat_dim"] = 2560
    _replace(path, json.dumps(config).encode())
    with pytest.raises(CheckpointError, match=r"cap_feat_dim 2560 does not match .* hidden_size 32"):
        validate_checkpoint(ckpt_copy)


def test_other_transformer_class_is_refused(ckpt_copy: Path):
    path = ckpt_copy / "transformer/config.json"
    config = json.loads(path.read_text())
    config["_class_name"] = "FluxTransformer2DModel"
    _replace(path, json.dumps(config).encode())
    with pytest.raises(CheckpointError, match="FluxTransformer2DModel, not ZImageTransformer2DModel"):
        validate_checkpoint(ckpt_copy)


def test_resolve_model_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(tiny, "tiny_checkpoint_path", lambda seed=0: tmp_path / "cached-tiny")
    assert resolve_model_path(None) == tmp_path / "cached-tiny"
    assert resolve_model_path("tiny") == tmp_path / "cached-tiny"
    assert resolve_model_path(str(tmp_path / "x")) == tmp_path / "x"
    assert resolve_model_path(tmp_path / "y") == tmp_path / "y"


# --- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_location_independent(tiny_checkpoint: Path, ckpt_copy: Path):
    first = fingerprint(tiny_checkpoint)
    assert len(first) == 16 and int(first, 16) >= 0
    assert fingerprint(tiny_checkpoint) == first
    assert fingerprint(ckpt_copy) == first  # relative paths only
    (ckpt_copy / ".cache").mkdir()
    (ckpt_copy / ".cache" / "x").write_text("ignored")
    (ckpt_copy / ".DS_Store").write_text("ignored")
    assert fingerprint(ckpt_copy) == first  # hidden files are skipped


@pytest.mark.parametrize("where", ["start", "end", "grow"])
def test_fingerprint_changes_with_a_weight_file(tiny_checkpoint: Path, ckpt_copy: Path, where: str):
    weights = ckpt_copy / "text_encoder/model.safetensors"
    data = bytearray(weights.read_bytes())
    assert len(data) > 2 * (1 << 20)  # exercises the head and tail reads
    if where == "start":
        data[200] ^= 0xFF
    elif where == "end":
        data[-1] ^= 0xFF
    else:
        data += b"\0"
    _replace(weights, bytes(data))
    assert fingerprint(ckpt_copy) != fingerprint(tiny_checkpoint)


def test_fingerprint_changes_with_the_file_set(tiny_checkpoint: Path, ckpt_copy: Path):
    (ckpt_copy / "extra.txt").write_text("x")
    assert fingerprint(ckpt_copy) != fingerprint(tiny_checkpoint)


def test_fingerprint_of_missing_dir(tmp_path: Path):
    with pytest.raises(CheckpointError):
        fingerprint(tmp_path / "nope")


# --- device and dtype -----------------------------------------------------------------------------


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(LlmDitError, match="unknown device"):
        resolve_device("gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_explained():
    with pytest.raises(LlmDitError, match="CUDA is not available"):
        resolve_device("cuda")


def test_resolve_dtype():
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert resolve_dtype(None, torch.device("cuda", 0)) is torch.bfloat16
    for name in ("bf16", "bfloat16", "BF16", torch.bfloat16):
        assert resolve_dtype(name, "cpu") is torch.bfloat16
    for name in ("fp32", "float32", torch.float32):
        assert resolve_dtype(name, "cuda") is torch.float32


@pytest.mark.parametrize("name", ["fp16", "float16", "half", "FP16", torch.float16])
def test_fp16_is_refused_with_a_reason(name):
    with pytest.raises(LlmDitError, match=r"overflows in float16 \(NaN.*black images\).*bfloat16"):
        resolve_dtype(name, "cuda")


def test_unknown_dtype_lists_valid_names():
    with pytest.raises(LlmDitError, match="unknown dtype 'int8'; valid: auto, bf16, bfloat16, fp32, float32"):
        resolve_dtype("int8", "cpu")


# --- loaders --------------------------------------------------------------------------------------


def test_loaders_return_the_right_classes(tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str]):
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Model

    text_encoder = load_text_encoder(tiny_checkpoint, "cpu", torch.float32)
    transformer = load_transformer(tiny_checkpoint, "cpu", torch.bfloat16)
    vae = load_vae(tiny_checkpoint, torch.device("cpu"), torch.float32)
    assert isinstance(text_encoder, Qwen3Model) and text_encoder.dtype == torch.float32
    assert isinstance(transformer, ZImageTransformer2DModel) and transformer.dtype == torch.bfloat16
    assert isinstance(vae, AutoencoderKL) and vae.dtype == torch.float32
    for model in (text_encoder, transformer, vae):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert text_encoder.config.num_hidden_layers == 36
    assert transformer.config.axes_lens[0] == 1536
    out = capfd.readouterr()
    assert "Loading" not in out.err and "%|" not in out.err  # no progress bars
    assert validate_checkpoint(tiny_checkpoint).scheduler_config["shift"] == 3.0


def test_loaded_tokenizer_equals_the_built_one(tiny_checkpoint: Path):
    from llm_dit.models.tokenizer import build_qwen3_tokenizer

    loaded, built = load_tokenizer(tiny_checkpoint), build_qwen3_tokenizer()
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    text = "A cat 🐱 在窗台上 12345 <think>\n\n</think>\n\n don't"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.chat_template == built.chat_template
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (151643, 151645, "right")
    assert loaded.added_tokens_decoder[151667].special is False


def test_validation_reads_no_weights(ckpt_copy: Path):
    """Validation must not open weight files: corrupt weights still validate (loading would fail)."""
    _replace(ckpt_copy / "transformer/diffusion_pytorch_model.safetensors", b"garbage")
    assert validate_checkpoint(ckpt_copy).cap_feat_dim == 32


def test_module_exports():
    for name in checkpoint.__all__:
        assert hasattr(checkpoint, name), name
