"""The seeds' priority sweeps, as presets over built-in experiments."""

from __future__ import annotations

from dataclasses import dataclass

from llm_dit.errors import LlmDitError


@dataclass(frozen=True)
class SweepPreset:
    name: str
    experiment: str
    question: str


# Priority order, as in the seeds' sweep scripts (sweep_*.sh): run first what is cheap and most informative.
SWEEPS: tuple[SweepPreset, ...] = (
    SweepPreset("hidden_layer", "hidden_layer", "Which text-encoder layer conditions best?"),
    SweepPreset("shift_steps", "shift_steps_grid", "Which shift / step count gives the best quality per second?"),
    SweepPreset("think_block", "think_block", "Does a think block change the image?"),
    SweepPreset("long_prompt", "long_prompt_mode", "How should prompts past the token cap be compressed?"),
    SweepPreset("hidden_layer_blend", "hidden_layer_blend", "Do blends of layers beat a single layer?"),
)
QUICK_MAX_PROMPTS = 2
QUICK_SEEDS = (42,)


def get_sweep(name: str) -> SweepPreset:
    for preset in SWEEPS:
        if preset.name == name:
            return preset
    valid = ", ".join(p.name for p in SWEEPS)
    raise LlmDitError(f"unknown sweep {name!r}; valid: {valid} (or --all)")
