"""The built-in Qwen3-VL experiments (seed 004): listed, dry-run, and run end to end on the built-in tiny models.

Also the two things they brought: input images of an experiment (``images = [...]``, the ``{image}``, ``{image2}``,
..., ``{images}`` placeholders, ``--image``) and the baseline (one run outside the grid, here the pure Qwen3-4B run,
the metrics' default reference), and ``llm-dit sweep vl``. The refusals (one line, exit 2, no model library) are rows
of tests/test_bad_input.py.

Like tests/test_conditioning_sources.py these runs use the cached tiny model (``--model tiny``: its tiny VL twin
fits only it), not the session's ``tiny_checkpoint``. The end-to-end tests share one pipeline (``from_settings`` is
patched to return it, the rest of ``ablate`` runs as a user runs it) and make each built-in's runs for one prompt and
one seed at 16x16 in 2 steps; the reference statistics the built-ins normalise with are computed for every layer
they use in one encode per template beforehand (they are cached on disk, as a user's are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli_helpers import ANSI, flat, run, subprocess_env
from llm_dit.config import ConditioningSettings, EncoderSettings, Settings
from llm_dit.errors import ConfigError
from llm_dit.experiments.loader import builtin_experiments, get_experiment, load_experiment_file
from llm_dit.experiments.model import Axis, AxisValue, Experiment
from llm_dit.experiments.planner import plan
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.store import ResultsStore
from llm_dit.generation.image import read_record

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

INPUTS = Path(__file__).resolve().parents[1] / "src" / "llm_dit" / "data" / "inputs"
SCENE, STYLE = INPUTS / "test_scene.png", INPUTS / "style_reference.png"
VL_BUILTINS = sorted(name for name in builtin_experiments() if name.startswith("vl_"))
# Every experiment the issue names (vl_adain and vl_blend_comparison are both shipped).
ISSUE = [
    *("vl_alpha", "vl_layer", "vl_token_mode", "vl_normalization", "vl_outlier_masking", "vl_full_grid"),
    *("vl_only_vs_qwen3", "vl_layer_by_token", "vl_style_delta", "vl_adain", "vl_blend_comparison"),
    *("vl_intra_blend", "vl_cross_normalization", "vl_timestep_alpha", "vl_multi_reference", "vl_style_transfer"),
    "vl_think_comparison",
]
# The default labels of the metrics (each run's reference: the run of its prompt and seed at these labels, other axes
# held at its own value): every axis at the baseline's label, but vl_style_transfer has a text run per strength and
# vl_think_comparison crosses the text run with the think blocks (none: the official default).
DEFAULT_LABELS = {
    "vl_style_transfer": {"vl_alpha": "qwen3_4b"},
    "vl_think_comparison": {"think": "none", "source": "qwen3_4b"},
}


def default_labels_of(name: str) -> dict[str, str]:
    return DEFAULT_LABELS.get(name) or {axis: "qwen3_4b" for axis in get_experiment(name).variables()}


TINY = ("--model", "tiny")
SMALL = ("--max-prompts", "1", "--seeds", "42", "--set", "steps=2", "--set", "width=16", "--set", "height=16")
SUMMARY_RE = re.compile(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed")
TIMES: dict[str, dict[str, float]] = {"dry-run": {}, "end-to-end": {}}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def report_times() -> Iterator[None]:
    """Print the measured times at the end of the module (visible with -s, or in the captured output)."""
    yield
    for kind, times in TIMES.items():
        if times:
            rows = ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(times.items()))
            print(f"\n{kind} seconds ({len(times)}, total {sum(times.values()):.1f}): {rows}")


# ------------------------------------------------------------------------------------------------- the set


def test_every_builtin_of_the_issue_is_shipped_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(ISSUE) == VL_BUILTINS
    rc, out, err = run(capsys, "ablate", "--list-experiments", "--format", "json")
    assert rc == 0, err
    listed = {row["name"]: row for row in json.loads(out)}
    for name in VL_BUILTINS:
        exp = get_experiment(name)
        assert listed[name]["runs_per_prompt"] == exp.combination_count() * len(exp.seeds)
        assert listed[name]["question"].endswith("?"), name  # the description states the question first
        assert exp.images and exp.prompt_ids and exp.seeds == (42, 123)


@pytest.mark.parametrize("name", VL_BUILTINS)
def test_each_builtin_has_the_pure_qwen3_4b_run_as_its_default_reference(name: str) -> None:
    """Planned: the default labels (the metrics' rule, on the planned runs and the definition as stored) pick a text
    run with nothing VL on it (the end-to-end test checks the reference each run gets in a real metrics pass)."""
    from llm_dit.experiments.planner import REPLACES, default_params
    from llm_dit.metrics.reference import default_labels, swept_parameters

    exp = get_experiment(name)
    runs = plan(exp, [Prompt("p", "a red house")], [42], Settings(), model_fingerprint="fp")
    rows = [{"variables": r.variables, "params": json.loads(json.dumps(r.params))} for r in runs]
    definition = json.loads(json.dumps(exp.with_images().to_dict()))  # as the runner stores it
    labels = default_labels(rows, definition, default_params())
    assert labels == default_labels_of(name)
    texts = [r for r in runs if all(r.variables[a] == label for a, label in labels.items())]
    assert texts  # one, or one per value of an axis without a default (vl_style_transfer: per strength)
    for text in texts:
        assert text.params["conditioning"] == "text" and text.params["source_model"] is None
        inert = [k for k in ConditioningSettings.model_fields if k != "conditioning"]
        assert all(text.params[k] is None for k in inert), {k: text.params[k] for k in inert}
    # What the metrics hold fixed between a run and its reference leaves the source's settings out.
    assert {"conditioning", "vl_image", "vl_layer", "input_sha256", "source_model"} <= swept_parameters(
        definition, REPLACES
    )


# ---------------------------------------------------------------------------------------------- dry runs


@pytest.mark.parametrize("name", VL_BUILTINS)
def test_each_builtin_dry_runs_on_the_tiny_models(
    name: str, tiny_cached: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.perf_counter()
    rc, out, err = run(capsys, "ablate", "-e", name, "--dry-run", *TINY, "--output-dir", tmp_path / "results")
    TIMES["dry-run"][name] = time.perf_counter() - start
    assert rc == 0, err
    exp = get_experiment(name)
    text = flat(out)
    assert f"{exp.combination_count() * 2 * 2} runs = 2 prompts x {exp.combination_count()} combinations" in text
    assert "input images: " + ", ".join(os.path.abspath(p) for p in exp.images) in text
    assert not (tmp_path / "results").exists()


def test_a_vl_dry_run_and_the_vl_sweep_import_no_model_library(tiny_cached: Path, tmp_path: Path) -> None:
    """In a fresh Python: `sweep vl --quick --dry-run` (the P0 set, in the seed's order) imports no model library."""
    child = (
        "import sys\nfrom llm_dit.cli import main\nrc = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "print('HEAVY', rc, heavy)\n"
    )
    argv = ["sweep", "vl", "--quick", "--dry-run", *TINY, "--output-dir", str(tmp_path / "results")]
    done = subprocess.run(
        [sys.executable, "-c", child, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    out, err = ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)
    assert "HEAVY 0 []" in out, out + err
    headings = re.findall(r"sweep vl: (\w+)", err)  # headings go to stderr, plans to stdout
    assert headings == ["vl_outlier_masking", "vl_only_vs_qwen3", "vl_layer_by_token"]
    # --quick: 2 prompts (the built-ins' own) and seed 42
    assert flat(out).count("x 1 seed") == 3


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def pipe(tiny_cached: Path) -> Iterator[Any]:
    """One built-in tiny pipeline (VL twin included) for every end-to-end test, with the Qwen3-4B reference
    statistics of every (template, layer) the built-ins normalise or mask with computed in one encode per template
    (what the pipeline reads from the disk cache; a miss would only make it compute them itself).

    The statistics are taken over the library's 16 first short prompts, not all of it: its 4 long prompts make one
    encode on the tiny model ~10 s instead of ~0.6 s (on a cold cache, twice), and these tests are about the
    experiments, not the statistics (tests/test_conditioning_sources.py covers those)."""
    from llm_dit.conditioning import reference_stats as rs
    from llm_dit.generation.pipeline import LlmDitPipeline

    short = [text for text in rs.reference_texts() if len(text) < 300][:16]
    patch = pytest.MonkeyPatch()
    patch.setattr(rs, "reference_texts", lambda: list(short))
    pipeline = LlmDitPipeline.from_pretrained(None)
    wanted: dict[str, tuple[EncoderSettings, set[int]]] = {}
    for name in VL_BUILTINS:
        for r in plan(get_experiment(name), [Prompt("p", "a house")], [42], Settings(), model_fingerprint="fp"):
            conditioning = ConditioningSettings(**r.conditioning_params())
            if conditioning.needs_reference_stats:
                encoder = EncoderSettings(**r.encoder_params())
                wanted.setdefault(rs.template_key(encoder), (encoder, set()))[1].add(conditioning.vl_layer)
    fingerprint = pipeline.fingerprint
    for key, (encoder, layers) in wanted.items():

        def encode(texts: Any, at: Any, encoder: EncoderSettings = encoder) -> Any:
            return pipeline.encoder.encode_layers(texts, at, **rs.template_overrides(encoder))

        rs.load_or_compute(fingerprint, key, rs.reference_texts(), sorted(layers), encode)
    yield pipeline
    patch.undo()


_TOKENIZERS: dict[str, Any] = {}


@pytest.fixture
def shared(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``ablate`` builds its pipeline with ``from_settings``: here it gets the shared one (same default settings).
    The light checks' tokenizer is parsed once for these tests, not once per command (0.4 s each; the dry-run
    tests above pay it, as a user does)."""
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.models import tokenizer

    real = tokenizer.checkpoint_tokenizer

    def once(path: str | Path) -> Any:
        key = str(Path(path).resolve())
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = real(path)
        return _TOKENIZERS[key]

    monkeypatch.setattr(tokenizer, "checkpoint_tokenizer", once)
    monkeypatch.setattr(LlmDitPipeline, "from_settings", classmethod(lambda cls, settings, **kw: pipe))
    return pipe


@pytest.mark.parametrize("name", VL_BUILTINS)
def test_each_builtin_runs_end_to_end_on_the_tiny_models(
    name: str, shared: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    exp = get_experiment(name).with_images()
    start = time.perf_counter()
    argv = ("ablate", "-e", name, *TINY, *SMALL, "--output-dir", results, "--compute-metrics", "--metric", "mad")
    rc, _, err = run(capsys, *argv)
    TIMES["end-to-end"][name] = time.perf_counter() - start
    assert rc == 0, err
    count = exp.combination_count()
    match = SUMMARY_RE.search(flat(err))
    assert match and match.groups() == (str(count), "0", "0"), err

    with ResultsStore(results, read_only=True) as store:
        runs = store.runs(name)
        definition = store.experiment(name)["definition"]
        metrics = {(m.run_id, m.name): m for m in store.metric_values(name)}
    assert len(runs) == count and {r["status"] for r in runs} == {"done"}
    # The stored definition names the images used, as absolute paths; so do the runs' params and records.
    assert definition["images"] == [os.path.abspath(p) for p in exp.images]
    hashes = {path: sha256(path) for path in exp.images}
    vl_runs = [r for r in runs if r["params"]["conditioning"] == "vl"]
    assert vl_runs
    for r in vl_runs:
        params = r["params"]
        named = next(params[k] for k in ("vl_image", "style_image") if params[k] is not None)
        named = named if isinstance(named, list) else [named]
        assert set(named) <= set(hashes)
        record = read_record(results / name / r["image_path"])
        # (a style delta's generated mid-gray neutral pass has no file: image_sha256 [null])
        passes = [p for role in record["source_passes"].values() for p in role if any(p.get("image_sha256") or [])]
        assert passes, record["source_passes"]
        for p in passes:
            assert all(Path(i).is_absolute() and i in hashes for i in p["images"]), p["images"]
            assert p["image_sha256"] == [hashes[i] for i in p["images"]]
        flat_hashes = [
            h for value in params["input_sha256"].values() for h in (value if isinstance(value, list) else [value])
        ]
        assert set(flat_hashes) <= set(hashes.values())
    # MAD against the default reference: the pure Qwen3-4B run of the same prompt and seed (0 for itself).
    by_id = {r["run_id"]: r for r in runs}
    for r in runs:
        value = metrics[(r["run_id"], "mad")]
        reference = by_id[value.params["reference"].removeprefix("run:")]
        assert reference["params"]["conditioning"] == "text" and reference["seed"] == r["seed"]
        assert reference["variables"] == {**r["variables"], **default_labels_of(name)}
        if reference is r:
            assert value.value == 0.0


# ---------------------------------------------------------------------------------------------- --image


def test_image_replaces_the_experiments_own_and_is_recorded(
    tiny_cached: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = tmp_path / "mine.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ref)
    rc, out, err = run(capsys, "ablate", "-e", "vl_alpha", "--dry-run", "--format", "json", *TINY, "--image", ref)
    assert rc == 0, err
    rows = json.loads(out)
    vl = [r for r in rows if r["params"]["conditioning"] == "vl"]
    assert vl and all(r["params"]["vl_image"] == [str(ref)] for r in vl)
    assert all(r["params"]["input_sha256"] == {"vl_image": [sha256(ref)]} for r in vl)
    # The same image under another path gives the same run ids (ids hash bytes, not paths).
    copy = tmp_path / "sub" / "copy.png"
    copy.parent.mkdir()
    copy.write_bytes(ref.read_bytes())
    rc, again, err = run(capsys, "ablate", "-e", "vl_alpha", "--dry-run", "--format", "json", *TINY, "--image", copy)
    assert rc == 0, err
    assert [r["run_id"] for r in json.loads(again)] == [r["run_id"] for r in rows]


def test_two_images_fill_image_and_image2_in_order(tiny_cached: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("ablate", "-e", "vl_multi_reference", "--dry-run", "--format", "json", *TINY)
    rc, out, err = run(capsys, *argv, "--image", STYLE, "--image", SCENE)  # swapped
    assert rc == 0, err
    images = {r["variables"]["reference"]: r["params"]["vl_image"] for r in json.loads(out) if r["seed"] == 42}
    assert images["image1"] == [str(STYLE)] and images["image2"] == [str(SCENE)]
    assert images["one_turn"] == images["w0.7-0.3"] == [str(STYLE), str(SCENE)]
    assert images["qwen3_4b"] is None


def test_placeholders_are_resolved_in_one_place() -> None:
    exp = Experiment(
        "multi", "", (1,), (), None, None,
        {"conditioning": "vl", "init_image": "{image2}"},
        (Axis("v", (AxisValue("a", {"vl_image": "{image}"}), AxisValue("b", {"vl_image": ["{images}", "x.png"]}))),),
        "test",
    )  # fmt: skip
    assert exp.images_needed() == (2, True)
    resolved = exp.with_images(["a.png", "b.png", "c.png"])
    full = [os.path.abspath(p) for p in ("a.png", "b.png", "c.png")]
    assert resolved.images == tuple(full)
    assert resolved.base["init_image"] == full[1]
    assert [v.params["vl_image"] for v in resolved.axes[0].values] == [full[0], [*full, "x.png"]]
    assert resolved.with_images() is resolved  # nothing left to resolve
    assert resolved.to_dict()["images"] == full
    with pytest.raises(ConfigError, match=r"^multi needs 2 images \(\{image2\} in \[base\] init_image\), got 1: pass "):
        exp.with_images(["a.png"])
    plain = dataclasses.replace(exp, base={"steps": 2}, axes=(Axis("steps", (AxisValue("2", {"steps": 2}),)),))
    with pytest.raises(ConfigError, match=r"^experiment multi takes no input image; drop --image$"):
        plain.with_images(["a.png"])
    assert plain.with_images() is plain


EXPERIMENT = """
name = "mine"
images = {images}

[base]
conditioning = "vl"
vl_image = "{vl_image}"

[baseline]
label = "text"
conditioning = "text"

[[axes]]
name = "vl_alpha"
values = [0.5, 1.0]
"""


def write(tmp_path: Path, **fields: str) -> Path:
    values = {"images": '["ref.png"]', "vl_image": "{image}", **fields}
    path = tmp_path / "mine.toml"
    path.write_text(EXPERIMENT.replace("{images}", values["images"]).replace("{vl_image}", values["vl_image"]))
    return path


def test_an_experiment_files_images_are_relative_to_it_and_planned(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "ref.png")
    exp = load_experiment_file(write(tmp_path))
    assert exp.images == (str(tmp_path / "ref.png"),) and exp.base["vl_image"] == "{image}"
    runs = plan(exp, [Prompt("p", "a cat")], [1], Settings(), model_fingerprint="fp")
    assert [r.variables["vl_alpha"] for r in runs] == ["text", "0.5", "1.0"]
    assert runs[0].params["vl_image"] is None and runs[1].params["vl_image"] == [str(tmp_path / "ref.png")]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"vl_image": "{imag}"}, r"mine.toml:7: mine: vl_image = \"\{imag\}\" is not a placeholder"),
        ({"vl_image": "{image1}"}, r"is not a placeholder: use \{image\} \(the first image\)"),
        ({"images": "[]", "vl_image": "ref.png"}, None),  # no images and no placeholder: fine
        ({"vl_image": "ref.png"}, r"mine.toml:3: mine: images = \[...\] is read by no placeholder"),
        ({"images": '["a.png", "b.png"]'}, r"images lists 2 images but its placeholders read 1"),
        ({"images": '"ref.png"'}, r"images must be a list of image paths"),
    ],
)
def test_bad_images_and_placeholders_name_the_line(tmp_path: Path, fields: dict[str, str], needle: str | None) -> None:
    path = write(tmp_path, **fields)
    if needle is None:
        load_experiment_file(path)
        return
    with pytest.raises(ConfigError, match=needle):
        load_experiment_file(path)


def test_images_placeholder_is_for_vl_image_only(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text('name = "x"\nimages = ["a.png"]\n[base]\ninit_image = "{images}"\n'
                                     '[[axes]]\nname = "steps"\nvalues = [2]\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"x.toml:4: x: init_image takes one image; \{images\} is the whole list"):
        load_experiment_file(tmp_path / "x.toml")


# ---------------------------------------------------------------------------------------------- the baseline


def test_the_baseline_keeps_the_grids_size_and_steps_but_not_its_conditioning(tmp_path: Path) -> None:
    """Encoder and generation settings of [base] and --set reach the baseline; their conditioning does not (noted)."""
    from llm_dit.experiments.preparation import prepare_experiment

    prepared = prepare_experiment(
        "vl_alpha", settings=Settings(), max_prompts=1, seeds=[1],
        overrides={"width": 64, "height": 64, "steps": 2, "vl_layer": -6},
    )  # fmt: skip
    baseline, *vl = prepared.runs
    assert baseline.variables == {"vl_alpha": "qwen3_4b"}
    assert (baseline.params["width"], baseline.params["steps"]) == (64, 2)
    assert baseline.params["conditioning"] == "text" and baseline.params["vl_layer"] is None
    assert {r.params["vl_layer"] for r in vl} == {-6} and {r.params["conditioning"] for r in vl} == {"vl"}
    note = "--set vl_layer does not apply to the baseline 'qwen3_4b' (it keeps its own conditioning)"
    assert prepared.notes == [note]
    stored = prepared.experiment.to_dict()
    assert stored["baseline"] == {"label": "qwen3_4b", "params": {"conditioning": "text"}}
    assert stored["axes"][0]["values"][0] == {"label": "qwen3_4b", "params": {"conditioning": "text"}}


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('label = "0.5"\nconditioning = "text"', "baseline label '0.5' is also a value of axis 'vl_alpha'"),
        ('conditioning = "text"', 'baseline needs a label, e.g. label = "qwen3_4b"'),
        ('label = "t"', "baseline 't' sets no parameter"),
        ('label = "t"\nconditioning = "txt"', "baseline 't': conditioning 'txt' is not valid"),
    ],
)
def test_bad_baselines_are_refused(tmp_path: Path, table: str, needle: str) -> None:
    text = f'name = "b"\n[baseline]\n{table}\n[[axes]]\nname = "vl_alpha"\nvalues = [0.5]\n'
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_experiment_file(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text('name = "c"\n[baseline]\nlabel = "t"\nconditioning = "text"\n')
    with pytest.raises(ConfigError, match="a baseline needs an axis"):
        load_experiment_file(tmp_path / "c.toml")


# ---------------------------------------------------------------------------------------------- sweep vl


def test_sweep_all_keeps_its_meaning_and_vl_is_a_group() -> None:
    from llm_dit.experiments.sweeps import SWEEPS, get_sweep, sweep_names

    assert [p.experiment for p in SWEEPS] == [
        "hidden_layer", "shift_steps_grid", "think_block", "long_prompt_mode", "hidden_layer_blend",
    ]  # fmt: skip
    assert [p.experiment for p in get_sweep("vl")] == ["vl_outlier_masking", "vl_only_vs_qwen3", "vl_layer_by_token"]
    assert sweep_names()[-3:] == ["vl", "embedding", "caption"]
    assert [p.name for p in get_sweep("think_block")] == ["think_block"]
