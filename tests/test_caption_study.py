"""The caption-length study (seed 002): its definition and presets, its refusals, the findings, and whole studies on
the built-in tiny models (``--model tiny``: its tiny Qwen3-VL twin captions and, in VL mode, regenerates).

End-to-end tests share one pipeline (``from_settings`` patched, as in tests/test_vl_builtins.py) and make 16x16
images in 2 steps with captions of at most 24 tokens (the tiny VL twin samples ~25 ms per token on these cores).
Resume is tested by interrupting a study at each phase (an exception raised from inside it, the way Ctrl-C stops
it) and running it again: what was committed stays, nothing finished is redone. A SIGKILL at any moment leaves the
same committed state (every store write is one transaction: tests/test_runner.py kills a real run).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli_helpers import ANSI, flat, run, subprocess_env
from llm_dit.analysis.caption_study import findings, regeneration_name
from llm_dit.config import Settings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.caption_study import (
    CAPTION_PRESETS,
    CaptionStudy,
    clean_caption,
    prepare_study,
    read_captions_file,
    run_study,
    source_id,
)
from llm_dit.experiments.store import ResultsStore
from llm_dit.metrics.pixel import ssim
from llm_dit.metrics.summary import t_interval

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

TINY = ("--model", "tiny")
SMALL = ("--set", "steps=2", "--set", "width=16", "--set", "height=16")
SHORT = ("--caption-max-tokens", "24")


# ---------------------------------------------------------------------------------------------- definition


@pytest.mark.parametrize(
    ("name", "quick", "full"),
    [
        # seed 002's matrices: fill modes 1 + 3 and 6 + 30, hidden layer 1 + 3, VL 1 + 2 x 2
        ("caption_fill_modes", 4, 36),
        ("caption_hidden_layer", 4, 6 + 6 * 7),
        ("caption_vl", 5, 6 + 6 * 3 * 3),
        ("caption_lengths", 1 + 3 * 2, 6 + 6 * 6 * 2),
    ],
)
def test_presets_make_the_seeds_image_counts(name: str, quick: int, full: int) -> None:
    preset = CAPTION_PRESETS[name]
    assert preset.study(quick=True).images() == quick
    assert preset.study().images() == full
    assert preset.study(quick=True, seeds=[1, 2]).images() == 2 * quick  # --seeds replaces the preset's


def test_the_study_is_one_experiment_with_the_sources_as_baseline_and_reference() -> None:
    study = CAPTION_PRESETS["caption_fill_modes"].study(quick=True)
    exp = study.experiment(Settings())
    assert [a.name for a in exp.axes] == ["target_length", "fill_mode", "hidden_layer"]
    assert exp.baseline is not None and exp.baseline.label == "source"
    definition = exp.to_dict()
    assert definition["reference"] == {"target_length": "source", "fill_mode": "source", "hidden_layer": "source"}
    vl = CAPTION_PRESETS["caption_vl"].study(quick=True).experiment(Settings())
    assert [a.name for a in vl.axes] == ["target_length", "fill_mode", "vl_layer", "token_mode"]
    assert vl.base == {"conditioning": "vl"}
    # No hidden layer given: one value, the profile's, so every image name says which layer
    default = CaptionStudy(target_lengths=(300,), fill_modes=("content_only",)).experiment(Settings())
    assert [v.label for v in default.axes[-1].values] == ["-2"]


def test_source_names() -> None:
    assert source_id("a cat", 42) == "a_cat_seed42"
    assert source_id("A Woman, portrait!", 1) == "a_woman_portrait_seed1"
    long_a, long_b = "x" * 50 + " one", "x" * 50 + " two"
    assert source_id(long_a, 1) != source_id(long_b, 1)
    assert len(source_id(long_a, 1).removesuffix("_seed1")) == 40


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"fill_modes": ("content_only", "pad_end_one")}, "--fill-modes: unknown value 'pad_end_one'"),
        ({"target_lengths": (0,)}, "--target-lengths: 0 must be an integer in 1..1504"),
        ({"target_lengths": (1505,)}, "1..1504"),
        ({"target_lengths": (300, 300)}, "--target-lengths lists 300 more than once"),
        ({"hidden_layers": (-38,)}, "--hidden-layers: -38 is out of range -37..36"),
        ({"vl_layers": (-6,), "hidden_layers": (-2,)}, "VL mode sweeps --vl-hidden-layers"),
        ({"token_modes": ("text_only",)}, "--token-modes applies to VL mode"),
        ({"use_vl": True, "token_modes": ("pixels",)}, "--token-modes: unknown value 'pixels'"),
        ({"compression_modes": ("none",)}, "--compression-modes: unknown value 'none'"),
        ({"prompts": ()}, "--prompts is empty"),
        ({"prompts": ("a cat", "A cat!")}, "give the same source name (a_cat_seed42)"),
        ({"seeds": (-1,)}, "--seeds: -1 must be an integer"),
        ({"captions": {"other_seed42": "a cat"}}, "no caption for a_cat_seed42"),
        ({"caption_max_tokens": 0}, "--caption-max-tokens must be in 1..8192"),
        ({"name": "../x"}, "experiment name"),
    ],
)
def test_bad_studies_are_refused_naming_the_flag(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(LlmDitError, match=None) as info:
        CaptionStudy(**fields)
    assert needle in str(info.value)


def test_a_sampled_caption_is_made_a_usable_prompt() -> None:
    assert clean_caption("A cat\x00 on\x1b a <|im_start|>mat.\n\n") == "A cat on a mat."
    assert clean_caption("<|endoftext|>\x07") == ""


def test_captions_come_from_a_json_file_or_a_folder_of_txt(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"a_cat_seed42": " A cat. "}), encoding="utf-8")
    assert read_captions_file(path) == {"a_cat_seed42": "A cat."}
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "a_cat_seed42.txt").write_text("A cat.\n", encoding="utf-8")
    (folder / "a_cat_seed42_tokens.txt").write_text("caption tokens: 3\n", encoding="utf-8")  # the export's
    assert read_captions_file(folder) == {"a_cat_seed42": "A cat."}
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(LlmDitError, match="expected a JSON object"):
        read_captions_file(path)
    with pytest.raises(LlmDitError, match="no such file or folder"):
        read_captions_file(tmp_path / "missing.json")


def test_file_names_follow_the_seed() -> None:
    run_ = {"prompt_id": "a_cat_seed42", "variables": {"target_length": "600", "fill_mode": "content_only"}}
    run_["variables"]["hidden_layer"] = "-2"
    assert regeneration_name(run_, ["target_length", "fill_mode", "hidden_layer"]) == (
        "a_cat_seed42_len600_content_only_L-2.png"
    )
    vl = {"prompt_id": "a_cat_seed42", "variables": {"target_length": "600", "fill_mode": "content_only"}}
    vl["variables"].update(vl_layer="-6", token_mode="full")
    assert regeneration_name(vl, ["target_length", "fill_mode", "vl_layer", "token_mode"]) == (
        "a_cat_seed42_len600_content_only_VL-6_full.png"
    )


# ---------------------------------------------------------------------------------------------- findings


def _run(source: str, ssim_value: float, **variables: str) -> dict[str, Any]:
    return {"prompt_id": source, "seed": 1, "variables": variables, "metrics": {"ssim": ssim_value}, "status": "done"}


def test_findings_are_paired_differences_with_student_t_intervals() -> None:
    # content_only vs pad_end_zero on three sources: differences 0.10, 0.12, 0.08 (content_only clearly higher);
    # pad_end_mean - pad_end_zero: +0.01, -0.01, +0.02 (an interval across 0).
    values = {"content_only": [0.9, 0.82, 0.7], "pad_end_zero": [0.8, 0.7, 0.62], "pad_end_mean": [0.81, 0.69, 0.64]}
    runs = [
        _run(f"s{i}", v, fill_mode=mode, target_length="600") for mode, vs in values.items() for i, v in enumerate(vs)
    ]
    answers = {f.question: f for f in findings(runs, ["target_length", "fill_mode"])}
    best = answers["Is content_only best (does padding hurt)?"]
    expected = t_interval([0.9 - 0.8, 0.82 - 0.7, 0.7 - 0.62])
    got = best.data["content_only_minus"]["pad_end_zero"]
    assert got["mean"] == pytest.approx(expected["mean"], abs=1e-15)
    assert got["ci95_low"] == pytest.approx(expected["ci95_low"], abs=1e-15) and got["ci95_low"] > 0
    assert "vs pad_end_zero" in best.answer and "content_only has the higher ssim" in best.answer
    same = answers["Does pad_end_mean equal pad_end_zero?"]
    assert "no clear difference between pad_end_mean and pad_end_zero at 95%" in same.answer
    by_mode = answers["ssim by fill_mode"]
    assert by_mode.data["values"]["content_only"]["mean"] == pytest.approx(sum(values["content_only"]) / 3)
    # target_length has one value: no length question
    assert "Where does length stop helping?" not in answers


def test_where_length_stops_helping() -> None:
    # 50 is clearly worse than 600 on every source; 300 is within noise of 600 (differences -0.01, +0.01, -0.005).
    table = {"50": [0.5, 0.55, 0.52], "300": [0.79, 0.81, 0.795], "600": [0.8, 0.8, 0.8]}
    runs = [_run(f"s{i}", v, target_length=length) for length, vs in table.items() for i, v in enumerate(vs)]
    (answer,) = [f for f in findings(runs, ["target_length"]) if f.question == "Where does length stop helping?"]
    assert answer.data["best"] == "600"
    assert answer.data["vs_best"]["50"]["ci95_high"] < 0
    assert "300 tokens is not clearly worse" in answer.answer
    assert findings([], ["target_length"])[0].answer.startswith("no ssim values yet")


# ---------------------------------------------------------------------------------------------- light paths


def test_negative_layers_need_no_equals_sign_and_the_dry_run_writes_nothing(
    tiny_cached: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    argv = ["caption-study", *TINY, "--hidden-layers", "-2,-6", "--target-lengths", "300,600", "--fill-modes"]
    rc, out, err = run(capsys, *argv, "content_only,pad_end_zero", "--output-dir", results, "--dry-run")
    assert rc == 0, err
    text = flat(out)
    assert "hidden_layer = -2, -6" in text and "target_length = 300, 600" in text
    assert "9 images = 1 source (1 prompt x 1 seed) + 1 x 8 regenerations" in text
    assert not results.exists()


def test_dry_runs_import_no_model_library(tiny_cached: Path, tmp_path: Path) -> None:
    child = (
        "import sys\nfrom llm_dit.cli import main\nrc = [main(a.split('|')) for a in sys.argv[1:]]\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "print('HEAVY', rc, heavy)\n"
    )
    results = str(tmp_path / "results")
    first = "|".join(["caption-study", *TINY, "--use-vl-embeddings", "--token-modes", "full,text_only"])
    second = "|".join(["sweep", "caption", "--all", "--quick", *TINY])
    argv = [f"{a}|--output-dir|{results}|--dry-run" for a in (first, second)]
    done = subprocess.run(
        [sys.executable, "-c", child, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    out = ANSI.sub("", done.stdout)
    assert "HEAVY [0, 0] []" in out, out + done.stderr
    for name, count in (("caption_fill_modes", 4), ("caption_lengths", 7), ("caption_hidden_layer", 4)):
        assert f"{name}: " in out and f"{count} images = 1 source" in flat(out)
    assert "5 images = 1 source (1 prompt x 1 seed) + 1 x 4 regenerations" in flat(out)  # caption_vl


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("sweep", "caption_vl", "--all"), "--all runs every sweep or a whole group"),
        (("sweep", "caption_fill_modes", "--skip-vl"), "--skip-vl: no sweep of caption_fill_modes"),
        (("sweep", "hidden_layer", "--caption-max-tokens", "8"), "--caption-max-tokens applies to the caption"),
        (("sweep", "caption", "--timing"), "--timing does not apply to the caption studies"),
        (("caption-study", "--fill-modes", "bogus"), "--fill-modes: unknown value 'bogus'"),
        (("caption-study", "--captions", "/nonexistent/c.json"), "no such file or folder"),
    ],
)
def test_sweep_and_study_refusals(
    argv: tuple[str, ...], needle: str, tiny_cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, *argv, *TINY, "--dry-run")
    assert rc == 2 and needle in flat(err), err


def test_skip_vl_leaves_out_caption_vl(tiny_cached: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys, "sweep", "caption", "--quick", "--skip-vl", *TINY, "--dry-run", "--output-dir", tmp_path / "r"
    )
    assert rc == 0, err
    headings = [line.split(":")[1].strip() for line in flat(err).split("sweep caption")[1:]]
    assert headings == ["caption_fill_modes", "caption_lengths", "caption_hidden_layer"]
    assert "caption_vl" not in out


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def pipe(tiny_cached: Path) -> Iterator[Any]:
    from llm_dit.generation.pipeline import LlmDitPipeline

    yield LlmDitPipeline.from_pretrained(None)


@pytest.fixture
def shared(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from llm_dit.generation.pipeline import LlmDitPipeline

    monkeypatch.setattr(LlmDitPipeline, "from_settings", classmethod(lambda cls, settings, **kw: pipe))
    return pipe


def test_a_text_run_with_a_fill_mode_gets_the_fill_of_its_text_features(shared: Any) -> None:
    """The regenerations' path: Qwen3-4B features brought to the target length by the fill mode, nothing else."""
    from llm_dit.conditioning.embeddings import apply_fill_mode
    from llm_dit.generation.request import GenerationRequest

    prompt = "a red house by a lake"
    plain = shared.caption_features([GenerationRequest.build(prompt)])[0].embeddings
    for mode in ("content_only", "pad_end_zero", "pad_end_mean", "pad_middle_zero", "filler_repeat"):
        for length in (3, 40):
            request = GenerationRequest.build(prompt, fill_mode=mode, target_length=length)
            got = shared.caption_features([request])[0].embeddings
            assert got.equal(apply_fill_mode(plain, length, mode)), (mode, length)


