"""The prompt library: evaluation prompts with word annotations, and how experiments select them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt. ``subjects`` (nouns) and ``descriptors`` (adjectives) are words of ``text``,
    used by token-importance manipulations instead of a tagger model."""

    id: str
    text: str
    category: str = "custom"
    complexity: str = "simple"
    subjects: tuple[str, ...] = field(default_factory=tuple)
    descriptors: tuple[str, ...] = field(default_factory=tuple)
    environment: str = ""
