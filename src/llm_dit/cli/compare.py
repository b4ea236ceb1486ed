"""The ``llm-dit compare`` command: grids, side-by-side pairs and pixel diffs of an experiment's stored images.
Imports stay light: heavy modules are imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llm_dit.cli.options import ResultsDirOpt
from llm_dit.cli.terminal import wrote
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
) -> None:
    """Compare an experiment's images: grids of any two dimensions, A/B pairs side by side, pixel diffs.
    Read-only on the results directory; pages beyond --max-rows/--max-cols go to FILE_p01, FILE_p02, ..."""
    if list_experiments:
        if experiment is not None or info:
            raise LlmDitError("--list lists every experiment; drop -e/--info (or drop --list to look at one)")
        _print_list(output_dir)
        return
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
        _print_info(exp)
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


def _print_list(output_dir: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from llm_dit.analysis.results import list_experiments

    summaries = list_experiments(output_dir)
    out = Console()
    if not summaries:
        out.print(f"no experiments in {escape(str(output_dir))}", highlight=False)
        return
    table = Table("experiment", "done", "failed", "status", "started (UTC)", "finished (UTC)", title=str(output_dir))
    for item in summaries:
        counts = item.counts
        table.add_row(
            escape(item.name),
            f"{counts['done']}/{counts['total']}",
            str(counts["failed"]),
            item.status,
            _when(item.started_at),
            _when(item.finished_at),
        )
    out.print(table)


def _print_info(exp: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from llm_dit.analysis.compare import metric_counts
    from llm_dit.analysis.results import PROMPT, SEED

    out = Console()
    counts = exp.counts
    out.print(f"[bold]{escape(exp.name)}[/bold]: {escape(exp.description)}", highlight=False, soft_wrap=True)
    out.print(
        f"runs: {counts['done']} done, {counts['failed']} failed, {counts['planned']} planned, {counts['total']} total",
        highlight=False,
    )
    axes = Table("axis", "values", title="axes (compare --axis/--rows/--cols; filter with --where AXIS=VALUES)")
    for name in exp.axes:
        axes.add_row(escape(name), escape(", ".join(_shown(v) for v in exp.dimensions.get(name, []))))
    out.print(axes)
    prompts = Table("prompt", "category", "text", title="prompts (--prompt ID)")
    for pid in exp.dimensions[PROMPT]:
        prompts.add_row(escape(pid), escape(exp.category(pid)), escape(exp.prompt_texts.get(pid, "")))
    out.print(prompts)
    out.print(f"seeds (--seed): {', '.join(exp.dimensions[SEED])}", highlight=False)
    present = metric_counts(exp)
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
