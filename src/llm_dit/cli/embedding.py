"""``compare-embedding-models``: Qwen3-4B against Qwen3-Embedding-4B as Z-Image text encoders, statistics only (no
image), over :mod:`llm_dit.conditioning.embedding_comparison`. Every input is checked before a model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llm_dit.cli.options import (
    ConfigOpt,
    EncoderDeviceOpt,
    EncoderDtypeOpt,
    FormatOpt,
    MaxPromptsOpt,
    ModelOpt,
    ModelPathOpt,
    OverwriteOpt,
    ProfileOpt,
    PromptCategoryOpt,
    parse_csv,
    settings_overrides,
)
from llm_dit.cli.terminal import Column, check_format, print_records, status, wrote
from llm_dit.constants import EMBEDDING_FORMATS
from llm_dit.errors import LlmDitError

_DEFAULT_LAYERS = "-1,-2,-4,-8,-16"  # conditioning.embedding_comparison.DEFAULT_COMPARISON_LAYERS


def compare_embedding_models_cmd(
    ctx: typer.Context,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The report as JSON (every row, the summary, models).")
    ],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[
        str | None, typer.Option("--prompts", help='Comma-separated prompts, e.g. "A cat,A mountain landscape".')
    ] = None,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Comma-separated library ids.")] = None,
    prompt_category: PromptCategoryOpt = None,
    max_prompts: MaxPromptsOpt = None,
    qwen3_layer: Annotated[
        int, typer.Option("--qwen3-layer", help="Qwen3-4B hidden state, the reference (-2 = Z-Image's).")
    ] = -2,
    embedding_layers: Annotated[
        str, typer.Option("--embedding-layers", help="Comma-separated Qwen3-Embedding hidden states, -37..36.")
    ] = _DEFAULT_LAYERS,
    formats: Annotated[
        str, typer.Option("--formats", help="Comma-separated prompt formats: chat, raw, instruction.")
    ] = "chat,raw,instruction",
    instructions: Annotated[
        list[str] | None,
        typer.Option(
            "--instructions",
            "--instruction",
            help="A task of the instruction format (repeatable): t2i (seed 000's), query (the released model's), "
            "default (the project's), or the task's text. Default: t2i and query.",
        ),
    ] = None,
    keep_eot: Annotated[
        bool, typer.Option("--keep-eot", help="Keep the <|endoftext|> row the embedding tokenizer appends.")
    ] = False,
    embedding_path: Annotated[
        str | None,
        typer.Option("--embedding-path", help="Qwen3-Embedding-4B folder (overrides [default.embedding] model_path)."),
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
    """Compare Qwen3-4B's caption features (the Z-Image checkpoint's text encoder, at --qwen3-layer) with
    Qwen3-Embedding-4B's at each layer, prompt format and instruction: global cosine, per-dimension mean and std
    correlation, std ratio and the cosine of the prompt's aligned tokens, per prompt (JSON) and per condition."""
    from llm_dit.conditioning.embedding_comparison import check_prompts, plan_conditions, resolve_instructions
    from llm_dit.conditioning.tokenization import PromptTokenizer, check_layer_indices
    from llm_dit.config import load_settings
    from llm_dit.experiments.prompts import load_library, select_prompts
    from llm_dit.files import ensure_writable
    from llm_dit.models import checkpoint, devices

    check_format(output_format)
    if output.suffix != ".json":
        raise LlmDitError(f"--output {output}: use a .json file name")
    ensure_writable(output, overwrite)
    layers = parse_csv(embedding_layers, "--embedding-layers", int) or []
    format_list = parse_csv(formats, "--formats") or []
    unknown = [f for f in format_list if f not in EMBEDDING_FORMATS]
    if unknown or not format_list:
        shown = f"{unknown[0]!r} is not a prompt format" if unknown else "no prompt format given"
        raise LlmDitError(f"--formats: {shown}; use {', '.join(EMBEDDING_FORMATS)} (comma-separated)")
    if instructions is not None and "instruction" not in format_list:
        raise LlmDitError("--instructions apply to the instruction format: add instruction to --formats or drop them")
    tasks = resolve_instructions(instructions) if "instruction" in format_list else []
    texts = [*(prompt or []), *(parse_csv(prompts, "--prompts") or [])]
    selected = select_prompts(
        load_library(),
        ids=parse_csv(prompt_ids, "--prompt-ids"),
        category=prompt_category,
        texts=texts,
        max_prompts=max_prompts,
    )
    if not selected:
        raise LlmDitError(
            'give prompts: --prompt TEXT (repeatable), --prompts "A,B", --prompt-ids IDS or --prompt-category NAME'
        )
    overrides = settings_overrides(ctx)
    if embedding_path is not None:
        overrides["embedding.model_path"] = embedding_path
    settings = load_settings(config, profile, overrides).settings
    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(settings.model_path))
    devices.numerics_label(settings.encoder.device, settings.encoder.torch_dtype, "encoder.device")
    devices.numerics_label(settings.embedding.device, settings.embedding.torch_dtype, "embedding.device")
    emb_path, emb_layers, emb_width, emb_vocab = _embedding_model(settings)
    if emb_width != info.text_hidden_size:
        raise LlmDitError(
            f"the embedding model is {emb_width} wide and the Z-Image text encoder {info.text_hidden_size}: compare "
            "models of one width (Qwen3-Embedding-4B with a Z-Image checkpoint, the tiny twin with the tiny model)"
        )
    try:
        check_layer_indices([qwen3_layer], info.num_text_layers)
    except LlmDitError as exc:
        raise LlmDitError(f"--qwen3-layer: {exc}") from None
    try:
        check_layer_indices(layers, emb_layers)
    except LlmDitError as exc:
        raise LlmDitError(f"--embedding-layers: {exc}") from None
    conditions = plan_conditions(layers, format_list, tasks, emb_layers)
    light = PromptTokenizer.for_checkpoint(info, settings.encoder)
    prompt_texts = [p.text for p in selected]
    light.tokenize(prompt_texts, hidden_layer=qwen3_layer)  # Qwen3-4B's caps, before any model loads
    check_prompts(prompt_texts, conditions, light.encode, emb_vocab)

    from llm_dit.conditioning.embedding_comparison import SUMMARY_COLUMNS, compare_embedding_models
    from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.models.sources import source_fingerprint

    text_encoder = ZImageTextEncoder.from_pretrained(info.path, **settings.encoder.model_dump())
    embedding_encoder = EmbeddingEncoder.from_pretrained(
        emb_path, device=settings.embedding.device, torch_dtype=settings.embedding.torch_dtype
    )
    models = {
        "qwen3": {"checkpoint": str(info.path), "fingerprint": checkpoint.fingerprint(info.path)},
        "embedding": {
            "path": str(embedding_encoder.path),
            "fingerprint": source_fingerprint("embedding", settings.embedding.model_path, settings.model_path),
            "tiny_twin": emb_path is None,
        },
    }
    run_settings = {
        "qwen3_layer": qwen3_layer,
        "embedding_layers": list(dict.fromkeys(layers)),
        "formats": list(dict.fromkeys(format_list)),
        "instructions": dict(tasks),
        "keep_eot": keep_eot,
        "encoder": settings.encoder.model_dump(),
        "embedding": settings.embedding.model_dump(),
    }
    with status(f"encoding {len(prompt_texts)} prompts with both models"):
        report = compare_embedding_models(
            text_encoder,
            embedding_encoder,
            prompt_texts,
            conditions,
            qwen3_layer=qwen3_layer,
            keep_eot=keep_eot,
            models=models,
            settings=run_settings,
        )
    records = [
        {**row, "aligned": f"{row['aligned_tokens']}/{row['reference_content_tokens']}"} for row in report.summary
    ]
    columns = [
        Column("condition", whole=True),
        Column("global_cosine", "global cos", show=_stat),
        Column("mean_correlation", "mean corr", show=_stat),
        Column("std_correlation", "std corr", show=_stat),
        Column("std_ratio", "std ratio", show=_stat),
        Column("token_cosine", "token cos", show=_stat),
        Column("aligned"),  # content tokens paired / Qwen3-4B's content tokens, summed over prompts
    ]
    title = f"vs Qwen3-4B layer {qwen3_layer} (chat format): means over {len(prompt_texts)} prompts"
    print_records(output_format, SUMMARY_COLUMNS, records, columns, title=title)
    report.to_json(output)
    wrote(str(output))


def _embedding_model(settings: Any) -> tuple[Path | None, int, int, int]:
    """The embedding checkpoint (None: the tiny twin, not built here) and its layer count, width and vocabulary
    size, from JSON only."""
    from llm_dit.models.embedding_model import TINY_EMBEDDING_CONFIG, validate_embedding_checkpoint
    from llm_dit.models.sources import source_path

    if settings.embedding.model_path is None and settings.model_path is not None:
        raise LlmDitError(
            "compare-embedding-models needs a local Qwen3-Embedding-4B checkpoint with this Z-Image checkpoint: give "
            "--embedding-path DIR or set [default.embedding] model_path (the tiny twin only fits the tiny model)"
        )
    path = source_path("embedding", settings.embedding.model_path, settings.model_path)
    if path is None:
        c = TINY_EMBEDDING_CONFIG
        return None, int(c["num_hidden_layers"]), int(c["hidden_size"]), int(c["vocab_size"])
    info = validate_embedding_checkpoint(path)
    return path, info.num_layers, info.hidden_size, info.vocab_size


def _stat(value: Any) -> str:
    """Three decimals (cosines and correlations lie in -1..1); blank where there is no value."""
    return "" if value is None else f"{value:.3f}"
