"""An experiment's report: one self-contained folder (``report.md`` + ``images/``) a researcher can paste into a
write-up, readable offline and on a code-hosting site (every path in it is relative).

It holds what a reader needs to trust a finding: the question (the experiment's description), the commands that
reproduce it (reconstructed from what the store recorded), the resolved configuration, model fingerprint, package
versions, git commit and host, the run counts, the summary statistics per axis value and per prompt category (the
numbers of ``summary.csv``: :func:`llm_dit.metrics.summary.summarize` and ``group_stats``), the grids and plots
(drawn by :mod:`.compare` and :mod:`.plots`, not a copy of them), and paired tests of each axis value against the
axis' reference value. It never writes a conclusion: the ``## Conclusions`` section is the researcher's, kept word
for word between its markers when the report is regenerated.

Why paired tests: every value of an axis is run on the same prompts and seeds (and values of the other axes), so
the difference within a pair removes the prompt's and the seed's own effect, which would otherwise swamp the
axis'. Both the paired t-test (the mean difference) and the Wilcoxon signed-rank test (no normality assumed, robust
to one odd prompt) are reported, each with Holm's correction over every comparison of the report, since a report
makes many comparisons at once.

The results store is only read (a read-only connection); the folder is built aside and swapped in whole, so a reader
never sees half a report, and nothing else in the results directory is touched.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_dit.analysis.results import CUSTOM_CATEGORY, PROMPT, SEED, ExperimentResults, load_experiment
from llm_dit.errors import LlmDitError, did_you_mean
from llm_dit.files import write_atomic
from llm_dit.metrics.registry import DIVERSITY_METRICS, METRICS
from llm_dit.metrics.summary import RUN_FIELDS, group_stats, metric_value, run_fields, summarize, t_interval

REPORT_NAME = "report.md"
IMAGES_DIR = "images"
DEFAULT_DIR = "report"  # <results>/<experiment>/report/
# Below this many pairs no test is run: with 5 pairs the smallest two-sided Wilcoxon signed-rank p-value there is
# is 2 / 2**5 = 0.0625, so nothing could ever be significant at 0.05; with 6 it is 0.03125.
MIN_PAIRS = 6
ALPHA = 0.05
MAX_GRID_PAGES = 8  # more pages than this: the first seed only, then the first pages (the rest: llm-dit compare)
GRID_METRICS = 3  # metric values under each grid image
T_TEST = "paired t-test (scipy.stats.ttest_rel, two-sided)"
WILCOXON = "Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided, zero differences dropped)"
CONCLUSIONS_BEGIN = "<!-- conclusions:begin (text between this line and conclusions:end is kept on regeneration) -->"
CONCLUSIONS_END = "<!-- conclusions:end -->"
CONCLUSIONS_PLACEHOLDER = (
    "<!-- Write your conclusions here: what the numbers and images above show, what they do not, and the next "
    "question. llm-dit never writes this section; re-running `llm-dit report` keeps it as it is. -->"
)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!~&])")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PairedTest:
    """One comparison: ``metric`` at ``axis`` = ``value`` against ``axis`` = ``reference``, paired over the other
    dimensions. ``diff`` is the t-interval of value - reference; p-values are None when no test was run (``note``
    says why); the Holm-adjusted ones are filled in over the whole report."""

    metric: str
    axis: str
    value: str
    reference: str
    n_pairs: int
    diff: dict[str, float | int]
    t_p: float | None = None
    wilcoxon_p: float | None = None
    t_p_holm: float | None = None
    wilcoxon_p_holm: float | None = None
    note: str = ""
    left_out: int = 0  # runs with a non-finite value (PSNR inf of identical images), left out of the pairs

    @property
    def tested(self) -> bool:
        return self.t_p is not None


@dataclass
class Report:
    """What the page shows, computed before anything is drawn (tests check these numbers)."""

    results: ExperimentResults
    info: dict[str, Any]
    metrics: list[str]  # summarised: stored metrics, then the run fields with values
    tested_metrics: list[str]  # stored metrics only (time fields are per batch, not per run)
    references: dict[str, tuple[str, str]]  # axis -> (label, how it was chosen)
    summary: list[dict[str, Any]]
    categories: dict[str, dict[str, dict[Any, dict[str, float | int]]]]  # metric -> axis -> (category, label)
    tests: list[PairedTest]
    notes: list[str] = field(default_factory=list)


# -- statistics --------------------------------------------------------------------------------------------------


def paired_test(values: Sequence[float], references: Sequence[float], min_pairs: int = MIN_PAIRS) -> dict[str, Any]:
    """The paired t-test and the Wilcoxon signed-rank test of ``values`` against ``references`` (pair i is
    (values[i], references[i])), both two-sided, and the t-interval of the differences.

    Fewer than ``min_pairs`` pairs, or differences all zero, run no test (``note`` says which)."""
    from scipy import stats

    if len(values) != len(references):
        raise ValueError("values and references must pair up")
    diffs = [v - r for v, r in zip(values, references, strict=True)]
    out: dict[str, Any] = {"n_pairs": len(diffs), "diff": t_interval(diffs), "t_p": None, "wilcoxon_p": None}
    if len(diffs) < min_pairs:
        out["note"] = f"not enough pairs ({len(diffs)} < {min_pairs})"
        return out
    if all(d == 0 for d in diffs):
        out["note"] = "identical in every pair"
        return out
    with warnings.catch_warnings():  # constant differences: scipy warns, the p-value it returns stands
        warnings.simplefilter("ignore")
        out["t_p"] = float(stats.ttest_rel(values, references).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(values, references).pvalue)
    out["note"] = ""
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the p-values given (None or NaN: not a comparison, left None).

    Sorted ascending, the i-th smallest (from 0) of m becomes max over j <= i of min(1, (m - j) p_(j)): the
    family-wise error stays at most alpha without assuming the tests independent."""
    ranked = sorted((i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)), key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(ranked):
        p = pvalues[i]
        assert p is not None
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        out[i] = running
    return out


