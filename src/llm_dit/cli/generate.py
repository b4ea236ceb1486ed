"""One prompt at a time: ``generate`` (one image, from a prompt or saved caption features), ``encode`` (a prompt's
caption features to .safetensors) and ``profile`` (timing both). Models load inside the commands, after every
setting, path and prompt is checked."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from llm_dit.cli.options import (
    DEVICE_HELP,
    DTYPE_HELP,
    ConfigOpt,
    EncoderDeviceOpt,
    EncoderDtypeOpt,
    HiddenLayerOpt,
    LayerWeightsOpt,
    LongModeOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelPathOpt,
    OverwriteOpt,
    PaddingOpt,
    ProfileOpt,
    SystemPromptOpt,
    ThinkBlockOpt,
    settings_overrides,
)
from llm_dit.cli.terminal import console, note, wrote
from llm_dit.constants import ENCODER_LOAD_FIELDS
from llm_dit.errors import LlmDitError


def generate(
    ctx: typer.Context,
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
    dit_device: Annotated[str | None, typer.Option("--dit-device", help=DEVICE_HELP)] = None,
    dit_dtype: Annotated[str | None, typer.Option("--dit-dtype", help=DTYPE_HELP)] = None,
    vae_device: Annotated[str | None, typer.Option("--vae-device", help="Default: the DiT's.")] = None,
    vae_dtype: Annotated[str | None, typer.Option("--vae-dtype", help="Default: the DiT's.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path.")] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="Where unnamed images go.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
) -> None:
    """Generate one image from a prompt or from --embeddings; the PNG carries its full record ('llm_dit')."""
    from llm_dit.config import load_settings
    from llm_dit.files import ensure_writable

    if (prompt is None) == (embeddings is None):
        raise LlmDitError("give a PROMPT or --embeddings FILE.safetensors (exactly one)")

    overrides = settings_overrides(ctx)  # every option above named after a config flag
    resolved = load_settings(config, profile, overrides)
    settings = resolved.settings
    for text in resolved.notes:
        note(text)
    target = ensure_writable(
        output or _default_output(settings.generation.output_dir, settings.generation.seed), overwrite
    )
    if embeddings is not None:
        from llm_dit.conditioning.features_file import load_features

        features, features_meta = load_features(embeddings, f"--embeddings {embeddings}")
    else:
        features, features_meta = None, {}
    encoder_flags = [
        k for k in overrides if k.startswith("encoder.") and k.rpartition(".")[2] not in ENCODER_LOAD_FIELDS
    ]
    if embeddings is not None and encoder_flags:
        note(
            f"{', '.join(encoder_flags)} do not apply to --embeddings "
            "(only to the negative prompt when guidance_scale > 0)"
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
    wrote(
        f"{path}  ({r['width']}x{r['height']}, {r['steps']} steps, shift {r['shift']}, seed {r['seed']}, "
        f"{r['embedding_length']} caption rows, {r['seconds_per_image']:.2f} s)"
    )


def _default_output(output_dir: str, seed: int) -> Path:
    """A new file name under ``output_dir``: a timestamp and the seed, numbered if that name is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(output_dir) / f"{stamp}_seed{seed}.png"
    n = 1
    while path.exists():
        path = Path(output_dir) / f"{stamp}_seed{seed}_{n}.png"
        n += 1
    return path


def encode(
    ctx: typer.Context,
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
    overwrite: OverwriteOpt = False,
) -> None:
    """Encode a prompt to caption features: tensor 'embeddings' [L, D] plus string metadata."""
    from llm_dit.config import load_settings
    from llm_dit.files import ensure_writable

    if output.suffix != ".safetensors":
        raise LlmDitError(f"--output {output}: use a .safetensors file name")
    resolved = load_settings(config, profile, settings_overrides(ctx))
    ensure_writable(output, overwrite)
    from llm_dit.conditioning.features_file import save_features
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.models import checkpoint

    settings = resolved.settings
    encoder = ZImageTextEncoder.from_pretrained(settings.model_path, **settings.encoder.model_dump())
    encoded = encoder.encode(prompt)[0]
    meta = dict(encoded.metadata())
    meta.update(
        prompt=prompt,
        model_path=str(settings.model_path or "tiny"),
        model_fingerprint=checkpoint.fingerprint(checkpoint.resolve_model_path(settings.model_path)),
        system_prompt=settings.encoder.system_prompt or "",
        think_block=settings.encoder.think_block,
        padding=settings.encoder.padding,
    )
    save_features(output, encoded.embeddings, meta)
    wrote(f"{output}  embeddings {list(encoded.embeddings.shape)}, {encoded.token_count} tokens")


def profile_cmd(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write.")] = Path("profile.json"),
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    width: Annotated[int | None, typer.Option(help="Generation width (default: config, else 1024).")] = None,
    height: Annotated[int | None, typer.Option(help="Generation height (default: config, else 1024).")] = None,
    steps: Annotated[int | None, typer.Option(help="Generation steps (default: config, else 8).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats after one warm-up.")] = 3,
    overwrite: OverwriteOpt = False,
) -> None:
    """Time encoding (short, medium, long prompt) and full generation; peak memory; JSON out."""
    from llm_dit.config import load_settings
    from llm_dit.files import ensure_writable, write_json

    settings = load_settings(config, profile, settings_overrides(ctx)).settings
    ensure_writable(output, overwrite)
    if repeats < 1:
        raise LlmDitError(f"--repeats must be >= 1, got {repeats}")
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.profiling import run_profile

    pipe = LlmDitPipeline.from_settings(settings)
    # The whole resolved recipe (size, steps or sigmas, shift, guidance, refiner), not only the three flags.
    generation = settings.generation.model_dump(exclude={"output_dir", "seed"})
    result = run_profile(pipe, generation, repeats=repeats)
    result["model_path"] = pipe.model_path
    write_json(output, result)
    typer.echo(json.dumps(result, indent=2))
    wrote(str(output))
