"""The prompt library: evaluation prompts with word annotations, and how experiments select them.

Everything here is plain text processing (no torch, no tokenizer), so a run's prompt selection and its
token-importance manipulations can be checked before any model loads.

Word tokenisation used by the manipulations (and by the annotation check in :func:`load_library`):
the text is split on whitespace; each piece is ``lead + core + trail`` where ``lead``/``trail`` are the
non-word characters at its ends (quotes, brackets, ``,.:;!?``...) and ``core`` runs from the first to the
last letter/digit, so inner hyphens and apostrophes stay in the word ("close-up", "16-bit", "artist's").
An annotated word matches every piece whose core equals it, case-insensitively. Punctuation stays where it
was: a word that is moved or removed leaves its trailing punctuation on the previous kept word (when that
word has none of its own) and its leading punctuation on the next kept word. Case is never changed, and
the result's whitespace is normalised to single spaces (``baseline`` alone returns the text unchanged).
"""

from __future__ import annotations

import difflib
import functools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llm_dit.errors import LlmDitError

__all__ = [
    "CATEGORIES",
    "CATEGORY_ID_PREFIX",
    "MANIPULATIONS",
    "Prompt",
    "check_prompt_text",
    "list_prompts",
    "load_library",
    "manipulate",
    "select_prompts",
]


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


# Categories of the packaged library, in display order.
CATEGORIES: tuple[str, ...] = ("animals", "simple", "complex", "styles", "technical", "long")
# Library ids are ``{prefix}_{NNN}``; the prefix is the category in the singular where that reads better.
CATEGORY_ID_PREFIX: dict[str, str] = {
    "animals": "animal",
    "simple": "simple",
    "complex": "complex",
    "styles": "style",
    "technical": "technical",
    "long": "long",
}

MANIPULATIONS: tuple[str, ...] = (
    "baseline",
    "shuffle_all",
    "shuffle_nouns",
    "duplicate_important",
    "front_load",
    "back_load",
    "remove_adjectives",
    "remove_nouns",
)

# Which annotation each manipulation works on (baseline and shuffle_all need none).
_NEEDS: dict[str, str] = {
    "shuffle_nouns": "subjects",
    "remove_nouns": "subjects",
    "duplicate_important": "descriptors",
    "front_load": "descriptors",
    "back_load": "descriptors",
    "remove_adjectives": "descriptors",
}

_LIBRARY_FIELDS: tuple[str, ...] = ("text", "category", "complexity", "subjects", "descriptors", "environment")
_PACKAGED_NAME = "llm_dit/data/prompts.json"
# Ids name output files and record rows: keep them to characters that are safe in paths and CSV.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Chat-template markers such as <|im_start|> inside a prompt would break the one-user-turn format.
_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORD_RE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


# ---------------------------------------------------------------------------------------------- loading


def load_library(path: str | Path | None = None) -> dict[str, Prompt]:
    """Load a prompt library (``id -> {text, category, ...}`` JSON); None = the packaged library (cached).

    Strict: every entry needs a non-empty ``text`` and ``category``; unknown fields, duplicate ids and
    annotation words that are not words of the text are errors naming the id.
    """
    if path is None:
        return dict(_packaged_library())  # a copy: callers may add to or drop from their dict
    path = Path(path)
    return _parse_library(_read_text(path), str(path))


@functools.cache
def _packaged_library() -> dict[str, Prompt]:
    ref = resources.files("llm_dit") / "data" / "prompts.json"
    try:
        text = ref.read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # pragma: no cover - shipped as package data
        raise LlmDitError(f"{_PACKAGED_NAME} is missing from the installation; reinstall llm-dit") from exc
    return _parse_library(text, _PACKAGED_NAME)


def list_prompts(library: Mapping[str, Prompt]) -> list[Prompt]:
    """All prompts of a library, sorted by id."""
    return [library[pid] for pid in sorted(library)]