def pairs(
    results: ExperimentResults, metric: str, axis: str, value: str, reference: str
) -> tuple[list[tuple[Any, float, float]], int]:
    """(key, value's metric, reference's metric) per pair, and how many runs were left out for a non-finite value.

    A pair is a (prompt, seed, other axes' values) at which both labels have a done run with a finite value; a
    diversity metric is averaged over the seeds of each condition first (its per-run values share their seeds), so
    its pairs are (prompt, other axes' values)."""
    per_condition = metric in DIVERSITY_METRICS
    others = [a for a in results.axes if a != axis]
    groups: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    left_out = 0
    for run in results.runs:
        label = run["variables"].get(axis)
        if run["status"] != "done" or label not in (value, reference):
            continue
        number = metric_value(run, metric)
        if number is None:
            continue
        if not math.isfinite(number):
            left_out += 1
            continue
        key = (run["prompt_id"], *(run["variables"].get(a) for a in others))
        if not per_condition:
            key += (run["seed"],)
        groups.setdefault(key, {}).setdefault(label, []).append(number)
    out = [
        (key, math.fsum(g[value]) / len(g[value]), math.fsum(g[reference]) / len(g[reference]))
        for key, g in groups.items()
        if value in g and reference in g
    ]
    return out, left_out


# -- the numbers -------------------------------------------------------------------------------------------------


def resolve_metrics(results: ExperimentResults, names: Sequence[str] | None) -> list[str]:
    """The metrics to report: ``names`` (each must have values), else every stored metric with values (the plots'
    order: text-image, perceptual, reference, diversity, then the rest), then the time fields with values."""
    from llm_dit.analysis.plots import DEFAULT_METRICS

    fields = run_fields(results.runs)
    available = [*results.metrics, *fields]
    if not names:
        stored = [m for m in DEFAULT_METRICS if m in results.metrics]
        return [*stored, *(m for m in results.metrics if m not in stored), *fields]
    out = []
    for name in names:
        if name in available:
            out.append(name)
            continue
        shown = ", ".join(available) or "none"
        if name in METRICS or name in RUN_FIELDS:
            raise LlmDitError(
                f"experiment {results.name!r} has no {name} values; compute them with 'llm-dit metrics "
                f"{results.name} --metric {name}'; it has: {shown}"
            )
        raise LlmDitError(
            f"unknown metric {name!r}{did_you_mean(name, [*available, *METRICS])}; experiment {results.name!r} has: "
            f"{shown}"
        )
    return list(dict.fromkeys(out))


