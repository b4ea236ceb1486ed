"""The metrics llm-dit can compute: names, versions, what each needs, and checking a request before anything loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError

# reference: the run's image against a reference image; diversity: a run against the other seeds of its condition;
# text_image: the run's image against its prompt text; image: the run's image alone; conditioning: the run's caption
# features through the experiment's own checkpoint (no image).
Kind = Literal["reference", "diversity", "text_image", "image", "conditioning"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    version: int  # bump when the computation changes: stored values of older versions then count as missing
    kind: Kind
    higher_is_better: bool
    description: str
    setting: str | None = None  # the [PROFILE.metrics] key its weights come from; None = weight-free
    # In the default set (every configured metric). A metric that loads the experiment's own checkpoint is not: it is
    # computed when named (--metric).
    default: bool = True


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("ssim", 1, "reference", True, "structural similarity to the reference image (1 = identical)"),
        MetricSpec("psnr", 1, "reference", True, "peak signal-to-noise ratio to the reference, dB (inf = identical)"),
        MetricSpec("mad", 1, "reference", False, "mean absolute pixel difference to the reference, 8-bit levels"),
        MetricSpec(
            "lpips", 1, "reference", False, "LPIPS perceptual distance to the reference (0 = identical)",
            "lpips_backbone",
        ),
        MetricSpec(
            "diversity_ssim", 1, "diversity", True, "mean 1 - SSIM to the other seeds of the same condition"
        ),
        MetricSpec(
            "diversity_mad", 1, "diversity", True, "mean absolute pixel difference to the other seeds of the condition"
        ),
        MetricSpec(
            "diversity_lpips", 1, "diversity", True, "mean LPIPS distance to the other seeds of the same condition",
            "lpips_backbone",
        ),
        MetricSpec(
            "siglip", 1, "text_image", True, "SigLIP2 image-prompt match probability (text padded to 64 tokens)",
            "siglip_path",
        ),
        MetricSpec(
            "clip_score", 1, "text_image", True, "CLIPScore: 100 x max(cosine(image, prompt), 0)", "clip_path"
        ),
        MetricSpec(
            "color_shift", 1, "reference", False,
            "earth mover's distance of the colours to the reference's, mean over CIE L, a, b (Lab units)",
        ),
        MetricSpec(
            "grid_artifact", 1, "image", False,
            "excess spectral power at the harmonics of the 16 px patch grid over neighbouring frequencies, decades",
        ),
        MetricSpec(
            "sharpness", 1, "image", True,
            "variance of the 3x3 Laplacian of the luma in [0, 1]: fine detail (noise and grids count too)",
        ),
        MetricSpec(
            "pickscore", 1, "text_image", True,
            "PickScore: exp(logit_scale) x cosine(image, prompt) of a local PickScore_v1 (CLIP-H) model",
            "pickscore_path",
        ),
        MetricSpec(
            "hpsv2", 1, "text_image", True,
            "HPSv2.1 human preference score: cosine(image, prompt) of a local HPS_v2.1 (CLIP-H) checkpoint, "
            "in a narrow band (published scores ~0.2-0.35); only differences between images of the same prompt "
            "mean something",
            "hpsv2_path",
        ),
        MetricSpec(
            "refiner_drift", 1, "conditioning", True,
            "mean cosine over caption tokens between the features entering and leaving the DiT's context refiner "
            "(1 = unchanged); loads the experiment's checkpoint, so computed only when named",
            default=False,
        ),
    )
}  # fmt: skip

# Per-run values that are means over the other seeds of a condition: summaries average them per condition first.
DIVERSITY_METRICS: frozenset[str] = frozenset(name for name, spec in METRICS.items() if spec.kind == "diversity")

# Asked for by the seeds but not runnable here; requesting them explains why instead of silently skipping.
UNAVAILABLE: dict[str, str] = {
    "image_reward": "ImageReward is not available: the image-reward package (1.5) imports BLIP code that needs "
    "transformers < 5 (apply_chunking_to_forward and friends were removed) and pulls torch/torchvision versions "
    "other than llm-dit's pins; see docs/metrics.md. Use siglip or clip_score for text-image alignment",
}

# Set-level metrics: one number per pair of image sets, not per run (llm_dit.metrics.sets), so they are computed
# with --set-metric, never with --metric; naming one with --metric says how. What each measures, for --list.
SET_METRICS: dict[str, str] = {
    "fid": "Fréchet Inception distance of a condition's images to a reference set (lower = closer); needs "
    "2049+ images per set",
    "kid": "kernel Inception distance (unbiased MMD^2, cubic kernel) of a condition's images to a reference set "
    "(lower = closer); suits small sets",
}
SET_METRIC_SETTING = "inception_weights"


def set_metric_by_name_message(name: str) -> str:
    return (
        f"{name} is a set-level metric (one number per pair of image sets, not per run): compute it with "
        f"'llm-dit metrics EXPERIMENT --set-metric {name} --against AXIS=LABEL' (or --against-folder DIR)"
    )


def configured(spec: MetricSpec, settings: MetricsSettings) -> bool:
    """Whether the metric's weights are set (weight-free metrics always are)."""
    return spec.setting is None or getattr(settings, spec.setting) is not None


