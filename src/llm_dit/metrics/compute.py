"""A resumable metrics pass over an experiment's results: compute what is missing, store it, export, summarise.

A value counts as present when the store holds it for the run, the metric's current version and the same params
(reference, weights, dtype of the SigLIP/CLIP models, group of seeds, prompt text, grid period), computed from the
run's image as it is now (its sha256) and from the current images of the runs it compared with (``input_sha256`` in
its params); everything else is computed. A regenerated run thereby has its values, and those that used its image,
redone.

Before scoring, each image the pass will read is checked against the hash stored when it was written: a file changed
on disk since then is reported by run and left out (nothing is stored for it, nor for values that would use it), and
the pixels scored are decoded from the very bytes that were hashed. Runs made before image hashes (schema 4) get the
hash of their file as found (unverified: said in one line). One pass at a time per experiment (``.metrics.lock``).
The pass goes over the runs with missing values in batches: each batch computes every missing value of its runs
(decoding each image once) and is committed in one transaction, so an interrupted pass resumes where it stopped.
Models load once per pass, only if there is work for them.
"""

from __future__ import annotations

import hashlib
import io
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
from llm_dit.experiments.store import (
    HASH_FOUND,
    INPUTS_KEY,
    MetricValue,
    PlanDefaults,
    ResultsStore,
    file_sha256,
)
from llm_dit.metrics import artifacts, pixel, sharpness
from llm_dit.metrics.preferences import axis_values, experiment_preferences
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
from llm_dit.metrics.summary import SUMMARY_NAME, run_fields, summarize, write_summary
from llm_dit.models import checkpoint, devices

ProgressCallback = Callable[[int, int], None]  # (work items finished, work items in this pass)
BATCH = 32  # runs per committed batch (at least batch_size when a model metric is computed)
IMAGE_CACHE = 64  # decoded images kept from one batch to the next (references, seeds of a condition)
_PIXEL_REFERENCE = {
    "ssim": pixel.ssim,
    "psnr": pixel.psnr,
    "mad": pixel.mean_abs_diff,
    "color_shift": artifacts.color_shift,
}
# kind "image": the run's own image alone
_PIXEL_IMAGE = {"grid_artifact": artifacts.grid_artifact, "sharpness": sharpness.sharpness}
_PIXEL_DIVERSITY = {"diversity_ssim": pixel.ssim_distance, "diversity_mad": pixel.mean_abs_diff}
_LEGACY_DEFAULTS_NOTE = (
    "this experiment was planned before plans stored their defaults: its default reference is found with the "
    "defaults of llm-dit 0.1.0 and earlier (hidden_layer -2, think_block none, shift 3.0, ...); run the "
    "experiment again to store its own, or choose the reference with --reference AXIS=LABEL"
)
# Settings whose models run in torch_dtype (bf16 moves their scores measurably); LPIPS always runs in float32.
_DTYPE_SETTINGS = frozenset({"siglip_path", "clip_path", "pickscore_path", "hpsv2_path"})


