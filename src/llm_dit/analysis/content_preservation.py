"""Long-prompt content preservation (seed 001, section 5): does what a long prompt says at a given position survive
the caption cap under each ``long_prompt_mode``?

The library's long prompts are annotated with their subjects (nouns), placed front-heavy (``long_001``: all in the
first 7% of the text), back-heavy (``long_002``: the last 10%), spread out (``long_003``) or repeated (``long_004``).
Each subject is an **element** at a known token position of the prompt as the encoder reads it (the chat template
included); an element is *beyond the cap* when truncation would cut it (its position is past what the cap keeps of
the content). Every done run of such a prompt is scored against each of its elements with a text-image metric (its
image against the element's text alone, e.g. "lighthouse"), so a table says, per mode, how well the elements inside
and beyond the cap show in the image: "does back-heavy content survive truncation vs interpolate".

Reads the results store read-only; the scorer loads from its local weights as the metrics pass's does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.errors import LlmDitError
from llm_dit.metrics.summary import t_interval

__all__ = ["ContentTable", "Element", "content_preservation", "prompt_elements"]


@dataclass(frozen=True)
class Element:
    """One annotated subject of a prompt: where it first appears (character offset; token position in the formatted
    prompt, and as a fraction of the prompt's tokens) and whether truncation at the cap would cut it."""

    prompt_id: str
    text: str
    char_offset: int
    token_position: int
    fraction: float
    beyond_cap: bool


def prompt_elements(
    prompt_id: str, text: str, subjects: Sequence[str], tokenized: Any, offsets: Sequence[tuple[int, int]]
) -> list[Element]:
    """The elements of one prompt from its tokenization under the run's encoder settings: ``tokenized`` its
    ``TokenizedPrompt`` (:mod:`llm_dit.conditioning.tokenization`: template lengths, cap, token count), ``offsets``
    the character spans of the formatted prompt's tokens."""
    start = len(tokenized.formatted.prefix)
    kept = tokenized.cap - tokenized.prefix_len - tokenized.suffix_len  # content tokens truncation keeps
    total = tokenized.token_count - tokenized.prefix_len - tokenized.suffix_len
    out = []
    for subject in dict.fromkeys(subjects):
        offset = text.lower().find(subject.lower())
        if offset < 0:
            continue  # an annotation the text does not hold (the library checks this; a custom prompt may not)
        # Tokens that end before the element starts: the prefix's, then the content's before it.
        position = sum(1 for _, end in offsets if end <= start + offset)
        content_index = position - tokenized.prefix_len
        out.append(
            Element(
                prompt_id,
                subject,
                offset,
                position,
                content_index / max(total, 1),
                total > kept and content_index >= kept,
            )
        )
    return out


@dataclass
class ContentTable:
    """``rows``: per element, its position and the mean score per value of ``axis``; ``summary``: per value, the
    mean score of the elements within and beyond the cap and their paired difference (per run, over runs)."""

    experiment: str
    metric: str
    axis: str
    values: list[str]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def content_preservation(
    root: str | Path, experiment: str, metric: str, metrics_settings: Any, axis: str | None = None
) -> ContentTable:
    """Score each annotated element of every done long-prompt run of ``experiment`` with text-image ``metric``
    (siglip, clip_score or pickscore, from the weights in ``metrics_settings``), by value of ``axis`` (default the
    experiment's first, e.g. ``long_prompt_mode``)."""
    from llm_dit.metrics.registry import METRICS, missing_setting_message

    spec = METRICS.get(metric)
    if spec is None or spec.kind != "text_image":
        text_image = [name for name, s in METRICS.items() if s.kind == "text_image"]
        raise LlmDitError(
            f"--metric {metric!r}: content preservation needs a text-image metric: {', '.join(text_image)}"
        )
    path = getattr(metrics_settings, spec.setting or "", None)
    if not path:
        raise LlmDitError(missing_setting_message(spec))
    # The checks above need no model library: a wrong metric or an unset path is refused before torch loads.
    from PIL import Image

    from llm_dit.analysis.results import load_experiment
    from llm_dit.conditioning.tokenization import PromptTokenizer
    from llm_dit.config import EncoderSettings
    from llm_dit.experiments.prompts import load_library
    from llm_dit.generation.request import encoder_kwargs
    from llm_dit.metrics.scorers import SCORERS
    from llm_dit.models import checkpoint

    SCORERS[spec.setting].check_directory(path)
    results = load_experiment(root, experiment)
    axis = results.check_dimension(axis) if axis is not None else (results.axes[0] if results.axes else None)
    if axis is None:
        raise LlmDitError(f"experiment {experiment!r} sweeps nothing; content preservation compares an axis's values")
    library = load_library()
    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(_model_path(results)))
    light = PromptTokenizer.for_checkpoint(info, EncoderSettings())
    elements: dict[str, list[Element]] = {}
    annotated = []
    for run in results.done():
        prompt = library.get(run["prompt_id"])
        if prompt is None or not prompt.subjects or prompt.text != run["prompt_text"]:
            continue  # not the library's annotated text (a custom prompt, a token manipulation)
        settings = EncoderSettings(**encoder_kwargs(run["params"]))  # the template and cap the run was encoded with
        (tokenized,) = light.tokenize_with([run["prompt_text"]], settings)
        if tokenized.token_count <= tokenized.cap:
            continue  # under the cap every mode keeps everything: nothing to preserve
        _, offsets = light.encode(tokenized.formatted.text)
        elements[run["run_id"]] = prompt_elements(run["prompt_id"], prompt.text, prompt.subjects, tokenized, offsets)
        annotated.append(run)
    if not annotated:
        raise LlmDitError(
            f"{experiment}: no done run has an annotated library prompt over the caption cap (the long prompts "
            "long_001..long_004 are); run it with --prompt-category long"
        )
    s = metrics_settings
    scorer = SCORERS[spec.setting].from_pretrained(path, device=s.device, dtype=s.torch_dtype, batch_size=s.batch_size)
    scores: dict[tuple[str, str], float] = {}
    try:
        for run in annotated:
            items = elements[run["run_id"]]
            with Image.open(results.image_path(run)) as image:
                picture = image.convert("RGB")
            values = scorer.score([picture] * len(items), [e.text for e in items])
            scores.update({(run["run_id"], e.text): v for e, v in zip(items, values, strict=True)})
    finally:
        scorer.unload()
    values = [v for v in results.dimensions[axis] if any(r["variables"].get(axis) == v for r in annotated)]
    rows = []
    for prompt_id in dict.fromkeys(r["prompt_id"] for r in annotated):
        runs = [r for r in annotated if r["prompt_id"] == prompt_id]
        for element in elements[runs[0]["run_id"]]:
            row: dict[str, Any] = {
                "prompt": prompt_id, "element": element.text, "token_position": element.token_position,
                "fraction": element.fraction, "beyond_cap": element.beyond_cap,
            }  # fmt: skip
            for value in values:
                got = [scores[(r["run_id"], element.text)] for r in runs if r["variables"].get(axis) == value]
                row[value] = sum(got) / len(got) if got else None
            rows.append(row)
    summary = []
    for value in values:
        inside, beyond, gaps = [], [], []
        for run in (r for r in annotated if r["variables"].get(axis) == value):
            ins = [scores[(run["run_id"], e.text)] for e in elements[run["run_id"]] if not e.beyond_cap]
            out = [scores[(run["run_id"], e.text)] for e in elements[run["run_id"]] if e.beyond_cap]
            inside += ins
            beyond += out
            if ins and out:
                gaps.append(sum(out) / len(out) - sum(ins) / len(ins))
        summary.append(
            {"value": value, "within_cap": _mean(inside), "beyond_cap": _mean(beyond), **_prefixed(t_interval(gaps))}
        )
    notes = [] if any(r["beyond_cap"] for r in rows) else ["no element lies beyond the cap: every mode keeps them all"]
    return ContentTable(experiment, metric, axis, values, rows, summary, notes)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _prefixed(stats: Mapping[str, Any]) -> dict[str, Any]:
    """t_interval of the per-run differences (beyond minus within), as ``gap_*`` columns."""
    return {f"gap_{k}": v for k, v in stats.items()}


def _model_path(results: Any) -> str | None:
    """The experiment's checkpoint as stored with its plan (``model_path`` of its metadata; None = the tiny one)."""
    from llm_dit.experiments.store import ResultsStore

    with ResultsStore(results.root, read_only=True) as store:
        return (store.experiment(results.name)["metadata"] or {}).get("model_path")
