"""A caption study's results, as seed 002 lays them out and reads them.

:func:`export_study` writes, from the results store alone (so it can be rebuilt at any time)::

    <dir>/source/<source>.png          each source image
    <dir>/source/<source>.txt          its caption
    <dir>/source/<source>_tokens.txt   the caption's token counts (and whether it is over the caption cap)
    <dir>/regenerated/<source>_len600_content_only_L-2.png     (VL mode: ..._VL-6_full.png)
    <dir>/grids/<source>_length_grid.png, _fill_mode_grid.png, _layer_grid.png (, _token_mode_grid.png,
                _compression_grid.png): every variable with more than one value, the source in the first column
    <dir>/results.json                 the study, every source (caption, tokens) and regeneration (metrics, time)
    <dir>/summary.csv                  a row per regeneration: its configuration, SSIM and the other metrics, time

Images are hard links to the store's files where the file system allows (copies otherwise). The folder is built
aside and swapped in whole, so a reader never sees half an export.

:func:`findings` answers the seed's questions from the stored values: per variable the mean of each value with a
95% Student-t interval, and paired differences (same source, same other settings) for "is content_only best?",
"does pad_end_mean equal pad_end_zero?", "where does length stop helping?" and "which layer?". It states what the
numbers say, with n and the interval, and never more: with few sources most answers are "no clear difference".
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.errors import LlmDitError
from llm_dit.experiments.caption_study import SOURCE_LABEL
from llm_dit.files import write_atomic, write_csv, write_json
from llm_dit.metrics.summary import SECONDS_PER_IMAGE_BATCHED, metric_value, t_interval

__all__ = [
    "EXPORT_NAME",
    "Finding",
    "export_study",
    "findings",
    "finish_study",
    "regeneration_name",
    "study_findings",
    "study_runs",
]

EXPORT_NAME = "export"
PRIMARY_METRIC = "ssim"
# The seed's file-name tags of each variable.
_TAGS: dict[str, Any] = {
    "target_length": lambda v: f"len{v}",
    "fill_mode": str,
    "compression": str,
    "hidden_layer": lambda v: f"L{v}",
    "vl_layer": lambda v: f"VL{v}",
    "token_mode": str,
}
# Grids per source: file suffix, the variable along the columns.
_GRIDS = (
    ("length_grid", "target_length"),
    ("fill_mode_grid", "fill_mode"),
    ("compression_grid", "compression"),
    ("layer_grid", "hidden_layer"),
    ("layer_grid", "vl_layer"),
    ("token_mode_grid", "token_mode"),
)


@dataclass(frozen=True)
class Finding:
    """One answer: the question, what the numbers say, and the numbers (for results.json)."""

    question: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict)


def study_runs(runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sources, regenerations) among the latest plan's done runs."""
    done = [dict(r) for r in runs if r["status"] == "done" and r.get("in_plan", True) and r.get("image_path")]
    sources = [r for r in done if r["variables"] and set(r["variables"].values()) == {SOURCE_LABEL}]
    regenerations = [r for r in done if r not in sources]
    return sources, regenerations


def regeneration_name(run: Mapping[str, Any], variables: Sequence[str]) -> str:
    """``a_cat_seed42_len600_content_only_L-2.png``: the source name, then each variable's tag in axis order."""
    tags = [_TAGS.get(v, str)(run["variables"][v]) for v in variables if v in run["variables"]]
    return "_".join([run["prompt_id"], *tags]) + ".png"


