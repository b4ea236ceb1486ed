"""Commands of the other conditioning sources: ``caption`` (Qwen3-VL captions, seeded) and ``reference-stats``
(Qwen3-4B's per-dimension statistics that VL masking and normalisation compare with)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llm_dit.cli.options import ConfigOpt, FormatOpt, ModelOpt, ModelPathOpt, ProfileOpt, chosen_model_path
from llm_dit.cli.terminal import Column, check_format, print_records, status, wrote
from llm_dit.constants import DEFAULT_CAPTION_PROMPT, MAX_SEED
from llm_dit.errors import LlmDitError


def caption_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files to caption.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The instruction sent with each image.")] = (
        DEFAULT_CAPTION_PROMPT
    ),
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed: the same seed gives the same caption.")] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest caption, in tokens.")] = 256,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the captions as .json.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    output_format: FormatOpt = "table",
) -> None:
    """Caption images with Qwen3-VL ([default.vl] model_path; unset: the tiny twin), sampling with the checkpoint's
    generation settings (temperature 0.7, top_p 0.8, top_k 20 for Qwen3-VL-4B-Instruct), seeded."""
    from llm_dit.config import load_settings
    from llm_dit.files import ensure_writable, input_image
    from llm_dit.models.sources import source_path

    check_format(output_format)
    if max_new_tokens < 1:
        raise LlmDitError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= seed <= MAX_SEED:
        raise LlmDitError(f"--seed must be in 0..{MAX_SEED}, got {seed}")
    if not prompt.strip():
        raise LlmDitError('--prompt is empty; give the instruction, e.g. --prompt "Describe this image in detail."')
    if output is not None:
        if output.suffix != ".json":
            raise LlmDitError(f"--output {output}: use a .json file name")
        ensure_writable(output)
    files = [input_image(image, "IMAGE") for image in images]
    overrides = {"model_path": chosen_model_path(model_path, model)}
    settings = load_settings(config, profile, {k: v for k, v in overrides.items() if v is not None}).settings
    path = source_path("vl", settings.vl.model_path, settings.model_path)
    from llm_dit.conditioning.vl_encoder import VLEncoder

    encoder = VLEncoder.from_pretrained(path, device=settings.vl.device, torch_dtype=settings.vl.torch_dtype)
    rows: list[dict[str, Any]] = []
    with status("captioning") as shown:
        for i, (full, sha) in enumerate(files):
            shown.update(f"captioning {i + 1}/{len(files)}")
            text = encoder.caption(str(full), prompt=prompt, seed=seed, max_new_tokens=max_new_tokens)
            rows.append({"image": str(full), "image_sha256": sha, "seed": seed, "caption": text})
    columns = [Column("image", whole=True), Column("caption")]
    print_records(output_format, ("image", "image_sha256", "seed", "caption"), rows, columns)
    if output is not None:
        from llm_dit.files import write_json

        write_json(
            output,
            {
                "vl_model": str(path) if path else "tiny",
                "prompt": prompt,
                "max_new_tokens": max_new_tokens,
                "captions": rows,
            },
        )
        wrote(str(output))


def reference_stats_cmd(
    layer: Annotated[
        list[int] | None, typer.Option("--layer", help="Hidden layer(s) of Qwen3-4B, -37..36 (repeatable).")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="How many of the largest-std dimensions to list.")] = 5,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    model_path: ModelPathOpt = None,
    model: ModelOpt = None,
    output_format: FormatOpt = "table",
) -> None:
    """Per-dimension mean and std of Qwen3-4B hidden states over the prompt library, at each layer (computed
    through the configured encoder once, then cached on disk by encoder fingerprint, layer and template)."""
    from llm_dit.config import load_settings
    from llm_dit.config.schema import MAX_LAYER, MIN_LAYER
    from llm_dit.models import checkpoint

    check_format(output_format)
    layers = list(dict.fromkeys(layer or [-2]))
    for value in layers:
        if not MIN_LAYER <= value <= MAX_LAYER:
            raise LlmDitError(f"--layer {value} is out of range {MIN_LAYER}..{MAX_LAYER}")
    if top < 1:
        raise LlmDitError(f"--top must be >= 1, got {top}")
    overrides = {"model_path": chosen_model_path(model_path, model)}
    settings = load_settings(config, profile, {k: v for k, v in overrides.items() if v is not None}).settings
    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(settings.model_path))
    from llm_dit.conditioning import reference_stats
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder

    encoder = ZImageTextEncoder.from_pretrained(info.path, **settings.encoder.model_dump())
    with status("reference statistics"):
        stats = reference_stats.load_or_compute(
            checkpoint.fingerprint(info.path),
            reference_stats.template_key(settings.encoder),
            reference_stats.reference_texts(),
            layers,
            encoder.encode_layers,  # built with settings.encoder: the template the key names
        )
    rows = []
    for value in layers:
        s = stats[value]
        std = s.std.double()
        rows.append(
            {
                "layer": value,
                "prompts": s.prompt_count,
                "tokens": s.token_count,
                "global_std": float(s.global_std),
                "median_dim_std": float(std.median()),
                "top_dims": ", ".join(f"{d}:{value:.4g}" for d, value in s.top_outliers(top)),
            }
        )
    keys = ("layer", "prompts", "tokens", "global_std", "median_dim_std", "top_dims")
    columns = [Column(k, whole=k == "layer", show=_cell) for k in keys]
    print_records(output_format, keys, rows, columns, title="Qwen3-4B reference statistics (prompt library)")


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
