"""The ``llm-dit compare`` command: grids, side-by-side pairs and pixel diffs of an experiment's stored images.
Imports stay light: heavy modules are imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llm_dit.cli.options import FormatOpt, ResultsDirOpt
from llm_dit.cli.terminal import Column, check_format, print_records, print_table, write_csv, write_json, wrote
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DEFAULT_ROOT

MODES = ("grid", "side-by-side", "diff")  # llm_dit.analysis.compare.MODES, repeated here to keep --help light


def compare_cmd(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Experiment name.")] = None,
    list_experiments: Annotated[
        bool, typer.Option("--list", help="List the experiments in --output-dir (runs, status) and exit.")
    ] = False,
    info: Annotated[
        bool, typer.Option("--info", help="Show the experiment's axes, values, prompts, seeds and metrics.")
    ] = False,
    mode: Annotated[str, typer.Option("--mode", help="grid | side-by-side | diff.")] = "grid",
    rows: Annotated[str | None, typer.Option("--rows", help="Grid rows: a dimension (default: prompt).")] = None,
    cols: Annotated[
        str | None, typer.Option("--cols", help="Grid columns: a dimension (default: the first swept axis).")
    ] = None,
    axis: Annotated[
        str | None,
        typer.Option("--axis", help="side-by-side/diff: the dimension whose two values are compared."),
    ] = None,
    values: Annotated[
        list[str] | None,
        typer.Option(
            "--values",
            help="Values of the compared dimension (grid: the columns), CSV-style: -1,-2 or '\"a,b\",c' or ',none'.",
        ),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Prompt ids (repeatable or a,b).")] = None,
    seed: Annotated[list[str] | None, typer.Option("--seed", help="Seeds (repeatable or 1,2).")] = None,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="DIM=VALUES: filter any dimension (repeatable).")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Metric shown under images (repeatable; default: all).")
    ] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Show no metric values.")] = False,
    no_inputs: Annotated[
        bool,
        typer.Option("--no-inputs", help="Leave out the strip of the runs' input images (vl_image, init_image, ...)."),
    ] = False,
    diff_mode: Annotated[
        str | None, typer.Option("--diff-mode", help="diff: highlight (default) | absolute | heatmap.")
    ] = None,
    threshold: Annotated[
        int | None, typer.Option("--threshold", help="diff: a pixel changed if a channel moves > N levels (8).")
    ] = None,
    gain: Annotated[float | None, typer.Option("--gain", help="diff --diff-mode absolute: multiply |A-B| (1).")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Rows per page; more go to further pages.")] = 8,
    max_cols: Annotated[int | None, typer.Option("--max-cols", help="Grid columns per page (8).")] = None,
    cell_size: Annotated[
        int | None, typer.Option("--cell-size", help="Image size in a cell, px (default: the image's, 128..256).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Image file (.png/.jpg/.webp; default <exp>_<mode>.png).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    output_format: FormatOpt = "table",
) -> None:
    """Compare an experiment's images: grids of any two dimensions, A/B pairs side by side, pixel diffs.
    Read-only on the results directory; pages beyond --max-rows/--max-cols go to FILE_p01, FILE_p02, ..."""
    check_format(output_format)
    if list_experiments:
        if experiment is not None or info:
            raise LlmDitError("--list lists every experiment; drop -e/--info (or drop --list to look at one)")
        _print_list(output_dir, output_format)
        return
    if output_format != "table" and not info:
        raise LlmDitError("--format applies to --list and --info; a comparison writes image files")
    if experiment is None:
        raise LlmDitError("name an experiment: llm-dit compare -e NAME (llm-dit compare --list shows them)")
    if mode not in MODES:
        raise LlmDitError(f"--mode {mode!r} is not valid; use one of: {', '.join(MODES)}")
    _check_flags(
        mode, rows=rows, cols=cols, max_cols=max_cols, axis=axis, diff_mode=diff_mode, threshold=threshold, gain=gain
    )
    if gain is not None and diff_mode != "absolute":
        raise LlmDitError("--gain multiplies |A-B| in --diff-mode absolute only; add --diff-mode absolute or drop it")
    if no_metrics and metric:
        raise LlmDitError("--metric and --no-metrics contradict each other; give one")

    from llm_dit.analysis.results import PROMPT, SEED, load_experiment, parse_filters, parse_values

    exp = load_experiment(output_dir, experiment)
    if info:
        _print_info(exp, output_format)
        return

    from llm_dit.analysis import compare

    filters = _filters(
        parse_filters(where),
        {PROMPT: parse_values(prompt), SEED: parse_values(seed)},
        compared=(cols or compare.default_axis(exp)) if mode == "grid" else (axis or compare.default_axis(exp)),
        values=parse_values(values) if values is not None else None,
    )
    metrics = [] if no_metrics else ([m for item in metric for m in parse_values([item]) if m] if metric else None)
    if mode == "grid":
        comparison = compare.plan_grid(
            exp,
            rows,
            cols,
            filters,
            metrics,
            max_rows=max_rows,
            max_cols=compare.DEFAULT_MAX_COLS if max_cols is None else max_cols,
            cell_size=cell_size,
            show_inputs=not no_inputs,
        )
    else:
        comparison = compare.plan_pairs(
            exp,
            mode,
            axis,
            filters,
            metrics,
            max_rows=max_rows,
            cell_size=cell_size,
            diff_mode=diff_mode or "highlight",
            threshold=compare.DEFAULT_THRESHOLD if threshold is None else threshold,
            gain=1.0 if gain is None else gain,
            show_inputs=not no_inputs,
        )
    output = output or Path(f"{exp.name}_{mode}.png")
    paths = compare.page_paths(output, len(comparison.pages))
    compare.check_outputs(paths, output_dir, overwrite)  # every page's path, before the first is drawn
    for path, (width, height) in compare.write_pages(comparison, output):
        wrote(f"{path} ({width}x{height})")


def _check_flags(mode: str, **given: Any) -> None:
    """Options that only one kind of comparison reads are errors elsewhere (never silently ignored)."""
    only = {"rows": ("grid",), "cols": ("grid",), "max_cols": ("grid",), "axis": ("side-by-side", "diff")}
    only |= {"diff_mode": ("diff",), "threshold": ("diff",), "gain": ("diff",)}
    for name, value in given.items():
        if value is not None and mode not in only[name]:
            flag = "--" + name.replace("_", "-")
            hint = {"axis": " (grid: --cols)", "rows": " (pairs: --axis)", "cols": " (pairs: --axis)"}.get(name, "")
            raise LlmDitError(f"{flag} applies to --mode {' and '.join(only[name])}, not {mode}{hint}")


def _filters(
    where: dict[str, list[str]], named: dict[str, list[str]], compared: str, values: list[str] | None
) -> dict[str, list[str]]:
    """One {dimension: values} from --where, --prompt/--seed and --values (for the compared dimension). A
    dimension selected by two options is an error: no option silently overrides another."""
    selections: list[tuple[str, dict[str, list[str]]]] = [("--where", where)]
    selections += [(f"--{dim}", {dim: vals}) for dim, vals in named.items() if vals]
    if values is not None:
        selections.append(("--values", {compared: values}))
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for flag, chosen in selections:
        for dim, vals in chosen.items():
            if dim in out:
                raise LlmDitError(f"{owner[dim]} and {flag} both select {dim}; give its values once")
            out[dim], owner[dim] = vals, flag
    return out


def _when(stamp: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM' (UTC, as stored); '-' if none."""
    return stamp[:16].replace("T", " ") if stamp else "-"


