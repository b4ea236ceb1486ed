"""Finding, validating, fingerprinting and loading a local Z-Image checkpoint (diffusers layout).

Validation reads only small JSON files and the headers of the weight files (not their tensors), so a wrong
path or a truncated download fails in milliseconds with one line that names the file and the fix, before any
weights load. No torch here outside the loaders.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.constants import DEFAULT_SHIFT, SEQ_MULTIPLE, SHIFT_FROM_CHECKPOINT, SHIFT_FROM_DEFAULT
from llm_dit.errors import CheckpointError
from llm_dit.models.devices import quiet_hf

if TYPE_CHECKING:  # torch is imported by the loaders: finding and validating a checkpoint is light
    import torch

__all__ = [
    "CheckpointInfo",
    "default_shift",
    "dit_cap_feat_dim",
    "dit_max_caption_tokens",
    "fingerprint",
    "load_text_encoder",
    "load_tokenizer",
    "load_transformer",
    "load_vae",
    "resolve_model_path",
    "scheduler_shift",
    "vae_size_multiple",
    "validate_checkpoint",
]

LAYOUT_HINT = (
    "expected a Z-Image checkpoint in diffusers layout: "
    "model_index.json, transformer/, text_encoder/, tokenizer/, vae/, scheduler/"
)

# ZImageTransformer2DModel's constructor defaults, used when a config.json omits a key (diffusers would too).
_DIT_DEFAULTS: dict[str, Any] = {"cap_feat_dim": 2560, "axes_lens": [1024, 512, 512], "all_patch_size": [2]}
_PATCH_SIZE = 2  # ZImagePipeline sizes images in multiples of vae_scale_factor * 2 (2x2 patches)


# What a checkpoint's configs imply for its inputs, shared by CheckpointInfo (configs read from disk) and
# LlmDitPipeline.from_components (the ``.config`` of modules already in memory).


def dit_cap_feat_dim(transformer_config: Mapping[str, Any]) -> int:
    """Caption feature width the DiT expects (must equal the text encoder's hidden_size)."""
    return int(transformer_config.get("cap_feat_dim", _DIT_DEFAULTS["cap_feat_dim"]))


def dit_max_caption_tokens(transformer_config: Mapping[str, Any]) -> int:
    """Longest caption the DiT can place: 1504 for axes_lens[0] = 1536.

    Caption tokens take RoPE positions 1..P (P = length rounded up to 32) and image tokens P+1, so
    P + 1 <= axes_lens[0] - 1; for the usual multiple-of-32 axis that is axes_lens[0] - 32.
    """
    axis = int(transformer_config.get("axes_lens", _DIT_DEFAULTS["axes_lens"])[0])
    return ((axis - 2) // SEQ_MULTIPLE) * SEQ_MULTIPLE


def _vae_scale_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent cell (8 for the 4-block FLUX VAE)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def vae_size_multiple(vae_config: Mapping[str, Any]) -> int:
    """Width and height must be multiples of this (VAE factor x 2x2 patches: 16)."""
    return _vae_scale_factor(vae_config) * _PATCH_SIZE


# FlowMatchEulerDiscreteScheduler's constructor defaults, which diffusers uses for keys a scheduler_config omits
# (its shift default is 1.0, not Turbo's 3.0). Every key but shift must keep this value: llm-dit's schedule
# (generation/schedule.py, the DiT time t = 1 - sigma via 1000 train steps, plain Euler steps) is diffusers' only
# there, so a checkpoint that changes one is refused rather than sampled differently from diffusers.
_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "shift": 1.0,
    "num_train_timesteps": 1000,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "invert_sigmas": False,
    "stochastic_sampling": False,
}
_SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
_FIXED_SHIFT_FIX = "set a fixed shift instead (--shift, --set shift=..., or shift in [PROFILE.generation])"


def scheduler_shift(scheduler_config: Mapping[str, Any], root: str | Path = "<in-memory>") -> float:
    """The shift diffusers' ZImagePipeline samples a checkpoint with: its scheduler_config.json ``shift``.

    Raises CheckpointError (one line) for a scheduler whose schedule llm-dit does not reproduce: another class,
    resolution-dependent (dynamic) shifting, or any other key away from diffusers' default.
    """
    where = f"checkpoint {root}: scheduler/scheduler_config.json"
    name = scheduler_config.get("_class_name", _SCHEDULER_CLASS)
    if name != _SCHEDULER_CLASS:
        raise CheckpointError(f"{where} is a {name}; llm-dit samples with {_SCHEDULER_CLASS} only; {_FIXED_SHIFT_FIX}")
    if scheduler_config.get("use_dynamic_shifting", False):
        raise CheckpointError(
            f"{where} sets use_dynamic_shifting = true (a shift that depends on the image size), which llm-dit "
            f"does not implement; {_FIXED_SHIFT_FIX}"
        )
    for key, default in _SCHEDULER_DEFAULTS.items():
        value = scheduler_config.get(key, default)
        if key != "shift" and value != default:
            raise CheckpointError(
                f"{where} sets {key} = {json.dumps(value)}, which llm-dit's schedule does not implement "
                f"(only {json.dumps(default)}); {_FIXED_SHIFT_FIX}"
            )
    shift = scheduler_config.get("shift", _SCHEDULER_DEFAULTS["shift"])
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0 < shift < float("inf"):
        raise CheckpointError(f"{where} has shift {json.dumps(shift)}; it must be a number > 0; {_FIXED_SHIFT_FIX}")
    return float(shift)


def default_shift(info: CheckpointInfo | None) -> tuple[float, str]:
    """The shift a run uses when no setting gives one, and where it comes from: the checkpoint's scheduler
    (see :func:`scheduler_shift`), or the built-in Turbo value when no checkpoint configs are known."""
    if info is None:
        return DEFAULT_SHIFT, SHIFT_FROM_DEFAULT
    return scheduler_shift(info.scheduler_config, info.path), SHIFT_FROM_CHECKPOINT


def resolve_model_path(model_path: str | Path | None) -> Path:
    """None or "tiny" -> the cached tiny checkpoint (built on first use); anything else -> that directory."""
    if model_path is None or (isinstance(model_path, str) and model_path.strip().lower() == "tiny"):
        from llm_dit.models.tiny import tiny_checkpoint_path

        return tiny_checkpoint_path()
    return Path(model_path).expanduser()


@dataclass(frozen=True)
class CheckpointInfo:
    """A validated checkpoint: its path and parsed configs (no weights loaded)."""

    path: Path
    model_index: dict[str, Any]
    transformer_config: dict[str, Any]
    text_encoder_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    tokenizer_config: dict[str, Any]

    @property
    def num_text_layers(self) -> int:
        """Decoder layers of the text encoder (36 for Qwen3-4B); hidden_states has one more entry."""
        return int(self.text_encoder_config["num_hidden_layers"])

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder_config["hidden_size"])

    @property
    def cap_feat_dim(self) -> int:
        """Caption feature width the DiT expects (must equal text_hidden_size)."""
        return dit_cap_feat_dim(self.transformer_config)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the 4-block FLUX VAE)."""
        return _vae_scale_factor(self.vae_config)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE factor x 2x2 patches: 16)."""
        return vae_size_multiple(self.vae_config)

    @property
    def max_caption_tokens(self) -> int:
        """Longest caption the DiT can place (1504 for axes_lens[0] = 1536): see :func:`dit_max_caption_tokens`."""
        return dit_max_caption_tokens(self.transformer_config)


