"""Qwen3-4B against Qwen3-Embedding-4B as Z-Image text encoders, without generating an image (seed 000's
``compare_embedding_models``): for each prompt, Qwen3-4B's caption features at one layer (the reference) against the
embedding model's at several layers, prompt formats and instructions.

What it owns:

- The conditions (:func:`plan_conditions`): embedding layer x prompt format, the ``instruction`` format once per
  instruction (``chat`` and ``raw`` are the rows without one). Instructions by name (:data:`INSTRUCTIONS`) or as text.
- Content-token alignment (:func:`align_content`): the rows of the user's prompt in each sequence, located by
  character span (the Qwen3-4B chat template, the embedding model's chat / raw / instruction formats) and paired
  when both sequences hold the same token over the same characters of the prompt. A token that crosses the prompt's
  edge (``Query:`` followed by the first word can merge into one token) has no partner: the report counts the
  aligned rows and the content rows of each side, so nothing is compared out of place silently.
- The statistics (:func:`pair_statistics`), through the pure functions of :mod:`embedding_stats`: global
  (mean-pooled) cosine, Pearson correlation of the per-dimension means and of the per-dimension stds, the std
  ratio (all values), and the mean cosine of the aligned content rows; and the report (a row per prompt and
  condition, a summary per condition, JSON).

No torch at import: the CLI's checks (:func:`plan_conditions`, :func:`check_prompts`) run before any model library
loads; the functions that compute import it inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.conditioning.prompt import format_prompt
from llm_dit.conditioning.tokenization import check_layer_indices
from llm_dit.constants import DEFAULT_EMBEDDING_TASK, EMBEDDING_FORMATS, ENDOFTEXT_ID
from llm_dit.errors import LlmDitError
from llm_dit.files import json_safe, write_json
from llm_dit.models.embedding_model import EMBEDDING_QUERY_TASK

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_COMPARISON_LAYERS",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_QWEN3_LAYER",
    "INSTRUCTIONS",
    "ROW_COLUMNS",
    "SEED_T2I_TASK",
    "SUMMARY_COLUMNS",
    "ComparisonCondition",
    "EmbeddingComparisonReport",
    "align_content",
    "check_prompts",
    "compare_embedding_models",
    "content_indices",
    "embedding_prompt",
    "pair_statistics",
    "plan_conditions",
    "resolve_instructions",
    "summarize",
]

# Seed 000's instruction ("With instruction prefix (experimental)").
SEED_T2I_TASK = "Generate an embedding for text-to-image synthesis"
# Instruction names: the seed's, the released model's query task, and the project's default task of
# embedding_format = "instruction" (what a run uses when embedding_instruction is unset).
INSTRUCTIONS: dict[str, str] = {"t2i": SEED_T2I_TASK, "query": EMBEDDING_QUERY_TASK, "default": DEFAULT_EMBEDDING_TASK}
DEFAULT_INSTRUCTIONS: tuple[str, ...] = ("t2i", "query")
# Qwen3-4B at Z-Image's own layer; the embedding model from its final-normed state back to the middle of its 36
# layers, spaced by powers of two (the end of the stack is where the two models' training differs most).
DEFAULT_QWEN3_LAYER = -2
DEFAULT_COMPARISON_LAYERS: tuple[int, ...] = (-1, -2, -4, -8, -16)


# ---------------------------------------------------------------------------------------------------------
# Conditions


@dataclass(frozen=True)
class ComparisonCondition:
    """One way of reading the embedding model: a hidden layer, a prompt format and (instruction format) a task."""

    layer: int
    prompt_format: str
    instruction_name: str | None = None
    instruction: str | None = None

    @property
    def label(self) -> str:
        """``L-2/chat``, ``L-2/raw``, ``L-2/instruction:t2i``: the report's row name."""
        name = f":{self.instruction_name}" if self.instruction_name else ""
        return f"L{self.layer}/{self.prompt_format}{name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "layer": self.layer,
            "format": self.prompt_format,
            "instruction_name": self.instruction_name,
            "instruction": self.instruction,
        }


