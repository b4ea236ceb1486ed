"""Running a planned experiment: resumable, batched, crash-safe, with a results store behind it.

The plan (``experiments.plan``) fixes every run and its id before anything loads. The runner then
1. takes the experiment's lock (a second runner gets a clear error, never a corrupted store),
2. records the plan and skips runs already done (resume is the default; ``force`` regenerates),
3. encodes every distinct prompt once for the whole experiment (all layers from one forward),
   optionally frees the encoder before sampling,
4. samples runs that share size, step count and refiner mode through one batched DiT forward,
5. writes each image atomically (temp file + rename) and only then marks the run done, in one
   transaction: killed at any moment, a re-run produces exactly the planned set, none duplicated or
   truncated,
6. records a failing run with its error and goes on (a failed batch is retried one run at a time).
"""

from __future__ import annotations

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
from llm_dit.experiments.preparation import request_for
from llm_dit.experiments.store import PlanDefaults, ResultsStore
from llm_dit.experiments.store import PlannedRun as StoreRow
from llm_dit.generation.batching import batches
from llm_dit.generation.image import save_png
from llm_dit.generation.pipeline import (
    GenerationRequest,
    GenerationResult,
    LlmDitPipeline,
    sampling_group,
)
from llm_dit.generation.record import package_versions, parameters_line, utc_now

ProgressCallback = Callable[[int, int, int], None]  # (images finished, images to make, failed so far)


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


def git_commit() -> str | None:
    """The working tree's commit, if llm-dit runs from a git checkout (recorded with results)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.batch_size = max(1, batch_size)
        self.offload_encoder = offload_encoder
        self.progress = progress

    def pending(self, experiment: Experiment, runs: Sequence[Run], force: bool = False) -> list[Run]:
        """Runs still to make: all with ``force``, else those not done (a done run whose image vanished counts)."""
        if force:
            return list(runs)
        done = self.store.done_run_ids(experiment.name)  # empty for an experiment the store has not seen
        return [r for r in runs if r.run_id not in done]

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
            metadata = {**self._metadata(settings), **(extra_metadata or {})}
            # The defaults go with the plan: a later metrics pass finds its default reference by them, whatever
            # the code's defaults are by then.
            defaults = PlanDefaults(default_params(), dict(REPLACES))
            self.store.start_experiment(
                name, experiment.description, experiment.to_dict(), metadata, plan_defaults=defaults
            )
            self.store.plan_runs(name, store_rows(runs))
            todo = self.pending(experiment, runs, force)
            summary.skipped = len(runs) - len(todo)
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
        self.pipeline.precompute_encodings(requests)
        if self.offload_encoder:
            self.pipeline.offload_encoder()
        self._report(len(todo), summary)
        # PNG encoding and fsync run on a writer thread while the next batch samples (measured on an H200 at
        # 1024x1024: ~0.13 s per image when done inline). A run is marked done only once its file is on disk.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-dit-writer") as writer:
            writes: deque[tuple[Run, Future[dict[str, Any]]]] = deque()
            for chunk in batches(requests, sampling_group, self.batch_size):
                for request, outcome in self._generate(chunk):
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

    def _write_image(self, name: str, run: Run, result: GenerationResult) -> dict[str, Any]:
        """Write the PNG with its record (atomic: temp file, fsync, rename); returns the record."""
        record = dict(result.record)
        record.update(experiment=name, run_id=run.run_id, prompt_id=run.prompt.id, variables=dict(run.variables))
        if run.prompt_text != run.prompt.text:
            record["original_prompt"] = run.prompt.text
        save_png(result.pil(), self.store.experiment_dir(name) / run.image_name, record, parameters_line(record))
        return record

    def _finish_write(
        self, name: str, run: Run, write: Future[dict[str, Any]], summary: RunSummary, total: int
    ) -> None:
        try:
            record = write.result()
        except Exception as exc:  # e.g. a full disk: the run failed, the sweep goes on
            self._failed(name, run, _error_text(exc), summary)
        else:
            self.store.mark_done(
                name,
                run.run_id,
                image_path=run.image_name,
                generation_time_s=float(record.get("seconds_per_image") or 0.0),
                token_count=record.get("token_count"),
                record=record,
            )
            summary.done += 1
        self._report(total, summary)

    def _failed(self, name: str, run: Run, error: str, summary: RunSummary) -> None:
        self.store.mark_failed(name, run.run_id, error)
        summary.failed += 1
        summary.failures.append((run.run_id, error))

    def _metadata(self, settings: Settings) -> dict[str, Any]:
        return {
            "base_settings": settings.model_dump(mode="json"),
            "model_path": self.pipeline.model_path,
            "model_fingerprint": self.pipeline.fingerprint,
            "versions": package_versions(),
            "llm_dit_version": __version__,
            "git_commit": git_commit(),
            "host": platform.node(),
            "started": utc_now(),
            "batch_size": self.batch_size,
            "offload_encoder": self.offload_encoder,
        }

    def _report(self, total: int, summary: RunSummary) -> None:
        if self.progress is not None:
            self.progress(summary.done + summary.failed, total, summary.failed)


def _error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"
