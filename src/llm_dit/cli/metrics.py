"""Measurements: ``metrics`` (image metrics over an experiment's stored results, also run by ``ablate
--compute-metrics`` through ``run_metrics_pass``) and ``embed-stats`` (caption embeddings compared across encoder
settings, no image)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llm_dit.cli.options import (
    RESULTS_EXPERIMENT_HELP,
    ConfigOpt,
    EncoderDeviceOpt,
    EncoderDtypeOpt,
    FormatOpt,
    ImageOpt,
    MaxPromptsOpt,
    MetricOpt,
    ModelOpt,
    ModelPathOpt,
    OverwriteOpt,
    ProfileOpt,
    PromptCategoryOpt,
    ResultsDirOpt,
    parse_csv,
    parse_metric_names,
    settings_overrides,
)
from llm_dit.cli.terminal import Column, check_format, note, print_records, print_table, progress_bar, wrote
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DEFAULT_ROOT


def metrics_cmd(
    experiment: Annotated[str | None, typer.Argument(help=RESULTS_EXPERIMENT_HELP)] = None,
    metric: MetricOpt = None,
    reference: Annotated[
        list[str] | None,
        typer.Option("--reference", help="AXIS=LABEL: the value reference metrics compare with (repeatable)."),
    ] = None,
    reference_image: Annotated[
        list[str] | None,
        typer.Option("--reference-image", help="[PROMPT_ID=]PATH: compare with a source image instead."),
    ] = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute values already stored.")] = False,
    list_metrics: Annotated[bool, typer.Option("--list", help="List the metrics and what each needs.")] = False,
    output_format: FormatOpt = "table",
    set_metric: Annotated[
        str | None,
        typer.Option("--set-metric", help="fid or kid: each condition's image set against a reference set."),
    ] = None,
    against: Annotated[
        list[str] | None,
        typer.Option("--against", help="AXIS=LABEL: the reference set of --set-metric is that condition."),
    ] = None,
    against_folder: Annotated[
        Path | None, typer.Option("--against-folder", help="The reference set of --set-metric: a folder of images.")
    ] = None,
    kid_subset_size: Annotated[
        int | None,
        typer.Option("--kid-subset-size", help="Images per KID subset (default: 1000, or the smallest set)."),
    ] = None,
    kid_subsets: Annotated[
        int | None, typer.Option("--kid-subsets", help="How many KID subsets are drawn (default: 100).")
    ] = None,
) -> None:
    """Compute metrics over existing results: only missing values (resumable); per-run values go to the store
    and results.csv, per-value statistics to summary.csv and the terminal. With --set-metric: FID or KID of each
    condition's images against a reference set, to set_metrics.csv."""
    from llm_dit.config import load_settings
    from llm_dit.experiments.store import ResultsStore, require_database
    from llm_dit.metrics.reference import ReferenceChoice, parse_reference, parse_reference_images
    from llm_dit.metrics.registry import select_metrics

    check_format(output_format)
    settings = load_settings(config, profile).settings.metrics
    if list_metrics:
        _print_metric_list(settings, output_format)
        return
    if output_format != "table":
        raise LlmDitError("--format applies to --list; a metrics pass prints its summary as text (see summary.csv)")
    if experiment is None:
        raise LlmDitError("name an experiment: llm-dit metrics EXPERIMENT (see --list for the metrics)")
    set_options = {"--against": bool(against), "--against-folder": against_folder is not None,
                   "--kid-subset-size": kid_subset_size is not None,
                   "--kid-subsets": kid_subsets is not None}  # fmt: skip
    if set_metric is not None:
        per_run = {"--metric": bool(metric), "--reference": bool(reference),
                   "--reference-image": bool(reference_image), "--force": force}  # fmt: skip
        given = [flag for flag, on in per_run.items() if on]
        if given:
            raise LlmDitError(
                f"{given[0]} is an option of the per-run pass and --set-metric runs the set-level one; run them as "
                "two commands"
            )
        options = (against, against_folder, kid_subset_size, kid_subsets)
        _set_metrics(output_dir, experiment, set_metric, settings, *options)
        return
    given = [flag for flag, on in set_options.items() if on]
    if given:
        raise LlmDitError(f"{given[0]} applies to --set-metric fid|kid; add --set-metric or leave {given[0]} out")
    names = parse_metric_names(metric)
    specs, notes = select_metrics(names, settings)
    # The arguments before the database, so each names its own problem whatever --output-dir says. Without the
    # experiment's prompt ids a PROMPT_ID=PATH item is checked as a path; the ids are checked below.
    axes = parse_reference(reference)
    checked = _readable_images(ReferenceChoice(axes, parse_reference_images(reference_image)).images, set())
    require_database(output_dir)
    images: dict[str | None, Path] = {}
    if reference_image:
        # Read-only: nothing is migrated or written before every refusal (the pass below opens the writer).
        with ResultsStore(output_dir, read_only=True) as store:
            prompt_ids = list(dict.fromkeys(run["prompt_id"] for run in store.runs(experiment)))
        images = parse_reference_images(reference_image, prompt_ids)
        _readable_images(images, checked)
    choice = ReferenceChoice(axes, images)
    explicit = bool(names or reference or reference_image)  # asked for by name: no silent skipping
    run_metrics_pass(output_dir, experiment, specs, notes, settings, explicit=explicit, choice=choice, force=force)


