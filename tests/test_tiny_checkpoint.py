"""The tiny Z-Image checkpoint: complete, loadable by diffusers, deterministic, and input-sensitive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_dit.models import tiny
from llm_dit.models.tiny import (
    FULL_SIZE_CONFIGS,
    TINY_CONFIGS,
    TINY_VERSION,
    build_tiny_checkpoint,
    cache_root,
    component_configs,
    make_components,
    tiny_checkpoint_path,
)

WEIGHT_FILES = {
    "transformer": "transformer/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
}


def test_directory_has_all_parts(tiny_checkpoint: Path):
    for rel in [
        "model_index.json",
        "transformer/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        *WEIGHT_FILES.values(),
    ]:
        assert (tiny_checkpoint / rel).is_file(), rel
    index = json.loads((tiny_checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert tiny_checkpoint.stat().st_mode & 0o777 == 0o755
    # No staging folder left next to it.
    assert [p.name for p in tiny_checkpoint.parent.iterdir()] == [tiny_checkpoint.name]


def test_saved_configs_keep_the_real_geometry(tiny_checkpoint: Path):
    dit = json.loads((tiny_checkpoint / "transformer/config.json").read_text())
    text = json.loads((tiny_checkpoint / "text_encoder/config.json").read_text())
    vae = json.loads((tiny_checkpoint / "vae/config.json").read_text())
    sched = json.loads((tiny_checkpoint / "scheduler/scheduler_config.json").read_text())
    assert dit["axes_lens"][0] == 1536
    assert sum(dit["axes_dims"]) == dit["dim"] // dit["n_heads"]
    assert all(d % 2 == 0 for d in dit["axes_dims"])
    assert dit["n_refiner_layers"] == 2
    assert dit["cap_feat_dim"] == text["hidden_size"]
    assert text["num_hidden_layers"] == 36
    assert text["vocab_size"] == 151936
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 16
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    assert not vae["use_quant_conv"] and not vae["use_post_quant_conv"]
    assert (sched["shift"], sched["use_dynamic_shifting"], sched["num_train_timesteps"]) == (3.0, False, 1000)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: Path):
    from diffusers import ZImagePipeline

    from llm_dit.models.devices import quiet_hf

    with quiet_hf():
        pipeline = ZImagePipeline.from_pretrained(tiny_checkpoint)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe, prompt: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        prompt=prompt,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=0.0,
        generator=generator,
        output_type="pt",
    ).images


def test_diffusers_pipeline_runs(pipe):
    image = generate(pipe, "A cat")
    assert image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all()
    assert image.std() > 0.05  # not a flat image
    assert torch.equal(image, generate(pipe, "A cat"))  # deterministic


def test_prompt_and_seed_change_the_image(pipe):
    base = generate(pipe, "A cat")
    other_prompt = generate(pipe, "A dog standing in the rain")
    other_seed = generate(pipe, "A cat", seed=1)
    # Guards against a degenerate (zero-initialised) model where the caption is ignored.
    assert (base - other_prompt).abs().mean() > 0.005
    assert (base - other_seed).abs().mean() > 0.05


def test_same_seed_same_weights_and_seeds_differ(tiny_checkpoint: Path):
    same = make_components("tiny", seed=0, with_tokenizer=False)
    other = make_components("tiny", seed=1, with_tokenizer=False)
    for name, rel in WEIGHT_FILES.items():
        saved = load_file(tiny_checkpoint / rel)
        rebuilt = same[name].state_dict()
        assert saved.keys() == rebuilt.keys()
        assert all(torch.equal(saved[k], rebuilt[k]) for k in saved), name
        different = other[name].state_dict()
        assert not any(torch.equal(saved[k], different[k]) for k in saved if saved[k].numel() > 1), name


def test_no_parameter_is_left_at_zero():
    components = make_components("tiny", seed=0, with_tokenizer=False)
    for name in ("transformer", "text_encoder", "vae"):
        for pname, param in components[name].named_parameters():
            assert param.abs().min() > 0 or param.abs().mean() > 1e-3, f"{name}.{pname}"
            assert param.std() > 0 or param.numel() == 1, f"{name}.{pname} is constant"
    dit = components["transformer"]
    assert dit.cap_pad_token.abs().mean() > 0.1 and dit.x_pad_token.abs().mean() > 0.1


def test_components_are_the_real_classes():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Model

    components = make_components("tiny", seed=0)
    assert set(components) == {"tokenizer", "text_encoder", "transformer", "vae", "scheduler"}
    assert isinstance(components["transformer"], ZImageTransformer2DModel)
    assert isinstance(components["text_encoder"], Qwen3Model)
    assert isinstance(components["vae"], AutoencoderKL)
    assert isinstance(components["scheduler"], FlowMatchEulerDiscreteScheduler)
    assert type(components["tokenizer"]).__name__ == "Qwen2Tokenizer"
    assert components["text_encoder"].config.num_hidden_layers == 36
    assert components["transformer"].config.axes_lens[0] == 1536


def test_dtype_is_applied_at_build():
    components = make_components("tiny", seed=0, dtype=torch.bfloat16, with_tokenizer=False)
    for name in ("transformer", "text_encoder", "vae"):
        assert {p.dtype for p in components[name].parameters()} == {torch.bfloat16}, name
    assert torch.get_default_dtype() == torch.float32  # build context restored the default


def test_full_size_configs_are_the_turbo_values():
    dit, text, vae = FULL_SIZE_CONFIGS["transformer"], FULL_SIZE_CONFIGS["text_encoder"], FULL_SIZE_CONFIGS["vae"]
    assert (dit["dim"], dit["n_layers"], dit["n_refiner_layers"], dit["n_heads"], dit["n_kv_heads"]) == (
        3840,
        30,
        2,
        30,
        30,
    )
    assert dit["cap_feat_dim"] == text["hidden_size"] == 2560
    assert dit["axes_dims"] == [32, 48, 48] and dit["axes_lens"] == [1536, 512, 512]
    assert (dit["rope_theta"], dit["t_scale"], dit["norm_eps"], dit["qk_norm"]) == (256.0, 1000.0, 1e-5, True)
    assert (text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"]) == (36, 32, 8)
    assert (text["head_dim"], text["intermediate_size"], text["vocab_size"]) == (128, 9728, 151936)
    assert (text["rope_theta"], text["rms_norm_eps"], text["max_position_embeddings"]) == (1e6, 1e-6, 40960)
    assert text["tie_word_embeddings"] is True
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["layers_per_block"] == 2
    assert (vae["norm_num_groups"], vae["sample_size"], vae["latent_channels"]) == (32, 1024, 16)
    assert FULL_SIZE_CONFIGS["scheduler"] == {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def test_full_size_architecture_parameter_counts():
    """Built on the meta device (no memory): the DiT has ~6.15 B parameters, Qwen3-4B's text model ~4.0 B."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    configs = component_configs("full")
    with torch.device("meta"):
        dit = ZImageTransformer2DModel(**configs["transformer"])
        text = Qwen3Model(Qwen3Config(**configs["text_encoder"]))
    dit_params = sum(p.numel() for p in dit.parameters())
    text_params = sum(p.numel() for p in text.parameters())
    assert 6.0e9 < dit_params < 6.3e9, dit_params
    assert 3.9e9 < text_params < 4.1e9, text_params


