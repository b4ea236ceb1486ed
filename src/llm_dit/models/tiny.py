"""Tiny but architecture-faithful Z-Image components and checkpoint, built offline.

The tiny preset keeps everything that experiments depend on (36 text-encoder layers so hidden-layer indices
-37..36 are the real range, 2 noise- and 2 context-refiner layers, the 1536-entry caption RoPE axis so the
1504-token cap is the real one, a 4-block /8 VAE with 16 latent channels, the real tokenizer and scheduler)
and shrinks only the widths. The "full" preset has the real Z-Image-Turbo configs, for benchmarks with random
full-size weights (build it on a GPU: ``make_components("full", device="cuda", dtype=torch.bfloat16)``).

Weights are random, seeded, and re-initialised by :func:`randomize_` so that every parameter matters:
diffusers zero-initialises the caption and image pad tokens, which would make padding invisible.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.constants import VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.models.cache import cache_root

if TYPE_CHECKING:  # torch is imported by the functions that build models: finding a cached checkpoint is light
    import torch
    from torch import nn

__all__ = [
    "FULL_SIZE_CONFIGS",
    "PRESETS",
    "TINY_CONFIGS",
    "TINY_VERSION",
    "build_tiny_checkpoint",
    "cache_root",
    "component_configs",
    "make_components",
    "randomize_",
    "tiny_checkpoint_path",
]

# Bump when the tiny configs or the init scheme change: cached checkpoints live in a folder named after it,
# so a change rebuilds instead of silently reusing stale weights.
TINY_VERSION = 1

_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}

# The real Z-Image-Turbo configs (transformer/, text_encoder/ = Qwen3-4B, vae/ = FLUX VAE, scheduler/).
FULL_SIZE_CONFIGS: dict[str, dict[str, Any]] = {
    "transformer": {
        "all_patch_size": [2],
        "all_f_patch_size": [1],
        "in_channels": 16,
        "dim": 3840,
        "n_layers": 30,
        "n_refiner_layers": 2,
        "n_heads": 30,
        "n_kv_heads": 30,
        "norm_eps": 1e-5,
        "qk_norm": True,
        "cap_feat_dim": 2560,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],  # the class default [1024, 512, 512] is NOT the Turbo value
    },
    "text_encoder": {
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 36,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": VAE_SCALING_FACTOR,
        "shift_factor": VAE_SHIFT_FACTOR,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    },
    "scheduler": dict(_SCHEDULER_CONFIG),
}

_TINY_TEXT_HIDDEN = 32

# Same architecture, small widths. Depths that experiments index into stay real.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "transformer": {
        **FULL_SIZE_CONFIGS["transformer"],
        "dim": 64,
        "n_layers": 2,
        "n_refiner_layers": 2,  # refiner ablations (skip / single / double) stay meaningful
        "n_heads": 2,
        "n_kv_heads": 2,
        "cap_feat_dim": _TINY_TEXT_HIDDEN,
        "axes_dims": [8, 12, 12],  # sums to head_dim 32; every RoPE axis even
    },
    "text_encoder": {
        **FULL_SIZE_CONFIGS["text_encoder"],
        "hidden_size": _TINY_TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
    },
    "vae": {
        **FULL_SIZE_CONFIGS["vae"],
        "block_out_channels": [16, 32, 32, 32],  # 4 blocks: /8 like the real VAE
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "scheduler": dict(_SCHEDULER_CONFIG),
}

PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {"tiny": TINY_CONFIGS, "full": FULL_SIZE_CONFIGS}

_COMPONENT_NAMES = ("text_encoder", "transformer", "vae")

# With unit q/k norms a random DiT attends almost uniformly, so image tokens see the caption only as an
# average drowned by identical pad tokens and prompts barely change the image (mean pixel change ~0.009 at
# 2 steps). Gain 3 on the DiT's q/k RMSNorm scales (logit std ~9) makes attention selective: a different
# prompt or hidden layer then changes the 64x64 image by ~0.03-0.04 mean absolute (seed: ~0.22).
_DIT_QK_NORM_GAIN = 3.0


def component_configs(preset: str = "tiny") -> dict[str, dict[str, Any]]:
    """A deep copy of the component configs of ``preset`` ("tiny" or "full")."""
    if preset not in PRESETS:
        raise LlmDitError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return copy.deepcopy({k: dict(v) for k, v in PRESETS[preset].items()})


@contextlib.contextmanager
def _build_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: no fp32 CPU copy of a full-size model.

    Sets torch's process-wide default dtype for the duration (restored after), so don't build models from
    two threads at once.
    """
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _component_seed(seed: int, component: str) -> int:
    """Independent, stable seed per component (changing one component's init leaves the others alone)."""
    digest = hashlib.sha256(f"llm-dit:{component}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def randomize_(module: nn.Module, seed: int, *, qk_norm_gain: float = 1.0) -> nn.Module:
    """Re-initialise every parameter of ``module`` in place with seeded random values of sensible scale.

    Weights of rank >= 2: normal with std 1/sqrt(fan_in) (unit-variance activations at any width);
    embeddings and learned pad tokens: standard normal; 1-D weights (norm scales): 1 + N(0, 0.1), times
    ``qk_norm_gain`` for attention query/key norms (``norm_q``/``norm_k``); biases: N(0, 0.02). Nothing stays
    zero, so every input (prompt, padding, hidden layer, seed) reaches the output. Deterministic for a given
    seed and device; runs on the module's device.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        device = next(module.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if id(param) in embeddings or "pad_token" in leaf:
                param.normal_(0.0, 1.0, generator=gen)
            elif param.ndim >= 2:
                fan_in = param[0].numel()
                param.normal_(0.0, fan_in**-0.5, generator=gen)
            elif leaf == "bias":
                param.normal_(0.0, 0.02, generator=gen)
            else:
                gain = qk_norm_gain if name.endswith(("norm_q.weight", "norm_k.weight")) else 1.0
                param.normal_(gain, 0.1 * gain, generator=gen)
        return module


def make_components(
    preset: str = "tiny",
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    with_tokenizer: bool = True,
) -> dict[str, Any]:
    """Build ``{"tokenizer", "text_encoder", "transformer", "vae", "scheduler"}`` from the real classes.

    Models are created on ``device`` in ``dtype`` (None: float32) and randomised there (deterministic for a given
    seed and device type). ``with_tokenizer=False`` skips the ~1 s tokenizer copy when only weights are needed.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    configs = component_configs(preset)
    device = torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    if not dtype.is_floating_point:
        raise LlmDitError(f"model dtype must be a floating type, got {dtype}")

    components: dict[str, Any] = {}
    with _build_context(device, dtype):
        text_config = Qwen3Config(**configs["text_encoder"])
        text_config.dtype = dtype
        components["text_encoder"] = Qwen3Model(text_config)
        components["transformer"] = ZImageTransformer2DModel(**configs["transformer"])
        components["vae"] = AutoencoderKL(**configs["vae"])
    for name in _COMPONENT_NAMES:
        model = components[name]
        gain = _DIT_QK_NORM_GAIN if name == "transformer" else 1.0
        randomize_(model, _component_seed(seed, name), qk_norm_gain=gain)
        model.eval().requires_grad_(False)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    if with_tokenizer:
        from llm_dit.models.tokenizer import build_qwen3_tokenizer

        components["tokenizer"] = build_qwen3_tokenizer()
    return components


def _publish_dir(staging: Path, dest: Path) -> bool:
    """Atomically move a fully written ``staging`` dir to ``dest``.

    Returns False (and deletes ``staging``) when ``dest`` already exists, e.g. another process won a race.
    """
    try:
        os.rename(staging, dest)  # atomic on one filesystem; fails if dest is a non-empty dir
    except OSError:
        if dest.exists():
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise
    return True


def build_folder(path: str | Path, write: Callable[[Path], None], *, exist_ok: bool = False) -> Path:
    """Run ``write(staging)`` in a hidden sibling folder of ``path``, then rename it into place and return ``path``.

    A crash never leaves a half-written folder at ``path``. If ``path`` exists: FileExistsError, or with
    ``exist_ok`` the existing folder is kept (and returned) and the new copy discarded (two processes may race).
    """
    dest = Path(path).expanduser().absolute()
    if dest.exists():
        if exist_ok:
            return dest
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private (0700); the published folder should read like any folder
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not _publish_dir(staging, dest) and not exist_ok:
        raise FileExistsError(f"{dest} was created by someone else while building")
    return dest


def build_tiny_checkpoint(path: str | Path, seed: int = 0, *, exist_ok: bool = False) -> Path:
    """Write a complete tiny Z-Image checkpoint (diffusers layout) to ``path`` and return it (:func:`build_folder`:
    never half-built at ``path``; an existing folder is FileExistsError, or kept with ``exist_ok``)."""
    from diffusers import ZImagePipeline

    from llm_dit.models.devices import quiet_hf

    def write(staging: Path) -> None:
        components = make_components("tiny", seed=seed)
        with quiet_hf():
            ZImagePipeline(**components).save_pretrained(staging, safe_serialization=True)
        # Provenance: what built this folder (read by people, not by loaders).
        (staging / "llm_dit_tiny.json").write_text(
            json.dumps({"preset": "tiny", "tiny_version": TINY_VERSION, "seed": seed}, indent=2) + "\n"
        )

    return build_folder(path, write, exist_ok=exist_ok)


def cached_tiny_folder(name: str, build: Callable[..., Path], marker: str, what: str, seed: int) -> Path:
    """``<cache>/<name>``, built by ``build(path, seed=seed, exist_ok=True)`` on first use (safe if two processes
    race: :func:`build_folder`); refused in one line if it lacks ``marker`` (someone edited the cache)."""
    path = cache_root() / name
    if not path.exists():
        build(path, seed=seed, exist_ok=True)
    if not (path / marker).is_file():
        raise CheckpointError(f"cached {what} {path} is damaged (no {marker}); delete it")
    return path


def tiny_checkpoint_path(seed: int = 0) -> Path:
    """The cached tiny checkpoint for ``seed``, built on first use."""
    return cached_tiny_folder(
        f"tiny-v{TINY_VERSION}-seed{seed}", build_tiny_checkpoint, "model_index.json", "tiny checkpoint", seed
    )