def _incomplete(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is incomplete: missing {what} ({LAYOUT_HINT})")


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {root}: cannot read {path.relative_to(root)}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {root}: {path.relative_to(root)} is not a JSON object")
    return data


def _read_indexes(root: Path, sub: str) -> dict[Path, dict[str, Any]]:
    """Every ``*.safetensors.index.json`` of ``sub``, parsed, in sorted order (read once per validation)."""
    return {index: _read_json(index, root) for index in sorted((root / sub).glob("*.safetensors.index.json"))}


def _missing_weights(root: Path, sub: str, indexes: Mapping[Path, Mapping[str, Any]]) -> list[str]:
    """What is missing among ``sub``'s weights: nothing, the weights, or shards named by an index."""
    folder = root / sub
    if indexes:
        missing: list[str] = []
        for index, data in indexes.items():
            weight_map = data.get("weight_map", {})
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    missing.append(f"{sub}/{shard} (listed in {index.name})")
        return missing
    if any(folder.glob("*.safetensors")):
        return []
    return [f"{sub}/*.safetensors (weights)"]


_WEIGHTS_FIX = "re-download or re-copy it (an interrupted download or copy is the usual cause)"


def safetensors_problem(path: Path) -> tuple[str | None, set[str]]:
    """(what is wrong with the file's header or size, or None; the tensor names it holds).

    safetensors' own check, made when it opens a file (header length, a JSON header, each tensor's dtype,
    shape and data_offsets, and the file's exact size); reads the header only, through numpy, not torch.
    An unreadable file raises OSError.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return None, set(handle.keys())
    except SafetensorError as exc:
        return str(exc), set()


def _check_weights(root: Path, sub: str, indexes: Mapping[Path, Mapping[str, Any]]) -> None:
    """Every weight file of ``sub`` (all ``*.safetensors`` and every shard an index lists) is whole."""
    folder = root / sub
    files = {p.name: p for p in folder.glob("*.safetensors")}
    wanted: dict[str, dict[str, str]] = {}  # shard -> {tensor name: index file}
    for index, data in indexes.items():
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"checkpoint {root}: {sub}/{index.name} lists no weights (no weight_map); {_WEIGHTS_FIX}"
            )
        for tensor, shard in weight_map.items():
            wanted.setdefault(str(shard), {})[str(tensor)] = index.name
            files.setdefault(str(shard), folder / str(shard))
    for name in sorted(files):
        rel = f"{sub}/{name}"
        try:
            problem, tensors = safetensors_problem(files[name])
        except OSError as exc:
            raise CheckpointError(f"checkpoint {root}: cannot read {rel}: {exc}") from exc
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {root}: {rel} is not a valid safetensors file: {problem}; {_WEIGHTS_FIX}"
            )
        absent = sorted(set(wanted.get(name, {})) - tensors)
        if absent:
            index = wanted[name][absent[0]]
            raise CheckpointError(
                f"checkpoint {root}: {rel} lacks tensor {absent[0]!r}"
                + (f" and {len(absent) - 1} more" if len(absent) > 1 else "")
                + f" that {sub}/{index} assigns to it; {_WEIGHTS_FIX}"
            )


def validate_checkpoint(path: str | Path) -> CheckpointInfo:
    """Check that ``path`` is a complete Z-Image checkpoint and parse its configs; loads no weights.

    Raises CheckpointError naming everything that is missing (one line), or the first weight file whose
    header or size is wrong (reads headers, not tensors).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"checkpoint {root} does not exist ({LAYOUT_HINT})")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} is not a directory ({LAYOUT_HINT})")

    missing: list[str] = []
    for rel in (
        "model_index.json",
        "transformer/config.json",
        "text_encoder/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
    ):
        if not (root / rel).is_file():
            missing.append(rel)
    tok = root / "tokenizer"
    if not tok.is_dir():
        missing.append("tokenizer/")
    elif not (tok / "tokenizer.json").is_file() and not (
        (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
    ):
        missing.append("tokenizer/tokenizer.json (or tokenizer/vocab.json + merges.txt)")
    indexes: dict[str, dict[Path, dict[str, Any]]] = {}
    for sub in ("transformer", "text_encoder", "vae"):
        if (root / sub).is_dir():  # a missing folder is already named through its config.json
            indexes[sub] = _read_indexes(root, sub)
            missing.extend(_missing_weights(root, sub, indexes[sub]))
    if missing:
        raise _incomplete(root, ", ".join(missing))

    tok_config_path = tok / "tokenizer_config.json"
    info = CheckpointInfo(
        path=root,
        model_index=_read_json(root / "model_index.json", root),
        transformer_config=_read_json(root / "transformer/config.json", root),
        text_encoder_config=_read_json(root / "text_encoder/config.json", root),
        vae_config=_read_json(root / "vae/config.json", root),
        scheduler_config=_read_json(root / "scheduler/scheduler_config.json", root),
        tokenizer_config=_read_json(tok_config_path, root) if tok_config_path.is_file() else {},
    )

    dit_class = info.transformer_config.get("_class_name", "ZImageTransformer2DModel")
    if dit_class != "ZImageTransformer2DModel":
        raise CheckpointError(
            f"checkpoint {root}: transformer is {dit_class}, not ZImageTransformer2DModel ({LAYOUT_HINT})"
        )
    for key, cfg, rel in (
        ("num_hidden_layers", info.text_encoder_config, "text_encoder/config.json"),
        ("hidden_size", info.text_encoder_config, "text_encoder/config.json"),
        ("block_out_channels", info.vae_config, "vae/config.json"),
    ):
        if key not in cfg:
            raise CheckpointError(f"checkpoint {root}: {rel} has no {key!r}")
    if info.cap_feat_dim != info.text_hidden_size:
        raise CheckpointError(
            f"checkpoint {root}: transformer cap_feat_dim {info.cap_feat_dim} does not match the text "
            f"encoder's hidden_size {info.text_hidden_size}"
        )
    for sub in ("transformer", "text_encoder", "vae"):
        _check_weights(root, sub, indexes[sub])  # each folder exists: a missing one was refused above
    return info


_CHUNK = 1 << 20  # 1 MiB


def _walk_files(root: Path) -> list[tuple[str, Path]]:
    """(posix relative path, path) of every non-hidden file under root, sorted; follows symlinks (HF cache).

    A file ``root`` is its own single entry, named by its file name (as if it were the only file of a folder).
    """
    if root.is_file():
        return [(root.name, root)]
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                full = Path(dirpath) / name
                found.append((full.relative_to(root).as_posix(), full))
    return sorted(found)


def fingerprint(path: str | Path) -> str:
    """A quick, stable fingerprint of a checkpoint folder or of a single weights file (16 hex chars).

    sha256 over every non-hidden file (sorted relative paths) of: relative path, size, first 1 MiB and
    last 1 MiB. A single file is hashed exactly as a folder holding only that file (its relative path is its
    name). This is NOT a full-content hash: it reads at most 2 MiB per file, so a change in the middle
    of a large weight file that keeps its size goes unnoticed. It catches a different model, a different
    file set, re-saved weights (safetensors headers come first) and truncation, in milliseconds.
    """
    root = Path(path).expanduser()
    if not root.is_dir() and not root.is_file():
        raise CheckpointError(f"cannot fingerprint {root}: no such file or directory")
    digest = hashlib.sha256()
    for rel, full in _walk_files(root):
        size = full.stat().st_size
        digest.update(rel.encode("utf-8") + b"\0" + str(size).encode() + b"\0")
        with full.open("rb") as fh:
            digest.update(fh.read(_CHUNK))
            if size > _CHUNK:
                fh.seek(max(_CHUNK, size - _CHUNK))
                digest.update(fh.read(_CHUNK))
    return digest.hexdigest()[:16]


def _device_map(device: torch.device) -> dict[str, torch.device] | None:
    """Load straight onto an accelerator (no full CPU copy); plain CPU loading needs no map."""
    return None if device.type == "cpu" else {"": device}


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's tokenizer (Qwen2Tokenizer for Z-Image), from ``path/tokenizer``."""
    from transformers import AutoTokenizer

    with quiet_hf():
        return AutoTokenizer.from_pretrained(Path(path) / "tokenizer")


def load_text_encoder(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> Any:
    """``transformers.Qwen3Model`` from ``path/text_encoder`` on ``device`` in ``dtype``, in eval mode."""
    import torch
    from transformers import Qwen3Model

    device = torch.device(device)
    with quiet_hf():
        # transformers 5 takes dtype= (torch_dtype= is deprecated and warns).
        model = Qwen3Model.from_pretrained(Path(path) / "text_encoder", dtype=dtype, device_map=_device_map(device))
    return model.to(device).eval().requires_grad_(False)


def load_transformer(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> Any:
    """``diffusers.ZImageTransformer2DModel`` from ``path/transformer`` on ``device`` in ``dtype``."""
    from diffusers import ZImageTransformer2DModel

    return _load_diffusers(ZImageTransformer2DModel, path, "transformer", device, dtype)


def load_vae(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> Any:
    """``diffusers.AutoencoderKL`` from ``path/vae`` on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL

    return _load_diffusers(AutoencoderKL, path, "vae", device, dtype)


def _load_diffusers(cls: Any, path: str | Path, subfolder: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    import torch

    device = torch.device(device)
    with quiet_hf():
        model = cls.from_pretrained(Path(path), subfolder=subfolder, torch_dtype=dtype, device_map=_device_map(device))
    return model.to(device).eval().requires_grad_(False)
