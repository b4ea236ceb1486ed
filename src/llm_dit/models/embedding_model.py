"""Qwen3-Embedding-4B: its config, a tiny offline twin, a torch-free validator and the loader.

The released checkpoint is a ``Qwen3Model`` (no LM head) in the sentence-transformers layout: the model files at the
top (``config.json``, weights, tokenizer), ``modules.json`` naming Transformer -> Pooling(lasttoken) -> Normalize,
``1_Pooling/config.json``, ``2_Normalize/`` and ``config_sentence_transformers.json`` (the query prompt). Its
tokenizer pads on the left and appends ``<|endoftext|>`` (151643) to every input: the row retrieval pools.

The tiny twin has the real layout, the real tokenizer and all 36 layers (so hidden-layer indices -37..36 are the
real range) but width 32, the tiny Z-Image DiT's ``cap_feat_dim``, so its hidden states can condition the tiny DiT.
Its weights are its own (seed component ``"embedding"``), not the tiny text encoder's.

Validation reads JSON only (no torch, no transformers); the builder and the loader import them inside.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.constants import ENDOFTEXT_ID
from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.files import write_json
from llm_dit.models.tiny import (
    FULL_SIZE_CONFIGS,
    TINY_CONFIGS,
    _component_seed,
    build_folder,
    cached_tiny_folder,
    randomize_,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDING_MAX_LENGTH",
    "EMBEDDING_QUERY_TASK",
    "FULL_EMBEDDING_CONFIG",
    "TINY_EMBEDDING_CONFIG",
    "TINY_EMBEDDING_VERSION",
    "EmbeddingCheckpointInfo",
    "build_tiny_embedding",
    "load_embedding_model",
    "make_embedding_model",
    "tiny_embedding_path",
    "validate_embedding_checkpoint",
]

# Bump when the tiny config, its init or its folder layout change: the cache folder is named after it.
TINY_EMBEDDING_VERSION = 1

# Official retrieval usage: inputs truncated to 8192 tokens.
EMBEDDING_MAX_LENGTH = 8192

# The query task of the released config_sentence_transformers.json ("query" prompt).
EMBEDDING_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"

# Qwen3-Embedding-4B's config.json (Qwen3Model, AutoModel, no LM head): Qwen3-4B's architecture with its own
# vocabulary size and end token.
FULL_EMBEDDING_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    **FULL_SIZE_CONFIGS["text_encoder"],
    # vocab_size: 151665 is what third-party copies of the config report (not Qwen3-4B's 151936; the <think> ids
    # 151667/151668 lie outside it). It MUST be read from the real config.json of the checkpoint in use, never
    # assumed: validate_embedding_checkpoint reads it and the encoder refuses token ids at or above it.
    "vocab_size": 151665,
    "eos_token_id": ENDOFTEXT_ID,
}

# The tiny text encoder's shape (width 32 = the tiny DiT's cap_feat_dim, 36 layers), with the embedding model's
# own vocabulary size (ids >= 151665 are outside it, as in the real one).
TINY_EMBEDDING_CONFIG: dict[str, Any] = {
    **FULL_EMBEDDING_CONFIG,
    **{
        key: TINY_CONFIGS["text_encoder"][key]
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    },
}

_SEED_COMPONENT = "embedding"  # not "text_encoder": the twin's weights are its own

# The sentence-transformers files of the released checkpoint.
_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
_POOLING_FLAGS = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens")

_LAYOUT_HINT = "a Qwen3-Embedding folder holds config.json, model.safetensors and tokenizer.json at its top"


@dataclass(frozen=True)
class EmbeddingCheckpointInfo:
    """What an embedding checkpoint's config.json says (read before any weights load)."""

    path: Path
    hidden_size: int
    num_layers: int
    vocab_size: int


def _pooling_config(hidden_size: int) -> dict[str, Any]:
    return {
        "word_embedding_dimension": hidden_size,
        **{f"pooling_mode_{flag}": False for flag in _POOLING_FLAGS},
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }


def _embedding_tokenizer() -> Any:
    """The Qwen3 tokenizer as the embedding model releases it: left padding, ``<|endoftext|>`` appended."""
    from tokenizers.processors import TemplateProcessing

    from llm_dit.models.tokenizer import build_qwen3_tokenizer

    tok = build_qwen3_tokenizer()
    tok.padding_side = "left"
    eot = tok.convert_ids_to_tokens(ENDOFTEXT_ID)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A:0 {eot}:0", pair=f"$A:0 {eot}:0 $B:1 {eot}:1", special_tokens=[(eot, ENDOFTEXT_ID)]
    )
    return tok


