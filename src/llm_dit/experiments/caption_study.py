"""The caption-length study (seed 002): source images from short prompts, a Qwen3-VL caption of each, regenerations
from each caption over target lengths x fill modes x compression modes x text hidden layers (or, in VL mode, VL
hidden layers x token modes, the source image and its caption through Qwen3-VL), each compared with its own source.

One experiment of the results store holds a study. Each source is the experiment's baseline run (label ``source`` on
every axis) of its own prompt id ``<prompt>_seed<seed>``, with the short prompt as its text; the regenerations are the
grid's runs of that prompt id and seed, with the caption as their text. The stored definition names the baseline as
every run's reference, so the reference metrics compare each regeneration with its own source, and compare, the
viewer and the plots read a study like any experiment. Captions live in the store's captions table, one per source
run, with what they depend on: one whose settings changed (another VL model, instruction, token budget, source
image, or captions file) is made again, and its regenerations are new runs (the caption is their prompt).

Phases, each resumable: (1) the sources (the runner skips done runs); (2) the captions, each committed when made;
(3) the regenerations (the runner again). :func:`run_study` runs them; the metrics and the seed's export come after
(:mod:`llm_dit.analysis.caption_study`). Planning (:func:`prepare_study`) imports no model library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.config import Settings
from llm_dit.constants import (
    DEFAULT_CAPTION_PROMPT,
    FILL_MODES,
    HARD_MAX_TEXT_TOKENS,
    LONG_PROMPT_MODES,
    MAX_SEED,
    VL_TOKEN_MODES,
)
from llm_dit.errors import LlmDitError
from llm_dit.experiments.model import Axis, AxisValue, Experiment, PlannedRun, value_label

if TYPE_CHECKING:
    from llm_dit.experiments.preparation import PipelineSource
    from llm_dit.experiments.runner import RunSummary
    from llm_dit.experiments.store import ResultsStore
    from llm_dit.generation.checks import RequestChecker

__all__ = [
    "CAPTION_ORIGINS",
    "CAPTION_PRESETS",
    "DEFAULT_CAPTION_TOKENS",
    "DEFAULT_TARGET_LENGTHS",
    "SOURCE_LABEL",
    "CaptionPreset",
    "CaptionStudy",
    "PreparedStudy",
    "Source",
    "StudyProgress",
    "StudyState",
    "clean_caption",
    "pixels_sha256",
    "prepare_study",
    "read_captions_file",
    "run_study",
    "study_state",
]

DEFAULT_TARGET_LENGTHS: tuple[int, ...] = (50, 150, 300, 600, 1000, 1504)
# Seed 002 expects captions of ~500-2000 tokens: long enough that target lengths up to 1000 cut real content.
DEFAULT_CAPTION_TOKENS = 1024
SOURCE_LABEL = "source"  # the sources' label on every axis
CAPTION_ORIGINS = ("generated", "given")
MIN_LAYER, MAX_LAYER = -37, 36  # Qwen3-4B / Qwen3-VL-4B hidden states (checked again against the checkpoint)
# Axis names (results.csv columns, summaries); the seed's file-name tags in the export.
TARGET_LENGTH, FILL_MODE, COMPRESSION, HIDDEN_LAYER = "target_length", "fill_mode", "compression", "hidden_layer"
VL_LAYER, TOKEN_MODE = "vl_layer", "token_mode"
_DESCRIPTION = (
    "Caption-length study (seed 002): each source image (short prompt, seed) is captioned by Qwen3-VL and regenerated "
    "from the caption under each configuration; SSIM against its own source says which keeps the content."
)
_SLUG_RE = re.compile(r"[^a-z0-9]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass(frozen=True)
class Source:
    """One source image: a short prompt and a seed; ``id`` names it everywhere (``a_cat_seed42``)."""

    id: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class CaptionStudy:
    """What a caption study varies (the seed's six variables) and how it captions.

    Empty ``compression_modes`` / ``hidden_layers``: the profile's ``long_prompt_mode`` / ``hidden_layer``, not
    swept (a one-value axis for the hidden layer, so every image name says which layer). VL mode (``use_vl`` or
    ``vl_layers`` given) regenerates through Qwen3-VL from the source image and the caption, sweeping ``vl_layers``
    (empty: the profile's ``vl_layer``) x ``token_modes``; text mode sweeps ``hidden_layers``. ``captions``: source id
    -> caption text given instead of made (every source must have one).
    """

    name: str = "caption_study"
    prompts: tuple[str, ...] = ("a cat",)
    seeds: tuple[int, ...] = (42,)
    target_lengths: tuple[int, ...] = DEFAULT_TARGET_LENGTHS
    fill_modes: tuple[str, ...] = FILL_MODES
    compression_modes: tuple[str, ...] = ()
    hidden_layers: tuple[int, ...] = ()
    vl_layers: tuple[int, ...] = ()
    token_modes: tuple[str, ...] = ("full",)
    use_vl: bool = False
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    caption_max_tokens: int = DEFAULT_CAPTION_TOKENS
    captions: Mapping[str, str] | None = None
    captions_file: str | None = None
    description: str = ""

    @property
    def vl_mode(self) -> bool:
        return self.use_vl or bool(self.vl_layers)

    def __post_init__(self) -> None:
        _check_study(self)

    def sources(self) -> list[Source]:
        """Prompts x seeds, prompt-major (the seed's order)."""
        return [Source(source_id(p, s), p, s) for p in self.prompts for s in self.seeds]

    def variables(self) -> list[str]:
        """The axis names, in order (as :meth:`experiment` builds them)."""
        names = [TARGET_LENGTH, FILL_MODE]
        if self.compression_modes:
            names.append(COMPRESSION)
        return names + ([VL_LAYER, TOKEN_MODE] if self.vl_mode else [HIDDEN_LAYER])

    def regenerations_per_source(self) -> int:
        n = len(self.target_lengths) * len(self.fill_modes) * max(1, len(self.compression_modes))
        return n * (
            max(1, len(self.vl_layers)) * len(self.token_modes) if self.vl_mode else max(1, len(self.hidden_layers))
        )

    def images(self) -> int:
        """Every image the study makes: a source per prompt and seed, and its regenerations."""
        return len(self.sources()) * (1 + self.regenerations_per_source())

    def experiment(self, settings: Settings) -> Experiment:
        """The study as an experiment: the grid's axes (labels as the seed names values), the sources as its
        baseline and every run's reference."""

        def axis(name: str, param: str, values: Sequence[Any]) -> Axis:
            return Axis(name, tuple(AxisValue(value_label(v), {param: v}) for v in values))

        axes = [
            axis(TARGET_LENGTH, "target_length", self.target_lengths),
            axis(FILL_MODE, "fill_mode", self.fill_modes),
        ]
        if self.compression_modes:
            axes.append(axis(COMPRESSION, "long_prompt_mode", self.compression_modes))
        if self.vl_mode:
            axes.append(axis(VL_LAYER, "vl_layer", self.vl_layers or (settings.conditioning.vl_layer,)))
            axes.append(axis(TOKEN_MODE, "vl_token_mode", self.token_modes))
        else:
            axes.append(axis(HIDDEN_LAYER, "hidden_layer", self.hidden_layers or (settings.encoder.hidden_layer,)))
        description = (
            self.description or f"Does the DiT care about the embedding's length, or only its content? {_DESCRIPTION}"
        )
        return Experiment(
            name=self.name,
            description=description,
            seeds=self.seeds,
            prompt_ids=tuple(s.id for s in self.sources()),
            prompt_category=None,
            max_prompts=None,
            base={"conditioning": "vl"} if self.vl_mode else {},
            axes=tuple(axes),
            source="caption-study",
            baseline=AxisValue(SOURCE_LABEL, {}),
            baseline_is_reference=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """The study as given (stored with the experiment's metadata and in the export's results.json)."""
        out = dataclasses.asdict(self)
        out["captions"] = None if self.captions is None else dict(self.captions)
        out["vl_mode"] = self.vl_mode
        out["sources"] = [dataclasses.asdict(s) for s in self.sources()]
        return out


def source_id(prompt: str, seed: int) -> str:
    """``a_cat_seed42``: the prompt in lower case, runs of other characters as ``_``, at most 40 characters (a longer
    one cut and given 6 hex of its sha256, so two long prompts sharing a start still differ)."""
    slug = _SLUG_RE.sub("_", prompt.lower()).strip("_") or "prompt"
    if len(slug) > 40:
        slug = slug[:33].rstrip("_") + "_" + hashlib.sha256(prompt.encode()).hexdigest()[:6]
    return f"{slug}_seed{seed}"


def _unique(values: Sequence[Any], flag: str) -> None:
    twice = sorted({str(v) for v in values if list(values).count(v) > 1})
    if twice:
        raise LlmDitError(f"{flag} lists {', '.join(twice)} more than once; give each value once")


def _check_choices(values: Sequence[str], valid: Sequence[str], flag: str) -> None:
    for value in values:
        if value not in valid:
            raise LlmDitError(f"{flag}: unknown value {value!r}; valid: {', '.join(valid)}")


def _check_study(study: CaptionStudy) -> None:
    """Every value checked, one line naming the flag and the fix, before anything is planned or loaded."""
    from llm_dit.experiments.prompts import check_prompt_text
    from llm_dit.experiments.store import _validate_name

    _validate_name(study.name)
    if not study.prompts:
        raise LlmDitError(
            '--prompts is empty; give the short source prompts, e.g. --prompts "a cat,a mountain landscape"'
        )
    for prompt in study.prompts:
        check_prompt_text(prompt, f"source prompt {prompt!r}")
    if not study.seeds:
        raise LlmDitError("--seeds is empty; give at least one seed, e.g. --seeds 42")
    for seed in study.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise LlmDitError(f"--seeds: {seed!r} must be an integer in 0..{MAX_SEED}")
    for flag, values in (
        ("--prompts", study.prompts),
        ("--seeds", study.seeds),
        ("--target-lengths", study.target_lengths),
        ("--fill-modes", study.fill_modes),
        ("--compression-modes", study.compression_modes),
        ("--hidden-layers", study.hidden_layers),
        ("--vl-hidden-layers", study.vl_layers),
        ("--token-modes", study.token_modes),
    ):
        _unique(list(values), flag)
    if not study.target_lengths:
        raise LlmDitError("--target-lengths is empty; give at least one, e.g. --target-lengths 300,600")
    for length in study.target_lengths:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= HARD_MAX_TEXT_TOKENS:
            raise LlmDitError(
                f"--target-lengths: {length!r} must be an integer in 1..{HARD_MAX_TEXT_TOKENS} (the DiT reads at most "
                f"{HARD_MAX_TEXT_TOKENS} caption rows)"
            )
    if not study.fill_modes:
        raise LlmDitError(f"--fill-modes is empty; give at least one of {', '.join(FILL_MODES)}")
    _check_choices(study.fill_modes, FILL_MODES, "--fill-modes")
    _check_choices(study.compression_modes, [m for m in LONG_PROMPT_MODES if m != "none"], "--compression-modes")
    for flag, layers in (("--hidden-layers", study.hidden_layers), ("--vl-hidden-layers", study.vl_layers)):
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not MIN_LAYER <= layer <= MAX_LAYER:
                raise LlmDitError(f"{flag}: {layer!r} is out of range {MIN_LAYER}..{MAX_LAYER}")
    if not study.token_modes:
        raise LlmDitError(f"--token-modes is empty; give at least one of {', '.join(VL_TOKEN_MODES)}")
    _check_choices(study.token_modes, VL_TOKEN_MODES, "--token-modes")
    if study.vl_mode and study.hidden_layers:
        raise LlmDitError(
            "--hidden-layers sweeps Qwen3-4B's layers (text mode); VL mode sweeps --vl-hidden-layers: drop one"
        )
    if not study.vl_mode and tuple(study.token_modes) != ("full",):
        raise LlmDitError("--token-modes applies to VL mode; add --use-vl-embeddings or --vl-hidden-layers")
    if not study.caption_prompt.strip():
        raise LlmDitError('--caption-prompt is empty; give the instruction, e.g. "Describe this image in detail."')
    if isinstance(study.caption_max_tokens, bool) or not 1 <= study.caption_max_tokens <= 8192:
        raise LlmDitError(f"--caption-max-tokens must be in 1..8192, got {study.caption_max_tokens}")
    ids = [source_id(p, s) for p in study.prompts for s in study.seeds]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise LlmDitError(
            f"source prompts {', '.join(repr(p) for p in study.prompts if source_id(p, study.seeds[0]) in clashes)} "
            f"give the same source name ({clashes[0]}); make them differ in letters or digits"
        )
    if study.captions is not None:
        missing = [i for i in ids if i not in study.captions]
        if missing:
            raise LlmDitError(
                f"the captions file has no caption for {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; add them (keys are source names) or leave out --captions"
            )
        for sid in ids:
            check_prompt_text(study.captions[sid], f"caption of {sid}")


def clean_caption(text: str) -> str:
    """A sampled caption made usable as a prompt: control characters and chat-template markers (which a prompt may
    not hold, and random tiny weights do sample) become spaces, runs of whitespace one space."""
    text = _SPECIAL_TOKEN_RE.sub(" ", _CONTROL_RE.sub(" ", text))
    return re.sub(r"\s+", " ", text).strip()


def read_captions_file(path: str | Path) -> dict[str, str]:
    """Captions given instead of made: a ``.json`` object (source name -> caption text) or a folder of
    ``<source name>.txt`` files (e.g. an earlier study's ``export/source/``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        out = {}
        for file in sorted(path.glob("*.txt")):
            if file.stem.endswith("_tokens"):
                continue  # the export's token-count files
            out[file.stem] = file.read_text(encoding="utf-8").strip()
        if not out:
            raise LlmDitError(f"--captions {path}: the folder has no <source name>.txt files")
        return out
    if not path.is_file():
        raise LlmDitError(f"--captions {path}: no such file or folder")
    if path.suffix != ".json":
        raise LlmDitError(f"--captions {path}: give a .json object (source name -> caption) or a folder of .txt files")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlmDitError(f"--captions {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise LlmDitError(f"--captions {path}: expected a JSON object of source name -> caption text")
    return {k: v.strip() for k, v in data.items()}


# --------------------------------------------------------------------------------------------------
# Planning


@dataclass
class PreparedStudy:
    """A study checked and its sources planned, before any model loads."""

    study: CaptionStudy
    experiment: Experiment
    settings: Settings
    overrides: dict[str, Any]
    source_runs: dict[str, PlannedRun]  # source id -> its run
    checker: RequestChecker
    pipeline_source: PipelineSource
    model_fingerprint: str
    numerics: dict[str, str]
    shift_default: Callable[[], Any]
    notes: list[str] = field(default_factory=list)

    def _plan(self, source: Source, text: str, vl_image: str | None) -> list[PlannedRun]:
        """The study's combinations for one source, with ``text`` as the prompt (its short prompt: the source, the
        baseline combination, first; its caption: the regenerations) and, in VL mode, ``vl_image``."""
        from llm_dit.experiments.planner import plan
        from llm_dit.experiments.prompts import Prompt

        experiment = self.experiment
        if self.study.vl_mode:
            experiment = dataclasses.replace(experiment, base={**experiment.base, "vl_image": vl_image})
        return plan(
            experiment,
            [Prompt(source.id, text)],
            [source.seed],
            self.settings,
            overrides=self.overrides,
            model_fingerprint=self.model_fingerprint,
            numerics=self.numerics,
            shift_default=self.shift_default,
        )

    def _check(self, run: PlannedRun, what: str) -> PlannedRun:
        """``run`` checked against the checkpoint (the light checks), an error naming ``what``."""
        from llm_dit.experiments.preparation import request_for

        try:
            self.checker.check([request_for(run)])
        except LlmDitError as exc:
            raise LlmDitError(f"{self.study.name} {what}: {exc}") from None
        return run

    def regeneration_runs(self, captions: Mapping[str, str], source_images: Mapping[str, str]) -> list[PlannedRun]:
        """The regenerations of the sources with a caption (``captions``: source id -> text), checked; VL mode needs
        each source's image (``source_images``: source id -> path)."""
        out: list[PlannedRun] = []
        for source in self.study.sources():
            if source.id not in captions:
                continue
            runs = self._plan(source, captions[source.id], source_images.get(source.id))
            for run in runs[1:]:  # the first is the baseline combination: the sources are planned from their prompt
                variables = " ".join(f"{k}={v}" for k, v in run.variables.items())
                out.append(self._check(run, f"regeneration of {source.id} {variables}"))
        return out


def prepare_study(
    study: CaptionStudy,
    *,
    settings: Settings,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    pipeline: Any = None,
) -> PreparedStudy:
    """Plan and check the sources (and everything checkable before captions exist: the grid's values on a stand-in
    caption), without loading a model. ``pipeline``: a built pipeline or the PipelineSource of a sweep."""
    from llm_dit.experiments.preparation import PipelineSource
    from llm_dit.generation.checks import resolved_numerics
    from llm_dit.models import checkpoint

    path = checkpoint.resolve_model_path(settings.model_path)
    info = checkpoint.validate_checkpoint(path)
    if study.vl_mode or study.captions is None:  # captioning or VL regeneration: the VL checkpoint must be there
        from llm_dit.models.sources import source_path

        source_path("vl", settings.vl.model_path, settings.model_path)
    experiment = study.experiment(settings)
    source = pipeline if isinstance(pipeline, PipelineSource) else PipelineSource(settings, batch_size, pipeline)
    prepared = PreparedStudy(
        study=study,
        experiment=experiment,
        settings=settings,
        overrides=dict(overrides or {}),
        source_runs={},
        checker=source.checker(info),
        pipeline_source=source,
        model_fingerprint=checkpoint.fingerprint(path),
        numerics=resolved_numerics(settings),
        shift_default=lambda: checkpoint.default_shift(info),
    )
    # plan() checks every combination of the grid: a VL grid needs an image there, any (the sources are the baseline,
    # whose conditioning is the default: it does not depend on it).
    for item in study.sources():
        source_run = prepared._plan(item, item.prompt, _stand_in_image())[0]  # the baseline combination: the source
        prepared.source_runs[item.id] = prepared._check(source_run, f"source {item.id}")
    # The grid checked now on a stand-in caption (the source's prompt, and the source itself as the VL image), so
    # a bad value fails before hours of sources and captions, not after.
    stand_in = {s.id: s.prompt for s in study.sources()[:1]}
    images = {sid: _stand_in_image() for sid in stand_in} if study.vl_mode else {}
    prepared.regeneration_runs(stand_in, images)
    if study.compression_modes:
        prepared.notes.append(
            "compression modes change only captions over the caption cap; shorter captions give the same image "
            "under each (the export's token counts say which captions are over)"
        )
    return prepared


def _stand_in_image() -> str:
    """A packaged input image: the check of a VL grid needs a real image file before any source exists."""
    from importlib.resources import files

    return str(files("llm_dit") / "data" / "inputs" / "test_scene.png")


# --------------------------------------------------------------------------------------------------
# Running


@dataclass
class StudyProgress:
    """What a study run did, phase by phase (the CLI prints it; tests check it)."""

    sources: RunSummary | None = None
    captions_made: int = 0  # made (or taken from the file, or from another study) in this run
    captions_kept: int = 0  # already stored for this study
    captions_reused: int = 0  # of those made: another study's caption of the same image and settings
    captions_failed: list[tuple[str, str]] = field(default_factory=list)
    regenerations: RunSummary | None = None


Captioner = Callable[[str, Source], str]  # (source image path, source) -> raw caption text
# (experiment, runs, metadata) -> summary: runs planned runs into the store with the metadata the study stores
RunExperiment = Callable[[Experiment, list[PlannedRun], dict[str, Any]], "RunSummary"]


def pixels_sha256(path: str | Path) -> str:
    """sha256 of an image's decoded RGB pixels and size: what a caption describes. The file's own hash would change
    with its embedded record (times, execution facts) when the same pixels are made again (``--force``, or another
    study's run of the same source)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


def caption_params(prepared: PreparedStudy, source: Source, image_sha256: str) -> dict[str, Any]:
    """What a source's caption depends on: a stored caption with other params is made (or taken) again. A given
    caption: its text's hash (a changed captions file replaces it); a made one: the VL model, its device and dtype,
    the instruction, the token budget and the source image's pixels (``image_sha256``: :func:`pixels_sha256`; the
    sampling seed is the source's, in its id)."""
    study = prepared.study
    if study.captions is not None:
        digest = hashlib.sha256(study.captions[source.id].encode("utf-8")).hexdigest()
        return {"origin": "given", "file": study.captions_file, "caption_sha256": digest}
    from llm_dit.models.devices import numerics_label
    from llm_dit.models.sources import source_fingerprint

    vl = prepared.settings.vl
    return {
        "origin": "generated",
        "vl_model": source_fingerprint("vl", vl.model_path, prepared.settings.model_path),
        "vl_numerics": numerics_label(vl.device, vl.torch_dtype, "vl.device"),
        "prompt": study.caption_prompt,
        "max_new_tokens": study.caption_max_tokens,
        "image_sha256": image_sha256,
    }


@dataclass
class StudyState:
    """Where a study stands in the store: the captions that hold (source id -> text: made for the source image as
    it is, with the current caption settings), each done source's image, and the done sources still to caption."""

    captions: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    to_caption: list[Source] = field(default_factory=list)
    sources_done: int = 0


def study_state(prepared: PreparedStudy, store: ResultsStore) -> StudyState:
    """The study's state in ``store`` (read-only is enough: a dry run reads it too)."""
    name = prepared.experiment.name
    state = StudyState()
    if name not in store.experiments():
        return state
    done = {run["run_id"]: run for run in store.runs(name) if run["status"] == "done" and run["image_path"]}
    stored = store.captions(name)
    directory = store.experiment_dir(name)
    for source in prepared.study.sources():
        run = done.get(prepared.source_runs[source.id].run_id)
        if run is None or not (directory / run["image_path"]).is_file():
            continue
        state.sources_done += 1
        state.images[source.id] = str(directory / run["image_path"])
        state.params[source.id] = caption_params(prepared, source, pixels_sha256(state.images[source.id]))
        kept = stored.get(run["run_id"])
        if kept is not None and kept["params"] == state.params[source.id]:
            state.captions[source.id] = kept["caption"]
        else:
            state.to_caption.append(source)
    return state


def run_study(
    prepared: PreparedStudy,
    store: ResultsStore,
    *,
    run_experiment: RunExperiment,
    captioner: Captioner | None = None,
    on_caption: Callable[[int, int], None] | None = None,
) -> StudyProgress:
    """Phases 1-3: the sources, their captions, the regenerations; each resumable (a killed study re-run redoes
    nothing finished). ``run_experiment(experiment, runs, metadata)`` runs planned runs into ``store`` (an
    ExperimentRunner's ``run`` with the study's settings, ``metadata`` as its ``extra_metadata``: the study, which
    the export reads); ``captioner(image, source)`` makes a raw caption (default: the pipeline's Qwen3-VL,
    seeded with the source's seed). A caption that cannot be made or used is recorded in the progress, and its
    source's regenerations are left out (the rest goes on)."""
    study, experiment = prepared.study, prepared.experiment
    progress = StudyProgress()
    sources = study.sources()
    source_runs = [prepared.source_runs[s.id] for s in sources]
    metadata = {"caption_study": study.to_dict(), "overrides": prepared.overrides, "numerics": prepared.numerics}
    progress.sources = run_experiment(experiment, source_runs, metadata)

    # Phase 2: a caption per done source, each committed when made.
    state = study_state(prepared, store)
    progress.captions_kept = len(state.captions)
    tokenizer = prepared.checker.prompts
    if captioner is None and study.captions is None and state.to_caption:
        captioner = _pipeline_captioner(prepared)
    for i, source in enumerate(state.to_caption):
        image, run_id = state.images[source.id], prepared.source_runs[source.id].run_id
        params = state.params[source.id]
        # Another study's caption of the same source, pixels and settings (sweep caption --all: one per source).
        reused = next((c for c in store.captions_of_run(run_id) if c["params"] == params), None)
        try:
            if reused is not None:
                text = reused["caption"]
                progress.captions_reused += 1
            elif study.captions is not None:
                text = study.captions[source.id]
            else:
                assert captioner is not None
                text = clean_caption(captioner(image, source))
                if not text:
                    raise LlmDitError("Qwen3-VL returned an empty caption; raise --caption-max-tokens or try a seed")
        except LlmDitError as exc:
            progress.captions_failed.append((source.id, str(exc)))
            continue
        count = len(tokenizer.encode(text)[0])
        origin = "given" if study.captions is not None else "generated"
        store.put_caption(experiment.name, run_id, text, origin=origin, params=params, token_count=count)
        state.captions[source.id] = text
        progress.captions_made += 1
        if on_caption is not None:
            on_caption(i + 1, len(state.to_caption))
    captions, images = state.captions, state.images

    # Phase 3: the whole plan (sources first, done), so the store's latest plan is the study.
    regenerations = prepared.regeneration_runs(captions, images)
    progress.regenerations = run_experiment(experiment, source_runs + regenerations, metadata)
    return progress


def _pipeline_captioner(prepared: PreparedStudy) -> Captioner:
    """Captions from the pipeline's own Qwen3-VL (the model VL regenerations use, loaded once), seeded per source."""
    study = prepared.study
    vl = prepared.pipeline_source.get().sources.encoder("vl")

    def caption(image: str, source: Source) -> str:
        return vl.caption(image, prompt=study.caption_prompt, seed=source.seed, max_new_tokens=study.caption_max_tokens)

    return caption


# --------------------------------------------------------------------------------------------------
# The seed's sweep presets (sweep_caption_*.sh), with its matrices


SEED_PROMPTS = ("a cat", "a mountain landscape", "a woman portrait")


@dataclass(frozen=True)
class CaptionPreset:
    """A sweep of the seed's: its question and its full and ``--quick`` studies (the seed's exact image counts)."""

    name: str
    question: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]

    @property
    def needs_vl_source(self) -> bool:
        """Regenerates through Qwen3-VL (``--skip-vl`` leaves it out)."""
        return bool(self.full.get("vl_layers"))

    def study(self, quick: bool = False, seeds: Sequence[int] | None = None, **options: Any) -> CaptionStudy:
        """The full or quick study (``seeds`` replace its own; ``options``: other CaptionStudy fields, e.g. the
        caption budget)."""
        values = {**(self.quick if quick else self.full), **options}
        if seeds:
            values["seeds"] = tuple(seeds)
        return CaptionStudy(name=self.name, description=f"{self.question} {_DESCRIPTION}", **values)


_QUICK = {"prompts": ("a cat",), "seeds": (42,), "target_lengths": (600,)}
_FULL = {"prompts": SEED_PROMPTS, "seeds": (42, 123), "target_lengths": (600,)}
CAPTION_PRESETS: dict[str, CaptionPreset] = {
    p.name: p
    for p in (
        # quick: 1 source + 3 variants = 4 images; full: 6 sources + 30 variants = 36 (seed 002).
        CaptionPreset(
            "caption_fill_modes",
            "Does the padding strategy affect quality?",
            {**_FULL, "fill_modes": FILL_MODES, "hidden_layers": (-2,)},
            {**_QUICK, "fill_modes": ("content_only", "pad_end_zero", "filler_repeat"), "hidden_layers": (-2,)},
        ),
        # The seed gives no matrix for this one: its default lengths with and without padding (quick: 1 + 6 = 7,
        # full: 6 + 72 = 78).
        CaptionPreset(
            "caption_lengths",
            "Is there an optimal embedding length?",
            {
                **_FULL,
                "target_lengths": DEFAULT_TARGET_LENGTHS,
                "fill_modes": ("content_only", "pad_end_zero"),
                "hidden_layers": (-2,),
            },
            {
                **_QUICK,
                "target_lengths": (50, 300, 1000),
                "fill_modes": ("content_only", "pad_end_zero"),
                "hidden_layers": (-2,),
            },
        ),
        # quick: 1 + 3 = 4 (seed 002); full: the seed's example layers, 6 + 42 = 48.
        CaptionPreset(
            "caption_hidden_layer",
            "Which Qwen3-4B layer works best for captions?",
            {**_FULL, "fill_modes": ("content_only",), "hidden_layers": (-2, -4, -6, -8, -12, -16, -21)},
            {**_QUICK, "fill_modes": ("content_only",), "hidden_layers": (-2, -6, -12)},
        ),
        # quick: 1 + 2 layers x 2 token modes = 5 (seed 002); full: 6 + 6 x 3 x 3 = 60.
        CaptionPreset(
            "caption_vl",
            "Do VL embeddings (source image + caption) improve reconstruction?",
            {
                **_FULL,
                "fill_modes": ("content_only",),
                "vl_layers": (-2, -6, -8),
                "token_modes": ("full", "text_only", "image_only"),
            },
            {**_QUICK, "fill_modes": ("content_only",), "vl_layers": (-6, -8), "token_modes": ("full", "text_only")},
        ),
    )
}