def _read_text(path: Path) -> str:
    """Read a UTF-8 file; errors name the file (and the line of an undecodable byte)."""
    if not path.is_file():
        raise LlmDitError(f"prompts file {path} does not exist or is not a file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate the BOM some editors write
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LlmDitError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from exc


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of two equal keys; a library with a repeated id is a mistake.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LlmDitError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_library(text: str, source: str) -> dict[str, Prompt]:
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise LlmDitError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except LlmDitError as exc:
        raise LlmDitError(f"{source}: {exc}") from exc
    if not isinstance(data, dict):
        raise LlmDitError(f"{source}: expected a JSON object mapping prompt ids to entries")
    return {pid: _prompt_from_entry(pid, entry, source) for pid, entry in data.items()}


def _prompt_from_entry(pid: str, entry: Any, source: str) -> Prompt:
    where = f"{source}: prompt {pid!r}"
    if not _ID_RE.fullmatch(pid):
        raise LlmDitError(f"{where}: ids use letters, digits, '_', '.' and '-' and start with a letter or digit")
    if not isinstance(entry, dict):
        raise LlmDitError(f"{where}: expected an object with text and category")
    unknown = [key for key in entry if key not in _LIBRARY_FIELDS]
    if unknown:
        raise LlmDitError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(_LIBRARY_FIELDS)})")
    for key in ("text", "category"):
        if key not in entry:
            raise LlmDitError(f"{where}: missing required field {key!r}")
    strings: dict[str, str] = {}
    for key, default in (("text", None), ("category", None), ("complexity", "simple"), ("environment", "")):
        value = entry.get(key, default)
        if not isinstance(value, str):
            raise LlmDitError(f"{where}: {key} must be a string")
        if key != "environment" and not value.strip():
            raise LlmDitError(f"{where}: {key} must not be empty")
        strings[key] = value
    check_prompt_text(strings["text"], where)
    words: dict[str, tuple[str, ...]] = {}
    for key in ("subjects", "descriptors"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise LlmDitError(f"{where}: {key} must be a list of words")
        words[key] = tuple(value)
    _check_annotations(strings["text"], words["subjects"], words["descriptors"], where)
    return Prompt(
        id=pid,
        text=strings["text"],
        category=strings["category"],
        complexity=strings["complexity"],
        subjects=words["subjects"],
        descriptors=words["descriptors"],
        environment=strings["environment"],
    )


def check_prompt_text(text: str, where: str) -> None:
    """Reject what cannot go into the chat template as one user turn (every prompt source: library, --prompt,
    --prompts-file, generate's PROMPT)."""
    if not text.strip():
        raise LlmDitError(f"{where}: the prompt text is empty")
    special = _SPECIAL_TOKEN_RE.search(text)
    if special:
        raise LlmDitError(f"{where}: contains the chat-template token {special.group()}; the template adds these")
    if _CONTROL_RE.search(text):
        raise LlmDitError(f"{where}: contains a control character")


def _check_annotations(text: str, subjects: Sequence[str], descriptors: Sequence[str], where: str) -> None:
    """Every annotation must be one word (per the module's tokenisation rule) that occurs in the text."""
    cores = {_Word.parse(piece).core.casefold() for piece in text.split()}
    seen: dict[str, str] = {}
    for kind, annotated in (("subjects", subjects), ("descriptors", descriptors)):
        for word in annotated:
            if not word or _Word.parse(word).core != word:
                raise LlmDitError(f"{where}: {kind} entry {word!r} must be a single word without punctuation")
            key = word.casefold()
            if key in seen:
                # A word in both lists would be both moved and removed: the manipulations need one role.
                raise LlmDitError(f"{where}: {word!r} is listed twice ({seen[key]} and {kind})")
            if key not in cores:
                raise LlmDitError(f"{where}: {kind} word {word!r} is not a word of the text")
            seen[key] = kind


# -------------------------------------------------------------------------------------------- selection


def select_prompts(
    library: Mapping[str, Prompt],
    *,
    ids: Sequence[str] | None = None,
    category: str | None = None,
    texts: Sequence[str] | None = None,
    prompts_file: str | Path | None = None,
    max_prompts: int | None = None,
) -> list[Prompt]:
    """Combine the selected prompts: ``ids`` (order kept), ``category``, custom ``texts``, ``prompts_file``.

    Sources are concatenated in that order and de-duplicated by id (an id selected twice with different
    content is an error). Empty ``ids``/``texts`` count as not given; with nothing given at all the result
    is ``[]`` (the caller applies its default selection). ``max_prompts`` keeps the first N.
    """
    for name, value in (("ids", ids), ("texts", texts)):
        if isinstance(value, str):  # a str is a Sequence[str]: it would select one prompt per character
            raise LlmDitError(f"{name} must be a list of strings, not a single string")
    if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int)):
        raise LlmDitError(f"max_prompts must be an integer, not {max_prompts!r}")
    if max_prompts is not None and max_prompts < 1:
        raise LlmDitError(f"max_prompts must be at least 1, not {max_prompts}")
    if not ids and category is None and not texts and prompts_file is None:
        return []

    selected: dict[str, Prompt] = {}
    sources: dict[str, str] = {}

    def add(prompt: Prompt, source: str) -> None:
        previous = selected.get(prompt.id)
        if previous is None:
            selected[prompt.id] = prompt
            sources[prompt.id] = source
        elif previous != prompt:
            raise LlmDitError(
                f"prompt id {prompt.id!r} is selected twice with different content ({sources[prompt.id]} and "
                f"{source}); rename one of them"
            )

    for pid in ids or ():
        if pid not in library:
            raise LlmDitError(_unknown_id_message(pid, library))
        add(library[pid], "ids")
    if category is not None:
        for prompt in _category_prompts(library, category):
            add(prompt, f"category {category}")
    for prompt in _custom_prompts(texts or ()):
        add(prompt, "texts")
    if prompts_file is not None:
        for prompt in _read_prompts_file(Path(prompts_file)):
            add(prompt, str(prompts_file))

    if not selected:
        raise LlmDitError("the prompt selection is empty (an empty prompts file or an empty category?)")
    result = list(selected.values())
    return result[:max_prompts] if max_prompts is not None else result