def parse_baselines(items: Sequence[str] | None) -> dict[str, str]:
    """``--baseline AXIS=LABEL`` items -> {axis: label}."""
    from llm_dit.config import split_assignment

    out: dict[str, str] = {}
    for item in items or []:
        axis, label = split_assignment(item, "--baseline", "AXIS=LABEL, e.g. --baseline hidden_layer=-2")
        out[axis] = label
    return out


def reference_labels(
    results: ExperimentResults, info: Mapping[str, Any], baselines: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """axis -> (the label every other value is tested against, why that one): ``baselines`` first, else the
    label at the plan's stored defaults (the metrics' default reference), else the axis' first value."""
    from llm_dit.experiments.store import PlanDefaults
    from llm_dit.metrics.reference import default_labels

    baselines = dict(baselines or {})
    for axis, label in baselines.items():
        if axis not in results.axes:
            raise LlmDitError(
                f"--baseline {axis}={label}: experiment {results.name!r} has no axis {axis!r}"
                f"{did_you_mean(axis, results.axes)}; axes: {', '.join(results.axes) or 'none'}"
            )
        results.check_values(axis, [label])
    defaults = default_labels(
        results.runs, info.get("definition") or {}, PlanDefaults.from_metadata(info.get("metadata")).params
    )
    out = {}
    for axis in results.axes:
        if axis in baselines:
            out[axis] = (baselines[axis], "chosen with --baseline")
        elif axis in defaults:
            out[axis] = (defaults[axis], "the default value (the metrics' default reference)")
        elif results.dimensions.get(axis):
            out[axis] = (results.dimensions[axis][0], "the first value (no value of this axis is the default)")
    return out


def build_report(
    results: ExperimentResults,
    info: Mapping[str, Any],
    metrics: Sequence[str] | None = None,
    baselines: Mapping[str, str] | None = None,
) -> Report:
    """Every number of the page, from the experiment's latest plan: summaries, per-category tables, paired tests
    with Holm's correction. Refuses (one line) an experiment with no done run or an unknown metric."""
    counts = results.counts
    if not counts["done"]:
        raise LlmDitError(
            f"experiment {results.name!r} has no done runs ({counts['failed']} failed, {counts['planned']} planned); "
            f"run it first: llm-dit ablate -e {results.name}"
        )
    chosen = resolve_metrics(results, metrics)
    references = reference_labels(results, info, baselines)
    per_condition = [m for m in chosen if m in DIVERSITY_METRICS]
    summary = summarize(results.runs, results.axes, chosen, per_condition)
    done = [run for run in results.runs if run["status"] == "done"]
    categories: dict[str, dict[str, dict[Any, dict[str, float | int]]]] = {}
    for metric in chosen:
        categories[metric] = {
            axis: group_stats(
                done,
                lambda run, axis=axis: (
                    None
                    if run["variables"].get(axis) is None
                    else (results.category(run["prompt_id"]), run["variables"][axis])
                ),
                metric,
                metric in DIVERSITY_METRICS,
            )
            for axis in results.axes
        }
    tested = [m for m in chosen if m not in RUN_FIELDS]
    tests: list[PairedTest] = []
    for metric in tested:
        for axis in results.axes:
            if axis not in references or len(results.dimensions.get(axis, [])) < 2:
                continue
            reference = references[axis][0]
            for value in results.dimensions[axis]:
                if value == reference:
                    continue
                found, left_out = pairs(results, metric, axis, value, reference)
                outcome = paired_test([v for _, v, _ in found], [r for _, _, r in found])
                if left_out:
                    outcome["note"] = "; ".join(filter(None, [outcome["note"], f"{left_out} values not finite"]))
                tests.append(PairedTest(metric, axis, value, reference, left_out=left_out, **outcome))
    t_holm = holm([t.t_p for t in tests])
    w_holm = holm([t.wilcoxon_p for t in tests])
    tests = [
        PairedTest(**{**t.__dict__, "t_p_holm": th, "wilcoxon_p_holm": wh})
        for t, th, wh in zip(tests, t_holm, w_holm, strict=True)
    ]
    return Report(results, dict(info), chosen, tested, references, summary, categories, tests)


# -- the page ----------------------------------------------------------------------------------------------------


def md_text(text: Any) -> str:
    """Text for Markdown (and a table cell): its special characters backslash-escaped, on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def md_code(text: Any) -> str:
    """An inline code span (a table cell's ``|`` escaped, as GitHub's tables need)."""
    text = str(text).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fmt(value: Any) -> str:
    """A number as the page shows it: 4 significant digits, inf as inf, missing as -."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def interval(row: Mapping[str, Any]) -> str:
    """'[low, high]' of a t_interval row ('-' when n = 1 or not finite)."""
    if row.get("ci95_low") is None or math.isnan(row["ci95_low"]):
        return "-"
    return f"[{fmt(row['ci95_low'])}, {fmt(row['ci95_high'])}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def commands(results: ExperimentResults, info: Mapping[str, Any], root: Path, metrics: Sequence[str]) -> list[str]:
    """The command lines that reproduce the experiment, rebuilt from its stored definition and metadata."""
    meta = info.get("metadata") or {}
    definition = info.get("definition") or {}
    argv = ["llm-dit", "ablate"]
    if meta.get("experiment_file"):
        argv += ["--experiment-file", str(meta["experiment_file"])]
    else:
        argv += ["-e", results.name]
    model = meta.get("model_path")
    if model == "tiny":
        argv += ["--model", "tiny"]
    elif model:
        argv += ["--model-path", str(model)]
    prompt_ids = list(meta.get("prompt_ids") or results.dimensions[PROMPT])
    if all(results.category(pid) != CUSTOM_CATEGORY for pid in prompt_ids):
        argv += ["--prompt-ids", ",".join(prompt_ids)]
    else:
        for pid in prompt_ids:
            argv += ["--prompt", results.prompt_texts.get(pid, pid)]
    seeds = meta.get("seeds") or definition.get("seeds") or results.dimensions[SEED]
    argv += ["--seeds", ",".join(str(s) for s in seeds)]
    for image in meta.get("images") or []:
        argv += ["--image", str(image)]
    for key, value in (meta.get("overrides") or {}).items():
        argv += ["--set", f"{key}={_value_text(value)}"]
    if meta.get("batch_size") not in (None, 8):
        argv += ["--batch-size", str(meta["batch_size"])]
    if meta.get("offload_encoder"):
        argv.append("--offload-encoder")
    argv += ["--output-dir", str(root)]
    lines = [shlex.join(argv)]
    stored = [m for m in metrics if m not in RUN_FIELDS]
    if stored:
        lines.append(
            shlex.join(["llm-dit", "metrics", results.name, "--metric", ",".join(stored), "--output-dir", str(root)])
        )
    lines.append(shlex.join(["llm-dit", "report", results.name, "--output-dir", str(root)]))
    return lines


def _direction(metric: str) -> str:
    from llm_dit.analysis.plots import higher_is_better

    better = higher_is_better(metric)
    return "" if better is None else (" (higher is better)" if better else " (lower is better)")


def _describe(metric: str) -> str:
    if metric in METRICS:
        return METRICS[metric].description
    return {
        "seconds_per_image_batched": "seconds per image: the batch's time over its size (moves with batching)",
        "timed_median_s": "seconds per image, timed: median of repeats at batch 1, warmed up (ablate --timing)",
    }.get(metric, "")


def render(report: Report, images: Mapping[str, list[tuple[str, str, list[str]]]], conclusions: str, root: Path) -> str:
    """``report.md``'s text. ``images``: section -> [(relative path or '', caption, notes)] ('' = not drawn, the
    first note says why); ``conclusions``: what goes between the Conclusions markers."""
    res, info = report.results, report.info
    meta = info.get("metadata") or {}
    counts = res.counts
    out: list[str] = [f"# Report: {md_code(res.name)}", ""]
    out += [
        "<!-- Generated by `llm-dit report` from the results store. Everything but the text between the "
        "conclusions markers is rewritten when the report is regenerated. -->",
        "",
        "## Question",
        "",
        f"> {md_text(res.description or '(the experiment has no description)')}",
        "",
        f"Results as of {md_text(info.get('finished_at') or info.get('started_at') or 'unknown')} (UTC); "
        f"{counts['done']} of {counts['total']} runs done.",
        "",
        "## What was run",
        "",
    ]
    out += table(
        ["done", "failed", "planned", "total"], [[str(counts[k]) for k in ("done", "failed", "planned", "total")]]
    )
    out += ["", "Axes (the reference value, against which the others are tested, in bold):", ""]
    axis_rows = []
    for axis in res.axes:
        ref = report.references.get(axis, ("", ""))
        labels = [f"**{md_code(v)}**" if v == ref[0] else md_code(v) for v in res.dimensions.get(axis, [])]
        axis_rows.append([md_code(axis), ", ".join(labels), md_text(ref[1])])
    out += table(["axis", "values", "reference"], axis_rows)
    out += ["", f"Seeds: {', '.join(md_code(s) for s in res.dimensions[SEED])}.", "", "Prompts:", ""]
    out += table(
        ["id", "category", "text"],
        [
            [md_code(pid), md_text(res.category(pid)), md_text(res.prompt_texts.get(pid, ""))]
            for pid in res.dimensions[PROMPT]
        ],
    )
    failed = [run for run in res.runs if run["status"] == "failed"]
    if failed:
        out += ["", f"Failed runs ({len(failed)}; the first 10):", ""]
        out += table(
            ["run", "prompt", "values", "error"],
            [
                [
                    md_code(run["run_id"]),
                    md_code(run["prompt_id"]),
                    md_text(", ".join(f"{a}={v}" for a, v in run["variables"].items())),
                    md_text((run.get("error") or "")[:200]),
                ]
                for run in failed[:10]
            ],
        )
    out += ["", "## Commands", "", "Reconstructed from the stored plan (the store does not keep the command line):", ""]
    out += ["```bash", *commands(res, info, root, report.metrics), "```", ""]
    out += ["## Provenance", ""]
    facts = [
        ("model", meta.get("model_path")),
        ("model fingerprint", meta.get("model_fingerprint")),
        ("llm-dit", meta.get("llm_dit_version")),
        ("git commit", meta.get("git_commit")),
        ("host", meta.get("host")),
        ("started", info.get("started_at")),
        ("finished", info.get("finished_at")),
        ("batch size", meta.get("batch_size")),
        ("numerics", ", ".join(f"{k} {v}" for k, v in (meta.get("numerics") or {}).items()) or None),
    ]
    out += table(["fact", "value"], [[k, md_code(v) if v is not None else "-"] for k, v in facts])
    versions = meta.get("versions") or {}
    if versions:
        out += ["", "Package versions:", ""]
        out += table(["package", "version"], [[md_text(k), md_code(v)] for k, v in versions.items()])
    out += ["", "<details>", "<summary>Resolved configuration (base settings of every run)</summary>", "", "```json"]
    out += [json.dumps(meta.get("base_settings") or {}, indent=2, sort_keys=True), "```", "", "</details>", ""]
    out += _summary_section(report)
    out += _tests_section(report)
    out += preferences_section(res)
    out += set_metrics_section(res)
    for section, entries in images.items():
        out += [f"## {section}", ""]
        for path, caption, notes in entries:
            out += [f"![{md_text(caption)}]({path})" if path else f"{md_text(caption)}: not drawn.", ""]
            out += [f"*{md_text(n)}*" for n in notes] + ([""] if notes else [])
    out += ["## Conclusions", "", CONCLUSIONS_BEGIN, conclusions, CONCLUSIONS_END, ""]
    return "\n".join(out)


def preferences_section(res: ExperimentResults) -> list[str]:
    """'## Human preference': win rates and Bradley-Terry scores of the A/B judgements of ``llm-dit view --rate``
    (:mod:`.preferences`); nothing at all when the experiment has none."""
    from llm_dit.analysis.preferences import experiment_preferences
    from llm_dit.metrics.preferences import BT_METRIC

    found = experiment_preferences(res)
    if not found["rows"]:
        return []
    out = [
        "## Human preference",
        "",
        f"{found['judgements']} blind A/B judgements by {len(found['raters'])} rater(s) "
        f"({found['stale']} left out: an image regenerated since). Win rate = (wins + ties/2) / n with a Wilson 95% "
        "interval; Bradley-Terry log-strength (MM fit, ties half a win each), the axis' first value pinned to 0, "
        "with a 95% interval from the observed Fisher information.",
        "",
    ]
    rows = [
        [md_code(r["axis"]), md_code(r["value"]), "Bradley-Terry" if r["metric"] == BT_METRIC else "win rate",
         fmt(r["mean"]), interval(r), f"{r['wins']}/{r['ties']}/{r['losses']}", str(r["n"])]
        for r in found["rows"]
    ]  # fmt: skip
    out += table(["axis", "value", "score", "estimate", "95% interval", "wins/ties/losses", "n"], rows)
    return [*out, ""]


def set_metrics_section(res: ExperimentResults) -> list[str]:
    """'## Set-level metrics': the rows of ``set_metrics.csv`` (``llm-dit metrics --set-metric``), as computed,
    with what defines each number; nothing when the experiment has none."""
    from llm_dit.metrics.sets import SET_METRICS_NAME, read_set_rows

    rows = read_set_rows(res.directory / SET_METRICS_NAME)
    if not rows:
        return []
    out = [
        "## Set-level metrics",
        "",
        f"From `{SET_METRICS_NAME}` (`llm-dit metrics {res.name} --set-metric fid|kid`): each condition's image set "
        "against its reference set, lower = closer. KID: the mean over subsets ± their population std; FID: one "
        "number, biased upwards at small n (compare equal set sizes only). Each row is of the images whose hashes "
        "its `images_sha256` digests, as they were when it was computed.",
        "",
    ]
    body = [
        [md_code(r["metric"]), md_code(r["condition"]), md_code(r["reference"]), f"{r['n']}/{r['n_reference']}",
         fmt(float(r["value"])) + (f" ± {fmt(float(r['std']))}" if r["std"] else ""),
         md_code(f"subset {r['subset_size']} x {r['subsets']}" if r["subset_size"] else "-"), md_code(r["resize"])]
        for r in rows
    ]  # fmt: skip
    out += table(["metric", "condition", "reference", "n/n ref", "value", "KID subsets", "resize"], body)
    return [*out, ""]


def _summary_section(report: Report) -> list[str]:
    res = report.results
    out = [
        "## Summary",
        "",
        "Mean, two-sided 95% Student-t interval and n over the done runs with a value, per axis value (as "
        "`summary.csv`); diversity metrics are averaged per condition first, so their n counts conditions. A PSNR "
        "mean of inf says identical images (the reference runs) were averaged in.",
        "",
    ]
    for metric in report.metrics:
        out += [f"### {md_code(metric)}{_direction(metric)}", ""]
        if _describe(metric):
            out += [md_text(_describe(metric)) + ".", ""]
        rows = [r for r in report.summary if r["metric"] == metric]
        out += table(
            ["axis", "value", "n", "mean", "95% CI"],
            [[md_code(r["axis"]), md_code(r["value"]), str(r["n"]), fmt(r["mean"]), interval(r)] for r in rows],
        )
        out.append("")
        for axis in res.axes:
            cells = report.categories[metric][axis]
            if not cells:
                continue
            labels = [v for v in res.dimensions.get(axis, []) if any(k[1] == v for k in cells)]
            cats = list(dict.fromkeys(res.category(pid) for pid in res.dimensions[PROMPT]))
            cats = [c for c in cats if c != CUSTOM_CATEGORY] + [c for c in cats if c == CUSTOM_CATEGORY]
            rows_c = []
            for cat in cats:
                if not any(k[0] == cat for k in cells):
                    continue
                row = [md_text(cat)]
                for label in labels:
                    cell = cells.get((cat, label))
                    row.append("-" if cell is None else f"{fmt(cell['mean'])} {interval(cell)} (n={cell['n']})")
                rows_c.append(row)
            out += [f"By prompt category and {md_code(axis)} (mean [95% CI] (n)):", ""]
            out += table(["category", *(md_code(v) for v in labels)], rows_c)
            out.append("")
    return out


def _tests_section(report: Report) -> list[str]:
    tested = [t for t in report.tests if t.tested]
    out = [
        "## Significance",
        "",
        f"Each value of an axis against its reference value (bold above), paired over prompt, seed and the other "
        f"axes' values: the {T_TEST} and the {WILCOXON}. Diversity metrics are paired per condition (prompt and "
        "other axes' values, seeds averaged). Runs whose value is not finite are left out of the pairs. p-values "
        f"are adjusted with Holm's method over the comparisons of this report that were tested ({len(tested)}) "
        f'(each test separately); a comparison with fewer than {MIN_PAIRS} pairs is not tested ("not enough '
        f'pairs": below {MIN_PAIRS} pairs no Wilcoxon p-value can fall below {ALPHA}). Time fields are not '
        "tested (runs of one batch share one time).",
        "",
    ]
    if any(METRICS.get(t.metric) and METRICS[t.metric].kind == "reference" for t in report.tests):
        out += [
            "Reference metrics (SSIM, PSNR, MAD, LPIPS, color_shift) measure the distance to the metrics' "
            "reference run, which by default is the reference value itself (SSIM 1, MAD 0 by construction): "
            "there a test asks whether the images changed at all, not which value is better.",
            "",
        ]
    if not report.tests:
        return [*out, "No comparisons: no axis has two values with a reference.", ""]
    rows = []
    for t in report.tests:
        significant = [
            name for name, p in (("t", t.t_p_holm), ("Wilcoxon", t.wilcoxon_p_holm)) if p is not None and p < ALPHA
        ]
        diff = t.diff
        rows.append(
            [
                md_code(t.metric),
                md_code(t.axis),
                f"{md_code(t.value)} vs {md_code(t.reference)}",
                str(t.n_pairs),
                fmt(diff["mean"]),
                interval(diff),
                fmt_p(t.t_p),
                fmt_p(t.t_p_holm),
                fmt_p(t.wilcoxon_p),
                fmt_p(t.wilcoxon_p_holm),
                md_text("; ".join(filter(None, [", ".join(significant) or ("no" if t.tested else ""), t.note]))),
            ]
        )
    out += table(
        [
            "metric", "axis", "value vs reference", "pairs", "mean diff", "95% CI of diff", "t p", "t p (Holm)",
            "Wilcoxon p", "Wilcoxon p (Holm)", f"significant at {ALPHA} (Holm)",
        ],
        rows,
    )  # fmt: skip
    significant = [t for t in report.tests if any(p is not None and p < ALPHA for p in (t.t_p_holm, t.wilcoxon_p_holm))]
    out += [
        "",
        f"Significant after Holm's correction at {ALPHA}: {len(significant)} of {len(report.tests)} comparisons "
        f"({len(tested)} tested)",
    ]
    out[-1] += ":" if significant else "."
    for t in significant:
        out.append(
            f"- {md_code(t.metric)}, {md_code(t.axis)} {md_code(t.value)} vs {md_code(t.reference)}: mean difference "
            f"{fmt(t.diff['mean'])} {interval(t.diff)}, {t.n_pairs} pairs, t p (Holm) {fmt_p(t.t_p_holm)}, Wilcoxon "
            f"p (Holm) {fmt_p(t.wilcoxon_p_holm)}"
        )
    return [*out, ""]


# -- images ------------------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return _UNSAFE_NAME.sub("_", name).strip("_") or "x"


def draw_images(report: Report, folder: Path) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Grids (prompts x the first axis, :func:`.compare.plan_grid`) and plots (a line per metric and axis, a Pareto
    plot when runs were timed, :func:`.plots.make_plot`) written into ``folder / images``; section -> entries."""
    from llm_dit.analysis import plots
    from llm_dit.analysis.compare import default_axis, plan_grid, save_image

    res = report.results
    images = folder / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    grids: list[tuple[str, str, list[str]]] = []
    stored = report.tested_metrics[:GRID_METRICS]
    cols = default_axis(res)
    try:
        grid = plan_grid(res, rows=PROMPT, cols=cols, metrics=stored)
        notes = []
        if len(grid.pages) > MAX_GRID_PAGES and len(res.dimensions[SEED]) > 1:
            seed = res.dimensions[SEED][0]
            grid = plan_grid(res, rows=PROMPT, cols=cols, metrics=stored, filters={SEED: [seed]})
            notes.append(f"seed {seed} only; llm-dit compare -e {res.name} --seed SEED draws the others")
        shown = grid.pages[:MAX_GRID_PAGES]
        if len(grid.pages) > len(shown):
            notes.append(f"the first {len(shown)} of {len(grid.pages)} pages; llm-dit compare -e {res.name} draws all")
        for index, page in enumerate(shown):
            name = f"grid_p{index + 1:02d}.png"
            save_image(grid.render(index), images / name)
            grids.append((f"{IMAGES_DIR}/{name}", page.title, notes if index == len(shown) - 1 else []))
    except LlmDitError as exc:
        grids.append(("", "grid", [str(exc)]))
    figures: list[tuple[str, str, list[str]]] = []
    for metric in report.tested_metrics:
        for axis in res.axes:
            if len(res.dimensions.get(axis, [])) < 2:
                continue
            figures.append(_plot(plots, res, images, "line", metric, axis))
    if report.tested_metrics and any(run.get("timed_median_s") is not None for run in res.runs):
        ranked = [m for m in report.tested_metrics if plots.higher_is_better(m) is not None]
        if ranked:
            figures.append(_plot(plots, res, images, "pareto", ranked[0], None))
    return {"Grids": grids, "Plots": figures}


def _plot(plots: Any, res: ExperimentResults, images: Path, kind: str, metric: str, axis: str | None) -> tuple:
    name = f"{kind}_{_safe(metric)}" + (f"_{_safe(axis)}" if axis else "") + ".png"
    caption = f"{metric} vs {axis}, per prompt category" if kind == "line" else f"{metric} vs seconds per image"
    try:
        plot = plots.make_plot(res, kind, metric=metric, axis=axis)
    except LlmDitError as exc:
        return ("", caption, [str(exc)])
    plots.save_figure(plot.figure, images / name)
    return (f"{IMAGES_DIR}/{name}", caption, [])  # the figure's footnote has its notes


# -- the folder --------------------------------------------------------------------------------------------------


def existing_conclusions(path: Path) -> str:
    """The researcher's text between the Conclusions markers of an existing ``report.md`` (the placeholder when
    there is no report yet). A report whose markers were removed is refused: its conclusions could no longer be told
    from the generated page, and regenerating would lose them."""
    if not path.is_file():
        return CONCLUSIONS_PLACEHOLDER
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(CONCLUSIONS_BEGIN), text.rfind(CONCLUSIONS_END)
    if begin < 0 or end < begin:
        raise LlmDitError(
            f"{path} has lost its conclusions markers ({CONCLUSIONS_END} and the begin line); regenerating would "
            "lose what was written under Conclusions: put the markers back around it, or move the file away"
        )
    return text[begin + len(CONCLUSIONS_BEGIN) : end].strip("\n")


def report_directory(root: str | Path, experiment: str, directory: str | Path | None) -> Path:
    """Where the report goes: ``directory``, or ``<root>/<experiment>/report``. Any other folder inside the results
    directory is refused, and so is an existing folder that is not a report (it would be replaced whole)."""
    root = Path(root)
    default = root / experiment / DEFAULT_DIR
    target = default if directory is None else Path(directory)
    resolved, root_resolved = target.resolve(), root.resolve()
    inside = resolved == root_resolved or root_resolved in resolved.parents
    if inside and resolved != default.resolve():
        raise LlmDitError(
            f"--out {target} is inside the results directory {root}; the report goes to {default} (the default) "
            "or to a folder outside it"
        )
    if target.exists() and not target.is_dir():
        raise LlmDitError(f"--out {target} is a file; give a folder for the report")
    if target.is_dir() and any(target.iterdir()) and not (target / REPORT_NAME).is_file():
        raise LlmDitError(
            f"--out {target} is a folder that holds no {REPORT_NAME}; the report replaces its folder whole, so "
            "give a new or empty folder, or an earlier report's"
        )
    return target


def write_report(
    root: str | Path,
    experiment: str,
    directory: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    baselines: Mapping[str, str] | None = None,
) -> Path:
    """Write (or regenerate) the report folder of ``experiment``; returns the path of its ``report.md``.

    Everything is checked before anything is drawn; the folder is built beside its target and swapped in, keeping
    the text under Conclusions of the report it replaces."""
    from llm_dit.experiments.store import ResultsStore, require_database

    root = Path(root)
    require_database(root)
    results = load_experiment(root, experiment)
    with ResultsStore(root, read_only=True) as store:
        info = store.experiment(experiment)
    target = report_directory(root, experiment, directory)
    conclusions = existing_conclusions(target / REPORT_NAME)
    report = build_report(results, info, metrics, baselines)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        images = draw_images(report, building)
        write_atomic(building / REPORT_NAME, render(report, images, conclusions, root).encode("utf-8"))
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        building.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target / REPORT_NAME
