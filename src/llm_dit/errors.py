"""User-facing errors: one clear line that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class LlmDitError(Exception):
    """Bad input or environment. The CLI prints the message alone (no traceback) and exits non-zero."""


class ConfigError(LlmDitError):
    """A TOML config file or a parameter value is invalid."""


class CheckpointError(LlmDitError):
    """A checkpoint directory is missing, incomplete or unsupported."""


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice nearest to a misspelt word (difflib ratio >= 0.6), for "did you mean" hints."""
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """The tail of an unknown-name error: " (did you mean 'x'?)" for a close choice, else ""."""
    hit = closest(word, choices)
    return f" (did you mean {hit!r}?)" if hit else ""
