"""Text encoding: prompts -> Qwen3 hidden states, the caption features Z-Image's DiT reads.

Official path: chat-format the prompt (``prompt.py``), tokenize with right padding (to 512 tokens in diffusers;
``padding="longest"`` pads to the longest prompt instead), run ``Qwen3Model`` with
``output_hidden_states=True``, take ``hidden_states[-2]`` and keep the real (unmasked) rows. ``hidden_states``
has ``num_layers + 1`` entries: [0] token embeddings, [k] the raw output of layer k-1, and [-1] replaced by
the final-normed state (so -1 is not comparable with the others).

Everything a run can vary lives in :class:`llm_dit.config.EncoderSettings` (hidden layer or layer blend,
system prompt, think block, token cap, long-prompt mode); one forward serves any set of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_dit.conditioning.embeddings import blend_layers, compress_sequence
from llm_dit.conditioning.tokenization import (
    PromptTokenizer,
    TokenizedPrompt,
    check_layer_indices,
    layer_agnostic_key,
    layers_of,
)
from llm_dit.config import EncoderSettings, build_section
from llm_dit.constants import DIFFUSERS_MAX_SEQUENCE_LENGTH, HARD_MAX_TEXT_TOKENS
from llm_dit.errors import LlmDitError
from llm_dit.models.devices import module_device

# Tokenization lives in conditioning.tokenization (no torch), shared with the light checks; these names stay here
# too, where the encoder's users found them.
__all__ = [
    "EncodedPrompt",
    "TokenizedPrompt",
    "ZImageTextEncoder",
    "layer_agnostic_key",
    "layers_of",
]


@dataclass
class EncodedPrompt:
    """One prompt's caption features ``[L, D]`` and everything needed to record how they were made."""

    embeddings: torch.Tensor
    token_ids: list[int]
    formatted_prompt: str
    token_count: int
    hidden_layer: int | None
    layer_weights: dict[int, float] | None
    long_prompt_mode: str
    max_text_tokens: int
    truncated: bool = False
    compressed: bool = False
    prefix_len: int = 0
    suffix_len: int = 0
    encoder_device: str | None = None  # "<device type>/<dtype>" of the encoder forward that made these features

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[0])

    def metadata(self) -> dict[str, Any]:
        """String-friendly metadata (for safetensors headers and image records)."""
        return {
            "formatted_prompt": self.formatted_prompt,
            "token_count": self.token_count,
            "embedding_length": self.length,
            "hidden_layer": self.hidden_layer,
            "layer_weights": self.layer_weights,
            "long_prompt_mode": self.long_prompt_mode,
            "max_text_tokens": self.max_text_tokens,
            "truncated": self.truncated,
            "compressed": self.compressed,
        }