def content_preservation_cmd(
    experiment: Annotated[str, typer.Argument(help=RESULTS_EXPERIMENT_HELP)],
    metric: Annotated[
        str,
        typer.Option(
            "--metric", "-m", help="A text-image metric with local weights: siglip, clip_score, pickscore, hpsv2."
        ),
    ],
    axis: Annotated[
        str | None, typer.Option("--axis", "-a", help="Axis whose values are compared (default: first).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the table: .csv (per element) or .json (all).")
    ] = None,
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    overwrite: OverwriteOpt = False,
    output_format: FormatOpt = "table",
) -> None:
    """Long-prompt content preservation: each annotated element (subject) of the library's long prompts, at its
    token position, scored against every run's image with a text-image metric, per value of an axis (e.g.
    long_prompt_mode), inside vs beyond the caption cap. Reads the results read-only."""
    from llm_dit.analysis.content_preservation import content_preservation
    from llm_dit.config import load_settings
    from llm_dit.experiments.store import require_database
    from llm_dit.files import ensure_writable, write_csv, write_json

    check_format(output_format)
    if output is not None:
        if output.suffix not in (".csv", ".json"):
            raise LlmDitError(f"--output {output}: use a .csv or .json file name")
        ensure_writable(output, overwrite)
    settings = load_settings(config, profile).settings.metrics
    require_database(output_dir)
    table = content_preservation(output_dir, experiment, metric, settings, axis)
    for text in table.notes:
        note(text)
    keys = ("prompt", "element", "token_position", "fraction", "beyond_cap", *table.values)
    columns = [Column(k, whole=k in ("prompt", "element"), show=_stat) for k in keys]
    print_records(output_format, keys, table.rows, columns, title=f"{metric} of each element, by {table.axis}")
    summary_keys = ("value", "within_cap", "beyond_cap", "gap_n", "gap_mean", "gap_ci95_low", "gap_ci95_high")
    if output_format == "table":
        columns = [Column(k, whole=k == "value", show=_stat) for k in summary_keys]
        print_records("table", summary_keys, table.summary, columns, title="inside vs beyond the cap (per run)")
    if output is not None:
        if output.suffix == ".json":
            write_json(output, {"experiment": table.experiment, "metric": metric, "axis": table.axis,
                                "rows": table.rows, "summary": table.summary, "notes": table.notes})  # fmt: skip
        else:
            write_csv(output, keys, [[row[k] for k in keys] for row in table.rows])
        wrote(str(output))


def _set_metrics(
    output_dir: Path,
    experiment: str,
    metric: str,
    settings: Any,
    against: list[str] | None,
    folder: Path | None,
    subset_size: int | None,
    subsets: int | None,
) -> None:
    """The set-level pass: print its rows and where they went."""
    from llm_dit.config import split_assignment
    from llm_dit.experiments.store import require_database
    from llm_dit.metrics.distribution import KID_SUBSETS
    from llm_dit.metrics.sets import set_metrics_pass

    example = "AXIS=LABEL, e.g. --against hidden_layer=-2"
    pairs = dict(split_assignment(item, "--against", example) for item in against or [])
    require_database(output_dir)
    report = set_metrics_pass(
        output_dir, experiment, metric, settings, against=pairs, folder=folder, subset_size=subset_size,
        subsets=KID_SUBSETS if subsets is None else subsets,
    )  # fmt: skip
    for text in report.plan.notes:
        note(text)
    keys = ("condition", "reference", "n", "n_reference", "value", "std")
    columns = [Column(k, whole=k in ("condition", "reference")) for k in keys]
    print_records("table", keys, report.rows, columns, title=f"{metric} of each condition (lower = closer)")
    wrote(str(report.path))