# compare --list and --info: the keys of --format json/csv, in order (documented in docs/compare.md).
LIST_FIELDS = ("name", "description", "done", "failed", "planned", "total", "status", "started_at", "finished_at")
INFO_FIELDS = ("kind", "dimension", "value", "category", "text", "count")


def _print_list(output_dir: Path, output_format: str) -> None:
    from rich.console import Console

    from llm_dit.analysis.results import list_experiments

    summaries = list_experiments(output_dir)
    if not summaries and output_format == "table":
        Console().print(f"no experiments in {output_dir}", markup=False, highlight=False, soft_wrap=True)
        return
    records = [
        {
            "name": item.name,
            "description": item.description,
            **{key: item.counts[key] for key in ("done", "failed", "planned", "total")},
            "status": item.status,
            "started_at": item.started_at,
            "finished_at": item.finished_at,
            "done_of_total": f"{item.counts['done']}/{item.counts['total']}",  # the table's form
        }
        for item in summaries
    ]
    columns = [
        Column("name", "experiment", whole=True),
        Column("done_of_total", "done"),
        Column("failed"),
        Column("status"),
        Column("started_at", "started (UTC)", show=_when),
        Column("finished_at", "finished (UTC)", show=_when),
    ]
    print_records(output_format, LIST_FIELDS, records, columns, title=f"experiments in {output_dir}")


