"""Prompts -> tokens under encoder settings, without a model: what the encoder feeds Qwen3 and what every check
of a prompt needs (the chat format, the tokenizer, the token caps, truncation or the compress flag, layer ranges).

The one implementation of these rules: :class:`~llm_dit.conditioning.text_encoder.ZImageTextEncoder` tokenizes
through a :class:`PromptTokenizer` over its transformers tokenizer, and the light checks (planning, dry runs,
rejections of bad input) through one over the same tokenizer as a ``tokenizers`` object
(:func:`PromptTokenizer.for_checkpoint`, the disk cache of :mod:`llm_dit.models.tokenizer`): the same ids and
offsets (tested), so the same counts, caps and errors. No torch, no transformers here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from llm_dit.conditioning.prompt import FormattedPrompt, format_prompt
from llm_dit.config import EncoderSettings, build_section
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    from llm_dit.models.checkpoint import CheckpointInfo

__all__ = [
    "PromptTokenizer",
    "TokenEncoder",
    "TokenizedPrompt",
    "check_layer_indices",
    "layer_agnostic_key",
    "layers_of",
    "token_encoder",
]

# text -> (token ids, (start, end) character offsets of each token in the text)
TokenEncoder = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


def token_encoder(tokenizer: Any) -> TokenEncoder:
    """Ids and offsets of a text, from a ``tokenizers.Tokenizer`` or a transformers tokenizer (``tok(text)``).

    Both run the same backend with the special tokens a plain call adds, so they give the same numbers for a
    checkpoint's tokenizer (tests/test_light_tokenizer.py).
    """
    if isinstance(tokenizer, Tokenizer):

        def encode_light(text: str) -> tuple[list[int], list[tuple[int, int]]]:
            encoding = tokenizer.encode(text)
            return list(encoding.ids), [tuple(o) for o in encoding.offsets]  # type: ignore[misc]

        return encode_light

    def encode(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tokenizer(text, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    return encode


@dataclass
class TokenizedPrompt:
    """A formatted prompt's tokens, with the template's prefix/suffix located (no model needed)."""

    formatted: FormattedPrompt
    input_ids: list[int]  # what the encoder is fed (already truncated in mode "truncate")
    token_count: int  # tokens of the full formatted prompt, before any cap
    prefix_len: int
    suffix_len: int
    cap: int  # the caption-token cap in force
    compress: bool  # content is compressed after the forward (interpolate / pool / attention_pool)

    @property
    def truncated(self) -> bool:
        return len(self.input_ids) < self.token_count


def layers_of(settings: EncoderSettings) -> list[int]:
    """The hidden states a setting reads."""
    return list(settings.layer_weights) if settings.layer_weights else [settings.hidden_layer]


def layer_agnostic_key(settings: EncoderSettings) -> str:
    """Settings identity ignoring the layer choice: prompts sharing it can share one encoder forward."""
    return settings.model_copy(update={"hidden_layer": 0, "layer_weights": None}).model_dump_json()


def check_layer_indices(layers: Sequence[int], num_layers: int) -> None:
    """Every layer is a hidden state of a ``num_layers``-layer encoder (``hidden_states`` has one more entry)."""
    n = num_layers
    for layer in layers:
        if not -(n + 1) <= layer <= n:
            raise LlmDitError(
                f"hidden layer {layer} is out of range for a {n}-layer encoder; use {-(n + 1)}..{n} "
                f"(0 = token embeddings, -1 = final-normed output, -2 = official)"
            )


class PromptTokenizer:
    """Format and tokenize prompts under encoder settings, apply the caps; memoised.

    ``tokenizer``: a ``tokenizers.Tokenizer`` or a transformers tokenizer (see :func:`token_encoder`), or None
    with ``tokenizer_loader``, called on the first prompt (a check that fails before any prompt is tokenized
    costs no tokenizer load). ``settings``: the base encoder settings, which per-call overrides modify.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        tokenizer_loader: Callable[[], Any] | None = None,
        num_layers: int,
        max_caption_tokens: int,
        settings: EncoderSettings,
    ) -> None:
        if (tokenizer is None) == (tokenizer_loader is None):
            raise LlmDitError("PromptTokenizer needs a tokenizer or a tokenizer_loader (exactly one)")
        self._tokenizer = tokenizer
        self._loader = tokenizer_loader
        self._encode: TokenEncoder | None = None
        self.num_layers = num_layers
        self.max_caption_tokens = max_caption_tokens
        self.settings = settings
        self._memo: dict[tuple[str, tuple[Any, ...]], TokenizedPrompt] = {}
        self.check_layers(settings)

    @classmethod
    def for_checkpoint(cls, info: CheckpointInfo, settings: EncoderSettings) -> PromptTokenizer:
        """The checks' tokenizer of a validated checkpoint: its own tokenizer, loaded on first use through the
        disk cache (tokenizers only once cached), with the caps and layer count of its configs."""
        from llm_dit.models.tokenizer import checkpoint_tokenizer

        return cls(
            tokenizer_loader=lambda: checkpoint_tokenizer(info.path),
            num_layers=info.num_text_layers,
            max_caption_tokens=info.max_caption_tokens,
            settings=settings,
        )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            assert self._loader is not None
            self._tokenizer = self._loader()
        return self._tokenizer

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and offsets of ``text`` (special tokens as a plain tokenizer call adds them)."""
        if self._encode is None:
            self._encode = token_encoder(self.tokenizer)
        return self._encode(text)

    # -- settings --------------------------------------------------------------------------------------

    def resolve(self, **overrides: Any) -> EncoderSettings:
        """The base settings with per-call overrides, validated.

        ``device`` and ``torch_dtype`` (:data:`ENCODER_LOAD_FIELDS`) are refused: they are fixed when the
        encoder is built and would otherwise be silently ignored.
        """
        if not overrides:
            return self.settings
        for name in ENCODER_LOAD_FIELDS:
            if name in overrides:
                raise LlmDitError(
                    f"encoder setting {name!r} cannot be changed per call: it is fixed when the encoder loads "
                    f"(ZImageTextEncoder.from_pretrained / the constructor, or the [encoder] config section)"
                )
        if "hidden_layer" in overrides and "layer_weights" not in overrides:
            # A per-call layer is an explicit choice: it replaces a blend set on the encoder.
            overrides = {**overrides, "layer_weights": None}
        settings = build_section(EncoderSettings, {**self.settings.model_dump(), **overrides})
        self.check_layers(settings)
        return settings

    def check_layers(self, settings: EncoderSettings) -> None:
        check_layer_indices(layers_of(settings), self.num_layers)

    # -- tokenization ---------------------------------------------------------------------------------

    def tokenize(self, prompts: str | Sequence[str], **overrides: Any) -> list[TokenizedPrompt]:
        """Format and tokenize prompts, locate the template's prefix/suffix and apply the token cap.

        Raises when a prompt cannot fit (mode ``none``, or a system prompt / think block that alone fills the
        cap), before any model loads.
        """
        return self.tokenize_with(prompts, self.resolve(**overrides))

    def tokenize_with(self, prompts: str | Sequence[str], settings: EncoderSettings) -> list[TokenizedPrompt]:
        """:meth:`tokenize` under settings already resolved."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cap = min(settings.max_text_tokens, self.max_caption_tokens)
        # Memoised: a sweep checks, plans and encodes the same prompts several times.
        key = (settings.system_prompt, settings.think_block, cap, settings.long_prompt_mode)
        out = []
        for prompt in prompts:
            cached = self._memo.get((prompt, key)) if isinstance(prompt, str) else None
            if cached is not None:
                out.append(cached)
                continue
            tokenized = self._tokenize_one(prompt, settings, cap)
            self._memo[(prompt, key)] = tokenized
            out.append(tokenized)
        return out

    def _tokenize_one(self, prompt: str, settings: EncoderSettings, cap: int) -> TokenizedPrompt:
        formatted = format_prompt(prompt, settings.system_prompt, settings.think_block)
        all_ids, offsets = self.encode(formatted.text)
        ids = all_ids
        content_start = len(formatted.prefix)
        content_end = content_start + len(formatted.content)
        # Tokens are assigned by character span; a token straddling a boundary counts as content.
        prefix_len = sum(1 for _, end in offsets if end <= content_start)
        suffix_len = sum(1 for start, end in offsets if start >= content_end and end > start)
        suffix_len = min(suffix_len, len(ids) - prefix_len)
        compress = False
        if len(ids) > cap:
            mode = settings.long_prompt_mode
            if mode == "none":
                raise LlmDitError(
                    f"prompt is {len(ids)} tokens, over the cap of {cap} (max_text_tokens); choose a "
                    f"long_prompt_mode (truncate, interpolate, pool, attention_pool) or shorten the prompt"
                )
            if prefix_len + suffix_len >= cap:
                raise LlmDitError(
                    f"the chat template alone (system prompt + think block) is {prefix_len + suffix_len} "
                    f"tokens, leaving no room for the prompt under the cap of {cap}; shorten them"
                )
            if mode == "truncate":
                keep = cap - prefix_len - suffix_len
                ids = ids[:prefix_len] + ids[prefix_len : prefix_len + keep] + ids[len(ids) - suffix_len :]
            else:
                compress = True
        return TokenizedPrompt(
            formatted=formatted,
            input_ids=ids,
            token_count=len(all_ids),
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            cap=cap,
            compress=compress,
        )
