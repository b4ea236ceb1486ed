"""From a named experiment to checked runs, before any model loads: resolve the experiment, its prompts and
seeds, plan every run (ids, image names), check each against the checkpoint, and count what the plan costs.

``ablate --dry-run`` and every rejection of bad input stop here, with the light checks of
:mod:`llm_dit.generation.checks` (the checkpoint's configs and cached tokenizer: no torch, transformers or
diffusers); the runner (``experiments.runner``) takes a :class:`PreparedExperiment` on from here, and only then
is the pipeline built (:class:`PipelineSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.conditioning.tokenization import layer_agnostic_key
from llm_dit.config import Settings
from llm_dit.experiments.model import Experiment
from llm_dit.experiments.model import PlannedRun as Run
from llm_dit.generation.batching import batches
from llm_dit.generation.checks import RequestChecker, resolved_numerics
from llm_dit.generation.request import GenerationRequest, encoding_texts, request_from_params, sampling_group

if TYPE_CHECKING:
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.models.checkpoint import CheckpointInfo


def request_for(run: Run) -> GenerationRequest:
    """The generation request of a planned run (its params are already validated by the plan)."""
    return request_from_params(run.prompt_text, run.params, tag=run)


class PipelineSource:
    """The pipeline of ``settings``, built on first use (:meth:`get`), and the light checks of its checkpoint.

    Planning and dry runs only need :meth:`checker`, so they import no model library; a sweep's experiments share
    one source, so its pipeline (and models) load once. ``pipeline``: one already built from the same settings.
    """

    def __init__(self, settings: Settings, batch_size: int = 8, pipeline: LlmDitPipeline | None = None) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self._pipeline = pipeline
        self._checker: RequestChecker | None = None

    @property
    def built(self) -> bool:
        return self._pipeline is not None

    def get(self) -> LlmDitPipeline:
        if self._pipeline is None:
            from llm_dit.generation.pipeline import LlmDitPipeline

            self._pipeline = LlmDitPipeline.from_settings(self.settings, max_batch_size=self.batch_size)
        return self._pipeline

    def checker(self, info: CheckpointInfo) -> RequestChecker:
        """The checks of the runs: a built pipeline's own, else the light ones of ``info`` (kept for reuse)."""
        if self._pipeline is not None:
            return self._pipeline.request_checker()
        if self._checker is None:
            self._checker = RequestChecker.for_checkpoint(info, self.settings.encoder)
        return self._checker


@dataclass(frozen=True)
class TimingPlan:
    """``ablate --timing``: each run at batch 1, after ``warmup`` untimed generations per sampling shape (size,
    steps, refiner: what compiles kernels and sizes allocations), ``repeats`` timed ones."""

    repeats: int = 3
    warmup: int = 1

    def generations(self, runs: Sequence[Run]) -> int:
        """The generations timing ``runs`` takes (the pending ones: see :func:`pending_runs`): what the runner's
        ``_timed`` does, ``repeats`` per run plus ``warmup`` once per sampling shape."""
        return len(runs) * self.repeats + len(timing_shapes(runs)) * self.warmup


def timing_shapes(runs: Sequence[Run]) -> set[Any]:
    """The sampling shapes of ``runs`` (:func:`~llm_dit.generation.request.sampling_group`): one warm-up each."""
    return {sampling_group(request_for(run)) for run in runs}


def pending_runs(
    runs: Sequence[Run], done: set[str], timed: set[str], *, force: bool = False, timing: bool = False
) -> list[Run]:
    """The runs still to make, the one rule of the runner and the dry run: all with ``force``, else those not
    ``done`` (done: status done and the image still on disk); with ``timing``, also done runs never ``timed``."""
    if force:
        return list(runs)
    skip = done & timed if timing else done
    return [run for run in runs if run.run_id not in skip]