def _print_info(exp: Any, output_format: str) -> None:
    from llm_dit.analysis.compare import metric_counts
    from llm_dit.analysis.results import PROMPT, SEED

    counts = exp.counts
    axes = {name: exp.dimensions.get(name, []) for name in exp.axes}
    prompts = [
        {"id": pid, "category": exp.category(pid), "text": exp.prompt_texts.get(pid, "")}
        for pid in exp.dimensions[PROMPT]
    ]
    seeds = [int(seed) for seed in exp.dimensions[SEED]]
    present = metric_counts(exp)
    if output_format == "json":
        write_json(
            {
                "name": exp.name,
                "description": exp.description,
                "counts": {key: counts[key] for key in ("done", "failed", "planned", "total")},
                "axes": [{"name": name, "values": values} for name, values in axes.items()],
                "prompts": prompts,
                "seeds": seeds,
                "metrics": [{"name": name, "count": n} for name, n in present.items()],
            }
        )
        return
    if output_format == "csv":  # one row per value a dimension takes (a filter's choices), then the metrics
        empty = {"category": None, "text": None, "count": None}
        rows = [{"kind": "axis", "dimension": name, "value": v, **empty} for name, vals in axes.items() for v in vals]
        rows += [{**empty, "kind": "prompt", "dimension": PROMPT, "value": p["id"], **p} for p in prompts]
        rows += [{**empty, "kind": "seed", "dimension": SEED, "value": seed} for seed in seeds]
        rows += [{**empty, "kind": "metric", "dimension": "metric", "value": m, "count": n} for m, n in present.items()]
        write_csv(INFO_FIELDS, rows)
        return

    from rich.console import Console
    from rich.markup import escape

    out = Console()
    out.print(f"[bold]{escape(exp.name)}[/bold]: {escape(exp.description)}", highlight=False, soft_wrap=True)
    out.print(
        f"runs: {counts['done']} done, {counts['failed']} failed, {counts['planned']} planned, {counts['total']} total",
        highlight=False,
    )
    out.print("axes (compare --axis/--rows/--cols; filter with --where AXIS=VALUES)", highlight=False)
    axis_rows = [{"axis": name, "values": ", ".join(_shown(v) for v in values)} for name, values in axes.items()]
    print_table(out, axis_rows, [Column("axis", whole=True), Column("values")])
    out.print("prompts (--prompt ID)", highlight=False)
    print_table(out, prompts, [Column("id", "prompt", whole=True), Column("category", whole=True), Column("text")])
    out.print(f"seeds (--seed): {', '.join(map(str, seeds))}", highlight=False)
    if present:
        out.print(
            "metrics (--metric): " + ", ".join(f"{name} ({n} values)" for name, n in present.items()), highlight=False
        )
    else:
        out.print(f"metrics: none yet (compute them with: llm-dit metrics {escape(exp.name)})", highlight=False)


def _shown(value: str) -> str:
    """A value label as the user types it into --values: quoted if it holds a comma or is empty."""
    if value == "" or any(char in value for char in ',"'):
        return '"' + value.replace('"', '""') + '"'
    return value
