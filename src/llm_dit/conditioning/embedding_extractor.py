"""The seed project's Qwen3-Embedding-4B API (``EmbeddingExtractor``), over :class:`EmbeddingEncoder`.

Two uses, two computations:

- :meth:`EmbeddingExtractor.encode_for_zimage`: the ``[L, D]`` rows the ``conditioning = "embedding"`` source feeds
  Z-Image (one hidden layer, a prompt format, the appended ``<|endoftext|>`` row dropped unless ``keep_eot``):
  :meth:`EmbeddingEncoder.encode_layers`, so the API and a run give the same rows.
- :meth:`EmbeddingExtractor.extract`: the model read as a retrieval model, on plain text (a document) or in the query
  format (``instruction`` given). ``pooling="last_token"`` is the official vector (left-padded batches, the appended
  ``<|endoftext|>`` row pooled, as sentence-transformers computes it); ``"full_sequence"`` every row of that input,
  ``<|endoftext|>`` included, each from an exact per-prompt forward (right padding). ``normalize`` L2-normalises
  each vector; ``embedding_dim = k`` keeps the first k dimensions (Matryoshka truncation), before the
  normalisation, so a truncated vector is a unit vector again.

This module owns no model code: loading, formats and the vocabulary check are the encoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import torch
from torch import Tensor

from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder, instruction_prompt
from llm_dit.conditioning.tokenization import check_layer_indices
from llm_dit.constants import DEFAULT_EMBEDDING_LAYER, EMBEDDING_FORMATS
from llm_dit.errors import LlmDitError

__all__ = ["POOLINGS", "EmbeddingExtractor", "ExtractionResult"]

Pooling = Literal["full_sequence", "last_token"]
POOLINGS: tuple[str, ...] = ("full_sequence", "last_token")


@dataclass(frozen=True)
class ExtractionResult:
    """One text's :meth:`EmbeddingExtractor.extract` output and how it was made.

    ``embeddings``: ``[L, k]`` (full_sequence: a row per token the model read) or ``[k]`` (last_token), float32, on
    the model's device; k = ``embedding_dim`` or the model's width.
    """

    embeddings: Tensor
    token_ids: list[int]  # what the model read, the appended <|endoftext|> last
    formatted_text: str  # the text before tokenization: plain, or "Instruct: {task}\nQuery:{text}"
    instruction: str | None
    pooling: str
    hidden_layer: int
    normalized: bool
    embedding_dim: int

    @property
    def token_count(self) -> int:
        return len(self.token_ids)


class EmbeddingExtractor:
    """Qwen3-Embedding features for Z-Image (:meth:`encode_for_zimage`) and retrieval vectors (:meth:`extract`)."""

    def __init__(self, encoder: EmbeddingEncoder) -> None:
        self.encoder = encoder

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, *, device: str = "auto", torch_dtype: str = "auto"
    ) -> EmbeddingExtractor:
        """An extractor of a local Qwen3-Embedding folder (None or "tiny": the built-in tiny twin). The folder is
        validated from its JSON files here; the weights load on first use."""
        return cls(EmbeddingEncoder.from_pretrained(path, device=device, torch_dtype=torch_dtype))

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    # -- Z-Image conditioning ---------------------------------------------------------------------------------

    @overload
    def encode_for_zimage(
        self,
        text: str,
        hidden_layer: int = ...,
        *,
        prompt_format: str = ...,
        instruction: str | None = ...,
        keep_eot: bool = ...,
    ) -> Tensor: ...

    @overload
    def encode_for_zimage(
        self,
        text: Sequence[str],
        hidden_layer: int = ...,
        *,
        prompt_format: str = ...,
        instruction: str | None = ...,
        keep_eot: bool = ...,
    ) -> list[Tensor]: ...

    def encode_for_zimage(
        self,
        text: str | Sequence[str],
        hidden_layer: int = DEFAULT_EMBEDDING_LAYER,
        *,
        prompt_format: str = "chat",
        instruction: str | None = None,
        keep_eot: bool = False,
    ) -> Tensor | list[Tensor]:
        """The ``[L, D]`` caption features of ``text`` (a list: one per text), exactly the rows of
        ``conditioning = "embedding"`` with ``embedding_layer = hidden_layer``, ``embedding_format = prompt_format``,
        ``embedding_instruction = instruction`` (instruction format only; None: the project's default task) and
        ``embedding_keep_eot = keep_eot``."""
        if prompt_format not in EMBEDDING_FORMATS:
            raise LlmDitError(f"unknown embedding_format {prompt_format!r}; use one of {', '.join(EMBEDDING_FORMATS)}")
        texts = _texts(text)
        rows = self.encoder.encode_layers(
            texts, [hidden_layer], prompt_format=prompt_format, instruction=instruction, keep_eot=keep_eot
        )
        out = [r[hidden_layer] for r in rows]
        return out[0] if isinstance(text, str) else out

    # -- retrieval -------------------------------------------------------------------------------------------

    @overload
    def extract(
        self,
        text: str,
        instruction: str | None = ...,
        *,
        pooling: str = ...,
        normalize: bool = ...,
        embedding_dim: int | None = ...,
        hidden_layer: int = ...,
    ) -> ExtractionResult: ...

    @overload
    def extract(
        self,
        text: Sequence[str],
        instruction: str | None = ...,
        *,
        pooling: str = ...,
        normalize: bool = ...,
        embedding_dim: int | None = ...,
        hidden_layer: int = ...,
    ) -> list[ExtractionResult]: ...

    def extract(
        self,
        text: str | Sequence[str],
        instruction: str | None = None,
        *,
        pooling: str = "full_sequence",
        normalize: bool = False,
        embedding_dim: int | None = None,
        hidden_layer: int = -1,
    ) -> ExtractionResult | list[ExtractionResult]:
        """``text`` read as the retrieval model reads it: a document (``instruction`` None) or a query in the format
        ``Instruct: {instruction}\\nQuery:{text}``, at ``hidden_layer`` (-1: the final-normed state the official
        vector pools). A list gives a list; ``torch.stack([r.embeddings for r in results])`` makes the ``[N, k]``
        matrix of last-token vectors. ``pooling="last_token", normalize=True`` is
        ``SentenceTransformer(path).encode(texts, prompt=f"Instruct: {instruction}\\nQuery:")``; with
        ``embedding_dim=k`` it is that model's ``truncate_dim=k`` with ``normalize_embeddings=True``."""
        texts = _texts(text)
        if pooling not in POOLINGS:
            raise LlmDitError(f"pooling {pooling!r} is not valid; use one of {', '.join(POOLINGS)}")
        if not isinstance(normalize, bool):
            raise LlmDitError(f"normalize must be true or false, got {normalize!r}")
        width = self.encoder.hidden_size
        if embedding_dim is not None and (
            isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or not 1 <= embedding_dim <= width
        ):
            raise LlmDitError(
                f"embedding_dim {embedding_dim!r} is not valid: give 1..{width} (the model's width; None keeps it)"
            )
        if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
            raise LlmDitError("instruction must be a non-empty task (None: the text is a document)")
        if isinstance(hidden_layer, bool) or not isinstance(hidden_layer, int):
            raise LlmDitError(f"hidden_layer must be an integer, got {hidden_layer!r}")
        check_layer_indices([hidden_layer], self.encoder.num_layers)
        formatted = [t if instruction is None else instruction_prompt(t, instruction) for t in texts]
        if pooling == "last_token":
            ids, vectors = self._last_token(formatted, hidden_layer)
        else:
            ids, vectors = self._full_sequence(texts, formatted, instruction, hidden_layer)
        dim = width if embedding_dim is None else embedding_dim
        results = [
            ExtractionResult(
                embeddings=_finish(v, dim, normalize),
                token_ids=i,
                formatted_text=f,
                instruction=instruction,
                pooling=pooling,
                hidden_layer=hidden_layer,
                normalized=normalize,
                embedding_dim=dim,
            )
            for v, i, f in zip(vectors, ids, formatted, strict=True)
        ]
        return results[0] if isinstance(text, str) else results

    def _full_sequence(
        self, texts: list[str], formatted: list[str], instruction: str | None, layer: int
    ) -> tuple[list[list[int]], list[Tensor]]:
        """Every row of each input, ``<|endoftext|>`` included, from the encoder's exact right-padded forward."""
        prompt_format = "raw" if instruction is None else "instruction"
        rows = self.encoder.encode_layers(
            texts, [layer], prompt_format=prompt_format, instruction=instruction, keep_eot=True
        )
        tokenizer, limit = self.encoder.tokenizer, self.encoder.max_length
        ids = [list(tokenizer(f, truncation=True, max_length=limit)["input_ids"]) for f in formatted]
        return ids, [r[layer] for r in rows]

    def _last_token(self, formatted: list[str], layer: int) -> tuple[list[list[int]], list[Tensor]]:
        """The official computation: the encoder's left-padded batches (as the released tokenizer pads), the last
        position of layer ``layer``."""
        ids: list[list[int]] = []
        vectors: list[Tensor] = []
        for batch, out in self.encoder.left_padded_forwards(formatted, hidden_states=True):
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                ids.append([int(i) for i, m in zip(row.tolist(), mask.tolist(), strict=True) if m])
            vectors.extend(out.hidden_states[layer][:, -1])
        return ids, vectors


def _texts(text: str | Sequence[str]) -> list[str]:
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise LlmDitError("give at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise LlmDitError(f"text {i} must be a string, not {type(t).__name__}")
    return texts


def _finish(x: Tensor, dim: int, normalize: bool) -> Tensor:
    """The first ``dim`` dimensions of each vector (rows of ``[L, D]``, or one ``[D]``), as float32, then L2-normalised
    when ``normalize`` (truncation first: Matryoshka vectors are normalised at their own width)."""
    out = x[..., :dim].float()
    return torch.nn.functional.normalize(out, p=2, dim=-1) if normalize else out
