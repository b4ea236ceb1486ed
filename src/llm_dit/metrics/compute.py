"""A resumable metrics pass over an experiment's results: compute what is missing, store it, export, summarise.

A value counts as present when the store holds it for the run, the metric's current version and the same params
(reference, weights, dtype of the SigLIP/CLIP models, group of seeds, prompt text); everything else is computed.
The pass goes over the runs with missing values in batches: each batch computes every missing value of its runs
(decoding each image once) and is committed in one transaction, so an interrupted pass resumes where it stopped.
Models load once per pass, only if there is work for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llm_dit.config import MetricsSettings
from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.experiments.store import MetricValue, PlanDefaults, ResultsStore
from llm_dit.metrics import pixel
from llm_dit.metrics.reference import (
    Reference,
    ReferenceChoice,
    check_choice,
    condition_key,
    default_labels,
    fixed_params,
    resolve_references,
    swept_parameters,
)
from llm_dit.metrics.registry import DIVERSITY_METRICS, METRICS, MetricSpec, missing_setting_message
from llm_dit.metrics.summary import GENERATION_TIME, SUMMARY_NAME, summarize, write_summary
from llm_dit.models import checkpoint, devices

ProgressCallback = Callable[[int, int], None]  # (work items finished, work items in this pass)
BATCH = 32  # runs per committed batch (at least batch_size when a model metric is computed)
IMAGE_CACHE = 64  # decoded images kept from one batch to the next (references, seeds of a condition)
_PIXEL_REFERENCE = {"ssim": pixel.ssim, "psnr": pixel.psnr, "mad": pixel.mean_abs_diff}
_PIXEL_DIVERSITY = {"diversity_ssim": pixel.ssim_distance, "diversity_mad": pixel.mean_abs_diff}
_LEGACY_DEFAULTS_NOTE = (
    "this experiment was planned before plans stored their defaults: its default reference is found with the "
    "defaults of llm-dit 0.1.0 and earlier (hidden_layer -2, think_block none, shift 3.0, ...); run the "
    "experiment again to store its own, or choose the reference with --reference AXIS=LABEL"
)
# Settings whose models run in torch_dtype (bf16 moves their scores measurably); LPIPS always runs in float32.
_DTYPE_SETTINGS = frozenset({"siglip_path", "clip_path"})


@dataclass
class MetricsReport:
    experiment: str
    metrics: list[str]
    computed: dict[str, int] = field(default_factory=dict)  # metric -> values computed in this pass
    kept: dict[str, int] = field(default_factory=dict)  # metric -> values already stored and still valid
    unavailable: dict[str, int] = field(default_factory=dict)  # metric -> done runs it cannot apply to
    reference: str = ""  # what the reference-based metrics compared with, for people
    notes: list[str] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    results_csv: Path | None = None
    summary_csv: Path | None = None
    seconds: float = 0.0


def weights_key(path: str | Path) -> str:
    """A quick identity of local weights, a model directory or a weights file (``checkpoint.fingerprint``):
    changing them recomputes model-based values."""
    try:
        return checkpoint.fingerprint(path)
    except CheckpointError:
        target = Path(path).expanduser()
        raise LlmDitError(f"metric weights {target} do not exist; fix the path in [default.metrics]") from None


class _Images:
    """Decoded images by path, a few at a time (references and seed groups are reused across runs)."""

    def __init__(self, capacity: int) -> None:
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._capacity = capacity

    def array(self, path: Path) -> np.ndarray:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        value = pixel.load_rgb(path)
        self._cache[path] = value
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class MetricsPass:
    """Computes missing metric values of one experiment into its results store."""

    # Per pass (run() sets them): a source image may be replaced between two passes of one MetricsPass.
    _images: _Images
    _pairs: dict[tuple[str, str, str], float]  # diversity visits each pair from both ends: one distance per pass

    def __init__(
        self, store: ResultsStore, settings: MetricsSettings | None = None, progress: ProgressCallback | None = None
    ) -> None:
        self.store = store
        self.settings = settings or MetricsSettings()
        self.progress = progress
        self._models: dict[str, Any] = {}  # by spec.setting: lpips and diversity_lpips share one model

    # -- planning --------------------------------------------------------------------------------------------

    def _experiment(self, experiment: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if experiment not in self.store.experiments():
            known = ", ".join(self.store.experiments()) or "none yet"
            raise LlmDitError(f"no experiment {experiment!r} in {self.store.root}; experiments there: {known}")
        return self.store.experiment(experiment), self.store.runs(experiment)

    def references(
        self,
        experiment: str,
        choice: ReferenceChoice,
        runs: Sequence[Mapping[str, Any]],
        definition: Mapping,
        defaults: PlanDefaults,
    ) -> tuple[dict[str, Reference], str]:
        """Each done run's reference, and a description of the choice (raises if nothing can be compared).

        ``defaults``: those stored with the experiment's plan; an axis's default value is the default reference.
        """
        directory = self.store.experiment_dir(experiment)
        axes = [axis["name"] for axis in definition.get("axes", [])]
        if choice.images:  # ReferenceChoice refuses axes next to images: nothing is ignored here
            refs = resolve_references(runs, {}, choice.images, directory)
            described = ", ".join(f"{k or 'every prompt'}: {v}" for k, v in choice.images.items())
            return refs, f"source image ({described})"
        check_choice(choice, runs, axes)
        labels = {**default_labels(runs, definition, defaults.params), **choice.axes}
        if not labels:
            raise LlmDitError(
                f"{experiment}: no reference for ssim/psnr/mad/lpips: "
                + (
                    f"no value of {', '.join(axes)} is the default; choose one with --reference AXIS=LABEL"
                    if axes
                    else "the experiment sweeps nothing; compare with a source image: --reference-image PATH"
                )
                + " (or leave these metrics out with --metric)"
            )
        refs = resolve_references(runs, labels, {}, directory, swept_parameters(definition, defaults.replaces))
        return refs, ", ".join(f"{a}={v}" for a, v in labels.items())

    # -- the pass --------------------------------------------------------------------------------------------

    def run(
        self,
        experiment: str,
        specs: Sequence[MetricSpec],
        choice: ReferenceChoice | None = None,
        *,
        force: bool = False,
        skip_unreferenced: bool = False,
    ) -> MetricsReport:
        """Compute every missing value of ``specs`` for the experiment's done runs, then export and summarise.

        ``skip_unreferenced``: when no reference can be found, drop the reference-based metrics with a note
        instead of raising (used when metrics were not asked for by name).
        """
        start = time.perf_counter()
        self._images, self._pairs = _Images(IMAGE_CACHE), {}
        choice = choice or ReferenceChoice()
        info, runs = self._experiment(experiment)
        definition = info["definition"] or {}
        defaults = PlanDefaults.from_metadata(info["metadata"])
        directory = self.store.experiment_dir(experiment)
        report = MetricsReport(experiment, [s.name for s in specs])
        done = [
            r for r in runs if r["status"] == "done" and r.get("image_path") and (directory / r["image_path"]).is_file()
        ]
        specs = list(specs)
        refs: dict[str, Reference] = {}
        if any(s.kind == "reference" for s in specs):
            try:
                refs, report.reference = self.references(experiment, choice, done, definition, defaults)
                looked_up = [a["name"] for a in definition.get("axes", []) if a["name"] not in choice.axes]
                if not defaults.stored and not choice.images and looked_up:  # an axis's default value was used
                    report.notes.append(_LEGACY_DEFAULTS_NOTE)
            except LlmDitError as exc:
                if not skip_unreferenced:
                    raise
                specs = [s for s in specs if s.kind != "reference"]
                report.metrics = [s.name for s in specs]
                report.notes.append(f"reference metrics skipped: {exc}")
            self._check_sizes(done, refs)
        groups = self._seed_groups(done)
        if any(s.kind == "diversity" for s in specs) and not any(len(g) > 1 for g in groups.values()):
            report.notes.append("diversity metrics need >= 2 seeds per condition; this experiment has one")
        stored = {(v.run_id, v.name, v.version): v.params for v in self.store.metric_values(experiment)}

        # Work: run id -> metric name -> the params of its missing value.
        work: dict[str, dict[str, dict[str, Any]]] = {}
        model_params = self._model_params(specs)
        for spec in specs:
            kept = unavailable = 0
            for run in done:
                params = self._params(spec, run, refs, groups, model_params.get(spec.setting, {}))
                if params is None:
                    unavailable += 1
                elif not force and stored.get((run["run_id"], spec.name, spec.version)) == params:
                    kept += 1
                else:
                    work.setdefault(run["run_id"], {})[spec.name] = params
            report.kept[spec.name], report.unavailable[spec.name] = kept, unavailable
            report.computed[spec.name] = 0
        # The seeds of a condition side by side, so a batch's diversity values mostly reuse its own images.
        order: dict[str, int] = {}
        for run in done:
            order.setdefault(condition_key(run), len(order))
        todo = sorted((run for run in done if run["run_id"] in work), key=lambda r: order[condition_key(r)])
        size = max(BATCH, self.settings.batch_size) if any(s.setting for s in specs) else BATCH
        total, finished = sum(len(names) for names in work.values()), 0
        if self.progress:
            self.progress(0, total)
        try:
            for i in range(0, len(todo), size):
                values = self._compute_batch(specs, todo[i : i + size], work, refs, groups, directory)
                self.store.put_metrics(experiment, values)
                for value in values:
                    report.computed[value.name] += 1
                finished += len(values)
                if self.progress:
                    self.progress(finished, total)
        finally:
            self.unload()
        report.results_csv = self.store.export(experiment)[1]
        everything = self.store.runs(experiment)
        # The summary is of the latest plan: runs kept from earlier plans (another size, other seeds, ...) would
        # mix into its means.
        runs = [run for run in everything if run["in_plan"]]
        earlier = sum(run["status"] == "done" and not run["in_plan"] for run in everything)
        if earlier:
            report.notes.append(
                f"{earlier} done runs of earlier plans of {experiment} are kept in the store and results.csv but "
                "left out of summary.csv"
            )
        names = sorted({name for run in runs for name in run["metrics"]}, key=_metric_order)
        axes = [axis["name"] for axis in definition.get("axes", [])]
        report.summary = summarize(runs, axes, [*names, GENERATION_TIME], per_condition=DIVERSITY_METRICS)
        report.summary_csv = write_summary(report.summary, directory / SUMMARY_NAME)
        plans = _plans_note(runs, swept_parameters(definition, defaults.replaces))
        if plans:
            report.notes.append(plans)
        report.seconds = time.perf_counter() - start
        return report

    def unload(self) -> None:
        for model in self._models.values():
            model.unload()
        self._models.clear()

    # -- helpers ---------------------------------------------------------------------------------------------

    def _model_params(self, specs: Sequence[MetricSpec]) -> dict[str, dict[str, Any]]:
        """setting -> what its model-based values depend on: the weights (fingerprinted once per setting) and,
        for SigLIP/CLIP, the dtype they run in, resolved ("auto" on a GPU is bfloat16, on a CPU float32)."""
        out: dict[str, dict[str, Any]] = {}
        for spec in specs:
            if spec.setting is None or spec.setting in out:
                continue
            path = getattr(self.settings, spec.setting)
            if not path:
                raise LlmDitError(missing_setting_message(spec))
            out[spec.setting] = {"weights": weights_key(path)}
            if spec.setting in _DTYPE_SETTINGS:
                s = self.settings
                dtype = devices.resolve_dtype(s.torch_dtype, devices.resolve_device(s.device))
                out[spec.setting]["dtype"] = str(dtype).removeprefix("torch.")
        return out

    def _seed_groups(self, done: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for run in done:
            groups.setdefault(condition_key(run), []).append(run)
        return groups

    def _params(
        self,
        spec: MetricSpec,
        run: Mapping[str, Any],
        refs: Mapping[str, Reference],
        groups: Mapping[str, list],
        model_params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """What the value depends on besides the image; None if the metric does not apply to this run."""
        out: dict[str, Any] = dict(model_params)
        if spec.kind == "reference":
            ref = refs.get(run["run_id"])
            if ref is None:
                return None
            out["reference"] = ref.key
        elif spec.kind == "diversity":
            group = groups[condition_key(run)]
            if len(group) < 2:
                return None
            out["group"] = _digest(",".join(sorted(r["run_id"] for r in group)))
            out["n"] = len(group)
        else:
            out["text"] = _digest(run["prompt_text"])
        return out

    def _check_sizes(self, done: Sequence[Mapping[str, Any]], refs: Mapping[str, Reference]) -> None:
        """A source image must match the generated size: say so before computing anything."""
        sizes: dict[Path, tuple[int, int]] = {}
        for run in done:
            ref = refs.get(run["run_id"])
            if ref is None or ref.run_id is not None:
                continue
            if ref.path not in sizes:
                with Image.open(ref.path) as image:
                    sizes[ref.path] = image.size
            want = (run["params"].get("width"), run["params"].get("height"))
            if sizes[ref.path] != want:
                raise LlmDitError(
                    f"reference image {ref.path} is {sizes[ref.path][0]}x{sizes[ref.path][1]} but run "
                    f"{run['run_id']} is {want[0]}x{want[1]}; generate at the source image's size "
                    f"(--set width=... --set height=...) or give a source image of that size"
                )

    def _model(self, spec: MetricSpec) -> Any:
        """The model of ``spec``, loaded on first use; metrics of one setting share it (lpips, diversity_lpips)."""
        setting = spec.setting
        if setting is None:
            raise LlmDitError(f"metric {spec.name!r} is weight-free: it has no model")
        if setting not in self._models:
            s = self.settings
            if setting == "lpips_backbone":
                from llm_dit.metrics.lpips import LpipsDistance

                self._models[setting] = LpipsDistance.from_weights(
                    s.lpips_backbone or "", net=s.lpips_net, device=s.device, batch_size=s.batch_size
                )
            else:
                from llm_dit.metrics.scorers import ClipScorer, SiglipScorer

                cls = {"siglip_path": SiglipScorer, "clip_path": ClipScorer}[setting]
                self._models[setting] = cls.from_pretrained(
                    getattr(s, setting) or "", device=s.device, dtype=s.torch_dtype, batch_size=s.batch_size
                )
        return self._models[setting]

    def _compute_batch(
        self,
        specs: Sequence[MetricSpec],
        batch: Sequence[Mapping[str, Any]],
        work: Mapping[str, Mapping[str, dict[str, Any]]],
        refs: Mapping[str, Reference],
        groups: Mapping[str, list],
        directory: Path,
    ) -> list[MetricValue]:
        """Every missing value of the runs in ``batch``, metric by metric; each image is decoded once."""
        arrays: dict[Path, np.ndarray] = {}  # held for the whole batch (the LRU cache carries them across batches)

        def image(run: Mapping[str, Any] | Path) -> np.ndarray:
            path = run if isinstance(run, Path) else directory / run["image_path"]
            if path not in arrays:
                arrays[path] = self._images.array(path)
            return arrays[path]

        out: list[MetricValue] = []
        for spec in specs:
            runs = [run for run in batch if spec.name in work[run["run_id"]]]
            if not runs:
                continue
            if spec.kind == "reference":
                pairs = [(image(run), image(refs[run["run_id"]].path)) for run in runs]
                values = self._distances(spec, _PIXEL_REFERENCE.get(spec.name), pairs)
            elif spec.kind == "diversity":
                values = self._diversity(spec, runs, groups, image)
            else:
                texts = [run["prompt_text"] for run in runs]
                values = self._model(spec).score([Image.fromarray(image(run)) for run in runs], texts)
            for run, value in zip(runs, values, strict=True):
                out.append(MetricValue(run["run_id"], spec.name, value, spec.version, work[run["run_id"]][spec.name]))
        return out

    def _distances(
        self, spec: MetricSpec, fn: Callable[[np.ndarray, np.ndarray], float] | None, pairs: Sequence[tuple]
    ) -> list[float]:
        """``spec``'s distance of each (image, image) pair: the weight-free ``fn``, or the metric's model."""
        if fn is not None:
            return [float(fn(a, b)) for a, b in pairs]
        if not pairs:
            return []
        return self._model(spec).distance([a for a, _ in pairs], [b for _, b in pairs])

    def _diversity(
        self,
        spec: MetricSpec,
        runs: Sequence[Mapping[str, Any]],
        groups: Mapping[str, list],
        image: Callable[[Mapping[str, Any]], np.ndarray],
    ) -> list[float]:
        """Each run's mean distance to the other seeds of its condition; every pair's distance is computed once
        per pass (the pairs new in this batch together, in one model call)."""
        others = {
            run["run_id"]: [o for o in groups[condition_key(run)] if o["run_id"] != run["run_id"]] for run in runs
        }
        todo: dict[tuple[str, str, str], tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        for run in runs:
            for other in others[run["run_id"]]:
                key = _pair_key(spec, run, other)
                if key not in self._pairs and key not in todo:
                    todo[key] = (run, other)
        found = self._distances(spec, _PIXEL_DIVERSITY.get(spec.name), [(image(a), image(b)) for a, b in todo.values()])
        self._pairs.update(zip(todo, map(float, found), strict=True))
        return [float(np.mean([self._pairs[_pair_key(spec, run, o)] for o in others[run["run_id"]]])) for run in runs]


def _pair_key(spec: MetricSpec, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, str, str]:
    first, second = sorted((a["run_id"], b["run_id"]))
    return spec.name, first, second


def _plans_note(runs: Sequence[Mapping[str, Any]], swept: frozenset[str]) -> str | None:
    """A note when the done runs come from more than one plan (runs with the same axis values differ in a
    parameter no axis sets, e.g. a re-run at another size): summary.csv averages over all of them."""
    plans: dict[str, dict[str, dict[str, Any]]] = {}  # variables -> fixed params key -> those params
    for run in runs:
        if run["status"] == "done":
            fixed = fixed_params(run, swept)
            plans.setdefault(json.dumps(run["variables"], sort_keys=True), {})[fixed] = json.loads(fixed)
    mixed = [list(found.values()) for found in plans.values() if len(found) > 1]
    if not mixed:
        return None
    differ = sorted(
        {key for found in mixed for key in set().union(*found) if len({json.dumps(p.get(key)) for p in found}) > 1}
    )
    return (
        f"the done runs come from more than one plan (runs with the same axis values differ in {', '.join(differ)}): "
        "reference and diversity values compare runs of one plan only, but summary.csv averages over all of them"
    )


def _metric_order(name: str) -> tuple[int, str]:
    """Known metrics in registry order, then any others (e.g. set through the API) by name."""
    order = list(METRICS)
    return (order.index(name), name) if name in order else (len(order), name)
