"""An experiment's conditions as ``embed-stats`` conditions: the caption features each of its combinations makes.

A study then reports both what its features look like (``embed-stats --experiment NAME``) and what its images do
(``metrics``), on the very same settings. Plain data over planned runs: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llm_dit.conditioning.conditions import Condition
from llm_dit.errors import LlmDitError
from llm_dit.experiments.model import TOKEN_MANIPULATION, PlannedRun
from llm_dit.experiments.planner import DEFAULT_CONDITIONING


def experiment_conditions(runs: Sequence[PlannedRun]) -> list[Condition]:
    """One condition per combination of the plan's axes, in plan order (a baseline first: the reference), from the
    runs of its first prompt and seed: the encoder settings and conditioning parameters the run resolved to.

    Combinations that make the same caption features (they differ only in sampling: steps, shift, strength, an init
    image) are one condition, labelled by all of them (``a | b``). Per-step conditioning gives its first step's
    features (what :meth:`LlmDitPipeline.caption_features` returns). A token manipulation changes the prompt text
    itself, which embed-stats holds fixed across conditions: refused.
    """
    if not runs:
        raise LlmDitError("the experiment plans no runs")
    if any(run.params.get(TOKEN_MANIPULATION) is not None for run in runs):
        raise LlmDitError(
            "embed-stats compares one prompt text under each condition; this experiment's token_manipulation changes "
            "the text: give conditions with -c instead"
        )
    first = runs[0]
    labels: dict[str, list[str]] = {}
    made: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for run in runs:
        if run.prompt.id != first.prompt.id or run.seed != first.seed:
            continue
        encoder = run.encoder_params()
        conditioning = {k: v for k, v in run.conditioning_params().items() if v != DEFAULT_CONDITIONING.get(k)}
        key = json.dumps([encoder, conditioning], sort_keys=True, default=str)
        label = ",".join(f"{axis}={value}" for axis, value in run.variables.items()) or "default"
        labels.setdefault(key, []).append(label)
        made.setdefault(key, (encoder, conditioning))
    return [Condition(" | ".join(labels[key]), *made[key]) for key in made]