def resolve_instructions(values: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(name, task)`` of each instruction: a name of :data:`INSTRUCTIONS`, or a task's text (named ``task1``,
    ``task2``, ... in order). None: the defaults (:data:`DEFAULT_INSTRUCTIONS`)."""
    chosen = list(DEFAULT_INSTRUCTIONS if values is None else values)
    out: list[tuple[str, str]] = []
    literal = 0
    for value in chosen:
        if not isinstance(value, str) or not value.strip():
            raise LlmDitError(
                f"instruction {value!r} is empty; give a name ({', '.join(INSTRUCTIONS)}) or the task's text"
            )
        if value in INSTRUCTIONS:
            out.append((value, INSTRUCTIONS[value]))
        else:
            literal += 1
            out.append((f"task{literal}", value))
    tasks = [task for _, task in out]
    repeated = sorted({task for task in tasks if tasks.count(task) > 1})
    if repeated:
        raise LlmDitError(f"instruction {repeated[0]!r} is given twice; give each instruction once")
    return out


def plan_conditions(
    layers: Sequence[int],
    formats: Sequence[str],
    instructions: Sequence[tuple[str, str]],
    num_layers: int,
) -> list[ComparisonCondition]:
    """Every condition, layer by layer: each format, the instruction format once per instruction. Checked (layer
    range of a ``num_layers``-layer model, format names) without a model."""
    layers = list(dict.fromkeys(layers))
    formats = list(dict.fromkeys(formats))
    if not layers:
        raise LlmDitError("give at least one embedding layer, e.g. --embedding-layers -2,-8")
    if not formats:
        raise LlmDitError(f"give at least one prompt format: {', '.join(EMBEDDING_FORMATS)}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LlmDitError(f"embedding layer {layer!r} must be an integer")
    check_layer_indices(layers, num_layers)
    for fmt in formats:
        if fmt not in EMBEDDING_FORMATS:
            raise LlmDitError(f"prompt format {fmt!r} is not valid; use {', '.join(EMBEDDING_FORMATS)}")
    if "instruction" in formats and not instructions:
        raise LlmDitError("the instruction format needs at least one instruction")
    out: list[ComparisonCondition] = []
    for layer in layers:
        for fmt in formats:
            if fmt == "instruction":
                out += [ComparisonCondition(layer, fmt, name, task) for name, task in instructions]
            else:
                out.append(ComparisonCondition(layer, fmt))
    return out


def embedding_prompt(text: str, prompt_format: str, instruction: str | None = None) -> tuple[str, int]:
    """The text the embedding model reads for ``prompt_format`` and where the prompt starts in it (characters).

    The same texts as :meth:`EmbeddingEncoder.format_prompt` (tested), without importing torch.
    """
    if prompt_format == "chat":
        formatted = format_prompt(text)
        return formatted.text, len(formatted.prefix)
    if prompt_format == "raw":
        return text, 0
    if prompt_format == "instruction":
        prefix = f"Instruct: {instruction or DEFAULT_EMBEDDING_TASK}\nQuery:"
        return prefix + text, len(prefix)
    raise LlmDitError(f"unknown embedding_format {prompt_format!r}; use one of {', '.join(EMBEDDING_FORMATS)}")


TokenEncode = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


def check_prompts(
    prompts: Sequence[str], conditions: Sequence[ComparisonCondition], encode: TokenEncode, vocab_size: int
) -> None:
    """Refuse, before the embedding model loads, a prompt whose tokens in some format lie outside the embedding
    model's vocabulary (``<think>`` tags: the released vocabulary stops at 151665). ``encode``: a light tokenizer
    of the Qwen3 vocabulary (:func:`llm_dit.conditioning.tokenization.token_encoder`)."""
    seen: set[tuple[str, str, str | None]] = set()
    for prompt in prompts:
        for c in conditions:
            key = (prompt, c.prompt_format, c.instruction)
            if key in seen:
                continue
            seen.add(key)
            ids, _ = encode(embedding_prompt(prompt, c.prompt_format, c.instruction)[0])
            bad = sorted({i for i in ids if i >= vocab_size})
            if bad:
                raise LlmDitError(
                    f"prompt {prompt!r} ({c.prompt_format} format) has token ids {bad} outside the embedding model's "
                    f"vocabulary of {vocab_size} ids (e.g. <think>); remove those tokens from the prompt"
                )


# ---------------------------------------------------------------------------------------------------------
# Content alignment (pure)


def content_indices(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens that lie wholly in characters ``[start, end)`` (empty spans, e.g. special tokens a
    tokenizer appends, excluded)."""
    return [i for i, (s, e) in enumerate(offsets) if start <= s and e <= end and e > s]


