"""The ``llm-dit report`` command: an experiment's report folder (Markdown + images) for a write-up. Imports stay
light: the analysis code (scipy, matplotlib, PIL) is imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_dit.cli.options import RESULTS_EXPERIMENT_HELP, ResultsDirOpt, parse_metric_names
from llm_dit.experiments.store import DEFAULT_ROOT


def report_cmd(
    experiment: Annotated[str, typer.Argument(help=RESULTS_EXPERIMENT_HELP)],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The report folder. Default: <output-dir>/EXPERIMENT/report."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help="A metric to report (repeatable or comma-separated). Default: all."),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option("--baseline", help="AXIS=LABEL: test the axis' values against this one (default: its default)."),
    ] = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
) -> None:
    """Write an experiment's report: question, commands, provenance, run counts, summary tables, grids, plots and
    paired significance tests, with a Conclusions section that re-running keeps. Prints report.md's path."""
    from llm_dit.analysis.report import parse_baselines, write_report

    path = write_report(output_dir, experiment, out, parse_metric_names(metric), parse_baselines(baseline))
    typer.echo(str(path))
