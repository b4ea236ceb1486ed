"""Where llm-dit keeps what it builds once per machine: the tiny checkpoints and the tokenizer cache.

Pure pathlib (no torch): the light paths (planning, dry runs, rejections) find cached files through it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "tokenizer_cache_dir"]


def cache_root() -> Path:
    """``$LLM_DIT_CACHE``, else ``$XDG_CACHE_HOME/llm-dit``, else ``~/.cache/llm-dit``."""
    if env := os.environ.get("LLM_DIT_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "llm-dit"
    return Path.home() / ".cache" / "llm-dit"


def tokenizer_cache_dir() -> Path:
    """``$LLM_DIT_TOKENIZER_CACHE``, else ``<cache_root>/tokenizers``: built tokenizers (see models.tokenizer).

    A variable of its own, so a test session can start from an empty tokenizer cache without rebuilding the tiny
    checkpoints cached next to it.
    """
    if env := os.environ.get("LLM_DIT_TOKENIZER_CACHE"):
        return Path(env).expanduser()
    return cache_root() / "tokenizers"
