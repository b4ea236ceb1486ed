"""Experiments: ``ablate`` (one built-in or TOML experiment, or the lists of experiments and prompts) and
``sweep`` (the seeds' priority sweeps, presets over the built-in experiments). Every run is planned and checked
before the first image is made; ``--dry-run`` prints the plan and cost and writes nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llm_dit.cli.metrics import run_metrics_pass
from llm_dit.cli.options import (
    BatchSizeOpt,
    ComputeMetricsOpt,
    ConfigOpt,
    DryRunOpt,
    FormatOpt,
    ImageOpt,
    MaxPromptsOpt,
    MetricOpt,
    ModelOpt,
    ModelPathOpt,
    ProfileOpt,
    PromptCategoryOpt,
    RegenerateOpt,
    ResultsDirOpt,
    SeedsOpt,
    SetOpt,
    chosen_model_path,
    parse_csv,
    parse_metric_names,
    parse_sets,
)
from llm_dit.cli.terminal import (
    Column,
    check_format,
    console,
    count_noun,
    note,
    print_records,
    print_rows,
    progress_bar,
)
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DB_NAME, DEFAULT_ROOT
from llm_dit.experiments.sweeps import SWEEPS, sweep_names

DEFAULT_TIMING_REPEATS = 3
MAX_TIMING_REPEATS = 100
TimingOpt = Annotated[
    bool,
    typer.Option(
        "--timing",
        help="Speed study: each run at batch 1 after a warm-up, synchronised, timed --timing-repeats times "
        "(median and min/max stored); done runs never timed are redone.",
    ),
]
TimingRepeatsOpt = Annotated[
    int | None,
    typer.Option("--timing-repeats", help=f"Timed generations per run (--timing; default {DEFAULT_TIMING_REPEATS})."),
]


def ablate(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Built-in experiment name.")] = None,
    experiment_file: Annotated[Path | None, typer.Option("--experiment-file", help="Your own experiment TOML.")] = None,
    list_experiments: Annotated[bool, typer.Option("--list-experiments", help="List experiments and exit.")] = False,
    list_prompts: Annotated[bool, typer.Option("--list-prompts", help="List the prompt library and exit.")] = False,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Comma-separated prompt ids.")] = None,
    prompt_category: PromptCategoryOpt = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A custom prompt (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option("--prompts-file", help="JSON library or one per line.")] = None,
    max_prompts: MaxPromptsOpt = None,
    seeds: SeedsOpt = None,
    image: ImageOpt = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    batch_size: BatchSizeOpt = 8,
    offload_encoder: Annotated[
        bool,
        typer.Option(
            "--offload-encoder",
            help="Encode everything first, each encoder (text, VL, embedding) freed after its inputs, then sample.",
        ),
    ] = False,
    dry_run: DryRunOpt = False,
    force: RegenerateOpt = False,
    compute_metrics: ComputeMetricsOpt = False,
    metric: MetricOpt = None,
    output_format: FormatOpt = "table",
    timing: TimingOpt = False,
    timing_repeats: TimingRepeatsOpt = None,
) -> None:
    """Run an experiment: plan every run, check it all, then generate (resuming by default)."""
    check_format(output_format)
    timing_plan = _timing_plan(timing, timing_repeats)
    if list_experiments or list_prompts:
        _list(list_experiments, list_prompts, output_format)
        return
    if output_format != "table" and not dry_run:
        raise LlmDitError(
            "--format applies to --list-experiments, --list-prompts and --dry-run; drop it to run an experiment"
        )
    if experiment is None and experiment_file is None:
        raise LlmDitError("name an experiment (--experiment NAME or --experiment-file FILE); see --list-experiments")
    failed = _ablate(
        [experiment],
        images=_checked_images(image),
        experiment_file=experiment_file,
        prompt_ids=parse_csv(prompt_ids, "--prompt-ids"),
        prompt_category=prompt_category,
        prompt_texts=prompt,
        prompts_file=prompts_file,
        max_prompts=max_prompts,
        seeds=parse_csv(seeds, "--seeds", int),
        output_dir=output_dir,
        config=config,
        profile=profile,
        model_path=chosen_model_path(model_path, model),
        overrides=parse_sets(set_),
        batch_size=batch_size,
        offload_encoder=offload_encoder,
        dry_run=dry_run,
        force=force,
        metric_names=parse_metric_names(metric) if compute_metrics or metric else None,
        timing=timing_plan,
        plan_format=output_format,
    )
    if failed:
        raise typer.Exit(code=1)  # scripts can tell; every failure is recorded with its error


def sweep(
    name: Annotated[str | None, typer.Argument(help=" | ".join(sweep_names()))] = None,
    all_: Annotated[
        bool, typer.Option("--all", help=f"Run {', '.join(p.name for p in SWEEPS)} in priority order (not vl).")
    ] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer prompts and seeds.")] = False,
    skip_vl: Annotated[
        bool, typer.Option("--skip-vl", help="Leave out the sweeps that regenerate through Qwen3-VL (caption_vl).")
    ] = False,
    caption_max_tokens: Annotated[
        int | None, typer.Option("--caption-max-tokens", help="Caption studies: longest caption (default 1024).")
    ] = None,
    dry_run: DryRunOpt = False,
    seeds: SeedsOpt = None,
    image: ImageOpt = None,
    category: Annotated[
        str | None, typer.Option("--prompt-category", "--category", help="Prompt category (as in ablate).")
    ] = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    batch_size: BatchSizeOpt = 8,
    force: RegenerateOpt = False,
    compute_metrics: ComputeMetricsOpt = False,
    metric: MetricOpt = None,
    timing: TimingOpt = False,
    timing_repeats: TimingRepeatsOpt = None,
) -> None:
    """The seeds' priority sweeps as presets over the built-in experiments; `vl` runs seed 004's P0 set in order,
    `caption` seed 002's caption-length study sweeps (`sweep caption --all` is the same: the seed's run_all)."""
    from llm_dit.experiments.sweeps import CAPTION_STUDY, GROUPS, QUICK_MAX_PROMPTS, QUICK_SEEDS, get_sweep

    timing_plan = _timing_plan(timing, timing_repeats)
    if name is None and not all_:
        raise LlmDitError("name one sweep or pass --all; sweeps: " + ", ".join(sweep_names()))
    if all_ and name is not None and name not in GROUPS:
        raise LlmDitError(f"--all runs every sweep or a whole group ({', '.join(GROUPS)}); drop it to run {name}")
    presets = list(SWEEPS) if name is None else list(get_sweep(name))
    if skip_vl:
        if not any(p.needs_vl for p in presets):
            raise LlmDitError(f"--skip-vl: no sweep of {name or '--all'} regenerates through Qwen3-VL; drop it")
        presets = [p for p in presets if not p.needs_vl]
    group = "" if name is None or len(presets) == 1 else f"{name}: "  # a group's heading names the group and preset
    headings = [f"[bold]sweep {group}{preset.name}[/bold]: {escape(preset.question)}" for preset in presets]
    seed_list = parse_csv(seeds, "--seeds", int) or (list(QUICK_SEEDS) if quick else None)
    if presets[0].kind == CAPTION_STUDY:  # a group is all of one kind
        from llm_dit.cli.study import run_studies
        from llm_dit.experiments.caption_study import CAPTION_PRESETS

        for flag, given in (("--image", image), ("--prompt-category", category), ("--timing", timing)):
            if given:
                raise LlmDitError(f"{flag} does not apply to the caption studies (sources come from their prompts)")
        budget = {} if caption_max_tokens is None else {"caption_max_tokens": caption_max_tokens}
        failed = run_studies(
            [CAPTION_PRESETS[p.experiment].study(quick, seed_list, **budget) for p in presets],
            headings=headings,
            config=config,
            profile=profile,
            model_path=chosen_model_path(model_path, model),
            output_dir=output_dir,
            overrides=parse_sets(set_),
            batch_size=batch_size,
            metric_names=parse_metric_names(metric) if metric else None,
            dry_run=dry_run,
            force=force,
        )
        if failed:
            raise typer.Exit(code=1)
        return
    if caption_max_tokens is not None:
        raise LlmDitError("--caption-max-tokens applies to the caption studies (sweep caption ...); drop it")
    failed = _ablate(
        [preset.experiment for preset in presets],
        images=_checked_images(image),
        headings=headings,
        config=config,
        profile=profile,
        model_path=chosen_model_path(model_path, model),
        output_dir=output_dir,
        batch_size=batch_size,
        offload_encoder=False,
        dry_run=dry_run,
        force=force,
        prompt_category=category,
        max_prompts=QUICK_MAX_PROMPTS if quick else None,
        seeds=seed_list,
        overrides=parse_sets(set_),
        metric_names=parse_metric_names(metric) if compute_metrics or metric else None,
        timing=timing_plan,
    )
    if failed:
        raise typer.Exit(code=1)


def _checked_images(paths: list[Path] | None) -> list[str] | None:
    """``--image`` files, each checked (exists, decodes whole) before anything loads: their absolute paths, or None
    when none was given (the experiment's own images)."""
    if not paths:
        return None
    from llm_dit.files import input_image

    return [str(input_image(path, "--image")[0]) for path in paths]


def _timing_plan(timing: bool, repeats: int | None) -> int | None:
    """The --timing options checked (before anything loads): the timed repeats per run, or None without --timing."""
    if not timing:
        if repeats is not None:
            raise LlmDitError("--timing-repeats applies to --timing; add --timing or drop it")
        return None
    repeats = DEFAULT_TIMING_REPEATS if repeats is None else repeats
    if not 1 <= repeats <= MAX_TIMING_REPEATS:
        raise LlmDitError(f"--timing-repeats must be 1..{MAX_TIMING_REPEATS}, got {repeats}")
    return repeats


def _ablate(
    names: list[str | None],
    *,
    config: Path | None,
    profile: str | None,
    model_path: str | None,
    output_dir: Path,
    batch_size: int,
    offload_encoder: bool,
    dry_run: bool,
    force: bool,
    metric_names: list[str] | None = None,
    headings: list[str] | None = None,
    timing: int | None = None,
    plan_format: str = "table",
    **selection: Any,
) -> int:
    """Plan and check every named experiment, then run each (printing its heading, if given); with
    ``metric_names`` (a list, [] = the default set) compute metrics after each. Returns the number of failed runs.

    Everything is checked before the first image is made, and the experiments share one pipeline, so a sweep loads
    its models once.
    """
    from llm_dit.config import load_settings
    from llm_dit.experiments.preparation import prepare_experiment

    if batch_size < 1:
        raise LlmDitError(f"--batch-size must be >= 1, got {batch_size}")
    if timing is not None and batch_size != 1:
        note(f"--timing generates at batch 1 (--batch-size {batch_size} is not used)")
        batch_size = 1
    overrides = {"model_path": model_path} if model_path is not None else {}
    settings = load_settings(config, profile, overrides).settings
    metrics = None
    if metric_names is not None:
        from llm_dit.metrics.registry import select_metrics

        metrics = select_metrics(metric_names, settings.metrics)  # before any model loads or GPU time is spent
    prepared_all: list[Any] = []
    for name in names:
        shared = prepared_all[0].source if prepared_all else None  # one pipeline for all, built when a run starts
        prepared_all.append(
            prepare_experiment(name, settings=settings, batch_size=batch_size, pipeline=shared, **selection)
        )
    from llm_dit.cli.checks import refuse_before_running

    refuse_before_running(prepared_all, output_dir, dry_run)
    failed = 0
    for i, prepared in enumerate(prepared_all):
        if headings:
            console.print(headings[i], highlight=False)
        failed += _run_prepared(
            prepared, output_dir, dry_run=dry_run, force=force, batch_size=batch_size, offload_encoder=offload_encoder,
            timing=timing, plan_format=plan_format,
        )  # fmt: skip
        if metrics is not None and not dry_run:
            specs, notes = metrics
            run_metrics_pass(
                output_dir, prepared.experiment.name, specs, notes, settings.metrics, explicit=bool(metric_names)
            )
    return failed


# --list-experiments and --list-prompts: the keys of --format json/csv, in order (documented in docs/experiments.md).
EXPERIMENT_FIELDS = ("name", "question", "description", "variables", "runs_per_prompt", "seeds")
PROMPT_FIELDS = ("id", "category", "text")


def _list(experiments: bool, prompts: bool, output_format: str) -> None:
    """Print the built-in experiments and/or the prompt library (stdout) as tables, or one of them as JSON/CSV."""
    if experiments and prompts and output_format != "table":
        raise LlmDitError(f"--format {output_format} prints one listing: give --list-experiments or --list-prompts")
    if experiments:
        from llm_dit.experiments.loader import builtin_experiments

        records = [
            {
                "name": exp.name,
                "question": re.split(r"(?<=[?.])\s", exp.description.strip(), maxsplit=1)[0],
                "description": exp.description.strip(),
                "variables": list(exp.variables()),
                "runs_per_prompt": exp.runs_per_prompt_seed() * len(exp.seeds),
                "seeds": list(exp.seeds),
            }
            for exp in builtin_experiments().values()
        ]
        columns = [
            Column("name", "experiment", whole=True),
            Column("question"),
            Column("variables"),
            Column("runs_per_prompt", "runs per prompt"),
            Column("seeds", show=lambda seeds: ",".join(map(str, seeds))),  # as --seeds takes them
        ]
        print_records(output_format, EXPERIMENT_FIELDS, records, columns)
    if prompts:
        from llm_dit.experiments.prompts import list_prompts as all_prompts
        from llm_dit.experiments.prompts import load_library

        records = [{"id": p.id, "category": p.category, "text": p.text} for p in all_prompts(load_library())]
        columns = [
            Column("id", whole=True),
            Column("category", whole=True),
            Column("text", show=lambda text: text if len(text) <= 90 else text[:87] + "..."),  # json/csv: whole
        ]
        print_records(output_format, PROMPT_FIELDS, records, columns)


def _run_prepared(
    prepared: Any,
    output_dir: Path,
    *,
    dry_run: bool,
    force: bool,
    batch_size: int,
    offload_encoder: bool,
    timing: int | None = None,
    plan_format: str = "table",
) -> int:
    """Dry-run or run a prepared experiment, with a progress bar and a final summary; returns failed runs.
    ``timing``: the timed repeats per run of ``--timing``, or None. ``plan_format``: the dry run's --format."""
    for text in prepared.notes:
        note(text)
    if dry_run:
        _print_plan(prepared, output_dir, batch_size, plan_format, timing, force=force)
        return 0

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llm_dit.experiments.preparation import TimingPlan
    from llm_dit.experiments.runner import ExperimentRunner
    from llm_dit.experiments.store import ResultsStore

    exp, runs = prepared.experiment, prepared.runs
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Closed when the runs are done, not whenever the store is collected: no connection outlives the command.
    with ResultsStore(output_dir) as store, progress_bar(exp.name, *columns, failed=0) as report:

        def progress(finished: int, total: int, failed: int) -> None:
            report(finished, total, failed=failed)

        runner = ExperimentRunner(
            prepared.pipeline, store, batch_size=batch_size, offload_encoder=offload_encoder, progress=progress,
            timing=None if timing is None else TimingPlan(repeats=timing),
        )  # fmt: skip
        summary = runner.run(exp, runs, prepared.settings, force=force, extra_metadata=prepared.choices)
    for text in summary.notes:  # e.g. kept runs made under other execution facts
        note(text)
    per = f", {summary.seconds_per_image:.2f} s per image" if summary.seconds_per_image else ""
    console.print(
        f"[bold]{exp.name}[/bold]: {summary.done} done, {summary.skipped} skipped (already done), "
        f"{summary.failed} failed, in {summary.seconds:.1f} s{per}",
        highlight=False,
        soft_wrap=True,
    )
    for run_id, error in summary.failures[:5]:
        console.print(f"  [red]failed[/red] {run_id}: {escape(error)}", highlight=False, soft_wrap=True)
    exp_dir = store.experiment_dir(exp.name)
    console.print(
        f"results: {exp_dir}/ (images, results.csv, metadata.json; database {output_dir / DB_NAME})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"look: open {exp_dir / 'results.csv'}, or in Python: "
        f"llm_dit.experiments.store.load_results({str(output_dir)!r}, {exp.name!r})",
        highlight=False,
        soft_wrap=True,
    )
    return summary.failed


# The dry run's --format json/csv: one record per planned run, these keys in order (docs/experiments.md).
PLAN_FIELDS = ("run_id", "prompt_id", "seed", "variables", "params", "image_name", "done")


def _print_plan(
    prepared: Any,
    output_dir: Path,
    batch_size: int,
    fmt: str = "table",
    timing: int | None = None,
    *,
    force: bool = False,
) -> None:
    """The dry run (stdout): axes, run count, cost, what is already done, the first runs and the image names;
    with ``fmt`` json or csv, every planned run as a record (its variables and resolved params whole) instead.
    ``timing``: the timed repeats of ``--timing`` (its cost in generations is shown too). What counts as done
    is what the runner would skip (``pending_runs``: nothing with ``force``, untimed runs with ``timing``)."""
    from llm_dit.experiments.preparation import TimingPlan, pending_runs, plan_cost, timing_shapes
    from llm_dit.experiments.store import peek_runs

    exp, runs = prepared.experiment, prepared.runs
    # Read-only (a dry run writes nothing), and before the first line: a damaged database is the only output.
    found = peek_runs(output_dir, exp.name)
    todo = pending_runs(runs, found.done, found.timed, force=force, timing=timing is not None)
    making = {run.run_id for run in todo}
    times = found.seconds
    if fmt != "table":
        records = [
            {
                "run_id": run.run_id,
                "prompt_id": run.prompt.id,
                "seed": run.seed,
                "variables": dict(run.variables),
                "params": dict(run.params),
                "image_name": run.image_name,
                "done": run.run_id not in making,
            }
            for run in runs
        ]
        print_records(fmt, PLAN_FIELDS, records, [])
        return
    cost = plan_cost(runs, batch_size, prepared.checker)
    out = Console()
    out.print(f"[bold]{exp.name}[/bold]: {escape(exp.description)}", highlight=False)
    axes = "; ".join(f"{a.name} = {', '.join(v.label for v in a.values)}" for a in exp.axes)
    if exp.baseline is not None:
        axes += f"; plus the baseline {exp.baseline.label} (its label on every axis)"
    out.print(f"axes: {escape(axes)}", highlight=False, soft_wrap=True)
    if exp.images:
        out.print(f"input images: {escape(', '.join(exp.images))}", highlight=False, soft_wrap=True)
    prompts = sorted({r.prompt.id for r in runs})
    seeds = sorted({r.seed for r in runs})
    out.print(
        f"{len(runs)} runs = {count_noun(len(prompts), 'prompt')} x "
        f"{count_noun(len(exp.combinations()), 'combination')} x {count_noun(len(seeds), 'seed')}",
        highlight=False,
    )
    out.print(
        f"cost: {cost['distinct_prompt_encodings']} prompt encodings (all layers per forward), "
        f"{cost['dit_forwards_batched']} batched DiT forwards at batch {batch_size} "
        f"({cost['dit_forwards_unbatched']} one by one)",
        highlight=False,
    )
    pending = len(todo)
    out.print(f"already done: {len(runs) - pending}; to run: {pending}", highlight=False)
    if timing is not None:
        # What the runner does (runner._timed) for the runs it makes: warm-ups once per sampling shape, then the
        # timed repeats.
        plan = TimingPlan(repeats=timing)
        which = f"all {len(runs)}" if pending == len(runs) else f"the {pending} pending"
        out.print(
            f"timing: {plan.repeats} timed generations per run at batch 1, plus {plan.warmup} warm-up per sampling "
            f"shape ({len(timing_shapes(todo))}): {plan.generations(todo)} generations for {which} runs (done "
            "runs never timed are redone)",
            highlight=False,
            soft_wrap=True,
        )
    from llm_dit.generation.acceleration import compile_estimate, resolve
    from llm_dit.models.devices import device_type

    pipe = prepared.settings.pipeline
    compile_s, compile_text = compile_estimate(
        resolve(pipe, device_type(pipe.device, "pipeline.device")), len(timing_shapes(todo))
    )
    if pending and compile_s != 0.0:
        out.print(f"compile: {compile_text}", highlight=False, soft_wrap=True)
    if times and pending:
        per = sum(times) / len(times)
        extra = f" + ~{compile_s:.0f} s compile" if compile_s else ""
        out.print(
            f"estimated time: {pending * per + (compile_s or 0):.0f} s ({per:.2f} s per image so far{extra})",
            highlight=False,
        )
    variables = exp.variables()
    rows = [[run.run_id, run.prompt.id, *[run.variables[v] for v in variables], str(run.seed)] for run in runs[:12]]
    print_rows(out, ["run id", "prompt", *variables, "seed"], rows)
    out.print(
        f"images: <output-dir>/{exp.name}/<prompt>__<variable>=<value>__seed<seed>__<run id[:8]>.png, "
        f"e.g. {runs[0].image_name}",
        highlight=False,
        soft_wrap=True,
    )
    if len(runs) > 12:
        out.print(f"... and {len(runs) - 12} more (dry run: nothing written)")
    else:
        out.print("(dry run: nothing written)")