def _readable_images(images: dict[str | None, Path], checked: set[Path]) -> set[Path]:
    """``checked`` plus every ``--reference-image`` file, each decoded once: a text file or a cut PNG is one line
    here, not a PIL traceback in the middle of the pass."""
    from PIL import Image, UnidentifiedImageError

    for path in images.values():
        if path in checked:
            continue
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            why = "not in an image format PIL reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise LlmDitError(
                f"--reference-image {path} is not a readable image ({why}); give a PNG, JPEG or WebP"
            ) from None
        checked.add(path)
    return checked


# metrics --list: the keys of --format json/csv, in order (documented in docs/metrics.md).
METRIC_FIELDS = ("name", "kind", "higher_is_better", "setting", "status", "version", "description")


def _print_metric_list(settings: Any, output_format: str) -> None:
    """Every metric (and the unavailable ones), what it needs and whether it is ready, on stdout."""
    from llm_dit.metrics.registry import METRICS, SET_METRIC_SETTING, SET_METRICS, UNAVAILABLE, configured
    from llm_dit.metrics.sets import SET_METRIC_VERSION

    records = [
        {
            "name": spec.name,
            "kind": spec.kind,
            "higher_is_better": spec.higher_is_better,
            "setting": spec.setting,  # the [PROFILE.metrics] key of its weights; null = weight-free
            "status": ("ready" if spec.default else "ready, by name")
            if configured(spec, settings)
            else f"set {spec.setting}",
            "version": spec.version,
            "description": spec.description,
            "what": spec.description,
        }
        for spec in METRICS.values()
    ]
    ready = getattr(settings, SET_METRIC_SETTING) is not None
    records += [
        {
            "name": name,
            "kind": "set",
            "higher_is_better": False,
            "setting": SET_METRIC_SETTING,
            "status": "ready, --set-metric" if ready else f"set {SET_METRIC_SETTING}",
            "version": SET_METRIC_VERSION,
            "description": what,
            "what": what,
        }
        for name, what in SET_METRICS.items()
    ]
    records += [
        {"name": name, "kind": None, "higher_is_better": None, "setting": None, "status": "unavailable",
         "version": None, "description": why, "what": why.split(":")[0]}
        for name, why in UNAVAILABLE.items()
    ]  # fmt: skip
    columns = [
        Column("name", "metric", whole=True),
        Column("kind", show=lambda kind: kind or "-"),
        Column("higher_is_better", "better", show=lambda up: "-" if up is None else ("higher" if up else "lower")),
        Column("status"),  # 'set <setting>' names what a metric needs; the setting alone is in json/csv
        Column("what", "what it measures"),  # the table's short form of the description
    ]
    print_records(output_format, METRIC_FIELDS, records, columns)


