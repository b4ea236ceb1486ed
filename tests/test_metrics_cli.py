"""``llm-dit metrics`` and ``ablate/sweep --compute-metrics`` as a user runs them, on the session's tiny checkpoint.

One real generation per module (a two-value hidden_layer experiment, one prompt, two seeds, 64x64, 2 steps) with
``--compute-metrics``; tests that change stored values work on a copy of its results directory. Every other
command fails or finishes without loading a generation model. Calls ``llm_dit.cli.main(argv)`` in-process.

Errors are one 'error: ' line on stderr (notes are printed only after a pass succeeds); a sweep prints its heading
first.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli_helpers import ANSI, assert_user_error, flat, read_csv, run
from llm_dit.cli import main
from llm_dit.experiments.store import DB_NAME, ResultsStore
from llm_dit.metrics import artifacts, pixel
from llm_dit.metrics.registry import METRICS

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

EXP = "hl_metrics"
SMALL_SETS = ["--set", "width=64", "--set", "height=64", "--set", "steps=2"]
WEIGHT_FREE = ["ssim", "psnr", "mad", "diversity_ssim", "diversity_mad", "color_shift", "grid_artifact", "sharpness"]
EXPERIMENT_TOML = f"""name = "{EXP}"
description = "metrics test: two hidden layers"
seeds = [1, 2]

[prompts]
ids = ["animal_001"]