def missing_setting_message(spec: MetricSpec) -> str:
    return (
        f"metric {spec.name!r} needs local weights: set {spec.setting} in [default.metrics] (or a profile's "
        f"[PROFILE.metrics]) of your config file and pass --config FILE; see docs/metrics.md"
    )


def select_metrics(names: Sequence[str] | None, settings: MetricsSettings) -> tuple[list[MetricSpec], list[str]]:
    """The metrics to compute and notes for the user.

    Explicit ``names``: each must exist and be configured, else LlmDitError (before any model loads). No names:
    every weight-free metric plus each model-based metric whose weights are set; the notes list the others and
    the setting each needs, so nothing is skipped silently.
    """
    notes: list[str] = []
    if names:
        chosen: list[MetricSpec] = []
        problems: list[str] = []
        for name in dict.fromkeys(names):
            if name in UNAVAILABLE:
                problems.append(UNAVAILABLE[name])
            elif name in SET_METRICS:
                problems.append(set_metric_by_name_message(name))
            elif name not in METRICS:
                problems.append(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
            elif not configured(METRICS[name], settings):
                problems.append(missing_setting_message(METRICS[name]))
            else:
                chosen.append(METRICS[name])
        if problems:
            raise LlmDitError("; ".join(problems))
        check_weights(chosen, settings)
        return chosen, notes
    chosen = [spec for spec in METRICS.values() if spec.default and configured(spec, settings)]
    check_weights(chosen, settings)
    missing = [f"{spec.name} ({spec.setting})" for spec in METRICS.values() if not configured(spec, settings)]
    if missing:
        notes.append(f"not computed, weights not configured (set in [default.metrics]): {', '.join(missing)}")
    named = [spec.name for spec in METRICS.values() if not spec.default]
    if named:
        notes.append(f"not in the default set (name them with --metric): {', '.join(named)}")
    return chosen, notes


def check_weights(specs: Sequence[MetricSpec], settings: MetricsSettings) -> None:
    """Cheap checks of configured weights (directory layout, model type, file present), loading nothing: a bad
    path fails here, before generation starts, not after an hour of sampling."""
    settings_used = {spec.setting for spec in specs if spec.setting}
    scorer_settings = [s for s in ("siglip_path", "clip_path", "pickscore_path", "hpsv2_path") if s in settings_used]
    if scorer_settings:
        from llm_dit.metrics.scorers import SCORERS

        for setting in scorer_settings:
            SCORERS[setting].check_directory(getattr(settings, setting) or "")
    if "lpips_backbone" in settings_used:
        from llm_dit.metrics.lpips import LpipsDistance

        LpipsDistance.check_backbone(settings.lpips_backbone or "", settings.lpips_net)
