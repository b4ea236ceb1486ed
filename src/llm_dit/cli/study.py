"""``caption-study``: seed 002's caption-length study (sources -> Qwen3-VL captions -> regenerations -> SSIM against
each run's own source), every phase resumable; ``sweep caption_*`` runs its presets through :func:`run_studies`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llm_dit.cli.options import (
    BatchSizeOpt,
    ConfigOpt,
    DryRunOpt,
    MetricOpt,
    ModelOpt,
    ModelPathOpt,
    ProfileOpt,
    RegenerateOpt,
    ResultsDirOpt,
    SetOpt,
    chosen_model_path,
    parse_csv,
    parse_metric_names,
    parse_sets,
)
from llm_dit.cli.terminal import console, count_noun, note, print_rows, progress_bar, wrote
from llm_dit.constants import DEFAULT_CAPTION_PROMPT, FILL_MODES
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DEFAULT_ROOT

_LIST = "Comma-separated"


def caption_study_cmd(
    prompts: Annotated[
        str | None, typer.Option("--prompts", help='Source prompts, comma-separated (default "a cat").')
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A source prompt that holds commas (repeatable).")
    ] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help=f"{_LIST} seeds of the sources (default 42).")] = None,
    target_lengths: Annotated[
        str | None,
        typer.Option("--target-lengths", help=f"{_LIST}, 1..1504 (default 50,150,300,600,1000,1504)."),
    ] = None,
    fill_modes: Annotated[
        str | None, typer.Option("--fill-modes", help=f"{_LIST}: {', '.join(FILL_MODES)} (default all five).")
    ] = None,
    compression_modes: Annotated[
        str | None,
        typer.Option(
            "--compression-modes",
            help=f"{_LIST} modes for captions over the cap: truncate, interpolate, pool, attention_pool "
            "(default: the profile's long_prompt_mode, not swept).",
        ),
    ] = None,
    hidden_layers: Annotated[
        str | None,
        typer.Option("--hidden-layers", help=f"{_LIST} Qwen3-4B layers (text mode; default the profile's, -2)."),
    ] = None,
    vl_hidden_layers: Annotated[
        str | None,
        typer.Option("--vl-hidden-layers", help=f"{_LIST} Qwen3-VL layers: regenerate through Qwen3-VL (VL mode)."),
    ] = None,
    token_modes: Annotated[
        str | None,
        typer.Option("--token-modes", help=f"{_LIST} VL token modes: full, text_only, image_only, image_no_markers."),
    ] = None,
    use_vl_embeddings: Annotated[
        bool,
        typer.Option(
            "--use-vl-embeddings", help="VL mode: regenerate from Qwen3-VL(source image + caption) at the vl_layer."
        ),
    ] = False,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            help="Captions given instead of made: a .json of source name -> caption, or a folder of <source>.txt "
            "(e.g. an earlier export's source/).",
        ),
    ] = None,
    caption_prompt: Annotated[
        str, typer.Option("--caption-prompt", help="The instruction Qwen3-VL gets with each source.")
    ] = DEFAULT_CAPTION_PROMPT,
    caption_max_tokens: Annotated[
        int | None, typer.Option("--caption-max-tokens", help="Longest caption, in tokens (default 1024).")
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="The study's name in the results store (one experiment).")
    ] = "caption_study",
    vl_model_path: Annotated[
        str | None, typer.Option("--vl-model-path", help="Qwen3-VL checkpoint ([default.vl] model_path).")
    ] = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    export_dir: Annotated[
        Path | None,
        typer.Option("--export-dir", help="The seed's layout (default <output-dir>/<name>/export)."),
    ] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    batch_size: BatchSizeOpt = 8,
    metric: MetricOpt = None,
    dry_run: DryRunOpt = False,
    force: RegenerateOpt = False,
) -> None:
    """Caption-length study: source images from short prompts, a Qwen3-VL caption of each, regenerations from the
    caption over target lengths x fill modes x compression modes x hidden layers (or VL layers x token modes), SSIM
    against each one's own source. Killed in any phase, a re-run finishes without redoing finished work."""
    from llm_dit.experiments.caption_study import DEFAULT_CAPTION_TOKENS, CaptionStudy, read_captions_file

    texts = [*(parse_csv(prompts, "--prompts") or []), *(prompt or [])]
    given = read_captions_file(captions) if captions is not None else None
    chosen: dict[str, Any] = {
        "prompts": tuple(texts),
        "seeds": tuple(parse_csv(seeds, "--seeds", int) or ()),
        "target_lengths": tuple(parse_csv(target_lengths, "--target-lengths", int) or ()),
        "fill_modes": tuple(parse_csv(fill_modes, "--fill-modes") or ()),
        "token_modes": tuple(parse_csv(token_modes, "--token-modes") or ()),
    }
    study = CaptionStudy(
        name=name,
        **{k: v for k, v in chosen.items() if v},  # unset: the study's defaults
        compression_modes=tuple(parse_csv(compression_modes, "--compression-modes") or ()),
        hidden_layers=tuple(parse_csv(hidden_layers, "--hidden-layers", int) or ()),
        vl_layers=tuple(parse_csv(vl_hidden_layers, "--vl-hidden-layers", int) or ()),
        use_vl=use_vl_embeddings,
        caption_prompt=caption_prompt,
        caption_max_tokens=DEFAULT_CAPTION_TOKENS if caption_max_tokens is None else caption_max_tokens,
        captions=given,
        captions_file=str(captions.resolve()) if captions is not None else None,
    )
    failed = run_studies(
        [study],
        config=config,
        profile=profile,
        model_path=chosen_model_path(model_path, model),
        vl_model_path=vl_model_path,
        output_dir=output_dir,
        export_dir=export_dir,
        overrides=parse_sets(set_),
        batch_size=batch_size,
        metric_names=parse_metric_names(metric) if metric else None,
        dry_run=dry_run,
        force=force,
    )
    if failed:
        raise typer.Exit(code=1)