[[axes]]
name = "hidden_layer"
values = [-1, -2]
"""


@dataclass(frozen=True)
class Done:
    rc: int
    out: str
    err: str
    root: Path  # --output-dir of the finished experiment
    experiment_file: Path


def stored_values(root: Path) -> list[Any]:
    with ResultsStore(root) as store:
        return store.metric_values(EXP)


@pytest.fixture(scope="module")
def done(tiny_checkpoint: Path, cached_tokenizer: None, tmp_path_factory: pytest.TempPathFactory) -> Done:
    base = tmp_path_factory.mktemp("metrics_cli")
    experiment_file = base / f"{EXP}.toml"
    experiment_file.write_text(EXPERIMENT_TOML, encoding="utf-8")
    root = base / "results"
    argv = ["ablate", "--experiment-file", experiment_file, "--model-path", tiny_checkpoint, "--output-dir", root]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in [*argv, *SMALL_SETS, "--compute-metrics"]])
    return Done(rc, ANSI.sub("", out.getvalue()), ANSI.sub("", err.getvalue()), root, experiment_file)


@pytest.fixture
def copy(done: Done, tmp_path: Path) -> Path:
    """A private copy of the finished results directory."""
    return Path(shutil.copytree(done.root, tmp_path / "results"))


# ------------------------------------------------------------------------------------------------ tests


def test_ablate_compute_metrics_writes_csvs_and_prints_the_table(done: Done) -> None:
    assert done.rc == 0, done.err
    out, err = flat(done.out), flat(done.err)
    computed = "ssim 4, psnr 4, mad 4, diversity_ssim 4, diversity_mad 4, color_shift 4, grid_artifact 4, sharpness 4"
    assert f"{EXP} metrics: computed {computed}; 0 already stored" in out
    assert "reference for ssim/psnr/mad/lpips/color_shift: hidden_layer=-2" in out
    assert "hidden_layer: mean ± 95% CI half-width" in out
    directory = done.root / EXP
    assert f"per run: {directory / 'results.csv'}; per value: {directory / 'summary.csv'}" in out
    # Model-based metrics without weights are named with their setting, not skipped silently.
    assert "not computed, weights not configured" in err and "siglip (siglip_path)" in err

    header, rows = read_csv(directory / "results.csv")
    assert header[-len(WEIGHT_FREE) :] == sorted(WEIGHT_FREE)
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    by_key = {(row["hidden_layer"], row["seed"]): row for row in rows}
    for seed in ("1", "2"):
        ref, other = by_key[("-2", seed)], by_key[("-1", seed)]
        assert (ref["ssim"], ref["mad"], ref["psnr"], ref["color_shift"]) == ("1.0", "0.0", "inf", "0.0")
        a, b = directory / other["output_path"], directory / ref["output_path"]
        assert float(other["ssim"]) == pytest.approx(pixel.ssim(a, b), rel=1e-12)
        assert float(other["mad"]) == pytest.approx(pixel.mean_abs_diff(a, b), rel=1e-12)
        assert float(other["mad"]) > 0  # the two layers really give different images
        assert float(other["color_shift"]) == pytest.approx(artifacts.color_shift(a, b), rel=1e-12)
        for row in (ref, other):
            want = artifacts.grid_artifact(directory / row["output_path"])
            assert float(row["grid_artifact"]) == pytest.approx(want, rel=1e-12)
    for label in ("-1", "-2"):  # two seeds: each one's diversity is its distance to the other
        one, two = (directory / by_key[(label, s)]["output_path"] for s in ("1", "2"))
        want = pixel.mean_abs_diff(one, two)
        assert float(by_key[(label, "1")]["diversity_mad"]) == pytest.approx(want, rel=1e-12)
        assert float(by_key[(label, "2")]["diversity_mad"]) == pytest.approx(want, rel=1e-12)

    _, summary = read_csv(directory / "summary.csv")
    table = {(row["metric"], row["value"]): row for row in summary}
    assert set(table) == {(m, v) for m in [*WEIGHT_FREE, "seconds_per_image_batched"] for v in ("-1", "-2")}
    assert all(row["axis"] == "hidden_layer" for row in summary)
    assert table[("ssim", "-1")]["n"] == "2"
    assert float(table[("ssim", "-1")]["mean"]) == pytest.approx(
        (float(by_key[("-1", "1")]["ssim"]) + float(by_key[("-1", "2")]["ssim"])) / 2, rel=1e-12
    )
    assert table[("diversity_mad", "-1")]["n"] == "1"  # one condition (one prompt), not two runs
    assert table[("seconds_per_image_batched", "-2")]["n"] == "2"


def test_metrics_again_computes_nothing_new(done: Done, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = stored_values(copy)
    assert len(before) == 4 * len(WEIGHT_FREE)
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", copy)
    assert rc == 0, err
    nothing = ", ".join(f"{name} 0" for name in WEIGHT_FREE)  # WEIGHT_FREE is in registry order
    assert f"computed {nothing}; {len(before)} already stored" in flat(out)
    assert stored_values(copy) == before
    assert (copy / EXP / "results.csv").read_bytes() == (done.root / EXP / "results.csv").read_bytes()
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", copy, "--metric", "ssim,mad", "--force")
    assert rc == 0, err
    assert "computed ssim 4, mad 4; 0 already stored" in flat(out)
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", copy, "--metric", "grid_artifact,color_shift", "--force")
    assert rc == 0, err
    assert "computed grid_artifact 4, color_shift 4; 0 already stored" in flat(out)


def test_reference_choice_on_the_command_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["metrics", EXP, "--output-dir", copy, "--metric", "mad", "--reference", "hidden_layer=-1"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "computed mad 4; 0 already stored" in flat(out)
    assert "reference for ssim/psnr/mad/lpips/color_shift: hidden_layer=-1" in flat(out)
    _, rows = read_csv(copy / EXP / "results.csv")
    assert {row["hidden_layer"] for row in rows if row["mad"] == "0.0"} == {"-1"}
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", copy, "--reference", "hidden_layer=-7")
    assert_user_error(rc, out, err, "--reference hidden_layer=-7", "values of hidden_layer: '-1', '-2'")


def test_siglip_without_weights_fails_before_generating(
    done: Done, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    before = stored_values(done.root)
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", done.root, "--metric", "siglip")
    assert_user_error(rc, out, err, "metric 'siglip' needs local weights", "siglip_path")
    assert stored_values(done.root) == before
    fresh = tmp_path / "fresh"
    for command in (
        ["ablate", "--experiment-file", done.experiment_file, "--compute-metrics", "--metric", "siglip"],
        ["sweep", "hidden_layer", "--quick", "--metric", "ssim,siglip"],
    ):
        argv = [*command, "--model-path", tiny_checkpoint, "--output-dir", fresh, *SMALL_SETS]
        rc, out, err = run(capsys, *argv)
        assert_user_error(rc, out, err, "metric 'siglip' needs local weights", "siglip_path", notes=True)
        assert not fresh.exists()  # no database, no images: nothing was planned or generated


def test_image_reward_is_explained(done: Done, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", done.root, "--metric", "image_reward")
    assert_user_error(rc, out, err, "ImageReward is not available", "transformers < 5", "siglip or clip_score")


def test_unknown_metric_lists_metrics(done: Done, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", done.root, "--metric", "ssim,aesthetic")
    assert_user_error(rc, out, err, f"unknown metric 'aesthetic'; metrics: {', '.join(METRICS)}")


def test_list_shows_every_metric_and_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    rc, out, err = run(capsys, "metrics", "--list")
    assert rc == 0, err
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert set(lines) == {*METRICS, "image_reward", "fid", "kid"}
    assert "ready" in lines["ssim"] and "ready" in lines["diversity_mad"]
    assert "set siglip_path" in lines["siglip"]
    assert "set lpips_backbone" in lines["lpips"] and "set clip_path" in lines["clip_score"]
    assert "set hpsv2_path" in lines["hpsv2"]
    assert "unavailable" in lines["image_reward"]
    # With the weights set in a config file, the metric is ready (paths are not loaded by --list).
    config = tmp_path / "config.toml"
    config.write_text(f'[default.metrics]\nsiglip_path = "{tmp_path / "siglip"}"\n', encoding="utf-8")
    rc, out, err = run(capsys, "metrics", "--list", "--config", config)
    assert rc == 0, err
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "ready" in lines["siglip"] and "set clip_path" in lines["clip_score"]


def test_unknown_experiment_and_missing_results_dir(
    done: Done, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(capsys, "metrics", "nope", "--output-dir", done.root)
    assert_user_error(rc, out, err, "no experiment 'nope'", f"experiments there: {EXP}")
    missing = tmp_path / "missing"
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", missing)
    assert_user_error(rc, out, err, f"no results database in {missing}", "--output-dir")
    assert not missing.exists()
    assert not (tmp_path / DB_NAME).exists()
    rc, out, err = run(capsys, "metrics", "--output-dir", done.root)
    assert_user_error(rc, out, err, "name an experiment")


def test_reference_image_of_the_wrong_size(done: Done, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(source)
    before = stored_values(done.root)
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", done.root, "--reference-image", source)
    assert_user_error(rc, out, err, f"reference image {source} is 32x32 but run", "is 64x64")
    assert stored_values(done.root) == before
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", done.root, "--reference-image", tmp_path / "nope.png")
    assert_user_error(rc, out, err, "is not a file")
