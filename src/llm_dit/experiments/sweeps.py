"""The seeds' priority sweeps, as presets over built-in experiments or caption studies, and named groups of them
(``sweep vl``, ``sweep caption``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llm_dit.errors import LlmDitError
from llm_dit.experiments.caption_study import CAPTION_PRESETS

EXPERIMENT, CAPTION_STUDY = "experiment", "caption_study"


@dataclass(frozen=True)
class SweepPreset:
    """``experiment``: the built-in experiment it runs, or (``kind`` caption_study) the caption preset's name
    (``llm_dit.experiments.caption_study.CAPTION_PRESETS``)."""

    name: str
    experiment: str
    question: str
    kind: Literal["experiment", "caption_study"] = EXPERIMENT
    needs_vl: bool = False  # regenerates through Qwen3-VL: `sweep caption --skip-vl` leaves it out


# Priority order, as in the seeds' sweep scripts (sweep_*.sh): run first what is cheap and most informative. These
# are what `sweep --all` runs: text-encoder studies, which need only the Z-Image checkpoint.
SWEEPS: tuple[SweepPreset, ...] = (
    SweepPreset("hidden_layer", "hidden_layer", "Which text-encoder layer conditions best?"),
    SweepPreset("shift_steps", "shift_steps_grid", "Which shift / step count gives the best quality per second?"),
    SweepPreset("think_block", "think_block", "Does a think block change the image?"),
    SweepPreset("long_prompt", "long_prompt_mode", "How should prompts past the token cap be compressed?"),
    SweepPreset("hidden_layer_blend", "hidden_layer_blend", "Do blends of layers beat a single layer?"),
)
# Named groups, each run in its own order. vl: seed 004's P0 set ("run now"), in its priority order; it needs a
# Qwen3-VL checkpoint ([default.vl] model_path) and reference images (the built-ins' own, or --image), so --all
# leaves it out.
GROUPS: dict[str, tuple[SweepPreset, ...]] = {
    "vl": (
        SweepPreset(
            "vl_outlier_masking", "vl_outlier_masking", "Is the 617x outlier dimension the cause of image artifacts?"
        ),
        SweepPreset("vl_only_vs_qwen3", "vl_only_vs_qwen3", "Can Qwen3-VL alone replace Qwen3-4B?"),
        SweepPreset("vl_layer_by_token", "vl_layer_by_token", "Do image and text tokens want different layers?"),
    ),
    # Seed 000's Qwen3-Embedding-4B comparison sweeps (sweep_embedding_*.sh), in run_all_embedding_sweeps.sh's order;
    # they need a Qwen3-Embedding checkpoint ([default.embedding] model_path), so --all leaves them out.
    "embedding": (
        SweepPreset("embedding_layers", "embedding_layers", "Which Qwen3-Embedding-4B layer conditions Z-Image best?"),
        SweepPreset(
            "embedding_instructions",
            "embedding_instructions",
            "Does an instruction prefix make Qwen3-Embedding-4B a better conditioner?",
        ),
        SweepPreset(
            "embedding_generation",
            "embedding_generation",
            "Do Qwen3-Embedding-4B's hidden states make better images than Qwen3-4B's?",
        ),
    ),
    # Seed 002's caption-length study sweeps, in run_all_caption_sweeps.sh's order; caption_vl needs Qwen3-VL for
    # the regenerations too (the others only to caption), so --skip-vl leaves it out.
    "caption": tuple(
        SweepPreset(p.name, p.name, p.question, CAPTION_STUDY, p.needs_vl_source) for p in CAPTION_PRESETS.values()
    ),
}
QUICK_MAX_PROMPTS = 2
QUICK_SEEDS = (42,)


# Presets that run only by name or in their group (not in --all).
_GROUP_ONLY: tuple[SweepPreset, ...] = (*GROUPS["embedding"], *GROUPS["caption"])


def sweep_names() -> list[str]:
    """Every name `sweep` takes: the presets, then the groups."""
    return [p.name for p in (*SWEEPS, *_GROUP_ONLY)] + list(GROUPS)


def get_sweep(name: str) -> tuple[SweepPreset, ...]:
    """The presets a sweep name runs, in order: one preset, or a group's."""
    if name in GROUPS:
        return GROUPS[name]
    for preset in (*SWEEPS, *_GROUP_ONLY):
        if preset.name == name:
            return (preset,)
    raise LlmDitError(f"unknown sweep {name!r}; valid: {', '.join(sweep_names())} (or --all)")
