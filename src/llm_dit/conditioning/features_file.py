"""Caption features on disk: a ``.safetensors`` file holding one ``embeddings`` tensor ``[L, D]`` and string
metadata, as ``llm-dit encode`` writes it and ``generate --embeddings`` (or any script) reads it back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.errors import LlmDitError
from llm_dit.files import write_atomic
from llm_dit.models.checkpoint import safetensors_problem

if TYPE_CHECKING:
    from torch import Tensor

TENSOR_NAME = "embeddings"


def save_features(path: str | Path, features: Tensor, metadata: Mapping[str, Any]) -> None:
    """Write ``features`` with ``metadata`` (non-string values as JSON, None left out), atomically."""
    from safetensors.torch import save

    from llm_dit.conditioning.embeddings import check_features

    meta = {key: v if isinstance(v, str) else json.dumps(v) for key, v in metadata.items() if v is not None}
    tensor = check_features(features, "features").detach().cpu().contiguous()
    write_atomic(path, save({TENSOR_NAME: tensor}, metadata=meta))


def load_features(path: str | Path, label: str | None = None) -> tuple[Tensor, dict[str, str]]:
    """The ``[L, D]`` tensor and the metadata of a features file; errors name ``label`` (default: the path).

    Width and length are checked against a checkpoint by the pipeline, not here. A missing, damaged or
    foreign file is refused from its header alone, before torch is imported."""
    label = label or str(path)
    if not Path(path).is_file():
        raise LlmDitError(f"{label}: no such file")
    problem, names = safetensors_problem(Path(path))
    if problem is not None:
        raise LlmDitError(f"{label}: not a readable .safetensors file ({problem})")
    if TENSOR_NAME not in names:
        raise LlmDitError(f"{label}: no tensor named {TENSOR_NAME!r} (found {sorted(names)})")

    from safetensors import SafetensorError, safe_open

    from llm_dit.conditioning.embeddings import check_features

    try:
        with safe_open(str(path), framework="pt") as handle:  # the header check above found TENSOR_NAME
            return check_features(handle.get_tensor(TENSOR_NAME), label), dict(handle.metadata() or {})
    except SafetensorError as exc:
        raise LlmDitError(f"{label}: not a readable .safetensors file ({exc})") from exc
