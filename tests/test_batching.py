"""``generation.batching.batches``: the one grouping-and-chunking rule of the pipeline, the runner and plan_cost.

Expectations are written out by hand: which items land in which batch, in which order. The runner is driven
with a stand-in pipeline that records the batches it is given (no model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_dit.config import Settings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.loader import load_experiment_file
from llm_dit.experiments.model import Experiment, PlannedRun
from llm_dit.experiments.planner import plan
from llm_dit.experiments.preparation import plan_cost
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.runner import ExperimentRunner
from llm_dit.experiments.store import ResultsStore
from llm_dit.generation.batching import batches
from llm_dit.generation.pipeline import GenerationRequest, GenerationResult


def first_letter(word: str) -> str:
    return word[0]


def test_groups_come_in_first_seen_order_and_items_keep_their_order():
    words = ["a1", "b1", "a2", "c1", "b2", "a3"]
    assert batches(words, first_letter, 8) == [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]]


def test_groups_are_cut_into_consecutive_chunks_of_at_most_max_batch_size():
    words = ["a1", "a2", "b1", "a3", "a4", "a5", "b2"]
    assert batches(words, first_letter, 2) == [["a1", "a2"], ["a3", "a4"], ["a5"], ["b1", "b2"]]
    assert batches(words, first_letter, 1) == [[w] for w in ["a1", "a2", "a3", "a4", "a5", "b1", "b2"]]


def test_distinct_keys_never_share_a_batch():
    # Keys that differ in one field only (as sampling keys differing in steps or refiner mode).
    items = [(64, 64, 8, "default"), (64, 64, 4, "default"), (64, 64, 8, "skip"), (64, 64, 8, "default")]
    out = batches(items, lambda item: item, 8)
    assert out == [[items[0], items[3]], [items[1]], [items[2]]]


def test_every_item_once_and_nothing_for_no_items():
    numbers = list(range(10))
    out = batches(numbers, lambda n: n % 3, 3)
    assert out == [[0, 3, 6], [9], [1, 4, 7], [2, 5, 8]]
    assert batches([], first_letter, 4) == []


@pytest.mark.parametrize("size", [0, -1, True, 2.0])
def test_max_batch_size_must_be_a_positive_integer(size):
    with pytest.raises(LlmDitError, match="max_batch_size must be an integer >= 1"):
        batches(["a"], first_letter, size)


# ------------------------------------------------------------------------------------------- the runner's batches


class RecordingPipeline:
    """Stands in for LlmDitPipeline: records each batch (as (steps, seed) pairs) and returns grey images."""

    model_path = "<recording>"
    fingerprint = None
    info = None  # no checkpoint: the built-in defaults

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def check(self, requests: Sequence[GenerationRequest]) -> None:
        pass

    def precompute_encodings(self, requests: Sequence[GenerationRequest], offload: bool = False) -> None:
        pass

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append([(r.generation.steps, r.generation.seed) for r in requests])
        gen = requests[0].generation
        image = torch.full((3, gen.height, gen.width), 0.5)
        return [GenerationResult(image, record_of(r, len(requests)), r.tag) for r in requests]


def record_of(request: GenerationRequest, batch_size: int) -> dict[str, Any]:
    """What the runner reads of a record (the PNG's parameters line included)."""
    gen = request.generation
    sampling = {"steps": gen.steps, "shift": gen.shift, "seed": gen.seed, "width": gen.width, "height": gen.height}
    return {**sampling, "guidance_scale": gen.guidance_scale, "seconds_per_image": 0.0, "batch_size": batch_size}


def steps_experiment(directory: Path) -> tuple[Experiment, list[PlannedRun]]:
    """Steps 1 and 2 x seeds 1, 2, 3 of one prompt at 16x16: planned as steps 1 (seeds 1-3), then steps 2."""
    path = directory / "steps.toml"
    path.write_text('name = "steps"\nseeds = [1, 2, 3]\n\n[[axes]]\nname = "steps"\nvalues = [1, 2]\n')
    experiment = load_experiment_file(path)
    prompts = [Prompt("p", "a grey square")]
    size = {"width": 16, "height": 16}
    runs = plan(experiment, prompts, [1, 2, 3], Settings(), overrides=size, model_fingerprint="test")
    return experiment, runs


def test_the_runner_batches_by_sampling_key_in_plan_order(tmp_path: Path):
    experiment, runs = steps_experiment(tmp_path)
    pipeline = RecordingPipeline()
    runner = ExperimentRunner(pipeline, ResultsStore(tmp_path / "results"), batch_size=2)  # type: ignore[arg-type]
    summary = runner.run(experiment, runs, Settings())
    assert summary.done == 6
    assert pipeline.batches == [[(1, 1), (1, 2)], [(1, 3)], [(2, 1), (2, 2)], [(2, 3)]]


def test_plan_cost_counts_the_runners_batches(tmp_path: Path):
    class Encoder:
        def resolve(self, **overrides: Any) -> Any:
            return Settings().encoder

    class Checker:
        prompts = Encoder()

    _, runs = steps_experiment(tmp_path)
    cost = plan_cost(runs, 2, Checker())  # type: ignore[arg-type]
    # steps 1: batches of 2 + 1 seeds, one forward each; steps 2: the same, two forwards each.
    assert cost["dit_forwards_batched"] == 1 + 1 + 2 + 2
    assert cost["dit_forwards_unbatched"] == 3 * 1 + 3 * 2
