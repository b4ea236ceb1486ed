"""The ``llm-dit`` command line: a thin shell over the Python API.

Every command resolves its settings first (CLI > config profile > [default] > built-in defaults) and checks
paths, values and prompts before any model loads; user errors print one line and exit with status 2.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llm_dit.cli import compare as cli_compare
from llm_dit.cli import plot as cli_plot
from llm_dit.cli import view as cli_view
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DEFAULT_ROOT
from llm_dit.experiments.sweeps import SWEEPS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain literal [sections]
    help="Controlled, reproducible experiments on LLM-conditioned diffusion transformers (Z-Image-Turbo).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
app.add_typer(config_app, name="config")
console = Console(stderr=True)

# Shared option declarations (flag names follow the seeds' scripts).
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file with profiles.")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Config profile (inherits [default]).")]
ModelPathOpt = Annotated[
    str | None, typer.Option("--model-path", help="Z-Image checkpoint directory (diffusers layout).")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="'tiny' = the built-in tiny random model.")]
HiddenLayerOpt = Annotated[
    int | None, typer.Option("--hidden-layer", help="Encoder hidden state: -37..36, -2 = official.")
]
LayerWeightsOpt = Annotated[
    str | None, typer.Option("--layer-weights", help='Blend layers of one forward, e.g. "-2:0.7,-5:0.3".')
]
SystemPromptOpt = Annotated[str | None, typer.Option("--system-prompt", help="System turn ('' = none).")]
ThinkBlockOpt = Annotated[
    str | None, typer.Option("--think-block", help="'none' (official), 'empty', or the text of a think block.")
]
LongModeOpt = Annotated[
    str | None,
    typer.Option("--long-prompt-mode", help="truncate | interpolate | pool | attention_pool | none."),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-text-tokens", help="Caption token cap, 1..1504 (512 = diffusers).")
]
PaddingOpt = Annotated[
    str | None, typer.Option("--padding", help="Encoder batch padding: diffusers (>= 512, exact) | longest.")
]
EncoderDeviceOpt = Annotated[str | None, typer.Option("--encoder-device", help="auto | cpu | cuda[:N].")]
EncoderDtypeOpt = Annotated[str | None, typer.Option("--encoder-dtype", help="auto | bfloat16 | float32.")]


def _overrides(**values: Any) -> dict[str, Any]:
    """Map CLI values (None = not given) onto dotted settings keys."""
    from llm_dit.config import CLI_FLAGS

    # Option names are the config's flags (--dit-dtype -> dit_dtype): one table, in config.CLI_FLAGS.
    keys = {flag.removeprefix("--").replace("-", "_"): key for key, flag in CLI_FLAGS.items()}
    out = {keys[name]: value for name, value in values.items() if value is not None}
    if "generation.sigmas" in out:
        # "" clears a profile's sigmas (back to steps + shift), as in TOML.
        out["generation.sigmas"] = _csv(out["generation.sigmas"], "--sigmas", float) or ""
    return out


def _model_path(model_path: str | None, model: str | None) -> str | None:
    if model is not None and model != "tiny":
        raise LlmDitError(f"--model {model!r}: only 'tiny' is built in; give a checkpoint with --model-path DIR")
    if model is not None and model_path is not None:
        raise LlmDitError("give --model tiny or --model-path DIR, not both")
    return "tiny" if model == "tiny" else model_path


def _default_output(output_dir: str, seed: int) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(output_dir) / f"{stamp}_seed{seed}.png"
    n = 1
    while path.exists():
        path = Path(output_dir) / f"{stamp}_seed{seed}_{n}.png"
        n += 1
    return path


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt, passed to the encoder unaltered.")] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option("--embeddings", help="Precomputed caption features (.safetensors from 'llm-dit encode')."),
    ] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    hidden_layer: HiddenLayerOpt = None,
    layer_weights: LayerWeightsOpt = None,
    system_prompt: SystemPromptOpt = None,
    think_block: ThinkBlockOpt = None,
    long_prompt_mode: LongModeOpt = None,
    max_text_tokens: MaxTokensOpt = None,
    padding: PaddingOpt = None,
    shift: Annotated[float | None, typer.Option(help="Sigma shift (3.0 = official Turbo).")] = None,
    steps: Annotated[int | None, typer.Option(help="DiT forwards (8 = official Turbo).")] = None,
    sigmas: Annotated[str | None, typer.Option(help="Explicit sigmas, comma-separated (no shift).")] = None,
    width: Annotated[int | None, typer.Option(help="Multiple of 16.")] = None,
    height: Annotated[int | None, typer.Option(help="Multiple of 16.")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="CFG scale; 0 = off (Turbo).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt (CFG only).")] = None,
    refiner: Annotated[str | None, typer.Option(help="Context refiner: default | skip | single | double.")] = None,
    encoder_device: EncoderDeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = None,
    dit_device: Annotated[str | None, typer.Option("--dit-device", help="auto | cpu | cuda[:N].")] = None,
    dit_dtype: Annotated[str | None, typer.Option("--dit-dtype", help="auto | bfloat16 | float32.")] = None,
    vae_device: Annotated[str | None, typer.Option("--vae-device", help="Default: the DiT's.")] = None,
    vae_dtype: Annotated[str | None, typer.Option("--vae-dtype", help="Default: the DiT's.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path.")] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="Where unnamed images go.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
) -> None:
    """Generate one image from a prompt or from --embeddings; the PNG carries its full record ('llm_dit')."""
    from llm_dit.config import load_settings
    from llm_dit.generation.image import ensure_writable

    if (prompt is None) == (embeddings is None):
        raise LlmDitError("give a PROMPT or --embeddings FILE.safetensors (exactly one)")

    overrides = _overrides(
        model_path=_model_path(model_path, model),
        hidden_layer=hidden_layer,
        layer_weights=layer_weights,
        system_prompt=system_prompt,
        think_block=think_block,
        long_prompt_mode=long_prompt_mode,
        max_text_tokens=max_text_tokens,
        padding=padding,
        encoder_device=encoder_device,
        encoder_dtype=encoder_dtype,
        dit_device=dit_device,
        dit_dtype=dit_dtype,
        vae_device=vae_device,
        vae_dtype=vae_dtype,
        width=width,
        height=height,
        steps=steps,
        shift=shift,
        sigmas=sigmas,
        seed=seed,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        refiner=refiner,
        output_dir=output_dir,
    )
    resolved = load_settings(config, profile, overrides)
    settings = resolved.settings
    for note in resolved.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    target = ensure_writable(
        output or _default_output(settings.generation.output_dir, settings.generation.seed), overwrite
    )
    features, features_meta = _load_embeddings(embeddings) if embeddings is not None else (None, {})
    encoder_flags = [
        k for k in overrides if k.startswith("encoder.") and k.rpartition(".")[2] not in ENCODER_LOAD_FIELDS
    ]
    if embeddings is not None and encoder_flags:
        console.print(
            f"[yellow]note:[/yellow] {', '.join(encoder_flags)} do not apply to --embeddings "
            "(only to the negative prompt when guidance_scale > 0)",
            highlight=False,
            soft_wrap=True,
        )

    from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline

    pipe = LlmDitPipeline.from_settings(settings)
    request = GenerationRequest(prompt=prompt, embeddings=features, generation=settings.generation)
    pipe.check([request])  # tokenizer and configs only: caps, sizes and shapes fail here, before weights load

    with console.status("loading models") as status:
        if prompt is not None or settings.generation.guidance_scale > 0:
            pipe.encoder.model  # noqa: B018 - load now so the progress below measures sampling only
        pipe.transformer  # noqa: B018
        pipe.vae  # noqa: B018
        status.update("generating")

        def progress(done: int, total: int) -> None:
            status.update(f"generating: step {done}/{total}")

        result = pipe.generate_batch([request], progress=progress)[0]
    result.record["config"] = {"file": str(config) if config else None, "profile": resolved.profile}
    if embeddings is not None:
        result.record["embeddings_file"] = {"path": str(embeddings), "metadata": features_meta}
    path = result.save(target, overwrite=overwrite)
    r = result.record
    _wrote(
        f"{path}  ({r['width']}x{r['height']}, {r['steps']} steps, shift {r['shift']}, seed {r['seed']}, "
        f"{r['embedding_length']} caption rows, {r['seconds_per_image']:.2f} s)"
    )


def _wrote(text: str) -> None:
    console.print(f"[green]wrote[/green] {escape(text)}", highlight=False, soft_wrap=True)


def _load_embeddings(path: Path) -> tuple[Any, dict[str, str]]:
    """Read the ``embeddings`` tensor and string metadata written by ``llm-dit encode``."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise LlmDitError(f"--embeddings {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            if "embeddings" not in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
                raise LlmDitError(f"--embeddings {path}: no tensor named 'embeddings' (found {list(handle.keys())})")
            return handle.get_tensor("embeddings"), dict(handle.metadata() or {})
    except SafetensorError as exc:
        raise LlmDitError(f"--embeddings {path}: not a readable .safetensors file ({exc})") from exc


@app.command()
def encode(
    prompt: Annotated[str, typer.Argument(help="The prompt to encode.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .safetensors file.")],
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    hidden_layer: HiddenLayerOpt = None,
    layer_weights: LayerWeightsOpt = None,
    system_prompt: SystemPromptOpt = None,
    think_block: ThinkBlockOpt = None,
    long_prompt_mode: LongModeOpt = None,
    max_text_tokens: MaxTokensOpt = None,
    padding: PaddingOpt = None,
    encoder_device: EncoderDeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Encode a prompt to caption features: tensor 'embeddings' [L, D] plus string metadata."""
    from llm_dit.config import load_settings
    from llm_dit.generation.image import ensure_writable

    if output.suffix != ".safetensors":
        raise LlmDitError(f"--output {output}: use a .safetensors file name")
    resolved = load_settings(
        config,
        profile,
        _overrides(
            model_path=_model_path(model_path, model),
            hidden_layer=hidden_layer,
            layer_weights=layer_weights,
            system_prompt=system_prompt,
            think_block=think_block,
            long_prompt_mode=long_prompt_mode,
            max_text_tokens=max_text_tokens,
            padding=padding,
            encoder_device=encoder_device,
            encoder_dtype=encoder_dtype,
        ),
    )
    ensure_writable(output, overwrite)
    from safetensors.torch import save_file

    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.models import checkpoint

    settings = resolved.settings
    encoder = ZImageTextEncoder.from_pretrained(settings.model_path, **settings.encoder.model_dump())
    encoded = encoder.encode(prompt)[0]
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in encoded.metadata().items() if v is not None}
    meta.update(
        prompt=prompt,
        model_path=str(settings.model_path or "tiny"),
        model_fingerprint=checkpoint.fingerprint(checkpoint.resolve_model_path(settings.model_path)),
        system_prompt=settings.encoder.system_prompt or "",
        think_block=settings.encoder.think_block,
        padding=settings.encoder.padding,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": encoded.embeddings.detach().cpu().contiguous()}, str(output), metadata=meta)
    _wrote(f"{output}  embeddings {list(encoded.embeddings.shape)}, {encoded.token_count} tokens")


def _csv(text: str | None, what: str, cast: Any = str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        kind = "values" if cast is str else "numbers"
        raise LlmDitError(f"{what} {text!r}: expected comma-separated {kind}, e.g. 1,0.6,0.3") from exc


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` (TOML value syntax; bare words are strings) -> flat experiment parameters."""
    from llm_dit.config import parse_scalar

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise LlmDitError(f"--set {item!r}: expected key=value, e.g. --set steps=4 or --set think_block=empty")
        out[key.strip()] = parse_scalar(raw)
    return out


OutputDirOpt = Annotated[Path, typer.Option("--output-dir", help="Results directory.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Runs per batched DiT forward.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a parameter for every run: key=value (repeatable).")
]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _run_prepared(
    prepared: Any, output_dir: Path, *, dry_run: bool, force: bool, batch_size: int, offload_encoder: bool
) -> int:
    """Dry-run or run a prepared experiment, with a progress bar and a final summary; returns failed runs."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from llm_dit.experiments.runner import ExperimentRunner, plan_cost
    from llm_dit.experiments.store import ResultsStore, peek_done

    exp, runs = prepared.experiment, prepared.runs
    for note in prepared.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    if dry_run:
        cost = plan_cost(runs, batch_size, prepared.pipeline)
        out = Console()
        out.print(f"[bold]{exp.name}[/bold]: {escape(exp.description)}", highlight=False)
        axes = "; ".join(f"{a.name} = {', '.join(v.label for v in a.values)}" for a in exp.axes)
        out.print(f"axes: {escape(axes)}", highlight=False, soft_wrap=True)
        prompts = sorted({r.prompt.id for r in runs})
        seeds = sorted({r.seed for r in runs})
        out.print(
            f"{len(runs)} runs = {_n(len(prompts), 'prompt')} x {_n(len(exp.combinations()), 'combination')} x "
            f"{_n(len(seeds), 'seed')}",
            highlight=False,
        )
        out.print(
            f"cost: {cost['distinct_prompt_encodings']} prompt encodings (all layers per forward), "
            f"{cost['dit_forwards_batched']} batched DiT forwards at batch {batch_size} "
            f"({cost['dit_forwards_unbatched']} one by one)",
            highlight=False,
        )
        done, times = peek_done(output_dir, exp.name)  # read-only: a dry run writes nothing
        pending = sum(1 for r in runs if r.run_id not in done)
        out.print(f"already done: {len(runs) - pending}; to run: {pending}", highlight=False)
        if times and pending:
            per = sum(times) / len(times)
            out.print(f"estimated time: {pending * per:.0f} s ({per:.2f} s per image so far)", highlight=False)
        table = Table("run id", "prompt", *exp.variables(), "seed")
        for run in runs[:12]:
            table.add_row(run.run_id, run.prompt.id, *[run.variables[v] for v in exp.variables()], str(run.seed))
        out.print(table)
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
        return 0

    store = ResultsStore(output_dir)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # The bar starts on the first report, i.e. after the runner holds the lock: a lock error stays one line.
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(f"{exp.name}", total=None, failed=0)

    def progress(finished: int, total: int, failed: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=finished, total=total, failed=failed)

    runner = ExperimentRunner(
        prepared.pipeline, store, batch_size=batch_size, offload_encoder=offload_encoder, progress=progress
    )
    try:
        summary = runner.run(exp, runs, prepared.settings, force=force, extra_metadata=prepared.choices)
    finally:
        bar.stop()
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
        f"results: {exp_dir}/ (images, results.csv, metadata.json; database {output_dir / 'results.db'})",
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


ComputeMetricsOpt = Annotated[
    bool,
    typer.Option("--compute-metrics", help="Compute metrics after generating (weight-free + configured models)."),
]
MetricOpt = Annotated[
    list[str] | None, typer.Option("--metric", help="A metric to compute (repeatable or comma-separated).")
]


def _metric_names(items: list[str] | None) -> list[str]:
    return [name for item in items or [] for name in _csv(item, "--metric") or []]


def _metrics_pass(
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from llm_dit.experiments.store import ResultsStore
    from llm_dit.metrics.compute import MetricsPass

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    task = bar.add_task(f"metrics {experiment}", total=None)

    def progress(finished: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=finished, total=total)

    with ResultsStore(output_dir) as store:
        runner = MetricsPass(store, settings, progress=progress)
        try:
            report = runner.run(experiment, specs, choice, force=force, skip_unreferenced=not explicit)
        finally:
            bar.stop()
    # Notes only once the pass went through: a user error stays a single line.
    for note in [*notes, *report.notes]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    _print_metrics_report(report)
    return report


def _print_metrics_report(report: Any) -> None:
    from rich.table import Table

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
        out.print(f"reference for ssim/psnr/mad/lpips: {escape(report.reference)}", highlight=False, soft_wrap=True)
    for metric, count in report.unavailable.items():
        if count:
            why = "no done reference run" if METRICS[metric].kind == "reference" else "a single seed"
            out.print(f"{metric}: {count} runs without a value ({why})", highlight=False)
    by_axis: dict[str, dict[str, dict[str, Any]]] = {}
    for row in report.summary:
        by_axis.setdefault(row["axis"], {}).setdefault(row["value"], {})[row["metric"]] = row
    for axis, values in by_axis.items():
        metrics = list(dict.fromkeys(m for cells in values.values() for m in cells))
        table = Table(axis, "n", *metrics, title=f"{axis}: mean ± 95% CI half-width", title_justify="left")
        for value, cells in values.items():
            counts = sorted({row["n"] for row in cells.values()})
            table.add_row(value, "/".join(map(str, counts)), *[_summary_cell(cells.get(m)) for m in metrics])
        out.print(table)
    out.print(f"per run: {report.results_csv}; per value: {report.summary_csv}", highlight=False, soft_wrap=True)


def _summary_cell(row: dict[str, Any] | None) -> str:
    import math

    if row is None:
        return ""
    mean, high = row["mean"], row["ci95_high"]
    if not math.isfinite(mean):
        return str(mean)
    return f"{mean:.4g} ± {high - mean:.2g}" if math.isfinite(high) else f"{mean:.4g}"


@app.command("metrics")
def metrics_cmd(
    experiment: Annotated[str | None, typer.Argument(help="Experiment name in the results directory.")] = None,
    metric: MetricOpt = None,
    reference: Annotated[
        list[str] | None,
        typer.Option("--reference", help="AXIS=LABEL: the value reference metrics compare with (repeatable)."),
    ] = None,
    reference_image: Annotated[
        list[str] | None,
        typer.Option("--reference-image", help="[PROMPT_ID=]PATH: compare with a source image instead."),
    ] = None,
    output_dir: OutputDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute values already stored.")] = False,
    list_metrics: Annotated[bool, typer.Option("--list", help="List the metrics and what each needs.")] = False,
) -> None:
    """Compute metrics over existing results: only missing values (resumable); per-run values go to the store
    and results.csv, per-value statistics to summary.csv and the terminal."""
    from llm_dit.config import load_settings
    from llm_dit.experiments.store import DB_NAME, ResultsStore
    from llm_dit.metrics.reference import ReferenceChoice, parse_reference, parse_reference_images
    from llm_dit.metrics.registry import METRICS, UNAVAILABLE, configured, select_metrics

    settings = load_settings(config, profile).settings.metrics
    if list_metrics:
        from rich.table import Table

        table = Table("metric", "kind", "better", "needs", "status", "what it measures")
        for spec in METRICS.values():
            status = "ready" if configured(spec, settings) else f"set {spec.setting}"
            better = "higher" if spec.higher_is_better else "lower"
            table.add_row(spec.name, spec.kind, better, spec.setting or "-", status, spec.description)
        for name, why in UNAVAILABLE.items():
            table.add_row(name, "-", "-", "-", "unavailable", why.split(":")[0])
        Console().print(table)
        return
    if experiment is None:
        raise LlmDitError("name an experiment: llm-dit metrics EXPERIMENT (see --list for the metrics)")
    names = _metric_names(metric)
    specs, notes = select_metrics(names, settings)
    if not (output_dir / DB_NAME).is_file():
        raise LlmDitError(f"no results database in {output_dir}; pass the --output-dir the experiment ran with")
    with ResultsStore(output_dir) as store:
        prompt_ids = list(dict.fromkeys(run["prompt_id"] for run in store.runs(experiment)))
    choice = ReferenceChoice(parse_reference(reference), parse_reference_images(reference_image, prompt_ids))
    explicit = bool(names or reference or reference_image)  # asked for by name: no silent skipping
    _metrics_pass(output_dir, experiment, specs, notes, settings, explicit=explicit, choice=choice, force=force)


@app.command()
def ablate(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Built-in experiment name.")] = None,
    experiment_file: Annotated[Path | None, typer.Option("--experiment-file", help="Your own experiment TOML.")] = None,
    list_experiments: Annotated[bool, typer.Option("--list-experiments", help="List experiments and exit.")] = False,
    list_prompts: Annotated[bool, typer.Option("--list-prompts", help="List the prompt library and exit.")] = False,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Comma-separated prompt ids.")] = None,
    prompt_category: Annotated[str | None, typer.Option("--prompt-category", help="A library category.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A custom prompt (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option("--prompts-file", help="JSON library or one per line.")] = None,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="Keep the first N prompts.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds.")] = None,
    output_dir: OutputDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    batch_size: BatchOpt = 8,
    offload_encoder: Annotated[
        bool, typer.Option("--offload-encoder", help="Free the encoder before sampling.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Regenerate runs already done.")] = False,
    compute_metrics: ComputeMetricsOpt = False,
    metric: MetricOpt = None,
) -> None:
    """Run an experiment: plan every run, check it all, then generate (resuming by default)."""
    if list_experiments or list_prompts:
        _list(list_experiments, list_prompts)
        return
    if experiment is None and experiment_file is None:
        raise LlmDitError("name an experiment (--experiment NAME or --experiment-file FILE); see --list-experiments")
    failed = _ablate(
        [experiment],
        experiment_file=experiment_file,
        prompt_ids=_csv(prompt_ids, "--prompt-ids"),
        prompt_category=prompt_category,
        prompt_texts=prompt,
        prompts_file=prompts_file,
        max_prompts=max_prompts,
        seeds=_csv(seeds, "--seeds", int),
        output_dir=output_dir,
        config=config,
        profile=profile,
        model_path=_model_path(model_path, model),
        overrides=_parse_sets(set_),
        batch_size=batch_size,
        offload_encoder=offload_encoder,
        dry_run=dry_run,
        force=force,
        metric_names=_metric_names(metric) if compute_metrics or metric else None,
    )
    if failed:
        raise typer.Exit(code=1)  # scripts can tell; every failure is recorded with its error


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
    **selection: Any,
) -> int:
    """Plan and check every named experiment, then run each (printing its heading, if given); with
    ``metric_names`` (a list, [] = the default set) compute metrics after each. Returns the number of failed runs.

    Everything is checked before the first image is made, and the experiments share one pipeline, so a sweep loads
    its models once.
    """
    from llm_dit.config import load_settings
    from llm_dit.experiments.runner import prepare_experiment

    if batch_size < 1:
        raise LlmDitError(f"--batch-size must be >= 1, got {batch_size}")
    overrides = {"model_path": model_path} if model_path is not None else {}
    settings = load_settings(config, profile, overrides).settings
    metrics = None
    if metric_names is not None:
        from llm_dit.metrics.registry import select_metrics

        metrics = select_metrics(metric_names, settings.metrics)  # before any model loads or GPU time is spent
    prepared_all: list[Any] = []
    for name in names:
        shared = prepared_all[0].pipeline if prepared_all else None
        prepared_all.append(
            prepare_experiment(name, settings=settings, batch_size=batch_size, pipeline=shared, **selection)
        )
    failed = 0
    for i, prepared in enumerate(prepared_all):
        if headings:
            console.print(headings[i], highlight=False)
        failed += _run_prepared(
            prepared, output_dir, dry_run=dry_run, force=force, batch_size=batch_size, offload_encoder=offload_encoder
        )
        if metrics is not None and not dry_run:
            specs, notes = metrics
            _metrics_pass(
                output_dir, prepared.experiment.name, specs, notes, settings.metrics, explicit=bool(metric_names)
            )
    return failed


def _list(experiments: bool, prompts: bool) -> None:
    from rich.table import Table

    out = Console()
    if experiments:
        from llm_dit.experiments.planner import builtin_experiments

        table = Table("experiment", "question", "variables", "runs per prompt", "seeds")
        for exp in builtin_experiments().values():
            question = re.split(r"(?<=[?.])\s", exp.description.strip(), maxsplit=1)[0]
            table.add_row(
                exp.name,
                question,
                ", ".join(exp.variables()),
                str(exp.runs_per_prompt_seed() * len(exp.seeds)),
                ",".join(map(str, exp.seeds)),
            )
        out.print(table)
    if prompts:
        from llm_dit.experiments.prompts import list_prompts as all_prompts
        from llm_dit.experiments.prompts import load_library

        table = Table("id", "category", "text")
        for p in all_prompts(load_library()):
            text = p.text if len(p.text) <= 90 else p.text[:87] + "..."
            table.add_row(p.id, p.category, text)
        out.print(table)


@app.command()
def sweep(
    name: Annotated[str | None, typer.Argument(help=" | ".join(p.name for p in SWEEPS))] = None,
    all_: Annotated[bool, typer.Option("--all", help="Run every sweep in priority order.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer prompts and seeds.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds.")] = None,
    category: Annotated[
        str | None, typer.Option("--prompt-category", "--category", help="Prompt category (as in ablate).")
    ] = None,
    output_dir: OutputDirOpt = DEFAULT_ROOT,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    batch_size: BatchOpt = 8,
    force: Annotated[bool, typer.Option("--force", help="Regenerate runs already done.")] = False,
    compute_metrics: ComputeMetricsOpt = False,
    metric: MetricOpt = None,
) -> None:
    """The seeds' priority sweeps as presets over the built-in experiments."""
    from llm_dit.experiments.sweeps import QUICK_MAX_PROMPTS, QUICK_SEEDS, get_sweep

    if all_ == (name is not None):
        raise LlmDitError("name one sweep or pass --all; sweeps: " + ", ".join(p.name for p in SWEEPS))
    presets = list(SWEEPS) if all_ else [get_sweep(name or "")]
    seed_list = _csv(seeds, "--seeds", int) or (list(QUICK_SEEDS) if quick else None)
    failed = _ablate(
        [preset.experiment for preset in presets],
        headings=[f"[bold]sweep {preset.name}[/bold]: {escape(preset.question)}" for preset in presets],
        config=config,
        profile=profile,
        model_path=_model_path(model_path, model),
        output_dir=output_dir,
        batch_size=batch_size,
        offload_encoder=False,
        dry_run=dry_run,
        force=force,
        prompt_category=category,
        max_prompts=QUICK_MAX_PROMPTS if quick else None,
        seeds=seed_list,
        overrides=_parse_sets(set_),
        metric_names=_metric_names(metric) if compute_metrics or metric else None,
    )
    if failed:
        raise typer.Exit(code=1)


@app.command("embed-stats")
def embed_stats(
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            "-c",
            help="Encoder settings to compare, e.g. think_block=empty or hidden_layer=-6 (repeatable; the first "
            "is the reference; 'default' = the config's settings).",
        ),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Comma-separated library ids.")] = None,
    prompt_category: Annotated[str | None, typer.Option("--prompt-category", help="A library category.")] = None,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="Keep the first N prompts.")] = None,
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Compare caption embeddings across encoder settings (no image): cosine similarity token-aligned and
    mean-pooled, norms, per-dimension statistics and outlier dimensions, against the first condition."""
    from rich.table import Table

    from llm_dit.conditioning.embedding_stats import compare_embeddings, parse_condition
    from llm_dit.config import load_settings
    from llm_dit.experiments.prompts import load_library, select_prompts
    from llm_dit.generation.image import ensure_writable

    if not condition:
        raise LlmDitError(
            "give the conditions to compare, the first being the reference, e.g. "
            "--condition think_block=none --condition think_block=empty"
        )
    conditions = [parse_condition(text) for text in condition]
    if output is not None:
        if output.suffix not in (".csv", ".json"):
            raise LlmDitError(f"--output {output}: use a .csv or .json file name")
        ensure_writable(output, overwrite)
    if not outlier_threshold > 0 or outlier_threshold == float("inf"):  # NaN fails the first test
        raise LlmDitError(f"--outlier-threshold must be > 0, got {outlier_threshold}")
    selected = select_prompts(
        load_library(),
        ids=_csv(prompt_ids, "--prompt-ids"),
        category=prompt_category,
        texts=prompt,
        max_prompts=max_prompts,
    )
    if not selected:
        raise LlmDitError("give prompts: --prompt TEXT (repeatable), --prompt-ids IDS or --prompt-category NAME")
    overrides = _overrides(
        model_path=_model_path(model_path, model), encoder_device=encoder_device, encoder_dtype=encoder_dtype
    )
    settings = load_settings(config, profile, overrides).settings
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder

    encoder = ZImageTextEncoder.from_pretrained(settings.model_path, **settings.encoder.model_dump())
    report = compare_embeddings(encoder, [p.text for p in selected], conditions, outlier_threshold=outlier_threshold)
    out = Console()
    columns = ("tokens", "token_cosine", "pooled_cosine", "content_cosine", "mean_token_norm", "max_abs")
    table = Table(
        "condition", "prompts", *columns, "max_std_ratio", f"dims > {outlier_threshold:g}x", "top outliers",
        title=f"vs {report.reference.label}: means over prompts", title_justify="left",
    )  # fmt: skip
    for row in report.summary:
        cells = [_stat(row[c]) for c in columns]
        table.add_row(
            row["condition"], str(row["prompts"]), *cells, _stat(row["max_std_ratio"]), _stat(row["outlier_dims"]),
            row["top_outliers"] or "",
        )  # fmt: skip
    out.print(table)
    if output is not None:
        if output.suffix == ".json":
            report.to_json(output)
        else:
            report.to_csv(output)
        _wrote(str(output))


def _stat(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("profile")
def profile_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write.")] = Path("profile.json"),
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    width: Annotated[int | None, typer.Option(help="Generation width (default: config, else 1024).")] = None,
    height: Annotated[int | None, typer.Option(help="Generation height (default: config, else 1024).")] = None,
    steps: Annotated[int | None, typer.Option(help="Generation steps (default: config, else 8).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats after one warm-up.")] = 3,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Time encoding (short, medium, long prompt) and full generation; peak memory; JSON out."""
    import json

    from llm_dit.config import load_settings
    from llm_dit.files import write_json
    from llm_dit.generation.image import ensure_writable
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.profiling import run_profile

    overrides = _overrides(model_path=_model_path(model_path, model), width=width, height=height, steps=steps)
    settings = load_settings(config, profile, overrides).settings
    ensure_writable(output, overwrite)
    if repeats < 1:
        raise LlmDitError(f"--repeats must be >= 1, got {repeats}")
    pipe = LlmDitPipeline.from_settings(settings)
    # The whole resolved recipe (size, steps or sigmas, shift, guidance, refiner), not only the three flags.
    generation = settings.generation.model_dump(exclude={"output_dir", "seed"})
    result = run_profile(pipe, generation, repeats=repeats)
    result["model_path"] = pipe.model_path
    write_json(output, result)
    typer.echo(json.dumps(result, indent=2))
    _wrote(str(output))


@app.command("tiny-model")
def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint (must not exist).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny, architecture-faithful random Z-Image checkpoint in diffusers layout."""
    if directory.exists():
        raise LlmDitError(f"{directory} already exists; give a new directory")
    from llm_dit.models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(directory, seed=seed)
    _wrote(f"tiny Z-Image checkpoint to {path}")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Print the resolved configuration (TOML), each value with its source."""
    from llm_dit.config import load_settings, render_settings

    typer.echo(render_settings(load_settings(config, profile)))


# Commands over existing results (compare, view, plot) live in their own modules, one each.
for _module in (cli_compare, cli_view, cli_plot):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2, with no traceback.

    Usage errors, --help and Ctrl-C are left to Typer's own (standalone) handling, which exits with
    click's codes; typer vendors its own click, so its exceptions are not caught here.
    """
    try:
        app(args=argv, prog_name="llm-dit")
    except LlmDitError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
