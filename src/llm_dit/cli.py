"""The ``llm-dit`` command line: a thin shell over the Python API.

Every command resolves its settings first (CLI > config profile > [default] > built-in defaults) and checks
paths, values and prompts before any model loads; user errors print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llm_dit.errors import LlmDitError

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
    keys = {
        "model_path": "model_path",
        "hidden_layer": "encoder.hidden_layer",
        "layer_weights": "encoder.layer_weights",
        "system_prompt": "encoder.system_prompt",
        "think_block": "encoder.think_block",
        "long_prompt_mode": "encoder.long_prompt_mode",
        "max_text_tokens": "encoder.max_text_tokens",
        "padding": "encoder.padding",
        "encoder_device": "encoder.device",
        "encoder_dtype": "encoder.torch_dtype",
        "dit_device": "pipeline.device",
        "dit_dtype": "pipeline.torch_dtype",
        "vae_device": "pipeline.vae_device",
        "vae_dtype": "pipeline.vae_dtype",
        "width": "generation.width",
        "height": "generation.height",
        "steps": "generation.steps",
        "shift": "generation.shift",
        "sigmas": "generation.sigmas",
        "seed": "generation.seed",
        "guidance_scale": "generation.guidance_scale",
        "negative_prompt": "generation.negative_prompt",
        "refiner": "generation.refiner",
        "output_dir": "generation.output_dir",
    }
    out = {keys[name]: value for name, value in values.items() if value is not None}
    if "generation.sigmas" in out:
        # "" clears a profile's sigmas (back to steps + shift), as in TOML.
        out["generation.sigmas"] = _parse_floats(out["generation.sigmas"]) if out["generation.sigmas"].strip() else ""
    return out


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise LlmDitError(f"--sigmas {text!r}: expected comma-separated numbers, e.g. 1,0.9,0.6,0.3") from exc


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
    from llm_dit.image import ensure_writable

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
    encoder_flags = [k for k in overrides if k.startswith("encoder.") and not k.endswith(("device", "torch_dtype"))]
    if embeddings is not None and encoder_flags:
        console.print(
            f"[yellow]note:[/yellow] {', '.join(encoder_flags)} do not apply to --embeddings "
            "(only to the negative prompt when guidance_scale > 0)",
            highlight=False,
            soft_wrap=True,
        )

    from llm_dit.pipeline import GenerationRequest, LlmDitPipeline

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
    from llm_dit.image import ensure_writable

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

    from llm_dit import checkpoint
    from llm_dit.encoder import ZImageTextEncoder

    settings = resolved.settings
    encoder = ZImageTextEncoder.from_pretrained(settings.model_path, **settings.encoder.model_dump())
    encoder.tokenize(prompt)  # caps checked before the model loads
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


@app.command("tiny-model")
def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint (must not exist).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny, architecture-faithful random Z-Image checkpoint in diffusers layout."""
    if directory.exists():
        raise LlmDitError(f"{directory} already exists; give a new directory")
    from llm_dit.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(directory, seed=seed)
    _wrote(f"tiny Z-Image checkpoint to {path}")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Print the resolved configuration (TOML), each value with its source."""
    from llm_dit.config import load_settings, render_settings

    typer.echo(render_settings(load_settings(config, profile)))


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


if __name__ == "__main__":
    sys.exit(main())