@dataclass
class MetricsReport:
    experiment: str
    metrics: list[str]
    computed: dict[str, int] = field(default_factory=dict)  # metric -> values computed in this pass
    kept: dict[str, int] = field(default_factory=dict)  # metric -> values already stored and still valid
    unavailable: dict[str, int] = field(default_factory=dict)  # metric -> done runs it cannot apply to
    reference: str = ""  # what the reference-based metrics compared with, for people
    # run id -> image path of images changed on disk since they were written: not scored, nothing stored
    changed_on_disk: dict[str, str] = field(default_factory=dict)
    unverified: int = 0  # done runs made before image hashes: scored as found on disk
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

    def array(self, path: Path, sha256: str | None = None) -> np.ndarray:
        """The image's pixels (:func:`read_image`)."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        value = read_image(path, sha256)
        self._cache[path] = value
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return value


def read_image(path: Path, sha256: str | None = None) -> np.ndarray:
    """An image's 8-bit RGB pixels; with ``sha256``, decoded from bytes read once and found to have that hash (a
    file changed after the pass checked it is an error: nothing of the batch is stored)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LlmDitError(f"cannot read image {path}: {exc.strerror}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise LlmDitError(
            f"image {path} changed on disk during the metrics pass; nothing of its batch was stored: run the pass "
            "again once nothing writes there"
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return pixel.load_rgb(opened)
    except (OSError, ValueError) as exc:
        raise LlmDitError(f"cannot read image {path}: {exc}") from exc


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
        self._info: dict[str, Any] = {}  # the experiment of the pass (refiner_drift reads its checkpoint)

    # -- planning --------------------------------------------------------------------------------------------

    def _experiment(self, experiment: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.store.require_experiment(experiment), self.store.runs(experiment)

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
        # An experiment may name its own reference (a caption study: every run's own source); else each axis's
        # default value.
        own = definition.get("reference") or default_labels(runs, definition, defaults.params)
        labels = {**own, **choice.axes}
        if not labels:
            raise LlmDitError(
                f"{experiment}: no reference for ssim/psnr/mad/lpips/color_shift: "
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
        # Every refusal (an unknown experiment or reference value, a source image of another size) comes before
        # the lock: a refused pass leaves the results directory as it was, not even a lock file added.
        info, runs = self._experiment(experiment)
        directory = self.store.experiment_dir(experiment)
        done = _done_with_image(runs, directory)
        definition, defaults = info["definition"] or {}, PlanDefaults.from_metadata(info["metadata"])
        planned = list(specs)
        if any(s.kind == "reference" for s in planned):
            refs: dict[str, Reference] = {}
            try:
                refs = self.references(experiment, choice, done, definition, defaults)[0]
            except LlmDitError:
                if not skip_unreferenced:
                    raise
                planned = [s for s in planned if s.kind != "reference"]  # the plan says why, with a note
            self._check_sizes(done, refs)
        model_params = self._model_params(planned)  # once per pass: it fingerprints the weights
        with self.store.metrics_lock(experiment):
            return self._run(experiment, list(specs), choice, force, skip_unreferenced, start, model_params)

    def _run(
        self,
        experiment: str,
        specs: list[MetricSpec],
        choice: ReferenceChoice,
        force: bool,
        skip_unreferenced: bool,
        start: float,
        model_params: dict[str, dict[str, Any]],
    ) -> MetricsReport:
        info, runs = self._experiment(experiment)
        self._info = info
        definition = info["definition"] or {}
        defaults = PlanDefaults.from_metadata(info["metadata"])
        directory = self.store.experiment_dir(experiment)
        report = MetricsReport(experiment, [s.name for s in specs])
        done = _done_with_image(runs, directory)
        adopted = self._adopt_unhashed(experiment, done, directory, report)
        stored = {
            (v.run_id, v.name, v.version): (v.params, v.image_sha256) for v in self.store.metric_values(experiment)
        }
        # Plan, check the images the plan reads against their stored hashes, and plan again without the changed
        # ones (leaving runs out only shrinks what a plan reads, so this ends).
        checked = set(adopted)  # their files were hashed just now
        while True:
            plan = self._plan(
                experiment, specs, choice, done, definition, defaults, stored, force, skip_unreferenced, model_params
            )
            changed = self._changed_on_disk(plan, done, directory, checked)
            if not changed:
                break
            report.changed_on_disk.update(changed)
            done = [run for run in done if run["run_id"] not in changed]
        specs, work, refs, groups = plan.specs, plan.work, plan.refs, plan.groups
        report.metrics = [s.name for s in specs]
        report.reference = plan.reference
        report.kept, report.unavailable = plan.kept, plan.unavailable
        report.computed = {spec.name: 0 for spec in specs}
        if report.changed_on_disk:
            listed = ", ".join(f"{rid} ({path})" for rid, path in report.changed_on_disk.items())
            n = len(report.changed_on_disk)
            report.notes.append(
                f"{n} {'image' if n == 1 else 'images'} changed on disk since written, not scored (nor "
                f"values that compare with them): {listed}; restore the files, or regenerate the runs with "
                "'llm-dit ablate ... --force'"
            )
        report.notes.extend(plan.notes)
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
        report.summary = summarize(runs, axes, [*names, *run_fields(runs)], per_condition=DIVERSITY_METRICS)
        # The viewer's A/B judgements (llm-dit view --rate), aggregated per axis value like any metric.
        report.summary += experiment_preferences(directory, runs, axis_values(runs, axes))["rows"]
        report.summary_csv = write_summary(report.summary, directory / SUMMARY_NAME)
        plans = _plans_note(runs, swept_parameters(definition, defaults.replaces))
        if plans:
            report.notes.append(plans)
        report.seconds = time.perf_counter() - start
        return report

    def _adopt_unhashed(
        self, experiment: str, done: list[dict[str, Any]], directory: Path, report: MetricsReport
    ) -> set[str]:
        """Runs done before image hashes (schema 4) take their file's hash as found now, stored as unverified: from
        then on a change of the file shows. Said in one line, with the fix. Returns the ids of the runs adopted
        (their files just hashed)."""
        found = {run["run_id"]: file_sha256(directory / run["image_path"]) for run in done if not run["image_sha256"]}
        if found:
            self.store.adopt_image_hashes(experiment, found)
            for run in done:
                if run["run_id"] in found:
                    run["image_sha256"], run["image_hash_origin"] = found[run["run_id"]], HASH_FOUND
        report.unverified = sum(run["image_hash_origin"] == HASH_FOUND for run in done)
        if report.unverified:
            report.notes.append(
                f"{report.unverified} done runs of {experiment} were made before llm-dit stored image hashes: they "
                "are scored as their files are now, unverified (a file may have changed since it was generated); "
                "'llm-dit ablate ... --force' regenerates them with a hash"
            )
        return set(found)

    def _plan(
        self,
        experiment: str,
        specs: list[MetricSpec],
        choice: ReferenceChoice,
        done: list[dict[str, Any]],
        definition: Mapping[str, Any],
        defaults: PlanDefaults,
        stored: Mapping[tuple[str, str, int], tuple[dict[str, Any], str | None]],
        force: bool,
        skip_unreferenced: bool,
        model_params: dict[str, dict[str, Any]],
    ) -> _Plan:
        """What the pass would compute over ``done``: references, seed groups and every missing value's params.

        ``model_params``: the pass's :meth:`_model_params`, computed once; a setting it lacks (a reference metric
        the checks before the lock skipped, found comparable now) is added to it."""
        plan = _Plan(list(specs))
        if any(s.kind == "reference" for s in plan.specs):
            try:
                plan.refs, plan.reference = self.references(experiment, choice, done, definition, defaults)
                looked_up = [a["name"] for a in definition.get("axes", []) if a["name"] not in choice.axes]
                if not defaults.stored and not choice.images and looked_up:  # an axis's default value was used
                    plan.notes.append(_LEGACY_DEFAULTS_NOTE)
            except LlmDitError as exc:
                if not skip_unreferenced:
                    raise
                plan.specs = [s for s in plan.specs if s.kind != "reference"]
                plan.notes.append(f"reference metrics skipped: {exc}")
            self._check_sizes(done, plan.refs)
        plan.groups = self._seed_groups(done)
        if any(s.kind == "diversity" for s in plan.specs) and not any(len(g) > 1 for g in plan.groups.values()):
            plan.notes.append("diversity metrics need >= 2 seeds per condition; this experiment has one")
        hashes = {run["run_id"]: run["image_sha256"] for run in done}
        model_params.update(self._model_params([s for s in plan.specs if s.setting not in model_params]))
        for spec in plan.specs:
            kept = unavailable = 0
            for run in done:
                params = self._params(spec, run, plan.refs, plan.groups, model_params.get(spec.setting, {}), hashes)
                if params is None:
                    unavailable += 1
                elif not force and stored.get((run["run_id"], spec.name, spec.version)) == (
                    params,
                    run["image_sha256"],
                ):
                    kept += 1
                else:
                    plan.work.setdefault(run["run_id"], {})[spec.name] = params
            plan.kept[spec.name], plan.unavailable[spec.name] = kept, unavailable
        return plan

    def _changed_on_disk(
        self, plan: _Plan, done: Sequence[Mapping[str, Any]], directory: Path, checked: set[str]
    ) -> dict[str, str]:
        """Runs whose image the plan reads and whose file no longer has the hash stored when it was written.

        Each file is hashed here at most once per pass (``checked``, which starts with the files
        :meth:`_adopt_unhashed` just hashed); :func:`read_image` hashes its bytes once more when it decodes them,
        so the pixels scored are from bytes with the checked hash."""
        by_id = {run["run_id"]: run for run in done}
        kinds = {spec.name: spec.kind for spec in plan.specs}
        read: set[str] = set()
        for run_id, names in plan.work.items():
            read.add(run_id)
            for name in names:
                if kinds[name] == "reference" and plan.refs[run_id].run_id is not None:
                    read.add(str(plan.refs[run_id].run_id))
                elif kinds[name] == "diversity":
                    read.update(other["run_id"] for other in plan.groups[condition_key(by_id[run_id])])
        changed = {}
        for run_id in sorted(read - checked):
            run = by_id[run_id]
            path = directory / run["image_path"]
            if file_sha256(path) != run["image_sha256"]:
                changed[run_id] = str(path)
        checked.update(read)
        return changed

    def unload(self) -> None:
        for model in self._models.values():
            if hasattr(model, "unload"):  # scorers free their weights; a pipeline (refiner_drift) is dropped
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
        hashes: Mapping[str, str | None],
    ) -> dict[str, Any] | None:
        """What the value depends on besides the run's own image, the images of other runs it uses by hash
        (``INPUTS_KEY``); None if the metric does not apply to this run."""
        out: dict[str, Any] = dict(model_params)
        if spec.kind == "reference":
            ref = refs.get(run["run_id"])
            if ref is None:
                return None
            out["reference"] = ref.key
            if ref.run_id is not None:  # a source image's key already is its content hash
                out[INPUTS_KEY] = {ref.run_id: hashes[ref.run_id]}
        elif spec.kind == "diversity":
            group = groups[condition_key(run)]
            if len(group) < 2:
                return None
            out["group"] = _digest(",".join(sorted(r["run_id"] for r in group)))
            out["n"] = len(group)
            out[INPUTS_KEY] = {r["run_id"]: r["image_sha256"] for r in group if r["run_id"] != run["run_id"]}
        elif spec.kind == "conditioning":
            # The run's caption features through the experiment's own checkpoint: its weights are what it depends on.
            out["model"] = (self._info.get("metadata") or {}).get("model_fingerprint")
        elif spec.kind == "image":
            if spec.name == "grid_artifact":
                # The grid's period is a constant of the code, stored so that changing it recomputes the values.
                out["period_px"] = artifacts.PATCH_PERIOD_PX
                smallest = artifacts.min_side(artifacts.PATCH_PERIOD_PX)
                sides = [run["params"].get(key) for key in ("width", "height")]
                if any(isinstance(side, int) and side < smallest for side in sides):
                    return None  # too small to resolve the grid's harmonics: no value, counted as unavailable
            # sharpness depends on nothing but the image (generated sides, multiples of 16, exceed its 3 x 3)
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
                from llm_dit.metrics.scorers import SCORERS

                self._models[setting] = SCORERS[setting].from_pretrained(
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

        hashes = {run["run_id"]: run["image_sha256"] for group in groups.values() for run in group}

        def load(path: Path, sha256: str | None) -> np.ndarray:
            """The pixels of ``path`` (checked against ``sha256``: None for a source image), once per batch."""
            if path not in arrays:
                arrays[path] = self._images.array(path, sha256)
            return arrays[path]

        def image(run: Mapping[str, Any]) -> np.ndarray:
            return load(directory / run["image_path"], run["image_sha256"])

        def reference_image(run: Mapping[str, Any]) -> np.ndarray:
            ref = refs[run["run_id"]]
            return load(ref.path, None if ref.run_id is None else hashes[ref.run_id])

        out: list[MetricValue] = []
        for spec in specs:
            runs = [run for run in batch if spec.name in work[run["run_id"]]]
            if not runs:
                continue
            if spec.kind == "reference":
                pairs = [(image(run), reference_image(run)) for run in runs]
                values = self._distances(spec, _PIXEL_REFERENCE.get(spec.name), pairs)
            elif spec.kind == "diversity":
                values = self._diversity(spec, runs, groups, image)
            elif spec.kind == "image":
                values = [float(_PIXEL_IMAGE[spec.name](image(run))) for run in runs]
            elif spec.kind == "conditioning":
                values = [self._refiner_drift(run) for run in runs]
            else:
                texts = [run["prompt_text"] for run in runs]
                values = self._model(spec).score([Image.fromarray(image(run)) for run in runs], texts)
            for run, value in zip(runs, values, strict=True):
                params = work[run["run_id"]][spec.name]
                out.append(MetricValue(run["run_id"], spec.name, value, spec.version, params, run["image_sha256"]))
        return out

    def _refiner_drift(self, run: Mapping[str, Any]) -> float:
        """refiner_drift of a run: its caption features (as the run made them: prompt, encoder and conditioning
        settings) through the context refiner of the experiment's own checkpoint, which loads once per pass."""
        from llm_dit.generation.refiner import refiner_drift
        from llm_dit.generation.request import request_from_params

        if "pipeline" not in self._models:
            from llm_dit.config import Settings
            from llm_dit.generation.pipeline import LlmDitPipeline

            base = (self._info.get("metadata") or {}).get("base_settings")
            if not base:
                raise LlmDitError(
                    f"{self._info.get('name')}: its metadata has no base_settings, so its checkpoint is unknown; "
                    "run the experiment again to store them, or leave refiner_drift out"
                )
            self._models["pipeline"] = LlmDitPipeline.from_settings(Settings.model_validate(base))
        pipe = self._models["pipeline"]
        features = pipe.caption_features([request_from_params(run["prompt_text"], run["params"])])[0]
        features = getattr(features, "embeddings", features)  # precomputed features are a tensor already
        return refiner_drift(pipe.transformer, features, run["params"].get("refiner") or "default").whole

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


@dataclass
class _Plan:
    """What a pass computes: the metrics (reference ones dropped when nothing can be compared), each run's
    reference, the seed groups, and run id -> metric -> params of each missing value."""

    specs: list[MetricSpec]
    refs: dict[str, Reference] = field(default_factory=dict)
    reference: str = ""
    groups: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    work: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pair_key(spec: MetricSpec, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, str, str]:
    first, second = sorted((a["run_id"], b["run_id"]))
    return spec.name, first, second


def _done_with_image(runs: Sequence[dict[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """The done runs whose image file is there: the ones a pass can score."""
    return [
        r for r in runs if r["status"] == "done" and r.get("image_path") and (directory / r["image_path"]).is_file()
    ]


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