def align_content(
    ref_ids: Sequence[int],
    ref_offsets: Sequence[tuple[int, int]],
    ref_start: int,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    start: int,
    length: int,
) -> tuple[list[tuple[int, int]], int, int]:
    """Pairs ``(ref_row, row)`` of the prompt's tokens found in both sequences, and the content token count of
    each side.

    The prompt (``length`` characters) starts at character ``ref_start`` of the reference text and ``start`` of the
    other. A content token pairs with the one that has the same id over the same characters of the prompt (the n-th
    such token with the n-th: a character split into several byte tokens gives each of them its span).
    """
    ref_content = content_indices(ref_offsets, ref_start, ref_start + length)
    content = content_indices(offsets, start, start + length)

    def keyed(seq_ids: Sequence[int], seq_offsets: Sequence[tuple[int, int]], base: int, rows: list[int]) -> dict:
        out: dict[tuple[int, int, int, int], int] = {}
        counts: dict[tuple[int, int, int], int] = {}
        for i in rows:
            key = (seq_offsets[i][0] - base, seq_offsets[i][1] - base, int(seq_ids[i]))
            n = counts.get(key, 0)
            counts[key] = n + 1
            out[(*key, n)] = i
        return out

    ref_keys = keyed(ref_ids, ref_offsets, ref_start, ref_content)
    keys = keyed(ids, offsets, start, content)
    pairs = sorted((ref_keys[k], keys[k]) for k in ref_keys.keys() & keys.keys())
    return pairs, len(ref_content), len(content)


# ---------------------------------------------------------------------------------------------------------
# Statistics


