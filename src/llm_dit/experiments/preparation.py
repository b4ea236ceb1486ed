"""From a named experiment to checked runs, before any model loads: resolve the experiment, its prompts and
seeds, plan every run (ids, image names), check each against the checkpoint, and count what the plan costs.

``ablate --dry-run`` and every rejection of bad input stop here; the runner (``experiments.runner``) takes a
:class:`PreparedExperiment` on from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.config import Settings
from llm_dit.experiments.model import Experiment
from llm_dit.experiments.model import PlannedRun as Run
from llm_dit.generation.batching import batches
from llm_dit.generation.request import GenerationRequest, encoding_texts, sampling_group

if TYPE_CHECKING:
    from llm_dit.generation.pipeline import LlmDitPipeline


def request_for(run: Run) -> GenerationRequest:
    """The generation request of a planned run (its params are already validated by the plan)."""
    return GenerationRequest.build(run.prompt_text, tag=run, **run.encoder_params(), **run.generation_params())


@dataclass
class PreparedExperiment:
    """An experiment resolved, planned and checked, ready to dry-run or run (no weights loaded yet)."""

    experiment: Experiment
    runs: list[Run]
    settings: Settings
    pipeline: LlmDitPipeline
    notes: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)  # what the caller chose on top of the profile


def prepare_experiment(
    name: str | None,
    *,
    settings: Settings,
    experiment_file: str | Path | None = None,
    prompt_ids: Sequence[str] | None = None,
    prompt_category: str | None = None,
    prompt_texts: Sequence[str] | None = None,
    prompts_file: str | Path | None = None,
    max_prompts: int | None = None,
    seeds: Sequence[int] | None = None,
    overrides: dict[str, Any] | None = None,
    batch_size: int = 8,
    pipeline: LlmDitPipeline | None = None,
) -> PreparedExperiment:
    """Resolve the experiment, its prompts and seeds, plan every run and check them all before any model loads.

    A bad value fails here, naming the run; so does a prompt that cannot fit the token cap (tokenizer only).
    ``pipeline``: one already built from the same ``settings`` (a sweep shares one, so models load once).
    """
    from llm_dit.experiments.loader import get_experiment
    from llm_dit.experiments.planner import plan, swept_overrides
    from llm_dit.experiments.prompts import load_library, select_prompts
    from llm_dit.models import checkpoint

    experiment = get_experiment(name, experiment_file)
    library = load_library()
    prompts = select_prompts(
        library,
        ids=prompt_ids,
        category=prompt_category,
        texts=prompt_texts,
        prompts_file=prompts_file,
        max_prompts=max_prompts,
    )
    if not prompts:  # the experiment's own default selection
        prompts = select_prompts(
            library,
            ids=experiment.prompt_ids or None,
            category=experiment.prompt_category,
            max_prompts=max_prompts or experiment.max_prompts,
        )
    path = checkpoint.resolve_model_path(settings.model_path)
    checkpoint.validate_checkpoint(path)
    numerics = _numerics(settings)
    overrides = dict(overrides or {})
    runs = plan(
        experiment,
        prompts,
        list(seeds) if seeds else list(experiment.seeds),
        settings,
        overrides=overrides,
        model_fingerprint=checkpoint.fingerprint(path),
        numerics=numerics,
    )
    notes = [
        f"--set {key} is swept by the experiment; the axis values win" for key in swept_overrides(experiment, overrides)
    ]
    if pipeline is None:
        from llm_dit.generation.pipeline import LlmDitPipeline

        pipeline = LlmDitPipeline.from_settings(settings, max_batch_size=batch_size)
    for run in runs:
        try:
            pipeline.check([request_for(run)])
        except Exception as exc:
            variables = " ".join(f"{k}={v}" for k, v in run.variables.items())
            raise type(exc)(f"{experiment.name} run {run.prompt.id} seed {run.seed} {variables}: {exc}") from None
    choices = {
        "overrides": overrides,
        "seeds": list(seeds) if seeds else list(experiment.seeds),
        "prompt_ids": [p.id for p in prompts],
        "experiment_file": str(experiment_file) if experiment_file else None,
        "numerics": numerics,
    }
    return PreparedExperiment(experiment, runs, settings, pipeline, notes, choices)


def _numerics(settings: Settings) -> dict[str, str]:
    """Resolved devices and dtypes: they change pixels, so they enter every run id."""
    from llm_dit.models import devices

    enc_dev = devices.resolve_device(settings.encoder.device)
    dit_dev = devices.resolve_device(settings.pipeline.device)
    vae_dev = devices.resolve_device(settings.pipeline.vae_device or settings.pipeline.device)
    vae_dtype = settings.pipeline.vae_dtype or settings.pipeline.torch_dtype
    return {
        "encoder": f"{enc_dev.type}/{devices.resolve_dtype(settings.encoder.torch_dtype, enc_dev)}",
        "dit": f"{dit_dev.type}/{devices.resolve_dtype(settings.pipeline.torch_dtype, dit_dev)}",
        "vae": f"{vae_dev.type}/{devices.resolve_dtype(vae_dtype, vae_dev)}",
    }


def plan_cost(runs: Sequence[Run], batch_size: int, pipeline: LlmDitPipeline) -> dict[str, int]:
    """What a plan costs: images, distinct (text, encoder settings) encodings - negative prompts included, layers
    of one forward counted once, as the pipeline encodes them - and DiT forwards batched and one by one."""
    from llm_dit.conditioning.text_encoder import layer_agnostic_key

    requests = [request_for(r) for r in runs]
    texts: set[tuple[str, str]] = set()
    for request in requests:
        settings = pipeline.encoder.resolve(**request.encoder)
        texts.update((text, layer_agnostic_key(settings)) for text in encoding_texts(request))
    # One DiT forward per step of each of the runner's batches (its members share the step count).
    chunks = batches(requests, sampling_group, batch_size)
    return {
        "images": len(runs),
        "distinct_prompt_encodings": len(texts),
        "dit_forwards_batched": sum(sampling_group(chunk[0])[2] for chunk in chunks),
        "dit_forwards_unbatched": sum(sampling_group(request)[2] for request in requests),
    }
