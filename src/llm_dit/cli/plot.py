"""The ``llm-dit plot`` command: an experiment's metric as a line, heatmap or Pareto plot. Imports stay light:
heavy modules (matplotlib) are imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_dit.cli.options import RESULTS_EXPERIMENT_HELP, ResultsDirOpt
from llm_dit.cli.terminal import note
from llm_dit.experiments.store import DEFAULT_ROOT

DEFAULT_DPI = 150  # llm_dit.analysis.plots.DEFAULT_DPI, repeated so --help needs no import of the analysis code
METRIC_HELP = (
    "A stored metric, seconds_per_image_batched or timed_median_s (ablate --timing). Default: the first with values "
    "of siglip, clip_score, lpips, ssim, psnr, "
    "mad, diversity_lpips, diversity_ssim, diversity_mad."
)


def plot_cmd(
    experiment: Annotated[str, typer.Argument(help=RESULTS_EXPERIMENT_HELP)],
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="line (metric vs axis) | heatmap (category x axis) | pareto.")
    ] = "line",
    metric: Annotated[str | None, typer.Option("--metric", "-m", help=METRIC_HELP)] = None,
    axis: Annotated[
        str | None, typer.Option("--axis", "-a", help="Swept axis on x / the columns. Default: the first.")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", "-w", help="DIMENSION=VALUES: keep only these values (prompt, an axis, seed)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="A .png or .svg file. Default: EXPERIMENT_KIND_METRIC.png here."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    dpi: Annotated[int, typer.Option("--dpi", help="PNG resolution (the figure is 8 x 5 inches).")] = DEFAULT_DPI,
) -> None:
    """Plot an experiment's metric: vs an axis per prompt category (line), as a prompt category x axis table
    (heatmap), or against generation time with the Pareto frontier over the swept axes' conditions (pareto).
    Reads the results read-only; prints the written file's path."""
    from llm_dit.analysis import plots
    from llm_dit.analysis.output import check_output_path
    from llm_dit.analysis.results import load_experiment, parse_filters

    # Everything that can be checked without the results is, before they are read or matplotlib loads.
    plots.check_kind(kind)
    if output is not None:
        plots.check_output(output)
        check_output_path(output, output_dir, overwrite)
    plots.check_dpi(dpi)
    filters = parse_filters(where)
    results = load_experiment(output_dir, experiment)
    plot = plots.make_plot(results, kind, metric=metric, axis=axis, filters=filters, dpi=dpi)
    path = output if output is not None else Path(f"{experiment}_{kind}_{plot.metric}.png")
    if output is None:  # the default name needs the resolved metric; still checked before anything is written
        check_output_path(path, output_dir, overwrite)
    for text in plot.notes:
        note(text)
    plots.save_figure(plot.figure, path)
    typer.echo(str(path))
