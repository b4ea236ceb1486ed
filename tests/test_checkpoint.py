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


def test_torch_build_is_read_without_importing_it():
    """The light answer to "auto" rests on torch/version.py: the same constants torch reports once imported."""
    from llm_dit.models import devices

    gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    assert devices._torch_gpu_build() is gpu_build
    assert devices.cuda_available() is torch.cuda.is_available()


NAMES = [None, "auto", "cpu", "CPU ", "cuda", "cuda:0", "cuda:7", "tpu"]
DTYPES = [None, "auto", "bf16", "bfloat16", "fp32", "float32", "fp16", "int8"]


def _outcome(function, *args):
    try:
        return function(*args)
    except LlmDitError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("device", NAMES)
def test_light_numerics_equal_what_torch_resolves(device: str | None):
    """What enters run ids (device type / dtype) and every refusal: the light names equal the torch ones."""
    from llm_dit.models import devices

    def heavy(name: str | None, dtype: str | None) -> str:
        resolved = resolve_device(name, "pipeline.device")
        return f"{resolved.type}/{resolve_dtype(dtype, resolved)}"

    for dtype in DTYPES:
        want = _outcome(heavy, device, dtype)
        assert _outcome(devices.numerics_label, device, dtype, "pipeline.device") == want, (device, dtype)
    assert _outcome(devices.device_type, device) == _outcome(lambda n: resolve_device(n).type, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize(
    ("setting", "fix"),
    [
        ("pipeline.device", 'use --dit-device cpu (or device = "cpu" in the config\'s [PROFILE.pipeline])'),
        ("encoder.device", "use --encoder-device cpu"),
        ("pipeline.vae_device", 'use --vae-device cpu (or vae_device = "cpu"'),
        ("metrics.device", 'set device = "cpu" in the config\'s [PROFILE.metrics]'),
        (None, "use --dit-device cpu, --encoder-device cpu and --vae-device cpu"),
    ],
)
def test_cuda_message_names_flags_that_exist(setting: str | None, fix: str):
    from llm_dit.config import CLI_FLAGS
    from llm_dit.models import devices

    with pytest.raises(LlmDitError) as caught:
        resolve_device("cuda", setting)
    message = str(caught.value)
    assert f"device cuda requested but CUDA is not available; {fix}" in message
    assert _outcome(devices.device_type, "cuda", setting) == f"error: {message}"  # the light path says the same
    named = {word for word in message.replace(",", " ").split() if word.startswith("--")}
    assert named <= set(CLI_FLAGS.values())  # no flag that does not exist (the old "--device")
    assert bool(named) is (setting != "metrics.device")  # the metric models' device is a config key only
    if setting in CLI_FLAGS:
        assert CLI_FLAGS[setting] in named


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


# --- weight files: headers and sizes -----------------------------------------------------------------

DIT_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return length, json.loads(data[8 : 8 + length])


def _with_header(path: Path, header: dict, pad_to: int | None = None) -> bytes:
    """The file's tensor data behind another JSON header (space-padded to ``pad_to`` bytes, as safetensors pads)."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    raw = json.dumps(header).encode()
    raw += b" " * ((pad_to or len(raw)) - len(raw))
    return len(raw).to_bytes(8, "little") + raw + data[8 + length :]


def _damaged(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    length, header = _header(path)
    name = sorted(k for k in header if k != "__metadata__")[0]
    if how == "truncated":
        return data[:-1]
    if how == "truncated-half":
        return data[: len(data) // 2]
    if how == "appended":
        return data + b"\0"
    if how == "garbage":
        return bytes((i * 37 + 11) % 256 for i in range(len(data)))
    if how == "empty":
        return b""
    if how == "header-length-too-large":
        return (len(data)).to_bytes(8, "little") + data[8:]
    if how == "header-not-json":
        return data[:8] + b"{" + b"x" * (length - 1) + data[8 + length :]
    if how == "shape-off":
        header[name] = {**header[name], "shape": [*header[name]["shape"], 2]}
        return _with_header(path, header, pad_to=length)
    if how == "offsets-gap":
        begin, end = header[name]["data_offsets"]
        header[name] = {**header[name], "data_offsets": [begin + 2, end + 2]}
        return _with_header(path, header, pad_to=length)
    raise AssertionError(how)


DAMAGE = (
    "truncated",
    "truncated-half",
    "appended",
    "garbage",
    "empty",
    "header-length-too-large",
    "header-not-json",
    "shape-off",
    "offsets-gap",
)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(
    "weights", [DIT_WEIGHTS, "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
)
def test_damaged_weight_file_is_one_line_naming_it(ckpt_copy: Path, weights: str, how: str):
    """A weight file that safetensors itself would refuse is refused by the check, before anything loads."""
    from safetensors import SafetensorError, safe_open

    path = ckpt_copy / weights
    _replace(path, _damaged(path, how))
    with pytest.raises(SafetensorError), safe_open(str(path), framework="numpy"):  # the reference refuses it too
        pass
    with pytest.raises(CheckpointError) as caught:
        validate_checkpoint(ckpt_copy)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{weights} is not a valid safetensors file" in message and "re-download or re-copy it" in message


def test_validation_reads_headers_not_tensors(ckpt_copy: Path):
    """Tensor bytes are not read (a check in milliseconds): changed data behind a whole header still validates,
    as safetensors opens it."""
    from safetensors import safe_open

    path = ckpt_copy / DIT_WEIGHTS
    data = bytearray(path.read_bytes())
    length, _ = _header(path)
    for i in range(8 + length, len(data), 97):
        data[i] ^= 0xFF
    _replace(path, bytes(data))
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.keys()
    assert validate_checkpoint(ckpt_copy).cap_feat_dim == 32


@pytest.fixture
def sharded(ckpt_copy: Path) -> Path:
    """The copy with its text encoder in two shards and an index, as large checkpoints ship."""
    from safetensors.numpy import load_file, save_file

    folder = ckpt_copy / "text_encoder"
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return ckpt_copy


def test_sharded_weights_are_checked_shard_by_shard(sharded: Path):
    assert validate_checkpoint(sharded).num_text_layers == 36
    shard = sharded / "text_encoder/model-00002-of-00002.safetensors"
    good = shard.read_bytes()
    _replace(shard, good[:-10])
    with pytest.raises(CheckpointError, match=r"text_encoder/model-00002-of-00002.safetensors is not a valid"):
        validate_checkpoint(sharded)
    _replace(shard, good)
    index = sharded / "text_encoder/model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["layers.99.extra.weight"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(
        CheckpointError, match=r"model-00002-of-00002.safetensors lacks tensor 'layers.99.extra.weight'"
    ):
        validate_checkpoint(sharded)
    data["weight_map"] = {}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json lists no weights"):
        validate_checkpoint(sharded)


def test_module_exports():
    for name in checkpoint.__all__:
        assert hasattr(checkpoint, name), name


# --- the scheduler's shift -------------------------------------------------------------------------------------

SCHEDULER = "scheduler/scheduler_config.json"


def _with_scheduler(root: Path, **changes: object) -> CheckpointInfo:
    """``root``'s scheduler_config.json with ``changes`` (a value None removes the key), validated again."""
    config = json.loads((root / SCHEDULER).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    _replace(root / SCHEDULER, json.dumps(config).encode())
    return validate_checkpoint(root)


def test_the_default_shift_is_the_checkpoints_scheduler_shift(ckpt_copy: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from llm_dit.constants import DEFAULT_SHIFT, SHIFT_FROM_CHECKPOINT, SHIFT_FROM_DEFAULT

    assert checkpoint.default_shift(validate_checkpoint(ckpt_copy)) == (3.0, SHIFT_FROM_CHECKPOINT)  # Turbo's
    assert checkpoint.default_shift(_with_scheduler(ckpt_copy, shift=5.0)) == (5.0, SHIFT_FROM_CHECKPOINT)
    # A config without "shift" samples at the scheduler class's own default, as diffusers does (1.0, not 3.0).
    info = _with_scheduler(ckpt_copy, shift=None)
    assert checkpoint.default_shift(info)[0] == FlowMatchEulerDiscreteScheduler.from_config(info.scheduler_config).shift
    # Components in memory have no scheduler config: the built-in Turbo value, said so.
    assert checkpoint.default_shift(None) == (DEFAULT_SHIFT, SHIFT_FROM_DEFAULT)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"use_dynamic_shifting": True}, "sets use_dynamic_shifting = true (a shift that depends on the image size)"),
        ({"use_karras_sigmas": True}, "sets use_karras_sigmas = true, which llm-dit's schedule does not implement"),
        ({"shift_terminal": 0.1}, "sets shift_terminal = 0.1"),
        ({"num_train_timesteps": 500}, "sets num_train_timesteps = 500"),
        ({"_class_name": "EulerDiscreteScheduler"}, "is a EulerDiscreteScheduler; llm-dit samples with"),
        ({"shift": 0}, "has shift 0; it must be a number > 0"),
        ({"shift": "3"}, 'has shift "3"; it must be a number > 0'),
    ],
)
def test_a_scheduler_llm_dit_does_not_reproduce_is_refused(ckpt_copy: Path, changes: dict, needle: str):
    """Refused in one line naming the key and the way out (a fixed shift), never sampled differently from diffusers;
    only when the checkpoint's shift is needed (validation itself accepts the checkpoint)."""
    info = _with_scheduler(ckpt_copy, **changes)
    with pytest.raises(CheckpointError) as excinfo:
        checkpoint.default_shift(info)
    message = str(excinfo.value)
    assert "\n" not in message and needle in message, message
    assert message.startswith(f"checkpoint {ckpt_copy}: scheduler/scheduler_config.json")
    assert message.endswith("set a fixed shift instead (--shift, --set shift=..., or shift in [PROFILE.generation])")


@pytest.mark.skipif(torch.cuda.is_available(), reason="hand values of a machine without CUDA")
def test_resolved_numerics_are_the_strings_run_ids_hashed():
    """``str(torch.float32)`` is "torch.float32": the light names must keep exactly that spelling, or every run id
    (which hashes them) would change."""
    from llm_dit.config import Settings
    from llm_dit.generation.checks import resolved_numerics

    assert str(torch.float32) == "torch.float32" and str(torch.bfloat16) == "torch.bfloat16"
    assert resolved_numerics(Settings()) == dict.fromkeys(("encoder", "dit", "vae"), "cpu/torch.float32")
    mixed = Settings().with_overrides({"pipeline.torch_dtype": "bf16", "pipeline.vae_dtype": "fp32"})
    assert resolved_numerics(mixed) == {
        "encoder": "cpu/torch.float32",
        "dit": "cpu/torch.bfloat16",
        "vae": "cpu/torch.float32",
    }