def _images(root: Path, name: str) -> list[dict[str, Any]]:
    with ResultsStore(root, read_only=True) as store:
        return [r for r in store.runs(name) if r["status"] == "done"]


def test_sweep_caption_fill_modes_quick_makes_four_images_and_the_seeds_layout(
    shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    argv = ("sweep", "caption_fill_modes", "--quick", *TINY, *SMALL, *SHORT, "--output-dir", results)
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    name = "caption_fill_modes"
    runs = _images(results, name)
    assert len(runs) == 4 and len(list((results / name).glob("*.png"))) == 4
    export = results / name / "export"
    sid = "a_cat_seed42"
    assert sorted(p.name for p in (export / "source").iterdir()) == [f"{sid}.png", f"{sid}.txt", f"{sid}_tokens.txt"]
    names = [f"{sid}_len600_{mode}_L-2.png" for mode in ("content_only", "pad_end_zero", "filler_repeat")]
    assert sorted(p.name for p in (export / "regenerated").iterdir()) == sorted(names)
    assert [p.name for p in (export / "grids").iterdir()] == [f"{sid}_fill_mode_grid.png"]
    with Image.open(export / "grids" / f"{sid}_fill_mode_grid.png") as grid:
        assert grid.width > 4 * 16  # the source and three regenerations side by side
    with ResultsStore(results, read_only=True) as store:
        (caption,) = store.captions(name).values()
    assert (export / "source" / f"{sid}.txt").read_text(encoding="utf-8") == caption["caption"] + "\n"
    assert f"caption tokens: {caption['token_count']}" in (export / "source" / f"{sid}_tokens.txt").read_text()
    assert caption["origin"] == "generated" and caption["params"]["max_new_tokens"] == 24
    # summary.csv: a row per regeneration, its SSIM against its own source computed here from the two files
    with (export / "summary.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["fill_mode"] for r in rows] == ["content_only", "pad_end_zero", "filler_repeat"]
    source = export / "source" / f"{sid}.png"
    for row in rows:
        assert row["source"] == sid and row["source_prompt"] == "a cat" and row["target_length"] == "600"
        assert float(row["ssim"]) == ssim(export / row["image"], source)  # the same function on the same files
        assert float(row["seconds_per_image_batched"]) > 0
    data = json.loads((export / "results.json").read_text(encoding="utf-8"))
    assert data["study"]["name"] == name and data["sources"][0]["caption"] == caption["caption"]
    assert len(data["regenerations"]) == 3 and data["findings"]
    assert "what the numbers say" in out and "Is content_only best" in flat(out)
    # The images in the export are the store's (hard links or copies: the same bytes)
    store_image = next(results / name / r["image_path"] for r in runs if set(r["variables"].values()) == {"source"})
    assert source.read_bytes() == store_image.read_bytes()


def test_sweep_caption_all_captions_each_source_once(
    shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three text sweeps share their source (same prompt, seed and settings: the same run id): Qwen3-VL
    captions it once, the other two studies take that caption."""
    from llm_dit.conditioning.vl_encoder import VLEncoder

    calls: list[str] = []
    real = VLEncoder.caption

    def counted(self: Any, image: Any, **kwargs: Any) -> str:
        calls.append(str(image))
        return real(self, image, **kwargs)

    monkeypatch.setattr(VLEncoder, "caption", counted)
    root = tmp_path / "results"
    argv = ("sweep", "caption", "--all", "--quick", "--skip-vl", *TINY, *SMALL, *SHORT, "--output-dir", root)
    rc, _, err = run(capsys, *argv, "--metric", "ssim")
    assert rc == 0, err
    assert len(calls) == 1
    assert flat(err).count("captions 1 made (1 from another study)") == 2
    with ResultsStore(root, read_only=True) as store:
        texts = {name: [c["caption"] for c in store.captions(name).values()] for name in store.experiments()}
        counts = {name: len([r for r in store.runs(name) if r["status"] == "done"]) for name in store.experiments()}
    assert sorted(texts) == ["caption_fill_modes", "caption_hidden_layer", "caption_lengths"]
    assert len({text for values in texts.values() for text in values}) == 1
    assert counts == {"caption_fill_modes": 4, "caption_hidden_layer": 4, "caption_lengths": 7}


def test_force_remakes_the_images_and_keeps_a_caption_of_the_same_pixels(
    shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    argv = ("caption-study", *TINY, *SMALL, *SHORT, "--target-lengths", "20", "--fill-modes", "pad_end_zero")
    argv += ("--output-dir", str(root), "--metric", "ssim")
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    assert "captions 1 made (0 from another study), 0 kept" in flat(err)
    with ResultsStore(root, read_only=True) as store:
        before = {r["run_id"]: r["updated_at"] for r in store.runs("caption_study")}
        (caption,) = store.captions("caption_study").values()
    rc, _, err = run(capsys, *argv, "--force")
    assert rc == 0, err
    assert "sources 1 made, 0 kept; captions 0 made (0 from another study), 1 kept" in flat(err)
    with ResultsStore(root, read_only=True) as store:
        assert list(store.captions("caption_study").values()) == [caption]
        assert {r["run_id"] for r in store.runs("caption_study")} == set(before)


class Interrupted(Exception):
    """Stands for Ctrl-C inside a phase."""


def _prepared(tmp_path: Path, **fields: Any) -> Any:
    from llm_dit.config import load_settings

    settings = load_settings(None, None, {"model_path": "tiny"}).settings
    study = CaptionStudy(
        name="resume", prompts=("a cat",), seeds=(1, 2), target_lengths=(8, 40), fill_modes=("pad_end_zero",),
        caption_max_tokens=12, **fields,
    )  # fmt: skip
    return prepare_study(study, settings=settings, overrides={"steps": 2, "width": 16, "height": 16})


def _runner(prepared: Any, store: ResultsStore, made: list[str], fail_after: int | None = None) -> Any:
    """``run_experiment`` for run_study: an ExperimentRunner that records each image it makes and, with
    ``fail_after``, stops the study after that many (the progress callback runs once an image is done)."""
    from llm_dit.experiments.runner import ExperimentRunner

    def run_experiment(experiment: Any, runs: list[Any], metadata: dict[str, Any]) -> Any:
        before = {r["run_id"] for r in store.runs(experiment.name)} if experiment.name in store.experiments() else set()
        done_before = {r["run_id"] for r in _images(store.root, experiment.name)} if before else set()

        def progress(finished: int, total: int, failed: int) -> None:
            if fail_after is not None and finished >= fail_after:
                raise Interrupted

        runner = ExperimentRunner(prepared.pipeline_source.get(), store, batch_size=1, progress=progress)
        try:
            return runner.run(experiment, runs, prepared.settings, extra_metadata=metadata)
        finally:
            made.extend(r["run_id"] for r in _images(store.root, experiment.name) if r["run_id"] not in done_before)

    return run_experiment


def test_a_study_killed_in_any_phase_finishes_without_redoing_finished_work(shared: Any, tmp_path: Path) -> None:
    from llm_dit.analysis.caption_study import finish_study

    prepared = _prepared(tmp_path)
    root = tmp_path / "results"
    sources = [prepared.source_runs[s.id].run_id for s in prepared.study.sources()]
    captioned: list[str] = []

    def captioner(image: str, source: Any) -> str:
        captioned.append(source.id)
        vl = prepared.pipeline_source.get().sources.encoder("vl")
        return vl.caption(image, seed=source.seed, max_new_tokens=12)

    made: list[str] = []
    with ResultsStore(root) as store:
        # phase 1, killed after the first source image
        with pytest.raises(Interrupted):
            run_study(prepared, store, run_experiment=_runner(prepared, store, made, fail_after=1), captioner=captioner)
        assert made == sources[:1] and not captioned
        # phase 2, killed while captioning the second source (the first caption is committed)
        made.clear()

        def second_fails(image: str, source: Any) -> str:
            if len(captioned) == 1:
                raise Interrupted
            return captioner(image, source)

        with pytest.raises(Interrupted):
            run_study(prepared, store, run_experiment=_runner(prepared, store, made), captioner=second_fails)
        assert made == sources[1:] and captioned == ["a_cat_seed1"] and len(store.captions("resume")) == 1
        # phase 3, killed after one regeneration
        made.clear()
        with pytest.raises(Interrupted):
            run_study(prepared, store, run_experiment=_runner(prepared, store, made, fail_after=1), captioner=captioner)
        assert captioned == ["a_cat_seed1", "a_cat_seed2"] and len(made) == 1 and made[0] not in sources
        first_regeneration = made[0]
        # then it finishes: the three regenerations left, nothing made twice
        made.clear()
        progress = run_study(prepared, store, run_experiment=_runner(prepared, store, made), captioner=captioner)
        assert captioned == ["a_cat_seed1", "a_cat_seed2"] and progress.captions_kept == 2
        assert len(made) == 3 and first_regeneration not in made and not set(made) & set(sources)
        # and once more: nothing at all
        made.clear()
        progress = run_study(prepared, store, run_experiment=_runner(prepared, store, made), captioner=captioner)
        assert made == [] and progress.captions_made == 0 and progress.regenerations.skipped == 6
    # phase 4: a metrics pass computes each value once; its reference is the run's own source
    report, export, answers = finish_study(root, "resume", prepared.settings.metrics, ["ssim", "mad"])
    assert report.computed["ssim"] == 6  # sources included (1 against themselves)
    again, _, _ = finish_study(root, "resume", prepared.settings.metrics, ["ssim", "mad"])
    assert again.computed["ssim"] == 0
    with ResultsStore(root, read_only=True) as store:
        runs = {r["run_id"]: r for r in store.runs("resume")}
        for value in store.metric_values("resume"):
            reference = runs[value.params["reference"].removeprefix("run:")]
            own = runs[value.run_id]
            assert set(reference["variables"].values()) == {"source"}
            assert (reference["prompt_id"], reference["seed"]) == (own["prompt_id"], own["seed"])
    assert (export / "summary.csv").is_file() and answers


def test_captions_from_a_file_replace_the_captioner_and_a_changed_caption_makes_new_runs(
    shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_dit.conditioning.vl_encoder import VLEncoder

    def no_caption(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a caption was generated")

    root = tmp_path / "results"
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"a_cat_seed42": "A grey cat asleep on a red sofa."}), encoding="utf-8")
    common = ("caption-study", *TINY, *SMALL, "--target-lengths", "20", "--fill-modes", "content_only,pad_end_mean")
    common += ("--captions", str(captions), "--output-dir", str(root), "--metric", "ssim")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VLEncoder, "caption", no_caption)
        rc, _, err = run(capsys, *common)
        assert rc == 0, err
        with ResultsStore(root, read_only=True) as store:
            (first,) = store.captions("caption_study").values()
            first_runs = {r["run_id"] for r in store.runs("caption_study") if r["status"] == "done"}
        assert first["origin"] == "given" and first["caption"] == "A grey cat asleep on a red sofa."
        assert len(first_runs) == 3
        captions.write_text(json.dumps({"a_cat_seed42": "A black cat on a blue sofa."}), encoding="utf-8")
        rc, _, err = run(capsys, *common)
        assert rc == 0, err
    assert "sources 0 made, 1 kept; captions 1 made (0 from another study), 0 kept; regenerations 2 made" in flat(err)
    with ResultsStore(root, read_only=True) as store:
        (second,) = store.captions("caption_study").values()
        runs = store.runs("caption_study")
    assert second["caption"] == "A black cat on a blue sofa."
    latest = {r["run_id"] for r in runs if r["in_plan"]}
    assert len(latest) == 3 and len(latest & first_runs) == 1  # the source is kept; the old regenerations left
    assert {r["prompt_text"] for r in runs if r["in_plan"] and r["run_id"] not in first_runs} == {second["caption"]}


def test_a_vl_study_regenerates_from_the_source_image_and_its_caption(
    shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_dit.generation.image import read_record

    root = tmp_path / "results"
    argv = ("sweep", "caption_vl", "--quick", *TINY, *SMALL, *SHORT, "--output-dir", root, "--metric", "ssim")
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    runs = _images(root, "caption_vl")
    assert len(runs) == 5
    (source,) = [r for r in runs if set(r["variables"].values()) == {"source"}]
    source_file = root / "caption_vl" / source["image_path"]
    with ResultsStore(root, read_only=True) as store:
        (caption,) = store.captions("caption_vl").values()
    for run_ in runs:
        if run_ is source:
            continue
        assert run_["params"]["conditioning"] == "vl" and run_["params"]["vl_image"] == [str(source_file)]
        assert run_["params"]["input_sha256"]["vl_image"] == [source["image_sha256"]]
        record = read_record(root / "caption_vl" / run_["image_path"])
        (vl_pass,) = record["source_passes"]["main"]
        assert vl_pass["text"] == caption["caption"] and vl_pass["image_sha256"] == [source["image_sha256"]]
        assert not math.isnan(run_["metrics"]["ssim"])
    export = root / "caption_vl" / "export"
    assert sorted(p.name for p in (export / "regenerated").iterdir()) == sorted(
        f"a_cat_seed42_len600_content_only_VL{layer}_{mode}.png" for layer in (-6, -8) for mode in ("full", "text_only")
    )
    assert sorted(p.name for p in (export / "grids").iterdir()) == [
        "a_cat_seed42_layer_grid.png",
        "a_cat_seed42_token_mode_grid.png",
    ]