def pair_statistics(reference: Tensor, other: Tensor, pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """``other`` ``[L2, D]`` against ``reference`` ``[L1, D]``: global (mean-pooled) cosine, correlation of the
    per-dimension means and of the per-dimension stds (over each sequence's own rows), std ratio (all values), and
    the mean cosine of the paired rows (None without pairs). float64, :mod:`embedding_stats`'s functions."""
    from llm_dit.conditioning.embedding_stats import aligned_token_cosine, dim_correlation, dim_stats, pooled_cosine

    ref_stats, stats = dim_stats(reference), dim_stats(other)
    token_cosine = None
    if pairs:
        ref_rows = reference[[r for r, _ in pairs]]
        rows = other[[o for _, o in pairs]]
        token_cosine = aligned_token_cosine(rows, ref_rows)[0]
    return {
        "global_cosine": pooled_cosine(other, reference),
        "mean_correlation": dim_correlation(stats.mean, ref_stats.mean),
        "std_correlation": dim_correlation(stats.std, ref_stats.std),
        "std_ratio": stats.value_std / ref_stats.value_std if ref_stats.value_std > 0 else None,
        "token_cosine": token_cosine,
    }


ROW_COLUMNS: tuple[str, ...] = (
    "prompt_index",
    "prompt",
    "condition",
    "layer",
    "format",
    "instruction",  # its name (t2i, query, default, task1...); the text is in the report's conditions
    "tokens",  # the embedding model's rows
    "reference_tokens",  # Qwen3-4B's rows
    "global_cosine",  # cosine of the mean-pooled rows
    "mean_correlation",  # Pearson correlation of the per-dimension means (None: a constant vector)
    "std_correlation",  # the same of the per-dimension stds
    "std_ratio",  # std of all values / Qwen3-4B's
    "token_cosine",  # mean cosine of the aligned content rows (None: none aligned)
    "aligned_tokens",  # content rows paired (same token over the same characters of the prompt)
    "content_tokens",  # the prompt's rows in the embedding model's sequence
    "reference_content_tokens",  # the prompt's rows in Qwen3-4B's
    "alignment_note",  # why some content rows are unpaired, or why none could be (None: all paired)
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "condition",
    "layer",
    "format",
    "instruction",
    "prompts",
    "tokens",  # mean over prompts
    "reference_tokens",
    "global_cosine",  # means over prompts (correlations and token_cosine: over the prompts that have one)
    "mean_correlation",
    "std_correlation",
    "std_ratio",
    "token_cosine",
    "aligned_tokens",  # sums over prompts
    "content_tokens",
    "reference_content_tokens",
)
_MEANS = ("tokens", "reference_tokens", "global_cosine", "mean_correlation", "std_correlation", "std_ratio")
_SUMS = ("aligned_tokens", "content_tokens", "reference_content_tokens")


@dataclass
class EmbeddingComparisonReport:
    """Per prompt x condition statistics against Qwen3-4B (``rows``), their per-condition summary, and what made
    them (``models``: paths and fingerprints; ``settings``: layers, formats, instructions, the eot rule)."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    conditions: list[ComparisonCondition]
    prompts: list[str]
    qwen3_layer: int
    keep_eot: bool
    models: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": {"model": "Qwen3-4B", "layer": self.qwen3_layer, "format": "chat"},
            "conditions": [c.to_dict() for c in self.conditions],
            "keep_eot": self.keep_eot,
            "prompts": self.prompts,
            "models": self.models,
            "settings": self.settings,
            "columns": list(ROW_COLUMNS),
            "rows": self.rows,
            "summary_columns": list(SUMMARY_COLUMNS),
            "summary": self.summary,
        }

    def to_json(self, path: str | Path) -> Path:
        """The whole report as strict JSON (NaN/inf as null), written atomically; returns the path."""
        path = Path(path)
        write_json(path, json_safe(self.to_dict()), default=str)
        return path


def _alignment_note(pairs: int, ref_content: int, content: int) -> str | None:
    if pairs == ref_content == content:
        return None
    return (
        f"{ref_content - pairs} of {ref_content} Qwen3-4B and {content - pairs} of {content} embedding content tokens "
        "have no partner (a token crossing the prompt's edge, e.g. 'Query:' merged with the first word)"
    )


def compare_embedding_models(
    text_encoder: Any,
    embedding_encoder: Any,
    prompts: Sequence[str],
    conditions: Sequence[ComparisonCondition],
    *,
    qwen3_layer: int = DEFAULT_QWEN3_LAYER,
    keep_eot: bool = False,
    models: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> EmbeddingComparisonReport:
    """Encode ``prompts`` with Qwen3-4B (``text_encoder``, a :class:`ZImageTextEncoder`, under its settings at
    ``qwen3_layer``) and with the embedding model (``embedding_encoder``, an :class:`EmbeddingEncoder`, one forward
    per format and instruction for all layers), and measure each condition against Qwen3-4B, prompt by prompt."""
    from llm_dit.conditioning.tokenization import token_encoder

    prompt_list = list(prompts)
    if not prompt_list or not all(isinstance(p, str) for p in prompt_list):
        raise LlmDitError("compare_embedding_models needs a non-empty list of prompt strings")
    conds = list(conditions)
    if not conds:
        raise LlmDitError("compare_embedding_models needs at least one condition")
    if len({c.label for c in conds}) != len(conds):
        raise LlmDitError("a condition is given twice; give each layer, format and instruction once")
    check_layer_indices([c.layer for c in conds], embedding_encoder.num_layers)
    tokenized = text_encoder.tokenize(prompt_list, hidden_layer=qwen3_layer)  # caps and layer range, before a forward
    reference = text_encoder.encode(prompt_list, hidden_layer=qwen3_layer)

    # Qwen3-4B's content rows: the chat template's prefix, then the prompt; rows map to tokens unless the prompt was
    # truncated or compressed to fit the cap.
    ref_tokens: list[tuple[list[int], list[tuple[int, int]], int] | None] = []
    for tok, enc in zip(tokenized, reference, strict=True):
        ids, offsets = text_encoder.prompts.encode(tok.formatted.text)
        usable = not tok.truncated and not tok.compress and ids == enc.token_ids and len(ids) == enc.length
        ref_tokens.append((ids, offsets, len(tok.formatted.prefix)) if usable else None)

    # The embedding model: one forward per (format, instruction) for every layer of that pass.
    passes: dict[tuple[str, str | None], list[int]] = {}
    for c in conds:
        passes.setdefault((c.prompt_format, c.instruction), []).append(c.layer)
    encode = token_encoder(embedding_encoder.tokenizer)
    states: dict[tuple[str, str | None], list[dict[int, Any]]] = {}
    tokens: dict[tuple[str, str | None], list[tuple[list[int], list[tuple[int, int]], int]]] = {}
    for (fmt, task), layers in passes.items():
        states[(fmt, task)] = embedding_encoder.encode_layers(
            prompt_list, layers, prompt_format=fmt, instruction=task, keep_eot=keep_eot
        )
        per_prompt = []
        for prompt in prompt_list:
            text, start = embedding_prompt(prompt, fmt, task)
            ids, offsets = encode(text)
            if not keep_eot and ids and ids[-1] == ENDOFTEXT_ID:  # the encoder's rule for the appended row
                ids, offsets = ids[:-1], offsets[:-1]
            per_prompt.append((ids, offsets, start))
        tokens[(fmt, task)] = per_prompt

    rows: list[dict[str, Any]] = []
    for p, prompt in enumerate(prompt_list):
        ref_rows = reference[p].embeddings
        for c in conds:
            key = (c.prompt_format, c.instruction)
            other = states[key][p][c.layer]
            ids, offsets, start = tokens[key][p]
            if ref_tokens[p] is None:
                pairs, ref_content, content = [], 0, 0
                note = "not aligned: Qwen3-4B truncated or compressed this prompt to fit its token cap"
            elif len(ids) != int(other.shape[0]):
                pairs, ref_content, content = [], 0, 0
                note = "not aligned: the embedding model's input was truncated (over its max length)"
            else:
                r_ids, r_offsets, r_start = ref_tokens[p]  # type: ignore[misc]
                pairs, ref_content, content = align_content(r_ids, r_offsets, r_start, ids, offsets, start, len(prompt))
                note = _alignment_note(len(pairs), ref_content, content)
            row = {
                "prompt_index": p,
                "prompt": prompt,
                "condition": c.label,
                "layer": c.layer,
                "format": c.prompt_format,
                "instruction": c.instruction_name,
                "tokens": int(other.shape[0]),
                "reference_tokens": int(ref_rows.shape[0]),
                **pair_statistics(ref_rows, other, pairs),
                "aligned_tokens": len(pairs),
                "content_tokens": content,
                "reference_content_tokens": ref_content,
                "alignment_note": note,
            }
            rows.append({k: row[k] for k in ROW_COLUMNS})

    return EmbeddingComparisonReport(
        rows=rows,
        summary=summarize(rows, conds),
        conditions=conds,
        prompts=prompt_list,
        qwen3_layer=qwen3_layer,
        keep_eot=keep_eot,
        models=dict(models or {}),
        settings=dict(settings or {}),
    )


def summarize(rows: Sequence[dict[str, Any]], conditions: Sequence[ComparisonCondition]) -> list[dict[str, Any]]:
    """A row per condition: means over prompts (over those with a value, for the correlations and token_cosine),
    the token counts of the alignment summed."""
    out = []
    for c in conditions:
        own = [row for row in rows if row["condition"] == c.label]
        entry: dict[str, Any] = {
            "condition": c.label,
            "layer": c.layer,
            "format": c.prompt_format,
            "instruction": c.instruction_name,
            "prompts": len(own),
        }
        for col in (*_MEANS, "token_cosine"):
            values = [float(row[col]) for row in own if row[col] is not None]
            entry[col] = sum(values) / len(values) if values else None
        for col in _SUMS:
            entry[col] = sum(int(row[col]) for row in own)
        out.append({k: entry[k] for k in SUMMARY_COLUMNS})
    return out
