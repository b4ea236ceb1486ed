"""Which checkpoint each conditioning source uses (Qwen3-VL, Qwen3-Embedding), and its fingerprint, without torch.

A source reads ``[PROFILE.vl] model_path`` / ``[PROFILE.embedding] model_path``. Unset means its built-in tiny twin,
which only fits the built-in tiny Z-Image (its caption width is the tiny DiT's): with a real Z-Image checkpoint an
unset source is refused in one line naming the setting, before any model loads.
"""

from __future__ import annotations

from pathlib import Path

from llm_dit.errors import CheckpointError

__all__ = ["SOURCE_MODELS", "source_fingerprint", "source_path"]

# conditioning value -> (Settings section, what it is)
SOURCE_MODELS: dict[str, tuple[str, str]] = {
    "vl": ("vl", "Qwen3-VL-4B-Instruct"),
    "embedding": ("embedding", "Qwen3-Embedding-4B"),
}


def source_path(source: str, model_path: str | None, dit_model_path: str | None) -> Path | None:
    """The source's configured checkpoint directory, or None for its tiny twin (allowed with the tiny Z-Image only)."""
    section, name = SOURCE_MODELS[source]
    if model_path is None:
        if dit_model_path is not None:
            raise CheckpointError(
                f"conditioning = {source} needs a local {name} checkpoint: set [default.{section}] model_path in the "
                f"config file (the built-in tiny twin only fits the built-in tiny Z-Image)"
            )
        return None
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"[{section}] model_path {model_path!r} is not a directory; give the local {name} checkpoint folder"
        )
    # The folder's configs (JSON only): a folder of another kind is refused here, before any model loads.
    if source == "vl":
        from llm_dit.models.vl import validate_vl_checkpoint

        validate_vl_checkpoint(path)
    else:
        from llm_dit.models.embedding_model import validate_embedding_checkpoint

        validate_embedding_checkpoint(path)
    return path


def source_fingerprint(source: str, model_path: str | None, dit_model_path: str | None) -> str:
    """A stable identity of the source's weights for run ids: the folder's fingerprint, or the tiny twin's name
    (built deterministically from its version and seed, so the name is the identity, and no build is needed to plan)."""
    from llm_dit.models import checkpoint

    path = source_path(source, model_path, dit_model_path)
    if path is None:
        return tiny_source_name(source)
    return checkpoint.fingerprint(path)


def tiny_source_name(source: str, seed: int = 0) -> str:
    """The tiny twin's identity (its cache folder's name)."""
    if source == "vl":
        from llm_dit.models.vl import TINY_VL_VERSION as version
    else:
        from llm_dit.models.embedding_model import TINY_EMBEDDING_VERSION as version
    return f"tiny-{source}-v{version}-seed{seed}"