@dataclass
class PreparedExperiment:
    """An experiment resolved, planned and checked, ready to dry-run or run (no weights loaded, no model library
    imported: :attr:`pipeline` builds it on first use)."""

    experiment: Experiment
    runs: list[Run]
    settings: Settings
    checker: RequestChecker  # what checked the runs (the dry run's cost estimate uses its encoder settings)
    source: PipelineSource
    notes: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)  # what the caller chose on top of the profile

    @property
    def pipeline(self) -> LlmDitPipeline:
        """The pipeline that runs it, built now if it is not yet (imports torch; weights still load lazily)."""
        return self.source.get()


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
    images: Sequence[str | Path] | None = None,
    batch_size: int = 8,
    pipeline: LlmDitPipeline | PipelineSource | None = None,
) -> PreparedExperiment:
    """Resolve the experiment, its prompts and seeds, plan every run and check them all before any model loads.

    ``images`` (``--image``) replace the experiment's own input images; its placeholders are resolved here, so the
    prepared experiment (and the definition the store keeps) names the images used, as absolute paths.

    A bad value fails here, naming the run; so does a prompt that cannot fit the token cap (tokenizer only), and
    a plan above ``settings.limits.max_runs``, counted before it is expanded. ``pipeline``: one already built from
    the same ``settings``, or the :class:`PipelineSource` of an earlier experiment (a sweep shares one, so models
    load once). Imports no model library unless ``pipeline`` is a built one.
    """
    from llm_dit.experiments.loader import get_experiment
    from llm_dit.experiments.planner import baseline_overrides, plan, swept_overrides
    from llm_dit.experiments.prompts import load_library, select_prompts
    from llm_dit.models import checkpoint

    # With its own seeds, a file is refused for its size before its values are even validated.
    experiment = get_experiment(name, experiment_file, max_runs=None if seeds else settings.limits.max_runs)
    experiment = experiment.with_images(images)
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
    info = checkpoint.validate_checkpoint(path)
    numerics = resolved_numerics(settings)
    overrides = dict(overrides or {})
    runs = plan(
        experiment,
        prompts,
        list(seeds) if seeds else list(experiment.seeds),
        settings,
        overrides=overrides,
        model_fingerprint=checkpoint.fingerprint(path),
        numerics=numerics,
        shift_default=lambda: checkpoint.default_shift(info),
    )
    notes = [
        f"--set {key} is swept by the experiment; the axis values win" for key in swept_overrides(experiment, overrides)
    ]
    if experiment.baseline is not None:
        own = experiment.baseline.params
        notes += [
            f"--set {key} does not apply to the baseline '{experiment.baseline.label}' "
            + (f"(it sets its own {key})" if key in own else "(it keeps its own conditioning)")
            for key in baseline_overrides(experiment, overrides)
        ]
    source = pipeline if isinstance(pipeline, PipelineSource) else PipelineSource(settings, batch_size, pipeline)
    checker = source.checker(info)
    for run in runs:
        try:
            checker.check([request_for(run)])
        except Exception as exc:
            variables = " ".join(f"{k}={v}" for k, v in run.variables.items())
            raise type(exc)(f"{experiment.name} run {run.prompt.id} seed {run.seed} {variables}: {exc}") from None
    choices = {
        "overrides": overrides,
        "seeds": list(seeds) if seeds else list(experiment.seeds),
        "prompt_ids": [p.id for p in prompts],
        "experiment_file": str(experiment_file) if experiment_file else None,
        "images": list(experiment.images),
        "numerics": numerics,
    }
    return PreparedExperiment(experiment, runs, settings, checker, source, notes, choices)


def plan_cost(runs: Sequence[Run], batch_size: int, checker: RequestChecker) -> dict[str, int]:
    """What a plan costs: images, distinct (text, encoder settings) encodings - negative prompts included, layers
    of one forward counted once, as the pipeline encodes them - and DiT forwards batched and one by one.

    ``checker``: the plan's checks (``PreparedExperiment.checker``), whose encoder settings the pipeline's equal.
    """
    requests = [request_for(r) for r in runs]
    texts: set[tuple[str, str]] = set()
    for request in requests:
        settings = checker.prompts.resolve(**request.encoder)
        texts.update((text, layer_agnostic_key(settings)) for text in encoding_texts(request))
    # One DiT forward per step of each of the runner's batches (its members share the step count).
    chunks = batches(requests, sampling_group, batch_size)
    return {
        "images": len(runs),
        "distinct_prompt_encodings": len(texts),
        "dit_forwards_batched": sum(sampling_group(chunk[0])[2] for chunk in chunks),
        "dit_forwards_unbatched": sum(sampling_group(request)[2] for request in requests),
    }