def run_studies(
    studies: list[Any],
    *,
    config: Path | None,
    profile: str | None,
    model_path: str | None,
    output_dir: Path,
    overrides: dict[str, Any],
    batch_size: int,
    metric_names: list[str] | None,
    dry_run: bool,
    force: bool,
    vl_model_path: str | None = None,
    export_dir: Path | None = None,
    headings: list[str] | None = None,
) -> int:
    """Check and plan every study (before any model loads), then run each: its phases, metrics, export and findings.
    The studies share one pipeline. Returns the number of failed runs and captions."""
    from llm_dit.cli.checks import refuse_before_running
    from llm_dit.config import load_settings
    from llm_dit.experiments.caption_study import prepare_study
    from llm_dit.metrics.registry import select_metrics

    if batch_size < 1:
        raise LlmDitError(f"--batch-size must be >= 1, got {batch_size}")
    if export_dir is not None and len(studies) > 1:
        raise LlmDitError("--export-dir names one folder; give it for one study (each sweep exports into its own)")
    dotted = {"model_path": model_path, "vl.model_path": vl_model_path}
    settings = load_settings(config, profile, {k: v for k, v in dotted.items() if v is not None}).settings
    select_metrics(metric_names, settings.metrics)  # a bad --metric fails before anything loads
    prepared_all: list[Any] = []
    for study in studies:
        shared = prepared_all[0].pipeline_source if prepared_all else None
        prepared_all.append(
            prepare_study(study, settings=settings, overrides=overrides, batch_size=batch_size, pipeline=shared)
        )
    refuse_before_running(prepared_all, output_dir, dry_run)
    failed = 0
    for i, prepared in enumerate(prepared_all):
        if headings:
            console.print(headings[i], highlight=False)
        for text in prepared.notes:
            note(text)
        if dry_run:
            _print_plan(prepared, output_dir)
            continue
        failed += _run_one(prepared, output_dir, export_dir, batch_size, force, metric_names, settings)
    return failed