class ZImageTextEncoder:
    """Qwen3 text encoder with every conditioning knob of the Z-Image path.

    The model is loaded lazily, so prompts can be tokenized and checked against the caps before any
    weights are read.
    """

    def __init__(
        self,
        tokenizer: Any,
        model: nn.Module | None = None,
        *,
        model_loader: Callable[[], nn.Module] | None = None,
        num_layers: int | None = None,
        max_caption_tokens: int = HARD_MAX_TEXT_TOKENS,
        batch_size: int = 16,
        **settings: Any,
    ) -> None:
        if model is None and model_loader is None:
            raise LlmDitError("ZImageTextEncoder needs a model or a model_loader")
        self.tokenizer = tokenizer
        self._model = model
        self._model_loader = model_loader
        if num_layers is None:
            if model is None:
                raise LlmDitError("num_layers is required when the model is loaded lazily")
            num_layers = int(model.config.num_hidden_layers)
        self.batch_size = batch_size
        # Settings, caps and tokenization: the same object the light checks use (conditioning.tokenization).
        self.prompts = PromptTokenizer(
            tokenizer,
            num_layers=num_layers,
            max_caption_tokens=max_caption_tokens,
            settings=build_section(EncoderSettings, settings),
        )

    @classmethod
    def from_pretrained(
        cls, model_path: str | Path | None = None, *, device: str = "auto", torch_dtype: str = "auto", **settings: Any
    ) -> ZImageTextEncoder:
        """Encoder of a Z-Image checkpoint (``text_encoder/`` + ``tokenizer/``), or a Qwen3 model directory.

        ``model_path`` None or "tiny" is the built-in tiny checkpoint. ``settings`` are
        :class:`EncoderSettings` fields (``hidden_layer=-2``, ``layer_weights``, ``system_prompt``, ...).
        """
        from llm_dit.models import checkpoint, devices

        path = checkpoint.resolve_model_path(model_path)
        info = checkpoint.validate_checkpoint(path)
        dev = devices.resolve_device(device)
        dtype = devices.resolve_dtype(torch_dtype, dev)
        return cls(
            checkpoint.load_tokenizer(path),
            model_loader=lambda: checkpoint.load_text_encoder(path, dev, dtype),
            num_layers=info.num_text_layers,
            max_caption_tokens=info.max_caption_tokens,
            device=device,
            torch_dtype=torch_dtype,
            **settings,
        )

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            assert self._model_loader is not None
            self._model = self._model_loader()
        return self._model

    @property
    def num_layers(self) -> int:
        return self.prompts.num_layers

    @property
    def max_caption_tokens(self) -> int:
        return self.prompts.max_caption_tokens

    @property
    def settings(self) -> EncoderSettings:
        return self.prompts.settings

    # -- settings --------------------------------------------------------------------------------------

    def resolve(self, **overrides: Any) -> EncoderSettings:
        """This encoder's settings with per-call overrides, validated (:meth:`PromptTokenizer.resolve`).

        ``device`` and ``torch_dtype`` (:data:`ENCODER_LOAD_FIELDS`) are refused: they are fixed when the
        encoder is built and would otherwise be silently ignored.
        """
        return self.prompts.resolve(**overrides)

    def _check_layers(self, settings: EncoderSettings) -> None:
        self.prompts.check_layers(settings)

    def check_layer_indices(self, layers: Sequence[int]) -> None:
        check_layer_indices(layers, self.num_layers)

    # -- tokenization (no model needed) ---------------------------------------------------------------

    def tokenize(self, prompts: str | Sequence[str], **overrides: Any) -> list[TokenizedPrompt]:
        """Format and tokenize prompts, locate the template's prefix/suffix and apply the token cap.

        Raises before any model loads when a prompt cannot fit (mode ``none``, or a system prompt / think
        block that alone fills the cap).
        """
        return self._tokenize(prompts, self.resolve(**overrides))

    def _tokenize(self, prompts: str | Sequence[str], settings: EncoderSettings) -> list[TokenizedPrompt]:
        return self.prompts.tokenize_with(prompts, settings)

    # -- encoding -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_layers(
        self, prompts: str | Sequence[str], layers: Sequence[int], **overrides: Any
    ) -> list[dict[int, torch.Tensor]]:
        """Hidden states of several layers from ONE forward per batch: per prompt, ``{layer: [L, D]}``.

        Rows are the real tokens only (padding removed); long prompts are compressed per layer with the
        same rule as :meth:`encode`.
        """
        self.check_layer_indices(layers)
        settings = self.resolve(**overrides)
        return self._forward(self._tokenize(prompts, settings), list(dict.fromkeys(layers)), settings)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], **overrides: Any) -> list[EncodedPrompt]:
        """Encode prompts into caption features, one ``[L_i, D]`` tensor per prompt."""
        return self.encode_variants(prompts, [self.resolve(**overrides)])[0]

    @torch.no_grad()
    def encode_variants(
        self, prompts: str | Sequence[str], variants: Sequence[EncoderSettings]
    ) -> list[list[EncodedPrompt]]:
        """Encode prompts under several layer choices with ONE forward: ``result[variant][prompt]``.

        Variants may differ only in ``hidden_layer`` / ``layer_weights`` (everything that changes the tokens
        or the forward must agree); a hidden-layer sweep or blend study then costs one encode.
        """
        if not variants:
            return []
        base = variants[0]
        for variant in variants:
            if layer_agnostic_key(variant) != layer_agnostic_key(base):
                raise LlmDitError("encode_variants: variants may differ only in hidden_layer / layer_weights")
            self._check_layers(variant)
        tokenized = self._tokenize(prompts, base)
        layers = list(dict.fromkeys(layer for v in variants for layer in layers_of(v)))
        per_prompt = self._forward(tokenized, layers, base)
        where = module_device(self.model)  # the model that just ran (records keep it past offload_encoder)
        return [
            [self._assemble(tok, states, variant, where) for tok, states in zip(tokenized, per_prompt, strict=True)]
            for variant in variants
        ]

    @staticmethod
    def _assemble(
        tok: TokenizedPrompt, states: dict[int, torch.Tensor], settings: EncoderSettings, encoder_device: str
    ) -> EncodedPrompt:
        weights = settings.layer_weights
        embeds = blend_layers(states, weights) if weights else states[settings.hidden_layer]
        return EncodedPrompt(
            embeddings=embeds,
            token_ids=tok.input_ids,
            formatted_prompt=tok.formatted.text,
            token_count=tok.token_count,
            hidden_layer=None if weights else settings.hidden_layer,
            layer_weights=dict(weights) if weights else None,
            long_prompt_mode=settings.long_prompt_mode,
            max_text_tokens=tok.cap,
            truncated=tok.truncated,
            compressed=tok.compress,
            prefix_len=tok.prefix_len,
            suffix_len=tok.suffix_len,
            encoder_device=encoder_device,
        )

    def unload(self) -> None:
        """Free the model (it reloads on next use when a loader is known, e.g. after --offload-encoder)."""
        if self._model_loader is not None:
            self._model = None
        elif self._model is not None:
            self._model.to("cpu")

    def _forward(
        self, tokenized: list[TokenizedPrompt], layers: list[int], settings: EncoderSettings
    ) -> list[dict[int, torch.Tensor]]:
        model = self.model
        device = next(model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        results: list[dict[int, torch.Tensor]] = []
        for start in range(0, len(tokenized), self.batch_size):
            chunk = tokenized[start : start + self.batch_size]
            longest = max(len(t.input_ids) for t in chunk)
            if settings.padding == "diffusers":
                longest = max(longest, DIFFUSERS_MAX_SEQUENCE_LENGTH)
            # Right padding: causal attention keeps real rows independent of padding (up to rounding).
            input_ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.bool)
            for i, tok in enumerate(chunk):
                input_ids[i, : len(tok.input_ids)] = torch.tensor(tok.input_ids)
                mask[i, : len(tok.input_ids)] = True
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            for i, tok in enumerate(chunk):
                states = {}
                for layer in layers:
                    rows = hidden[layer][i][mask[i]]
                    if tok.compress:
                        rows = compress_sequence(
                            rows, tok.prefix_len, tok.suffix_len, tok.cap, settings.long_prompt_mode
                        )
                    states[layer] = rows
                results.append(states)
        return results
