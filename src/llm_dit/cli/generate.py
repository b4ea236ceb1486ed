"""One prompt at a time: ``generate`` (one image, from a prompt or saved caption features), ``encode`` (a prompt's
caption features to .safetensors) and ``profile`` (timing both). Models load inside the commands, after every
setting, path and prompt is checked."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    run_parameter_sets,
    settings_overrides,
)
from llm_dit.cli.terminal import note, status, wrote
from llm_dit.constants import ENCODER_LOAD_FIELDS, SHIFT_FROM_CONFIG, SHIFT_FROM_FLAG
from llm_dit.errors import LlmDitError

if TYPE_CHECKING:  # the pipeline imports torch: only its types here, the commands import it when they run
    from llm_dit.conditioning.tokenization import PromptTokenizer
    from llm_dit.generation.request import GenerationRequest


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
    shift: Annotated[
        float | None, typer.Option(help="Sigma shift; default: the checkpoint's scheduler (Turbo: 3.0).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="DiT forwards (8 = official Turbo).")] = None,
    sigmas: Annotated[str | None, typer.Option(help="Explicit sigmas, comma-separated (no shift).")] = None,
    width: Annotated[int | None, typer.Option(help="Multiple of 16.")] = None,
    height: Annotated[int | None, typer.Option(help="Multiple of 16.")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="CFG scale; 0 = off (Turbo).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt (CFG only).")] = None,
    cfg_normalization: Annotated[
        bool | None,
        typer.Option(
            "--cfg-normalization/--no-cfg-normalization",
            help="CFG only: cap the guided prediction's norm at the positive one's (diffusers).",
            show_default=False,
        ),
    ] = None,
    cfg_truncation: Annotated[
        float | None, typer.Option(help="CFG only: no CFG once t = 1 - sigma exceeds this, 0..1 (1 = never).")
    ] = None,
    refiner: Annotated[str | None, typer.Option(help="Context refiner: default | skip | single | double.")] = None,
    init_image: Annotated[
        str | None, typer.Option("--init-image", help="Image-to-image: start from this image (sized to the run).")
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(help="Image-to-image: fraction of the schedule run, 0 < s <= 1 (default 0.6 with --init-image)."),
    ] = None,
    encoder_device: EncoderDeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = None,
    dit_device: Annotated[str | None, typer.Option("--dit-device", help=DEVICE_HELP)] = None,
    dit_dtype: Annotated[str | None, typer.Option("--dit-dtype", help=DTYPE_HELP)] = None,
    vae_device: Annotated[str | None, typer.Option("--vae-device", help="Default: the DiT's.")] = None,
    vae_dtype: Annotated[str | None, typer.Option("--vae-dtype", help="Default: the DiT's.")] = None,
    compile_: Annotated[
        str | None, typer.Option("--compile", help="DiT compile: none | regional | full | auto (regional on CUDA).")
    ] = None,
    compile_backend: Annotated[
        str | None, typer.Option("--compile-backend", help="inductor | aot_eager | eager.")
    ] = None,
    compile_mode: Annotated[
        str | None, typer.Option("--compile-mode", help="default | max-autotune-no-cudagraphs.")
    ] = None,
    attention_backend: Annotated[
        str | None, typer.Option("--attention-backend", help="auto | native | _native_cudnn | ... | flex.")
    ] = None,
    vae_tiling: Annotated[
        bool | None, typer.Option("--vae-tiling/--no-vae-tiling", help="Tiled VAE decode above 1024 px.")
    ] = None,
    fp8: Annotated[str | None, typer.Option("--fp8", help="FP8 DiT linears: none | rowwise | tensorwise.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path.")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where images without -o go.")] = Path("outputs"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A run parameter as NAME=VALUE, named as in experiment files and ablate --set (repeatable)."
        ),
    ] = None,
) -> None:
    """Generate one image from a prompt or from --embeddings; the PNG carries its full record ('llm_dit')."""
    from llm_dit.config import check_limits, load_settings
    from llm_dit.files import ensure_writable

    if (prompt is None) == (embeddings is None):
        raise LlmDitError("give a PROMPT or --embeddings FILE.safetensors (exactly one)")
    if prompt is not None:
        from llm_dit.experiments.prompts import check_prompt_text

        check_prompt_text(prompt, "PROMPT")  # what ablate's --prompt and --prompts-file refuse, refused alike
    if output is not None and not output.is_dir() and output.suffix.lower() != ".png":
        raise LlmDitError(f"--output {output}: images are written as PNG; use a .png file name")

    overrides = settings_overrides(ctx)  # every option above named after a config flag
    sets, manipulation = run_parameter_sets(set_)
    resolved = load_settings(config, profile, overrides, sets)
    settings = resolved.settings
    check_limits(settings.limits, settings.generation.model_dump())
    for text in resolved.notes:
        note(text)
    target = ensure_writable(output or _default_output(output_dir, settings.generation.seed), overwrite)
    text = prompt
    if manipulation is not None:
        text = _manipulated(prompt, manipulation, settings.generation.seed)
    if embeddings is not None and settings.conditioning.conditioning != "text":  # before the file loads (torch)
        raise LlmDitError(
            f"--embeddings are caption features already: drop conditioning={settings.conditioning.conditioning}"
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

    from llm_dit.generation.checks import RequestChecker, resolved_numerics
    from llm_dit.generation.request import GenerationRequest

    request = GenerationRequest(
        prompt=text,
        embeddings=features,
        generation=settings.generation,
        shift_source=_shift_source(resolved.sources["generation.shift"]),
        conditioning=settings.conditioning,
    )
    source = settings.conditioning.conditioning
    if source != "text":  # an unset source with a real Z-Image is refused here, naming its setting
        from llm_dit.models.sources import source_path

        source_path(source, getattr(settings, source).model_path, settings.model_path)
    # Devices, checkpoint, sizes, schedule and caps with the light checks, before torch and the pipeline load
    # (generate_batch checks again, with the pipeline's own encoder).
    resolved_numerics(settings)
    checker = RequestChecker.for_settings(settings)
    checker.check([request])
    _note_long_prompts(checker.prompts, request)
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.request import encoding_texts

    pipe = LlmDitPipeline.from_settings(settings)

    with status("loading models") as shown:
        # Qwen3-4B only where it runs: texts to encode, or reference statistics of a mask or normalisation.
        if encoding_texts(request) or request.conditioning.needs_reference_stats:
            pipe.encoder.model  # noqa: B018 - load now so the progress below measures sampling only
        if source != "text":
            pipe.sources.encoder(source).model  # noqa: B018
        pipe.transformer  # noqa: B018
        pipe.vae  # noqa: B018
        shown.update("generating")

        def progress(done: int, total: int) -> None:
            shown.update(f"generating: step {done}/{total}")

        result = pipe.generate_batch([request], progress=progress)[0]
    result.record["config"] = {"file": str(config) if config else None, "profile": resolved.profile}
    if manipulation is not None:
        result.record.update(token_manipulation=manipulation, original_prompt=prompt)
    if embeddings is not None:
        result.record["embeddings_file"] = {"path": str(embeddings), "metadata": features_meta}
    path = result.save(target, overwrite=overwrite)
    r = result.record
    wrote(
        f"{path}  ({r['width']}x{r['height']}, {r['steps']} steps, {_shift_text(r)}, seed {r['seed']}, "
        f"{r['embedding_length']} caption rows, {r['batch_seconds']:.2f} s)"
    )


def _shift_source(source: str) -> str | None:
    """The record's shift_source for the settings' source of generation.shift ("default": the pipeline tells
    the checkpoint's own)."""
    if source == "default":
        return None
    return SHIFT_FROM_FLAG if source == "override" else SHIFT_FROM_CONFIG


def _shift_text(record: dict[str, Any]) -> str:
    if record["shift"] is None:
        return "explicit sigmas"
    return f"shift {record['shift']} ({record['shift_source']})"


def _manipulated(prompt: str | None, name: Any, seed: int) -> str:
    """The prompt after ``--set token_manipulation=NAME`` (as an experiment applies it, with the run's seed)."""
    from llm_dit.experiments.planner import parameter_errors
    from llm_dit.experiments.prompts import Prompt, manipulate

    if prompt is None:
        raise LlmDitError("--set token_manipulation needs a PROMPT (it rewrites the text; --embeddings has none)")
    for _, message in parameter_errors({"token_manipulation": name}):  # ablate's check of the name
        raise LlmDitError(f"--set token_manipulation={name}: {message}")
    try:
        return manipulate(Prompt(id="prompt", text=prompt), name, seed)
    except ValueError as exc:
        raise LlmDitError(f"--set token_manipulation={name}: {exc}") from None


def _note_long_prompts(prompts: PromptTokenizer, request: GenerationRequest) -> None:
    """Say so on the terminal when a prompt (or a VL source used alone) is over the caption cap (the long-prompt mode
    then applies), from the light checks' tokenizer (``prompts``: memoised, so the prompts they tokenized are not
    tokenized again)."""
    from llm_dit.generation.request import encoding_texts

    names = ["prompt", "negative prompt"] if request.embeddings is None else ["negative prompt"]
    for name, text in zip(names, encoding_texts(request), strict=False):
        tokens = prompts.tokenize(text, **request.encoder)[0]
        if tokens.token_count > tokens.cap:
            mode = prompts.resolve(**request.encoder).long_prompt_mode
            if mode == "truncate":
                what = f"cuts it to {tokens.cap} tokens (the end of the prompt is dropped)"
            else:
                what = f"compresses its features to {tokens.cap} rows"
            note(
                f"the {name} is {tokens.token_count} tokens, over the cap of {tokens.cap} (max_text_tokens): "
                f"long_prompt_mode {mode} {what}"
            )
    from llm_dit.generation.checks import predicted_vl_rows

    predicted = predicted_vl_rows(request, prompts)
    settings = prompts.resolve(**request.encoder)
    if predicted is not None and predicted[0] > settings.max_text_tokens:
        cap, mode = settings.max_text_tokens, settings.long_prompt_mode
        what = "keeps its first rows (the VL text at its end is dropped)" if mode == "truncate" else "compresses it"
        note(
            f"the VL input is {predicted[0]} rows ({predicted[1]} image tokens), over the cap of {cap} "
            f"(max_text_tokens): long_prompt_mode {mode} {what}"
        )


def _default_output(output_dir: Path, seed: int) -> Path:
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
    # Checkpoint, device, caps and layers with the light tokenizer: bad input is refused before torch loads.
    from llm_dit.conditioning.tokenization import PromptTokenizer
    from llm_dit.models import checkpoint, devices

    enc = resolved.settings.encoder
    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(resolved.settings.model_path))
    devices.numerics_label(enc.device, enc.torch_dtype, "encoder.device")
    PromptTokenizer.for_checkpoint(info, enc).tokenize(prompt)
    from llm_dit.conditioning.features_file import save_features
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder

    settings = resolved.settings
    # The checkpoint resolved above (the encoder still validates it: from_pretrained takes no CheckpointInfo).
    encoder = ZImageTextEncoder.from_pretrained(info.path, **settings.encoder.model_dump())
    encoded = encoder.encode(prompt)[0]
    meta = dict(encoded.metadata())
    meta.update(
        prompt=prompt,
        model_path=str(settings.model_path or "tiny"),
        model_fingerprint=checkpoint.fingerprint(info.path),
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
    from llm_dit.config import check_limits, load_settings
    from llm_dit.files import ensure_writable, write_json

    settings = load_settings(config, profile, settings_overrides(ctx)).settings
    check_limits(settings.limits, settings.generation.model_dump())
    ensure_writable(output, overwrite)
    if repeats < 1:
        raise LlmDitError(f"--repeats must be >= 1, got {repeats}")
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.profiling import run_profile

    pipe = LlmDitPipeline.from_settings(settings)
    # The whole resolved recipe (size, steps or sigmas, shift, guidance, refiner), not only the three flags.
    generation = settings.generation.model_dump(exclude={"seed"})
    result = run_profile(pipe, generation, repeats=repeats)
    result["model_path"] = pipe.model_path
    write_json(output, result)
    typer.echo(json.dumps(result, indent=2))
    wrote(str(output))