def _run_one(
    prepared: Any,
    output_dir: Path,
    export_dir: Path | None,
    batch_size: int,
    force: bool,
    metric_names: list[str] | None,
    settings: Any,
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llm_dit.analysis.caption_study import export_study, study_findings
    from llm_dit.cli.metrics import run_metrics_pass
    from llm_dit.experiments.caption_study import run_study
    from llm_dit.experiments.runner import ExperimentRunner
    from llm_dit.experiments.store import ResultsStore
    from llm_dit.metrics.registry import select_metrics

    study = prepared.study
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    phase = iter(("sources", "regenerations"))
    with ResultsStore(output_dir) as store:

        def run_experiment(experiment: Any, runs: list[Any], metadata: dict[str, Any]) -> Any:
            with progress_bar(f"{study.name} {next(phase)}", *columns, failed=0) as report:
                runner = ExperimentRunner(
                    prepared.pipeline_source.get(), store, batch_size=batch_size,
                    progress=lambda done, total, failed: report(done, total, failed=failed),
                )  # fmt: skip
                return runner.run(experiment, runs, prepared.settings, force=force, extra_metadata=metadata)

        with contextlib.ExitStack() as captions:
            bar: list[Any] = []  # the captions' bar, opened with the first caption (no live display beside another)

            def on_caption(finished: int, total: int) -> None:
                if not bar:
                    bar.append(captions.enter_context(progress_bar(f"{study.name} captions", *columns[:3])))
                bar[0](finished, total)

            progress = run_study(prepared, store, run_experiment=run_experiment, on_caption=on_caption)
    for source, error in progress.captions_failed:
        console.print(f"  [red]caption failed[/red] {source}: {escape(error)}", highlight=False, soft_wrap=True)
    sources, regens = progress.sources, progress.regenerations
    console.print(
        f"[bold]{study.name}[/bold]: sources {sources.done} made, {sources.skipped} kept; captions "
        f"{progress.captions_made} made ({progress.captions_reused} from another study), {progress.captions_kept} "
        f"kept; regenerations {regens.done} made, "
        f"{regens.skipped} kept (sources included); failed {sources.failed + regens.failed} runs, "
        f"{len(progress.captions_failed)} captions",
        highlight=False,
        soft_wrap=True,
    )
    specs, notes = select_metrics(metric_names, settings.metrics)
    run_metrics_pass(output_dir, study.name, specs, notes, settings.metrics, explicit=bool(metric_names))
    target = export_study(output_dir, study.name, export_dir)
    wrote(f"{target}/ (source/, regenerated/, grids/, results.json, summary.csv)")
    _print_findings(study_findings(output_dir, study.name))
    return sources.failed + regens.failed + len(progress.captions_failed)


def _print_findings(items: list[Any]) -> None:
    out = Console()
    out.print("[bold]what the numbers say[/bold] (SSIM to each run's own source; 95% Student-t intervals):")
    for item in items:
        out.print(f"  {escape(item.question)}: {escape(item.answer)}", highlight=False, soft_wrap=True)


def _print_plan(prepared: Any, output_dir: Path) -> None:
    """The dry run: variables, exact image counts, what the store already holds; nothing written."""
    from llm_dit.experiments.caption_study import study_state
    from llm_dit.experiments.store import DB_NAME, ResultsStore, peek_runs

    study, exp = prepared.study, prepared.experiment
    out = Console()
    out.print(f"[bold]{exp.name}[/bold]: {escape(exp.description)}", highlight=False, soft_wrap=True)
    mode = (
        "VL: Qwen3-VL reads the source image and the caption" if study.vl_mode else "text: Qwen3-4B reads the caption"
    )
    axes = "; ".join(f"{a.name} = {', '.join(v.label for v in a.values)}" for a in exp.axes)
    out.print(f"mode: {mode}; variables: {escape(axes)}", highlight=False, soft_wrap=True)
    sources = study.sources()
    per = study.regenerations_per_source()
    out.print(
        f"{study.images()} images = {count_noun(len(sources), 'source')} ({count_noun(len(study.prompts), 'prompt')} x "
        f"{count_noun(len(study.seeds), 'seed')}) + {len(sources)} x {count_noun(per, 'regeneration')}",
        highlight=False,
    )
    if study.captions is not None:
        out.print(f"captions: given ({escape(str(study.captions_file))})", highlight=False, soft_wrap=True)
    else:
        out.print(
            f"captions: made by Qwen3-VL, instruction {study.caption_prompt!r}, up to {study.caption_max_tokens} "
            "tokens, sampled with each source's seed",
            highlight=False,
            soft_wrap=True,
        )
    state = None
    if (output_dir / DB_NAME).is_file():
        with ResultsStore(output_dir, read_only=True) as store:
            state = study_state(prepared, store)
    found = peek_runs(output_dir, exp.name)
    if state is None:
        out.print("already done: nothing (a new study)", highlight=False)
    else:
        regens = prepared.regeneration_runs(state.captions, state.images)
        made = sum(run.run_id in found.done for run in regens)
        out.print(
            f"already done: sources {state.sources_done}/{len(sources)}, captions "
            f"{len(state.captions)}/{len(sources)}, regenerations {made}/{len(sources) * per}",
            highlight=False,
        )
    rows = [[s.id, s.prompt, str(s.seed)] for s in sources[:12]]
    print_rows(out, ["source", "prompt", "seed"], rows)
    out.print(
        f"results: {output_dir / exp.name}/ (store), export {output_dir / exp.name / 'export'}/ (dry run: nothing "
        "written)",
        highlight=False,
        soft_wrap=True,
    )