def _unknown_id_message(pid: str, library: Mapping[str, Prompt]) -> str:
    close = difflib.get_close_matches(pid, list(library), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown prompt id {pid!r}{hint} (use --list-prompts to see all ids)"


def _category_prompts(library: Mapping[str, Prompt], category: str) -> list[Prompt]:
    known = sorted(set(CATEGORIES) | {p.category for p in library.values()})
    if category not in known:
        raise LlmDitError(f"unknown prompt category {category!r}; categories: {', '.join(known)}")
    return [p for p in list_prompts(library) if p.category == category]


def _custom_prompts(texts: Sequence[str]) -> list[Prompt]:
    """Custom texts -> ``custom_001``...; surrounding whitespace stripped, repeated texts kept once."""
    unique: list[str] = []
    for index, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise LlmDitError(f"custom prompt {index} must be a string, not {type(text).__name__}")
        check_prompt_text(text, f"custom prompt {index}")
        if text.strip() not in unique:
            unique.append(text.strip())
    return [Prompt(id=f"custom_{n:03d}", text=text, category="custom") for n, text in enumerate(unique, start=1)]


def _read_prompts_file(path: Path) -> list[Prompt]:
    """A ``.json`` file in the library shape, or plain text: one prompt per non-empty line (``file_001``...)."""
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        return list(_parse_library(text, str(path)).values())
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line in seen:  # repeated lines are one prompt, as with repeated custom texts
            continue
        check_prompt_text(line, f"{path}:{lineno}")
        seen.add(line)
        prompts.append(Prompt(id=f"file_{len(prompts) + 1:03d}", text=line, category="file"))
    return prompts


# ---------------------------------------------------------------------------------------- manipulations


@dataclass
class _Word:
    """One whitespace-separated piece of a text: ``lead + core + trail`` (see the module docstring)."""

    lead: str
    core: str
    trail: str

    @classmethod
    def parse(cls, piece: str) -> _Word:
        match = _WORD_RE.match(piece)
        assert match is not None  # the pattern matches any string
        return cls(*match.groups())

    def render(self) -> str:
        return self.lead + self.core + self.trail


def manipulate(prompt: Prompt, name: str, seed: int = 0) -> str:
    """Apply one token-importance manipulation (see MANIPULATIONS); deterministic for a given seed."""
    if name not in MANIPULATIONS:
        raise LlmDitError(f"unknown manipulation {name!r}; valid: {', '.join(MANIPULATIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LlmDitError(f"manipulation seed must be an integer, not {seed!r}")
    if name == "baseline":
        return prompt.text
    words = [_Word.parse(piece) for piece in prompt.text.split()]
    rng = random.Random(seed)
    if name == "shuffle_all":
        return " ".join(_shuffled([w.render() for w in words], rng))

    kind = _NEEDS[name]
    annotated = getattr(prompt, kind)
    if not annotated:
        raise LlmDitError(
            f"prompt {prompt.id} has no {kind} annotated; token_importance needs library prompts or a "
            "prompts file with annotations"
        )
    targets = {w.casefold() for w in annotated}
    hit = [w.core.casefold() in targets for w in words]

    if name == "shuffle_nouns":
        positions = [i for i, h in enumerate(hit) if h]
        for i, core in zip(positions, _shuffled([words[i].core for i in positions], rng), strict=True):
            words[i].core = core
        result = [w.render() for w in words]
    elif name == "duplicate_important":
        result = [
            w.lead + w.core + " " + w.core + w.trail if h else w.render() for w, h in zip(words, hit, strict=True)
        ]
    else:
        kept = _remove(words, hit)
        moved = [w.core for w, h in zip(words, hit, strict=True) if h]
        if name == "front_load":
            result = moved + kept
        elif name == "back_load":
            result = kept + moved
        else:  # remove_adjectives / remove_nouns
            result = kept
    text = " ".join(piece for piece in result if piece)
    if not text:
        raise LlmDitError(f"manipulation {name} leaves prompt {prompt.id} empty")
    return text


def _remove(words: Sequence[_Word], drop: Sequence[bool]) -> list[str]:
    """Render ``words`` without the dropped ones, leaving their punctuation on the neighbouring kept words."""
    kept: list[_Word] = []
    pending_lead = ""
    for word, gone in zip(words, drop, strict=True):
        if not gone:
            kept.append(_Word(pending_lead + word.lead, word.core, word.trail))
            pending_lead = ""
            continue
        pending_lead += word.lead  # e.g. an opening quote or bracket belongs before the next word
        if word.trail and kept and not kept[-1].trail:
            kept[-1].trail = word.trail  # e.g. keep the comma/period that closed a clause
    return [w.render() for w in kept]


def _shuffled(items: list[str], rng: random.Random) -> list[str]:
    """A permutation of ``items`` that differs from them whenever that is possible.

    A draw that leaves the order unchanged is drawn again (then rotated), so a manipulation never turns
    into the baseline by chance, e.g. for a prompt with two nouns.
    """
    if len(set(items)) < 2:
        return list(items)
    out = list(items)
    for _ in range(100):
        rng.shuffle(out)
        if out != items:
            return out
    return items[1:] + items[:1]  # pragma: no cover - 100 identity draws in a row