def run_metrics_pass(
    output_dir: Path,
    experiment: str,
    specs: list[Any],
    notes: list[str],
    settings: Any,
    *,
    explicit: bool,
    choice: Any = None,
    force: bool = False,
) -> Any:
    """Run a metrics pass with a progress bar, print its summary table; returns the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from llm_dit.experiments.store import ResultsStore
    from llm_dit.metrics.compute import MetricsPass

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with ResultsStore(output_dir) as store, progress_bar(f"metrics {experiment}", *columns) as progress:
        runner = MetricsPass(store, settings, progress=progress)
        report = runner.run(experiment, specs, choice, force=force, skip_unreferenced=not explicit)
    # Notes only once the pass went through: a user error stays a single line.
    for text in [*notes, *report.notes]:
        note(text)
    _print_metrics_report(report)
    return report


def _print_metrics_report(report: Any) -> None:
    from llm_dit.metrics.registry import METRICS

    out = Console()
    computed = ", ".join(f"{m} {report.computed.get(m, 0)}" for m in report.metrics) or "nothing"
    kept = sum(report.kept.values())
    out.print(
        f"[bold]{report.experiment}[/bold] metrics: computed {computed}; {kept} already stored; {report.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    if report.reference:
        reference = f"reference for ssim/psnr/mad/lpips/color_shift: {escape(report.reference)}"
        out.print(reference, highlight=False, soft_wrap=True)
    for metric, count in report.unavailable.items():
        if count:
            out.print(f"{metric}: {count} runs without a value ({_unavailable_why(METRICS[metric])})", highlight=False)
    by_axis: dict[str, dict[str, dict[str, Any]]] = {}
    for row in report.summary:
        by_axis.setdefault(row["axis"], {}).setdefault(row["value"], {})[row["metric"]] = row
    for axis, values in by_axis.items():
        metrics = list(dict.fromkeys(m for cells in values.values() for m in cells))
        key = axis if axis not in ("n", *metrics) else f"{axis} value"  # the value labels, whole (--reference)
        records = [
            {
                key: value,
                "n": "/".join(map(str, sorted({row["n"] for row in cells.values()}))),
                **{m: _summary_cell(cells.get(m)) for m in metrics},
            }
            for value, cells in values.items()
        ]
        out.print(f"{axis}: mean ± 95% CI half-width", markup=False, highlight=False, soft_wrap=True)
        print_table(out, records, [Column(key, axis, whole=True), Column("n"), *map(Column, metrics)])
    out.print(f"per run: {report.results_csv}; per value: {report.summary_csv}", highlight=False, soft_wrap=True)


def _unavailable_why(spec: Any) -> str:
    """Why a metric of this kind has no value for some done runs (MetricsPass._params returned None)."""
    if spec.kind == "reference":
        return "no done reference run"
    if spec.kind == "image":
        from llm_dit.metrics.artifacts import PATCH_PERIOD_PX, min_side

        side = min_side(PATCH_PERIOD_PX)
        return f"images smaller than {side}x{side} px"
    return "a single seed"


def _summary_cell(row: dict[str, Any] | None) -> str:
    """'mean ± half-width' of a summary row (the mean alone where the interval is not finite)."""
    import math

    if row is None:
        return ""
    mean, high = row["mean"], row["ci95_high"]
    if not math.isfinite(mean):
        return str(mean)
    return f"{mean:.4g} ± {high - mean:.2g}" if math.isfinite(high) else f"{mean:.4g}"


def embed_stats(
    ctx: typer.Context,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            "-c",
            help="Encoder or conditioning settings to compare, e.g. think_block=empty, hidden_layer=-6 or "
            "conditioning=vl,vl_image=ref.png,vl_token_mode=text_only (repeatable; the first is the reference; "
            "'default' = the config's settings).",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="Compare the conditions of this built-in experiment (one per combination of its axes; the first, "
            "e.g. a VL study's qwen3_4b baseline, is the reference) on its prompts, instead of -c.",
        ),
    ] = None,
    experiment_file: Annotated[
        Path | None, typer.Option("--experiment-file", help="The same for your own experiment TOML.")
    ] = None,
    image: ImageOpt = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Comma-separated library ids.")] = None,
    prompt_category: PromptCategoryOpt = None,
    max_prompts: MaxPromptsOpt = None,
    outlier_threshold: Annotated[
        float, typer.Option("--outlier-threshold", help="Std ratio to the reference that marks an outlier dim.")
    ] = 10.0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the table: .csv (per prompt) or .json (all).")
    ] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    encoder_device: EncoderDeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = None,
    overwrite: OverwriteOpt = False,
    output_format: FormatOpt = "table",
) -> None:
    """Compare caption embeddings across encoder settings (no image): cosine similarity token-aligned and
    mean-pooled, norms, per-dimension statistics and outlier dimensions, against the first condition."""
    from llm_dit.conditioning.conditions import parse_condition
    from llm_dit.config import load_settings
    from llm_dit.experiments.prompts import load_library, select_prompts
    from llm_dit.files import ensure_writable

    check_format(output_format)
    from_experiment = experiment is not None or experiment_file is not None
    if from_experiment and condition:
        raise LlmDitError("give conditions (-c) or an experiment (--experiment/--experiment-file), not both")
    if image and not from_experiment:
        raise LlmDitError(
            "--image replaces an experiment's input images: give --experiment NAME (or use -c vl_image=...)"
        )
    if not condition and not from_experiment:
        raise LlmDitError(
            "give the conditions to compare, the first being the reference, e.g. "
            "--condition think_block=none --condition think_block=empty (or --experiment NAME)"
        )
    conditions = [parse_condition(text) for text in condition or []]
    if output is not None:
        if output.suffix not in (".csv", ".json"):
            raise LlmDitError(f"--output {output}: use a .csv or .json file name")
        ensure_writable(output, overwrite)
    if not outlier_threshold > 0 or outlier_threshold == float("inf"):  # NaN fails the first test
        raise LlmDitError(f"--outlier-threshold must be > 0, got {outlier_threshold}")
    selection = {
        "ids": parse_csv(prompt_ids, "--prompt-ids"),
        "category": prompt_category,
        "texts": prompt,
        "max_prompts": max_prompts,
    }
    settings = load_settings(config, profile, settings_overrides(ctx)).settings
    if from_experiment:
        from llm_dit.experiments.conditions import experiment_conditions
        from llm_dit.experiments.preparation import prepare_experiment

        prepared = prepare_experiment(
            experiment,
            settings=settings,
            experiment_file=experiment_file,
            prompt_ids=selection["ids"],
            prompt_category=prompt_category,
            prompt_texts=prompt,
            max_prompts=max_prompts,
            images=image,
        )
        conditions = experiment_conditions(prepared.runs)
        selected = list({run.prompt.id: run.prompt for run in prepared.runs}.values())
    else:
        selected = select_prompts(load_library(), **selection)
    if not selected:
        raise LlmDitError("give prompts: --prompt TEXT (repeatable), --prompt-ids IDS or --prompt-category NAME")
    model_dir = _check_conditions(settings, [p.text for p in selected], conditions)
    from llm_dit.conditioning.embedding_stats import compare_embeddings
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder

    # The checkpoint resolved above (the encoder still validates it: from_pretrained takes no CheckpointInfo).
    features = None
    if any(c.conditioning for c in conditions):  # other sources: the pipeline composes their features
        from llm_dit.generation.pipeline import LlmDitPipeline
        from llm_dit.generation.request import GenerationRequest

        pipe = LlmDitPipeline.from_settings(settings)
        encoder = pipe.encoder

        def features(prompts: list[str], params: dict[str, Any]) -> list[Any]:
            return pipe.caption_features([GenerationRequest.build(p, **params) for p in prompts])
    else:
        encoder = ZImageTextEncoder.from_pretrained(model_dir, **settings.encoder.model_dump())
    report = compare_embeddings(
        encoder, [p.text for p in selected], conditions, outlier_threshold=outlier_threshold, features=features
    )
    # The summary (a row per condition; json/csv: every SUMMARY_COLUMNS key, full precision); the table shows
    # the main statistics, a record per line where they cannot fit (-o writes everything, per prompt too).
    shown = ("prompts", "tokens", "token_cosine", "pooled_cosine", "content_cosine", "mean_token_norm", "max_abs")
    columns = [
        Column("condition", whole=True),
        *(Column(key, show=_stat) for key in (*shown, "std_ratio", "mean_correlation", "max_std_ratio")),
        Column("outlier_dims", f"dims > {outlier_threshold:g}x", show=_stat),
        Column("top_outliers", "top outliers"),
    ]
    title = f"vs {report.reference.label}: means over prompts"
    from llm_dit.conditioning.embedding_stats import SUMMARY_COLUMNS  # after the work: the module imports torch

    print_records(output_format, SUMMARY_COLUMNS, report.summary, columns, title=title)
    if output is not None:
        if output.suffix == ".json":
            report.to_json(output)
        else:
            report.to_csv(output)
        wrote(str(output))


def _check_conditions(settings: Any, prompts: list[str], conditions: list[Any]) -> Path:
    """The checkpoint, its device, and every prompt under every condition (caps, layer range), with the light
    tokenizer: bad input is refused before torch or transformers is imported. Returns the checkpoint's directory
    (resolved once, here)."""
    from llm_dit.conditioning.tokenization import PromptTokenizer
    from llm_dit.models import checkpoint, devices

    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(settings.model_path))
    devices.numerics_label(settings.encoder.device, settings.encoder.torch_dtype, "encoder.device")
    light = PromptTokenizer.for_checkpoint(info, settings.encoder)
    for condition in conditions:
        try:
            light.tokenize(prompts, **condition.overrides)
            source = condition.conditioning.get("conditioning", "text")
            if source != "text":  # its checkpoint configured (or the tiny twin with the tiny Z-Image) and its images
                from llm_dit.files import check_input_images
                from llm_dit.models.sources import source_path

                source_path(source, getattr(settings, source).model_path, settings.model_path)
                check_input_images(condition.conditioning)
        except LlmDitError as exc:
            raise LlmDitError(f"condition {condition.label!r}: {exc}") from None
    return info.path


def _stat(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as blank."""
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