def make_embedding_model(
    seed: int = 0,
    config: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Any:
    """A randomised ``Qwen3Model`` of ``config`` (default: the tiny twin's; ``FULL_EMBEDDING_CONFIG`` for full-size
    benchmarks), created and randomised directly on ``device`` in ``dtype`` (None: float32), in eval mode."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    from llm_dit.models.tiny import _build_context

    dtype = torch.float32 if dtype is None else dtype
    settings = copy.deepcopy(TINY_EMBEDDING_CONFIG if config is None else config)
    settings.pop("architectures")
    settings.pop("model_type")
    qwen3 = Qwen3Config(**settings)
    qwen3.dtype = dtype
    with _build_context(torch.device(device), dtype):
        model = Qwen3Model(qwen3)
    randomize_(model, _component_seed(seed, _SEED_COMPONENT))
    return model.eval().requires_grad_(False)


def build_tiny_embedding(path: str | Path, seed: int = 0, exist_ok: bool = False) -> Path:
    """Write the tiny Qwen3-Embedding twin (official + sentence-transformers layout) to ``path`` and return it.

    Built in a hidden sibling folder and renamed into place (:func:`llm_dit.models.tiny.build_folder`),
    so a crash never leaves half a model at ``path``. If ``path`` exists: FileExistsError, or with ``exist_ok``
    the existing folder is kept and returned.
    """
    from llm_dit.models.devices import quiet_hf

    def write(staging: Path) -> None:
        model = make_embedding_model(seed)
        config = model.config
        with quiet_hf():
            model.save_pretrained(staging, safe_serialization=True)
            _embedding_tokenizer().save_pretrained(staging)
        hidden = int(config.hidden_size)
        write_json(staging / "modules.json", _MODULES)
        write_json(
            staging / "config_sentence_transformers.json",
            {
                "prompts": {"query": f"Instruct: {EMBEDDING_QUERY_TASK}\nQuery:", "document": ""},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        )
        (staging / "1_Pooling").mkdir()
        write_json(staging / "1_Pooling" / "config.json", _pooling_config(hidden))
        (staging / "2_Normalize").mkdir()
        write_json(
            staging / "llm_dit_tiny.json",
            {"preset": "tiny-embedding", "tiny_embedding_version": TINY_EMBEDDING_VERSION, "seed": seed},
        )

    return build_folder(path, write, exist_ok=exist_ok)


def tiny_embedding_path(seed: int = 0) -> Path:
    """The cached tiny embedding twin for ``seed``, built on first use."""
    name = f"tiny-embedding-v{TINY_EMBEDDING_VERSION}-seed{seed}"
    return cached_tiny_folder(name, build_tiny_embedding, "config.json", "tiny embedding model", seed)


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    rel = path.relative_to(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise CheckpointError(f"embedding checkpoint {root}: cannot read {rel}: {reason}; re-copy it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"embedding checkpoint {root}: {rel} is not a JSON object; re-copy it")
    return data


def _positive_int(config: dict[str, Any], key: str, root: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(
            f"embedding checkpoint {root}: config.json has {key} = {json.dumps(value)}; it must be a positive "
            "integer (re-copy the checkpoint's config.json)"
        )
    return value


def validate_embedding_checkpoint(path: str | Path) -> EmbeddingCheckpointInfo:
    """Check that ``path`` is a local Qwen3-Embedding folder and read its shape; JSON only, no torch.

    Every refusal is one line naming the file and the fix, before any weights load.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"embedding checkpoint {root} does not exist ({_LAYOUT_HINT})")
    if not root.is_dir():
        raise CheckpointError(f"embedding checkpoint {root} is not a directory ({_LAYOUT_HINT})")
    config_path = root / "config.json"
    if not config_path.is_file():
        hint = (
            " (this is a Z-Image checkpoint: give the Qwen3-Embedding-4B folder)"
            if (root / "model_index.json").is_file()
            else f" ({_LAYOUT_HINT})"
        )
        raise CheckpointError(f"embedding checkpoint {root} has no config.json{hint}")
    config = _read_json(config_path, root)
    model_type = config.get("model_type")
    if model_type != "qwen3":
        raise CheckpointError(
            f'embedding checkpoint {root}: config.json has model_type {json.dumps(model_type)}, not "qwen3"; '
            "give a Qwen3-Embedding checkpoint folder"
        )
    hidden = _positive_int(config, "hidden_size", root)
    layers = _positive_int(config, "num_hidden_layers", root)
    vocab = _positive_int(config, "vocab_size", root)
    if not (root / "model.safetensors").is_file() and not (root / "model.safetensors.index.json").is_file():
        raise CheckpointError(
            f"embedding checkpoint {root} is incomplete: no model.safetensors (or model.safetensors.index.json); "
            "re-download or re-copy it"
        )
    if not (root / "tokenizer.json").is_file() and not (
        (root / "vocab.json").is_file() and (root / "merges.txt").is_file()
    ):
        raise CheckpointError(
            f"embedding checkpoint {root} is incomplete: no tokenizer.json (nor vocab.json + merges.txt); "
            "re-download or re-copy the tokenizer files"
        )
    if not (root / "tokenizer_config.json").is_file():
        raise CheckpointError(
            f"embedding checkpoint {root} is incomplete: no tokenizer_config.json; re-download or re-copy it"
        )
    return EmbeddingCheckpointInfo(
        path=root,
        hidden_size=hidden,
        num_layers=layers,
        vocab_size=vocab,
    )


def load_embedding_model(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(Qwen3Model, tokenizer)`` of an embedding checkpoint, the model on ``device`` in ``dtype``, in eval mode.

    The tokenizer is returned as released (left padding, ``<|endoftext|>`` appended); callers choose the padding.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Model

    from llm_dit.models.devices import quiet_hf

    root = Path(path).expanduser()
    device = torch.device(device)
    device_map = None if device.type == "cpu" else {"": device}
    with quiet_hf():
        # transformers 5 takes dtype= (torch_dtype= is deprecated and warns). Qwen3Model also loads a
        # Qwen3ForCausalLM-style state dict (its "model." prefix is stripped).
        model = Qwen3Model.from_pretrained(root, dtype=dtype, device_map=device_map)
        tokenizer = AutoTokenizer.from_pretrained(root)
    if not getattr(tokenizer, "is_fast", False):
        raise LlmDitError(f"the tokenizer in {root} is not a fast tokenizer; add its tokenizer.json")
    return model.to(device).eval().requires_grad_(False), tokenizer