def test_tiny_keeps_depths_and_shrinks_widths():
    assert TINY_CONFIGS["text_encoder"]["num_hidden_layers"] == FULL_SIZE_CONFIGS["text_encoder"]["num_hidden_layers"]
    assert TINY_CONFIGS["transformer"]["axes_lens"] == FULL_SIZE_CONFIGS["transformer"]["axes_lens"]
    assert TINY_CONFIGS["transformer"]["dim"] < FULL_SIZE_CONFIGS["transformer"]["dim"]
    configs = component_configs("tiny")
    configs["transformer"]["dim"] = -1  # a copy: the module-level configs are untouched
    assert TINY_CONFIGS["transformer"]["dim"] == 64
    with pytest.raises(Exception, match="unknown model preset"):
        component_configs("huge")


# --- cache and atomic publication -------------------------------------------------------------------


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("LLM_DIT_CACHE")
    assert cache_root() == tmp_path / "xdg" / "llm-dit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "llm-dit"


def test_tiny_checkpoint_path_builds_once_in_versioned_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls: list[tuple[Path, int]] = []

    def fake_build(path: Path, seed: int = 0, *, exist_ok: bool = False) -> Path:
        calls.append((Path(path), seed))
        Path(path).mkdir(parents=True)
        (Path(path) / "model_index.json").write_text("{}")
        return Path(path)

    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "build_tiny_checkpoint", fake_build)
    expected = tmp_path / f"tiny-v{TINY_VERSION}-seed3"
    assert tiny_checkpoint_path(seed=3) == expected
    assert tiny_checkpoint_path(seed=3) == expected  # cached: no second build
    assert calls == [(expected, 3)]


def test_publish_race_loser_discards_its_copy(tmp_path: Path):
    dest = tmp_path / "ckpt"
    winner, loser = tmp_path / ".w", tmp_path / ".l"
    for folder, text in ((winner, "winner"), (loser, "loser")):
        folder.mkdir()
        (folder / "model_index.json").write_text(text)
    assert tiny._publish_dir(winner, dest) is True
    assert tiny._publish_dir(loser, dest) is False
    assert (dest / "model_index.json").read_text() == "winner"
    assert not winner.exists() and not loser.exists()


def test_build_refuses_existing_path(tmp_path: Path):
    existing = tmp_path / "ckpt"
    existing.mkdir()
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(existing)
    assert build_tiny_checkpoint(existing, exist_ok=True) == existing.absolute()


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tiny, "make_components", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_checkpoint(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []
