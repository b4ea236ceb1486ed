"""Qwen3-Embedding-4B as a conditioning source, and its retrieval-style vectors.

Conditioning (:meth:`EmbeddingEncoder.encode_layers`): the full sequence of one hidden layer (same -37..36 rule as
the text encoder), from a right-padded batch (left padding shifts positions: kept rows then match an unpadded run
only to ~1e-5). Prompt formats: ``chat`` (Z-Image's chat format; the default think block is none, and ``<think>``'s
ids lie outside this model's vocabulary anyway), ``raw`` (the text alone), ``instruction``
(``Instruct: {task}\\nQuery:{text}``, the model's query format). The released tokenizer appends ``<|endoftext|>``
(151643) to every input, the row retrieval pools; for conditioning that row is dropped by default (Qwen3-4B's
features have no such row) and kept with ``embedding_keep_eot``.

Retrieval (:meth:`EmbeddingEncoder.embed`): the official usage, left padding, last-token pooling, L2 normalisation,
queries in the instruction format (what ``SentenceTransformer(path).encode(texts, prompt=...)`` gives).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_dit.conditioning.prompt import format_prompt
from llm_dit.conditioning.tokenization import check_layer_indices
from llm_dit.constants import DEFAULT_EMBEDDING_TASK, EMBEDDING_FORMATS, ENDOFTEXT_ID
from llm_dit.errors import LlmDitError

__all__ = ["EmbeddingEncoder", "instruction_prompt"]


def instruction_prompt(text: str, task: str) -> str:
    """The model's query format (no space after ``Query:``)."""
    return f"Instruct: {task}\nQuery:{text}"