def _place(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (same bytes, no extra disk), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _variables(definition: Mapping[str, Any]) -> list[str]:
    return [axis["name"] for axis in definition.get("axes", [])]


def export_study(root: str | Path, name: str, directory: str | Path | None = None) -> Path:
    """Write the seed's layout of study ``name`` (default ``<root>/<name>/export``), rebuilt whole; returns it."""
    from llm_dit.experiments.store import ResultsStore

    root = Path(root)
    with ResultsStore(root, read_only=True) as store:
        info = store.experiment(name)
        runs = store.runs(name)
        captions = store.captions(name)
        exp_dir = store.experiment_dir(name)
    definition = info["definition"] or {}
    study = (info["metadata"] or {}).get("caption_study")
    if study is None:
        raise LlmDitError(f"{name!r} is not a caption study (run llm-dit caption-study); use compare or view for it")
    variables = _variables(definition)
    target = Path(directory) if directory is not None else exp_dir / EXPORT_NAME
    building = target.with_name(f".{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    for sub in ("source", "regenerated", "grids"):
        (building / sub).mkdir(parents=True)
    sources, regenerations = study_runs(runs)
    by_source = {r["prompt_id"]: r for r in sources}
    metrics = sorted({m for r in regenerations for m in r["metrics"]})
    source_records = []
    for run in sources:
        sid = run["prompt_id"]
        _place(exp_dir / run["image_path"], building / "source" / f"{sid}.png")
        caption = captions.get(run["run_id"])
        record: dict[str, Any] = {
            "source": sid,
            "prompt": run["prompt_text"],
            "seed": run["seed"],
            "run_id": run["run_id"],
            "image": f"source/{sid}.png",
            "caption": None,
        }
        if caption is not None:
            rows = [r for r in regenerations if r["prompt_id"] == sid and r.get("token_count") is not None]
            encoded = rows[0]["token_count"] if rows else None
            cap = rows[0]["params"].get("max_text_tokens") if rows else None
            record.update(
                caption=caption["caption"],
                caption_origin=caption["origin"],
                caption_tokens=caption["token_count"],
                encoded_tokens=encoded,
                caption_cap=cap,
                over_cap=None if encoded is None or cap is None else encoded > cap,
            )
            write_atomic(building / "source" / f"{sid}.txt", (caption["caption"] + "\n").encode())
            write_atomic(building / "source" / f"{sid}_tokens.txt", _token_text(record).encode())
        source_records.append(record)
    regen_records, rows = [], []
    columns = ["source", "source_prompt", "seed", *variables, *metrics, SECONDS_PER_IMAGE_BATCHED, "image", "run_id"]
    for run in regenerations:
        file = regeneration_name(run, variables)
        _place(exp_dir / run["image_path"], building / "regenerated" / file)
        record = {
            "source": run["prompt_id"],
            "source_prompt": by_source[run["prompt_id"]]["prompt_text"] if run["prompt_id"] in by_source else None,
            "seed": run["seed"],
            **{v: run["variables"].get(v) for v in variables},
            **{m: run["metrics"].get(m) for m in metrics},
            SECONDS_PER_IMAGE_BATCHED: run.get(SECONDS_PER_IMAGE_BATCHED),
            "image": f"regenerated/{file}",
            "run_id": run["run_id"],
        }
        rows.append([record[c] for c in columns])
        regen_records.append({**record, "token_count": run.get("token_count"), "params": run["params"]})
    write_csv(building / "summary.csv", columns, rows)
    _write_grids(root, name, building / "grids", sources, variables)
    answers = findings(regenerations, variables)
    write_json(
        building / "results.json",
        {
            "experiment": name,
            "study": study,
            "definition": definition,
            "model_fingerprint": (info["metadata"] or {}).get("model_fingerprint"),
            "versions": (info["metadata"] or {}).get("versions"),
            "reference": "each regeneration's own source image (same source prompt and seed)",
            "sources": source_records,
            "regenerations": regen_records,
            "findings": [{"question": f.question, "answer": f.answer, **f.data} for f in answers],
        },
        default=str,
    )
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    building.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def finish_study(
    root: str | Path,
    name: str,
    metrics_settings: Any,
    metric_names: Sequence[str] | None = None,
    directory: str | Path | None = None,
) -> tuple[Any, Path, list[Finding]]:
    """Phase 4 and the export: the metrics (``metric_names``; None = the default set, of which the reference metrics
    compare each regeneration with its own source), then :func:`export_study`. Returns (the metrics report, the
    export folder, the findings). Resumable like every metrics pass: values already stored are not recomputed."""
    from llm_dit.experiments.store import ResultsStore
    from llm_dit.metrics.compute import MetricsPass
    from llm_dit.metrics.registry import select_metrics

    specs, _ = select_metrics(metric_names, metrics_settings)
    with ResultsStore(root) as store:
        report = MetricsPass(store, metrics_settings).run(name, specs, skip_unreferenced=not metric_names)
    target = export_study(root, name, directory)
    return report, target, study_findings(root, name)


def study_findings(root: str | Path, name: str) -> list[Finding]:
    """:func:`findings` of a stored study (its latest plan's regenerations)."""
    from llm_dit.experiments.store import ResultsStore

    with ResultsStore(root, read_only=True) as store:
        definition = store.experiment(name)["definition"] or {}
        _, regenerations = study_runs(store.runs(name))
    return findings(regenerations, _variables(definition))


def _token_text(record: Mapping[str, Any]) -> str:
    over = record.get("over_cap")
    lines = [
        f"caption tokens: {record['caption_tokens']} (Qwen3 tokenizer, the caption text alone)",
        f"encoded tokens: {record['encoded_tokens'] if record['encoded_tokens'] is not None else 'unknown'} "
        "(as the conditioning encoder read the prompt, template included)",
        f"caption cap: {record['caption_cap']} (max_text_tokens); over the cap: "
        + ("unknown" if over is None else "yes: the compression mode applies" if over else "no"),
        f"origin: {record['caption_origin']}",
    ]
    return "\n".join(lines) + "\n"


def _write_grids(
    root: Path, name: str, directory: Path, sources: Sequence[Mapping[str, Any]], variables: Sequence[str]
) -> None:
    """Per source, a grid per variable with more than one value: that variable along the columns, the next varying
    one along the rows, the others at their first value; the source image first in every row."""
    from dataclasses import replace

    from llm_dit.analysis.compare import plan_grid, save_image
    from llm_dit.analysis.results import load_experiment

    exp = load_experiment(root, name)
    values = {v: [x for x in exp.dimensions.get(v, []) if x != SOURCE_LABEL] for v in variables}
    metrics = [PRIMARY_METRIC] if PRIMARY_METRIC in exp.metrics else []
    for source in sources:
        sid = source["prompt_id"]
        run = next((r for r in exp.done() if r["run_id"] == source["run_id"]), None)
        if run is None:
            continue
        for suffix, column in _GRIDS:
            if len(values.get(column, [])) < 2:
                continue
            others = [v for v in variables if v != column and len(values[v]) > 1]
            rows = others[0] if others else "prompt"
            filters = {"prompt": [sid], column: values[column]}
            filters.update({v: values[v] if v == rows else values[v][:1] for v in variables if v != column})
            try:
                grid = plan_grid(
                    exp, rows=rows, cols=column, filters=filters, metrics=metrics, max_rows=16, max_cols=16,
                    show_inputs=False,
                )  # fmt: skip
            except LlmDitError:
                continue  # nothing regenerated yet for this source
            pages = tuple(
                replace(p, col_labels=(SOURCE_LABEL, *p.col_labels), runs=tuple((run, *r) for r in p.runs))
                for p in grid.pages
            )
            grid = replace(grid, pages=pages)
            for i, image in enumerate(grid.images()):
                save_image(image, directory / (f"{sid}_{suffix}" + (f"_{i + 1}" if i else "") + ".png"))


# ------------------------------------------------------------------------------------------------------------
# Findings


def _pairs(runs: Sequence[Mapping[str, Any]], axis: str, a: str, b: str, metric: str) -> list[float]:
    """metric(a) - metric(b) over pairs of runs equal in everything but ``axis`` (same source, seed, other values)."""

    def key(run: Mapping[str, Any]) -> tuple[Any, ...]:
        others = tuple(sorted((k, v) for k, v in run["variables"].items() if k != axis))
        return (run["prompt_id"], run["seed"], others)

    at_a = {key(r): metric_value(r, metric) for r in runs if r["variables"].get(axis) == a}
    at_b = {key(r): metric_value(r, metric) for r in runs if r["variables"].get(axis) == b}
    return [at_a[k] - at_b[k] for k in at_a if k in at_b and at_a[k] is not None and at_b[k] is not None]


def _interval(values: Sequence[float]) -> dict[str, Any]:
    stats = t_interval(values)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}


def _fmt(stats: Mapping[str, Any], sign: str = "+") -> str:
    """``mean [low, high] (n=N)``; ``sign`` "+" for differences, "" for values."""
    if stats["n"] == 0:
        return "no values"
    if stats["ci95_low"] is None:
        return f"{stats['mean']:{sign}.4f} (n={stats['n']}: too few for an interval)"
    low, high = stats["ci95_low"], stats["ci95_high"]
    return f"{stats['mean']:{sign}.4f} [{low:{sign}.4f}, {high:{sign}.4f}] (n={stats['n']})"


def _verdict(stats: Mapping[str, Any], a: str, b: str, metric: str) -> str:
    if stats["n"] < 2 or stats["ci95_low"] is None:
        return f"too few pairs to tell {a} from {b}"
    if stats["ci95_low"] > 0:
        return f"{a} has the higher {metric}"
    if stats["ci95_high"] < 0:
        return f"{b} has the higher {metric}"
    return f"no clear difference between {a} and {b} at 95%"


def findings(
    regenerations: Sequence[Mapping[str, Any]], variables: Sequence[str], metric: str = PRIMARY_METRIC
) -> list[Finding]:
    """The seed's questions answered from the regenerations' ``metric`` (higher = closer to the source)."""
    runs = [r for r in regenerations if metric_value(r, metric) is not None]
    if not runs:
        return [Finding("results", f"no {metric} values yet: run the metrics (they come with the study)")]
    out: list[Finding] = []
    values = {v: list(dict.fromkeys(r["variables"][v] for r in runs if v in r["variables"])) for v in variables}
    for variable in variables:
        if len(values[variable]) < 2:
            continue
        per = {
            value: _interval([metric_value(r, metric) for r in runs if r["variables"].get(variable) == value])
            for value in values[variable]
        }
        best = max(per, key=lambda v: per[v]["mean"])
        text = "; ".join(f"{v}: {_fmt(s, '')}" for v, s in per.items())
        out.append(Finding(f"{metric} by {variable}", f"{text}; highest mean: {best}", {"values": per}))
    fills = values.get("fill_mode", [])
    if "content_only" in fills and len(fills) > 1:
        data, parts = {}, []
        for other in fills:
            if other == "content_only":
                continue
            stats = _interval(_pairs(runs, "fill_mode", "content_only", other, metric))
            data[other] = stats
            parts.append(f"vs {other}: {_fmt(stats)}, {_verdict(stats, 'content_only', other, metric)}")
        out.append(Finding("Is content_only best (does padding hurt)?", "; ".join(parts), {"content_only_minus": data}))
    if "pad_end_mean" in fills and "pad_end_zero" in fills:
        stats = _interval(_pairs(runs, "fill_mode", "pad_end_mean", "pad_end_zero", metric))
        verdict = _verdict(stats, "pad_end_mean", "pad_end_zero", metric)
        answer = f"pad_end_mean - pad_end_zero: {_fmt(stats)}: {verdict}"
        if verdict.startswith("no clear"):
            answer += " (consistent with the DiT not caring about the padding values; not proof of equality)"
        out.append(Finding("Does pad_end_mean equal pad_end_zero?", answer, {"difference": stats}))
    lengths = values.get("target_length", [])
    if len(lengths) > 1:
        ordered = sorted(lengths, key=int)
        means = {
            length: _interval([metric_value(r, metric) for r in runs if r["variables"]["target_length"] == length])
            for length in ordered
        }
        best = max(ordered, key=lambda length: means[length]["mean"])
        # The shortest length not clearly worse than the best one (paired, same source and other settings).
        enough = best
        steps = {}
        for length in ordered:
            if length == best:
                break
            stats = _interval(_pairs(runs, "target_length", length, best, metric))
            steps[length] = stats
            if stats["ci95_high"] is not None and stats["ci95_high"] >= 0:
                enough = length
                break
        answer = f"highest mean {metric} at {best} tokens"
        if enough != best:
            answer += (
                f"; {enough} tokens is not clearly worse ({_fmt(steps[enough])} vs {best}): length stops helping there"
            )
        elif steps:
            answer += "; every shorter length is clearly worse (paired 95% intervals below 0)"
        out.append(Finding("Where does length stop helping?", answer, {"means": means, "vs_best": steps, "best": best}))
    for layer_axis in ("hidden_layer", "vl_layer"):
        layers = values.get(layer_axis, [])
        if len(layers) > 1:
            means = {
                v: _interval([metric_value(r, metric) for r in runs if r["variables"][layer_axis] == v]) for v in layers
            }
            best = max(layers, key=lambda v: means[v]["mean"])
            first = layers[0]
            answer = f"highest mean {metric} at layer {best}"
            if best != first:
                stats = _interval(_pairs(runs, layer_axis, best, first, metric))
                answer += f"; {best} - {first}: {_fmt(stats)}, {_verdict(stats, best, first, metric)}"
            out.append(
                Finding(f"Which {layer_axis.replace('_', ' ')} keeps the content best?", answer, {"means": means})
            )
    return out
