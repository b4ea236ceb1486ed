"""Helpers shared by the metrics tests: experiment axes and a results store populated by hand, as the runner stores
an experiment (test_metrics_pass.py, test_metrics_stored_defaults.py), and a photo-like test image (test_lpips.py,
test_inception.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from llm_dit.experiments.store import PlanDefaults, PlannedRun, ResultsStore, RunTiming


def axis(name: str, values: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One axis of ``Experiment.to_dict()``: (label, params) per value."""
    return {"name": name, "zip": None, "values": [{"label": label, "params": p} for label, p in values]}


@dataclass
class Run:
    prompt_id: str
    seed: int
    variables: dict[str, str]
    params: dict[str, Any]
    image: np.ndarray | None = None  # required of a done run by populate (a caller may fill in a default)
    status: str = "done"
    seconds: float = 1.0

    @property
    def run_id(self) -> str:
        return "_".join([self.prompt_id, *(f"{k}{v}" for k, v in self.variables.items()), f"s{self.seed}"])


def populate(
    store: ResultsStore,
    exp: str,
    runs: Sequence[Run],
    *,
    definition: dict[str, Any] | None = None,
    defaults: PlanDefaults | None = None,
) -> None:
    """Plan ``runs`` of ``exp``, write the images of done runs and mark them done or failed. With
    ``definition``, start the experiment first, with ``defaults`` stored as its plan's (None: as before plans
    stored them)."""
    if definition is not None:
        store.start_experiment(exp, "test", definition, {}, plan_defaults=defaults)
    store.plan_runs(
        exp,
        [PlannedRun(r.run_id, r.prompt_id, f"prompt {r.prompt_id}", r.seed, r.variables, r.params) for r in runs],
    )
    directory = store.experiment_dir(exp)
    for r in runs:
        if r.status == "done":
            assert r.image is not None, f"done run {r.run_id} has no image"
            Image.fromarray(r.image).save(directory / f"{r.run_id}.png")
            store.mark_done(
                exp, r.run_id, image_path=f"{r.run_id}.png", timing=RunTiming(r.seconds, 1), token_count=5, record={}
            )
        elif r.status == "failed":
            store.mark_failed(exp, r.run_id, "boom")


def textured_image(seed: int, width: int = 80, height: int = 64) -> Image.Image:
    """Smooth colour gradients plus texture: closer to a photo than pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 100 * np.sin(xx / rng.uniform(4, 12) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(4, 12))
        for _ in range(3)
    ]
    array = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
