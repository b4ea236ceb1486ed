"""Running a planned experiment: resumable, batched, crash-safe, with a results store behind it.

The plan (``experiments.planner``) fixes every run and its id before anything loads. The runner then
1. takes the experiment's lock (a second runner gets a clear error, never a corrupted store),
2. records the plan and skips runs already done (resume is the default; ``force`` regenerates),
3. encodes every distinct prompt once for the whole experiment (all layers from one forward),
   optionally frees the encoder before sampling,
4. samples runs that share size, step count and refiner mode through one batched DiT forward,
5. writes each image atomically (temp file + rename) and only then marks the run done, in one
   transaction: killed at any moment, a re-run produces exactly the planned set, none duplicated or
   truncated,
6. records a failing run with its error and goes on (a failed batch is retried one run at a time).

Each image is stored with its execution facts (:func:`execution_facts`: what ran it, which the run id does not
hash but which can move pixels) and its batch's timing; a resume under other facts says how many kept runs
differ, and in what. With ``timing`` (``ablate --timing``) every run is made at batch 1 after a warm-up per
sampling shape, ``repeats`` times, synchronised, and the median and spread of those times are stored.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_dit import __version__
from llm_dit.config import Settings
from llm_dit.experiments.model import Experiment
from llm_dit.experiments.model import PlannedRun as Run
from llm_dit.experiments.planner import REPLACES, default_params
from llm_dit.experiments.preparation import TimingPlan, pending_runs, request_for
from llm_dit.experiments.store import PlanDefaults, ResultsStore, RunTiming, TimedStats
from llm_dit.experiments.store import PlannedRun as StoreRow
from llm_dit.generation.acceleration import resolve as resolve_acceleration
from llm_dit.generation.batching import batches
from llm_dit.generation.checks import resolved_numerics
from llm_dit.generation.image import write_png
from llm_dit.generation.pipeline import (
    GenerationRequest,
    GenerationResult,
    LlmDitPipeline,
    sampling_group,
)
from llm_dit.generation.record import package_versions, parameters_line, utc_now
from llm_dit.models import devices

ProgressCallback = Callable[[int, int, int], None]  # (images finished, images to make, failed so far)
Clock = Callable[[], float]  # seconds, monotonic


@dataclass
class RunSummary:
    experiment: str
    planned: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)
    output_dir: str = ""
    notes: list[str] = field(default_factory=list)  # for the user (e.g. kept runs made under other facts)

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.done if self.done else None


def store_rows(runs: Sequence[Run]) -> list[StoreRow]:
    return [
        StoreRow(
            run_id=r.run_id,
            prompt_id=r.prompt.id,
            prompt_text=r.prompt_text,
            seed=r.seed,
            variables=dict(r.variables),
            params=dict(r.params),
            image_name=r.image_name,
        )
        for r in runs
    ]


@dataclass(frozen=True)
class CodeFacts:
    """The code that runs: the package versions and the git commit (two subprocesses), looked up once per
    :meth:`ExperimentRunner.run` and shared by its execution facts and its experiment metadata."""

    versions: dict[str, str]
    commit: str | None

    @classmethod
    def now(cls) -> CodeFacts:
        return cls(package_versions(), git_commit())


def execution_facts(settings: Settings, batch_size: int, code: CodeFacts | None = None) -> dict[str, Any]:
    """What makes an image besides its parameters: the run id does not hash these, yet each can move pixels
    (batching by up to 2/255, a code change, a library's kernels, another device or dtype). Resolved from the
    settings as the pipeline resolves them, so a resume can compare before any model loads.

    ``batch_size_limit`` is ``--batch-size``: with the plan it fixes each batch's composition (the batch an
    image was actually made in is stored with it: ``batch_size``, ``batch_position``). ``code``: the versions
    and commit already looked up (else looked up now).
    """
    code = code or CodeFacts.now()
    versions = code.versions
    facts: dict[str, Any] = {
        "batch_size_limit": batch_size,
        "llm_dit": __version__,
        "git_commit": code.commit,
        **{name: versions.get(name) for name in ("torch", "diffusers", "transformers")},
        # The devices and dtypes are in the run id too (so they never differ between a run and its resume);
        # the GPU model is not.
        **resolved_numerics(settings),
        # Compile and attention kernels move pixels by rounding only (checked against eager: docs/benchmarks.md).
        **resolve_acceleration(
            settings.pipeline, devices.device_type(settings.pipeline.device, "pipeline.device")
        ).facts(),
    }
    device = devices.resolve_device(settings.pipeline.device)
    if device.type == "cuda":
        import torch

        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def execution_note(kept: Sequence[dict[str, Any]], facts: dict[str, Any]) -> str | None:
    """One line when done runs a resume keeps were made under other execution facts (or before they were
    recorded): how many, in what (old values, then now), and how to redo them."""
    differ: dict[str, list[str]] = {}
    changed = unknown = 0
    for run in kept:
        stored = run.get("execution")
        if not stored:
            unknown += 1
            continue
        keys = [key for key in facts if stored.get(key) != facts[key]]
        changed += bool(keys)
        for key in keys:
            old = json.dumps(stored.get(key))
            if old not in differ.setdefault(key, []):
                differ[key].append(old)
    parts = []
    if changed:
        what = "; ".join(f"{key} {', '.join(old)}, now {json.dumps(facts[key])}" for key, old in differ.items())
        parts.append(f"{changed} of the {len(kept)} done runs kept were made under other execution facts ({what})")
    if unknown:
        parts.append(f"{unknown} done runs kept were made before llm-dit recorded execution facts")
    if not parts:
        return None
    return "; ".join(parts) + ": their pixels may differ from a run made now; --force regenerates them"


def git_commit() -> str | None:
    """The working tree's commit, if llm-dit runs from a git checkout (recorded with results), with ``-dirty``
    when tracked files differ from it (the code that ran is then not that commit's)."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here, capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")


class ExperimentRunner:
    """Executes planned runs of one experiment into a :class:`ResultsStore`."""

    def __init__(
        self,
        pipeline: LlmDitPipeline,
        store: ResultsStore,
        *,
        batch_size: int = 8,
        offload_encoder: bool = False,
        progress: ProgressCallback | None = None,
        timing: TimingPlan | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.timing = timing
        self.batch_size = 1 if timing is not None else max(1, batch_size)
        self.offload_encoder = offload_encoder
        self.progress = progress
        self.clock = clock
        self._facts: dict[str, Any] = {}
        self._warm: set[Any] = set()  # sampling shapes warmed up (timing)

    def pending(self, experiment: Experiment, runs: Sequence[Run], force: bool = False) -> list[Run]:
        """Runs still to make (:func:`~llm_dit.experiments.preparation.pending_runs`): all with ``force``, else
        those not done (a done run whose image vanished counts); with ``timing``, also done runs never timed."""
        if force:
            return list(runs)
        done = self.store.done_run_ids(experiment.name)  # empty for an experiment the store has not seen
        timed = self.store.timed_run_ids(experiment.name) if self.timing is not None and done else set()
        return pending_runs(runs, done, timed, force=force, timing=self.timing is not None)

    def run(
        self,
        experiment: Experiment,
        runs: Sequence[Run],
        settings: Settings,
        *,
        force: bool = False,
        extra_metadata: dict[str, Any] | None = None,
    ) -> RunSummary:
        name = experiment.name
        summary = RunSummary(experiment=name, planned=len(runs), output_dir=str(self.store.experiment_dir(name)))
        with self.store.lock(name):
            self.store.cleanup_temp_files(name)
            code = CodeFacts.now()
            self._facts = execution_facts(settings, self.batch_size, code)
            metadata = {**self._metadata(settings, code), **(extra_metadata or {})}
            # The defaults go with the plan: a later metrics pass finds its default reference by them, whatever
            # the code's defaults are by then.
            from llm_dit.models.checkpoint import default_shift  # the default shift is the checkpoint's

            defaults = PlanDefaults(default_params(lambda: default_shift(self.pipeline.info)), dict(REPLACES))
            self.store.start_experiment(
                name, experiment.description, experiment.to_dict(), metadata, plan_defaults=defaults
            )
            self.store.plan_runs(name, store_rows(runs))
            todo = self.pending(experiment, runs, force)
            summary.skipped = len(runs) - len(todo)
            if summary.skipped:
                making = {run.run_id for run in todo}
                planned = {run.run_id for run in runs}
                kept = [r for r in self.store.runs(name) if r["run_id"] in planned and r["run_id"] not in making]
                note = execution_note(kept, self._facts)
                if note:
                    summary.notes.append(note)
            t0 = time.perf_counter()
            if todo:
                self._execute(name, todo, summary)
            summary.seconds = time.perf_counter() - t0
            self.store.finish_experiment(name, {k: v for k, v in asdict(summary).items() if k != "failures"})
            self.store.export(name)
        return summary

    def _execute(self, name: str, todo: list[Run], summary: RunSummary) -> None:
        requests = [request_for(run) for run in todo]
        self.pipeline.check(requests)
        self.pipeline.precompute_encodings(requests, offload=self.offload_encoder)
        if self.offload_encoder:
            self.pipeline.offload_encoder()
        self._report(len(todo), summary)
        # PNG encoding and fsync run on a writer thread while the next batch samples (measured on an H200 at
        # 1024x1024: ~0.13 s per image when done inline). A run is marked done only once its file is on disk.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-dit-writer") as writer:
            writes: deque[tuple[Run, Future[dict[str, Any]]]] = deque()
            for chunk in batches(requests, sampling_group, self.batch_size):
                outcomes = self._timed(chunk[0]) if self.timing is not None else self._generate(chunk)
                for request, outcome in outcomes:
                    run: Run = request.tag
                    if isinstance(outcome, GenerationResult):
                        writes.append((run, writer.submit(self._write_image, name, run, outcome)))
                    else:
                        self._failed(name, run, outcome, summary)
                # Finish what is written; bound the queue so images never pile up in memory.
                while writes and (writes[0][1].done() or len(writes) > 2 * self.batch_size):
                    self._finish_write(name, *writes.popleft(), summary, len(todo))
                self._report(len(todo), summary)
            while writes:
                self._finish_write(name, *writes.popleft(), summary, len(todo))

    def _generate(self, chunk: list[GenerationRequest]) -> list[tuple[GenerationRequest, GenerationResult | str]]:
        """One batched call; if it fails, each run alone, so one bad run cannot sink its batch-mates."""
        try:
            return list(zip(chunk, self.pipeline.generate_batch(chunk), strict=True))
        except Exception as exc:  # a failing run is recorded with its error; the sweep goes on
            if len(chunk) == 1:
                return [(chunk[0], _error_text(exc))]
        return [outcome for request in chunk for outcome in self._generate([request])]

    def _timed(self, request: GenerationRequest) -> list[tuple[GenerationRequest, GenerationResult | str]]:
        """One run at batch 1: warm-ups (first of its sampling shape only), then ``repeats`` generations, each
        between device synchronisations; the last one's image is kept, with the times' median and spread."""
        assert self.timing is not None
        shape = sampling_group(request)
        if shape not in self._warm:
            for _ in range(self.timing.warmup):
                self._generate([request])  # untimed; a failure shows again in the timed calls
            self._warm.add(shape)
        seconds: list[float] = []
        outcome: GenerationResult | str = ""
        for _ in range(self.timing.repeats):
            _synchronize()
            start = self.clock()
            [(_, outcome)] = self._generate([request])
            _synchronize()
            seconds.append(self.clock() - start)
            if not isinstance(outcome, GenerationResult):
                break
        if isinstance(outcome, GenerationResult):
            stats = TimedStats.from_samples(seconds)
            outcome.record["timed"] = {**asdict(stats), "warmup": self.timing.warmup, "spread": "min-max"}
        return [(request, outcome)]

    def _write_image(self, name: str, run: Run, result: GenerationResult) -> tuple[dict[str, Any], str]:
        """Write the PNG with its record (atomic: temp file, fsync, rename); returns the record and the sha256 of
        the bytes written."""
        record = dict(result.record)
        record.update(experiment=name, run_id=run.run_id, prompt_id=run.prompt.id, variables=dict(run.variables))
        record["execution"] = dict(self._facts)
        if run.prompt_text != run.prompt.text:
            record["original_prompt"] = run.prompt.text
        path = self.store.experiment_dir(name) / run.image_name
        digest = write_png(result.pil(), path, record, parameters_line(record))
        return record, digest

    def _finish_write(
        self, name: str, run: Run, write: Future[tuple[dict[str, Any], str]], summary: RunSummary, total: int
    ) -> None:
        try:
            record, digest = write.result()
        except Exception as exc:  # e.g. a full disk: the run failed, the sweep goes on
            self._failed(name, run, _error_text(exc), summary)
        else:
            self.store.mark_done(
                name,
                run.run_id,
                image_path=run.image_name,
                image_sha256=digest,
                timing=_run_timing(record),
                execution=self._facts,
                token_count=record.get("token_count"),
                record=record,
            )
            summary.done += 1
        self._report(total, summary)

    def _failed(self, name: str, run: Run, error: str, summary: RunSummary) -> None:
        self.store.mark_failed(name, run.run_id, error)
        summary.failed += 1
        summary.failures.append((run.run_id, error))

    def _metadata(self, settings: Settings, code: CodeFacts) -> dict[str, Any]:
        return {
            "base_settings": settings.model_dump(mode="json"),
            "model_path": self.pipeline.model_path,
            "model_fingerprint": self.pipeline.fingerprint,
            "versions": code.versions,
            "llm_dit_version": __version__,
            "git_commit": code.commit,
            "host": platform.node(),
            "started": utc_now(),
            "batch_size": self.batch_size,
            "offload_encoder": self.offload_encoder,
        }

    def _report(self, total: int, summary: RunSummary) -> None:
        if self.progress is not None:
            self.progress(summary.done + summary.failed, total, summary.failed)


def _run_timing(record: dict[str, Any]) -> RunTiming | None:
    """The batch timing a pipeline's record carries (None from a pipeline that records none)."""
    if record.get("batch_seconds") is None or not record.get("batch_size"):
        return None
    timed = record.get("timed")
    stats = None if timed is None else TimedStats(timed["median_s"], timed["min_s"], timed["max_s"], timed["repeats"])
    return RunTiming(
        batch_seconds=float(record["batch_seconds"]),
        batch_size=int(record["batch_size"]),
        batch_position=record.get("batch_position"),
        peak_memory_bytes=record.get("peak_memory_bytes"),
        timed=stats,
    )


def _synchronize() -> None:
    """Wait for every CUDA device's queued work, so a clock read after it has seen the work done."""
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def _error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"