class EmbeddingEncoder:
    """Qwen3-Embedding hidden states (conditioning) and pooled vectors (retrieval). The model loads on first use."""

    def __init__(
        self,
        model_loader: Callable[[], tuple[Any, Any]],
        *,
        num_layers: int,
        hidden_size: int,
        vocab_size: int,
        path: Path | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        from llm_dit.models.embedding_model import EMBEDDING_MAX_LENGTH

        self._loader = model_loader
        self._model: Any = None
        self._tokenizer: Any = None
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.path = path
        self.batch_size = batch_size
        self.max_length = EMBEDDING_MAX_LENGTH if max_length is None else max_length

    @classmethod
    def from_pretrained(
        cls, model_path: str | Path | None = None, *, device: str = "auto", torch_dtype: str = "auto"
    ) -> EmbeddingEncoder:
        """Encoder of a local Qwen3-Embedding folder; None or "tiny": the built-in tiny twin (cached on first use)."""
        from llm_dit.models import devices
        from llm_dit.models.embedding_model import (
            load_embedding_model,
            tiny_embedding_path,
            validate_embedding_checkpoint,
        )

        path = tiny_embedding_path() if model_path is None or str(model_path) == "tiny" else Path(model_path)
        info = validate_embedding_checkpoint(path)
        dev = devices.resolve_device(device, "embedding.device")
        dtype = devices.resolve_dtype(torch_dtype, dev)
        return cls(
            lambda: load_embedding_model(info.path, dev, dtype),
            num_layers=info.num_layers,
            hidden_size=info.hidden_size,
            vocab_size=info.vocab_size,
            path=info.path,
        )

    def _load(self) -> None:
        if self._model is None:
            self._model, tokenizer = self._loader()
            if self._tokenizer is None:
                self._tokenizer = tokenizer

    @property
    def model(self) -> Any:
        """The ``Qwen3Model``."""
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    def unload(self) -> None:
        """Free the model (it reloads on next use); the tokenizer stays."""
        self._model = None

    # -- formats and tokens ---------------------------------------------------------------------------

    @staticmethod
    def format_prompt(text: str, prompt_format: str = "chat", instruction: str | None = None) -> str:
        """The text the model reads for ``prompt_format`` (``instruction``: the task, default the project's)."""
        if prompt_format == "chat":
            return format_prompt(text).text
        if prompt_format == "raw":
            return text
        if prompt_format == "instruction":
            return instruction_prompt(text, instruction or DEFAULT_EMBEDDING_TASK)
        raise LlmDitError(f"unknown embedding_format {prompt_format!r}; use one of {', '.join(EMBEDDING_FORMATS)}")

    def _check_vocabulary(self, ids: Any) -> None:
        """Token ids outside the model's vocabulary (e.g. ``<think>``) refused in one line."""
        bad = sorted({int(i) for i in ids if i >= self.vocab_size})
        if bad:
            raise LlmDitError(
                f"the embedding model's vocabulary has {self.vocab_size} ids, and this prompt has token ids {bad} "
                "outside it (e.g. <think>); remove those tokens from the prompt"
            )

    def _ids(self, formatted: str) -> list[int]:
        ids = list(self.tokenizer(formatted, truncation=True, max_length=self.max_length)["input_ids"])
        self._check_vocabulary(ids)
        return ids

    # -- conditioning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_layers(
        self,
        texts: str | Sequence[str],
        layers: Sequence[int],
        *,
        prompt_format: str = "chat",
        instruction: str | None = None,
        keep_eot: bool = False,
    ) -> list[dict[int, Tensor]]:
        """Per text, ``{layer: [L, D]}`` of the real rows from one right-padded forward per batch (the appended
        ``<|endoftext|>`` row dropped unless ``keep_eot``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        layers = list(dict.fromkeys(layers))
        check_layer_indices(layers, self.num_layers)
        tokens = []
        for text in texts:
            ids = self._ids(self.format_prompt(text, prompt_format, instruction))
            if not keep_eot and ids and ids[-1] == ENDOFTEXT_ID:
                ids = ids[:-1]
            if not ids:
                raise LlmDitError("an embedding prompt has no tokens; give a non-empty prompt or another format")
            tokens.append(ids)
        model = self.model
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else ENDOFTEXT_ID
        out: list[dict[int, Tensor]] = []
        for start in range(0, len(tokens), self.batch_size):
            chunk = tokens[start : start + self.batch_size]
            longest = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for i, ids in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                mask[i, : len(ids)] = 1
            hidden = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            ).hidden_states
            for i, ids in enumerate(chunk):
                out.append({layer: hidden[layer][i, : len(ids)] for layer in layers})
        return out

    # -- retrieval ------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, texts: str | Sequence[str], instruction: str | None = None) -> Tensor:
        """``[N, D]`` L2-normalised last-token vectors (left padding, the appended ``<|endoftext|>`` pooled);
        ``instruction`` given: texts are queries in the instruction format, else documents (plain text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        formatted = [text if instruction is None else instruction_prompt(text, instruction) for text in texts]
        vectors = [out.last_hidden_state[:, -1] for _, out in self.left_padded_forwards(formatted)]
        return torch.nn.functional.normalize(torch.cat(vectors).float(), p=2, dim=-1)

    def left_padded_forwards(self, formatted: Sequence[str], hidden_states: bool = False) -> Iterator[tuple[Any, Any]]:
        """(tokenized batch, model output) per batch of ``formatted`` texts, padded on the left as the released
        tokenizer pads for retrieval (so the last position is every text's last token); the vocabulary checked first.
        ``hidden_states``: the output carries every layer's."""
        tokenizer = self.tokenizer
        model = self.model
        device = next(model.parameters()).device
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for start in range(0, len(formatted), self.batch_size):
                batch = tokenizer(
                    list(formatted[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                self._check_vocabulary(batch["input_ids"].flatten().tolist())
                with torch.no_grad():
                    out = model(**batch.to(device), output_hidden_states=hidden_states)
                yield batch, out  # outside no_grad: the caller's code between batches keeps its own grad mode
        finally:
            tokenizer.padding_side = side
