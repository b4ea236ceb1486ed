"""A resumable metrics pass over an experiment's results: compute what is missing, store it, export, summarise.

A value counts as present when the store holds it for the run, the metric's current version and the same params
(reference, scorer weights, group of seeds, prompt text); everything else is computed, in batches, each batch
committed in one transaction, so an interrupted pass resumes where it stopped. Models load once per pass, only if
there is work for them.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments import default_params
from llm_dit.metrics import pixel
from llm_dit.metrics.reference import (
    Reference,
    ReferenceChoice,
    check_choice,
    default_labels,
    fixed_params,
    resolve_references,
)
from llm_dit.metrics.registry import METRICS, MetricSpec
from llm_dit.metrics.summary import SUMMARY_NAME, summarize, write_summary
from llm_dit.store import MetricValue, ResultsStore

ProgressCallback = Callable[[int, int], None]  # (work items finished, work items in this pass)
BATCH = 32  # runs per committed batch of weight-free values
_PIXEL_REFERENCE = {"ssim": pixel.ssim, "psnr": pixel.psnr, "mad": pixel.mean_abs_diff}
_PIXEL_DIVERSITY = {"diversity_ssim": pixel.ssim_distance, "diversity_mad": pixel.mean_abs_diff}


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
    """A quick identity of local weights (directory or file): changing them recomputes model-based values."""
    from llm_dit.checkpoint import fingerprint

    target = Path(path).expanduser()
    if target.is_dir():
        return fingerprint(target)
    if not target.is_file():
        raise LlmDitError(f"metric weights {target} do not exist; fix the path in [default.metrics]")
    size = target.stat().st_size
    digest = hashlib.sha256(f"{target.name}\0{size}\0".encode())
    with target.open("rb") as fh:  # like checkpoint.fingerprint: head and tail, not the whole file
        digest.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(1 << 20, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


class _Images:
    """Decoded images by path, a few at a time (references and seed groups are reused across runs)."""

    def __init__(self, capacity: int = 64) -> None:
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

    def pil(self, path: Path) -> Image.Image:
        return Image.fromarray(self.array(path))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class MetricsPass:
    """Computes missing metric values of one experiment into its results store."""

    def __init__(
        self, store: ResultsStore, settings: MetricsSettings | None = None, progress: ProgressCallback | None = None
    ) -> None:
        self.store = store
        self.settings = settings or MetricsSettings()
        self.progress = progress
        self._models: dict[str, Any] = {}
        self._images = _Images()
        # Diversity visits each pair of seeds from both ends: compute each distance once per pass.
        self._pairs: dict[tuple[str, str, str], float] = {}

    # -- planning --------------------------------------------------------------------------------------------

    def _experiment(self, experiment: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if experiment not in self.store.experiments():
            known = ", ".join(self.store.experiments()) or "none yet"
            raise LlmDitError(f"no experiment {experiment!r} in {self.store.root}; experiments there: {known}")
        return self.store.experiment(experiment), self.store.runs(experiment)

    def references(
        self, experiment: str, choice: ReferenceChoice, runs: Sequence[Mapping[str, Any]], definition: Mapping
    ) -> tuple[dict[str, Reference], str]:
        """Each done run's reference, and a description of the choice (raises if nothing can be compared)."""
        directory = self.store.experiment_dir(experiment)
        axes = [axis["name"] for axis in definition.get("axes", [])]
        if choice.images:
            refs = resolve_references(runs, {}, choice.images, directory)
            described = ", ".join(f"{k or 'every prompt'}: {v}" for k, v in choice.images.items())
            return refs, f"source image ({described})"
        check_choice(choice, runs, axes)
        labels = {**default_labels(runs, definition, default_params()), **choice.axes}
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
        refs = resolve_references(runs, labels, {}, directory, definition)
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
        self._images, self._pairs = _Images(), {}  # per pass: a source image may be replaced between passes
        choice = choice or ReferenceChoice()
        info, runs = self._experiment(experiment)
        definition = info["definition"] or {}
        directory = self.store.experiment_dir(experiment)
        report = MetricsReport(experiment, [s.name for s in specs])
        done = [
            r for r in runs if r["status"] == "done" and r.get("image_path") and (directory / r["image_path"]).is_file()
        ]
        specs = list(specs)
        refs: dict[str, Reference] = {}
        if any(s.kind == "reference" for s in specs):
            try:
                refs, report.reference = self.references(experiment, choice, done, definition)
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

        # Work: (spec, run, params) for every missing value.
        work: list[tuple[MetricSpec, dict[str, Any], dict[str, Any]]] = []
        for spec in specs:
            model_key = weights_key(getattr(self.settings, spec.setting)) if spec.setting else None
            kept = unavailable = 0
            for run in done:
                params = self._params(spec, run, refs, groups, model_key)
                if params is None:
                    unavailable += 1
                elif not force and stored.get((run["run_id"], spec.name, spec.version)) == params:
                    kept += 1
                else:
                    work.append((spec, run, params))
            report.kept[spec.name], report.unavailable[spec.name] = kept, unavailable
            report.computed[spec.name] = 0
        total, finished = len(work), 0
        if self.progress:
            self.progress(0, total)
        try:
            for spec in specs:
                items = [(run, params) for s, run, params in work if s is spec]
                for i in range(0, len(items), self._batch(spec)):
                    chunk = items[i : i + self._batch(spec)]
                    values = self._compute(spec, chunk, refs, groups, directory)
                    self.store.put_metrics(
                        experiment,
                        [
                            MetricValue(run["run_id"], spec.name, value, spec.version, params)
                            for (run, params), value in zip(chunk, values, strict=True)
                        ],
                    )
                    report.computed[spec.name] += len(chunk)
                    finished += len(chunk)
                    if self.progress:
                        self.progress(finished, total)
        finally:
            self.unload()
        report.results_csv = self.store.export(experiment)[1]
        runs = self.store.runs(experiment)
        names = sorted({name for run in runs for name in run["metrics"]}, key=_metric_order)
        axes = [axis["name"] for axis in definition.get("axes", [])]
        diversity = {name for name, spec in METRICS.items() if spec.kind == "diversity"}
        report.summary = summarize(runs, axes, [*names, "generation_time_s"], per_condition=diversity)
        report.summary_csv = write_summary(report.summary, directory / SUMMARY_NAME)
        report.seconds = time.perf_counter() - start
        return report

    def unload(self) -> None:
        for model in self._models.values():
            model.unload()
        self._models.clear()

    # -- helpers ---------------------------------------------------------------------------------------------

    def _batch(self, spec: MetricSpec) -> int:
        return self.settings.batch_size if spec.setting else BATCH

    @staticmethod
    def _condition(run: Mapping[str, Any]) -> tuple:
        # Every parameter but the seed: the seeds of one condition, never runs of an older plan at another size.
        return run["prompt_id"], fixed_params(run, frozenset()), tuple(sorted(run["variables"].items()))

    def _seed_groups(self, done: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
        groups: dict[tuple, list[Mapping[str, Any]]] = {}
        for run in done:
            groups.setdefault(self._condition(run), []).append(run)
        return groups

    def _group_of(self, run: Mapping[str, Any], groups: Mapping[tuple, list]) -> list[Mapping[str, Any]]:
        return groups[self._condition(run)]

    def _params(
        self,
        spec: MetricSpec,
        run: Mapping[str, Any],
        refs: Mapping[str, Reference],
        groups: Mapping[tuple, list],
        model_key: str | None,
    ) -> dict[str, Any] | None:
        """What the value depends on besides the image; None if the metric does not apply to this run."""
        # Model-based values depend on the weights and the dtype they ran in (bf16 moves scores measurably).
        out: dict[str, Any] = {} if model_key is None else {"weights": model_key, "dtype": self.settings.torch_dtype}
        if spec.kind == "reference":
            ref = refs.get(run["run_id"])
            if ref is None:
                return None
            out["reference"] = ref.key
        elif spec.kind == "diversity":
            group = self._group_of(run, groups)
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
        key = "lpips" if spec.name in ("lpips", "diversity_lpips") else spec.name
        if key not in self._models:
            s = self.settings
            if key == "lpips":
                from llm_dit.metrics.lpips import LpipsDistance

                self._models[key] = LpipsDistance.from_weights(
                    s.lpips_backbone or "", net=s.lpips_net, device=s.device, batch_size=s.batch_size
                )
            else:
                from llm_dit.metrics.scorers import ClipScorer, SiglipScorer

                cls = SiglipScorer if key == "siglip" else ClipScorer
                path = s.siglip_path if key == "siglip" else s.clip_path
                self._models[key] = cls.from_pretrained(
                    path or "", device=s.device, dtype=s.torch_dtype, batch_size=s.batch_size
                )
        return self._models[key]

    def _compute(
        self,
        spec: MetricSpec,
        chunk: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
        refs: Mapping[str, Reference],
        groups: Mapping[tuple, list],
        directory: Path,
    ) -> list[float]:
        images = self._images

        def path(run: Mapping[str, Any]) -> Path:
            return directory / run["image_path"]

        if spec.kind == "reference":
            pairs = [(path(run), refs[run["run_id"]].path) for run, _ in chunk]
            if spec.name in _PIXEL_REFERENCE:
                fn = _PIXEL_REFERENCE[spec.name]
                return [fn(images.array(a), images.array(b)) for a, b in pairs]
            return self._model(spec).distance([images.pil(a) for a, _ in pairs], [images.pil(b) for _, b in pairs])
        if spec.kind == "diversity":
            out = []
            for run, _ in chunk:
                others = [r for r in self._group_of(run, groups) if r["run_id"] != run["run_id"]]
                todo = [o for o in others if self._pair_key(spec, run, o) not in self._pairs]
                if spec.name in _PIXEL_DIVERSITY:
                    fn = _PIXEL_DIVERSITY[spec.name]
                    found = [fn(images.array(path(run)), images.array(path(o))) for o in todo]
                elif todo:
                    found = self._model(spec).distance(
                        [images.pil(path(run))] * len(todo), [images.pil(path(o)) for o in todo]
                    )
                else:
                    found = []
                for other, value in zip(todo, found, strict=True):
                    self._pairs[self._pair_key(spec, run, other)] = float(value)
                out.append(float(np.mean([self._pairs[self._pair_key(spec, run, o)] for o in others])))
            return out
        texts = [run["prompt_text"] for run, _ in chunk]
        return self._model(spec).score([images.pil(path(run)) for run, _ in chunk], texts)

    @staticmethod
    def _pair_key(spec: MetricSpec, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, str, str]:
        first, second = sorted((a["run_id"], b["run_id"]))
        return spec.name, first, second


def _metric_order(name: str) -> tuple[int, str]:
    """Known metrics in registry order, then any others (e.g. set through the API) by name."""
    order = list(METRICS)
    return (order.index(name), name) if name in order else (len(order), name)
