"""Metric values are tied to the exact image they were computed from, end to end on the session's tiny checkpoint.

The scenario of issue 11: ``ablate --compute-metrics``; a change that moves pixels without changing any run id (here
a code change to the pixel conversion, monkeypatched in-process); ``ablate --force --compute-metrics``. The second
pass must recompute every value (the old ones are of images that no longer exist) and ``results.csv`` and
``summary.csv`` must hold the new images' values. Then a PNG changed on disk behind the store's back: the pass
names it and stores nothing for it.

Expected values come from ``llm_dit.metrics.pixel`` applied by hand to the files on disk; CSV values are float64
read back from text (``rel=1e-12``, tests/README.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bounds import EPS64, worst_case
from cli_helpers import flat, read_csv, run
from llm_dit.experiments.store import ResultsStore
from llm_dit.generation import pipeline as pipeline_module
from llm_dit.generation.image import read_record, save_png
from llm_dit.metrics import pixel

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

EXP = "stale"
SMALL_SETS = ["--set", "width=64", "--set", "height=64", "--set", "steps=2"]
EXPERIMENT_TOML = f"""name = "{EXP}"
description = "stale metrics: two hidden layers, two seeds"
seeds = [1, 2]

[prompts]
ids = ["animal_001"]

[[axes]]
name = "hidden_layer"
values = [-1, -2]
"""
# MAD of two 64x64 RGB images: a mean of 64 * 64 * 3 integer differences in float64.
MAD_BOUND = worst_case(64 * 64 * 3, EPS64) * 255


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_by_key(directory: Path) -> dict[tuple[str, str], dict[str, str]]:
    _, rows = read_csv(directory / "results.csv")
    return {(row["hidden_layer"], row["seed"]): row for row in rows}


def summary_mean(directory: Path, metric: str, label: str) -> float:
    _, rows = read_csv(directory / "summary.csv")
    (row,) = [r for r in rows if (r["metric"], r["value"]) == (metric, label)]
    return float(row["mean"])


def test_regenerated_images_get_fresh_metrics_and_a_changed_file_is_reported(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_file = tmp_path / f"{EXP}.toml"
    experiment_file.write_text(EXPERIMENT_TOML, encoding="utf-8")
    root = tmp_path / "results"
    directory = root / EXP
    argv = ["ablate", "--experiment-file", experiment_file, "--model-path", tiny_checkpoint, "--output-dir", root]
    argv += [*SMALL_SETS, "--compute-metrics"]

    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert f"{EXP} metrics: computed ssim 4, psnr 4, mad 4, diversity_ssim 4, diversity_mad 4" in flat(out)
    before = rows_by_key(directory)
    old_files = {key: sha256(directory / row["output_path"]) for key, row in before.items()}

    # A code change that moves pixels and leaves every run id as it was: a gamma in the pixel conversion.
    real_to_pil = pipeline_module.to_pil

    def gamma(image: torch.Tensor) -> Image.Image:
        return real_to_pil(image.clamp(0, 1) ** 2)

    with monkeypatch.context() as patched:
        patched.setattr(pipeline_module, "to_pil", gamma)
        rc, out, err = run(capsys, *argv, "--force")
    assert rc == 0, err
    # Every value is recomputed: none of the stored ones is of an image that still exists.
    computed = "ssim 4, psnr 4, mad 4, diversity_ssim 4, diversity_mad 4, color_shift 4, grid_artifact 4, sharpness 4"
    assert f"computed {computed}; 0 already stored" in flat(out)
    after = rows_by_key(directory)
    assert [row["run_id"] for row in after.values()] == [row["run_id"] for row in before.values()]
    with ResultsStore(root, read_only=True) as store:
        stored_hashes = {run["run_id"]: run["image_sha256"] for run in store.runs(EXP)}
    for key, row in after.items():
        path = directory / row["output_path"]
        assert sha256(path) != old_files[key]  # really another image
        assert stored_hashes[row["run_id"]] == sha256(path) == row["image_sha256"]
    new_mads = []
    for seed in ("1", "2"):
        other, ref = (directory / after[(label, seed)]["output_path"] for label in ("-1", "-2"))
        want = pixel.mean_abs_diff(other, ref)
        got = float(after[("-1", seed)]["mad"])
        assert got == pytest.approx(want, rel=1e-12)  # the new images' MAD
        assert abs(got - float(before[("-1", seed)]["mad"])) > MAD_BOUND  # and not the old one
        assert float(after[("-1", seed)]["ssim"]) == pytest.approx(pixel.ssim(other, ref), rel=1e-12)
        new_mads.append(got)
    assert summary_mean(directory, "mad", "-1") == pytest.approx(sum(new_mads) / 2, rel=1e-12)
    one, two = (directory / after[("-1", s)]["output_path"] for s in ("1", "2"))
    assert float(after[("-1", "1")]["diversity_mad"]) == pytest.approx(pixel.mean_abs_diff(one, two), rel=1e-12)

    # A PNG changed on disk since it was written (same name, record kept, one pixel moved).
    changed = after[("-1", "1")]
    path = directory / changed["output_path"]
    with Image.open(path) as opened:
        pixels = np.array(opened.convert("RGB"))
    pixels[0, 0] = 255 - pixels[0, 0]
    save_png(Image.fromarray(pixels), path, read_record(path), "tampered")
    with ResultsStore(root) as store:
        values_before = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
    rc, out, err = run(capsys, "metrics", EXP, "--output-dir", root, "--force")
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "changed on disk" in line]
    assert len(lines) == 1 and changed["run_id"] in lines[0] and str(path) in lines[0], err
    # Its values, and the diversity of its seed group-mate (which compares with it), were not recomputed.
    uses_it = {changed["run_id"], after[("-1", "2")]["run_id"]}
    assert "computed ssim 3, psnr 3, mad 3, diversity_ssim 2, diversity_mad 2" in flat(out)
    with ResultsStore(root) as store:
        values_after = {(v.run_id, v.name): v for v in store.metric_values(EXP)}
    untouched = {key: value for key, value in values_after.items() if key[0] == changed["run_id"]}
    assert untouched == {key: value for key, value in values_before.items() if key[0] == changed["run_id"]}
    for (run_id, name), value in values_after.items():
        if name.startswith("diversity") and run_id in uses_it:
            assert value == values_before[(run_id, name)]


def test_a_resume_under_other_execution_facts_says_so_in_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment_file = tmp_path / f"{EXP}.toml"
    experiment_file.write_text(EXPERIMENT_TOML, encoding="utf-8")
    root = tmp_path / "results"
    argv: list[Any] = ["ablate", "--experiment-file", experiment_file, "--model-path", tiny_checkpoint]
    argv += ["--output-dir", root, *SMALL_SETS]
    rc, _, err = run(capsys, *argv, "--batch-size", "4")
    assert rc == 0, err
    assert "execution facts" not in err
    directory = root / EXP
    _, rows = read_csv(directory / "results.csv")
    record = read_record(directory / rows[0]["output_path"])
    facts = record["execution"]
    assert facts["batch_size_limit"] == 4 and facts["dit"] == record["devices"]["dit"].replace("/", "/torch.")
    assert facts["torch"] == torch.__version__ and facts["llm_dit"] == record["versions"]["llm-dit"]
    assert (record["batch_size"], record["batch_position"]) == (4, 0)
    with ResultsStore(root, read_only=True) as store:
        assert all(run["execution"] == facts for run in store.runs(EXP))

    rc, _, err = run(capsys, *argv, "--batch-size", "2")  # resume: every run is done
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "execution facts" in line]
    assert len(lines) == 1, err
    assert "4 of the 4 done runs kept" in lines[0] and "batch_size_limit 4, now 2" in lines[0]
    assert "--force" in lines[0]
    rc, _, err = run(capsys, *argv, "--batch-size", "4")  # the same facts again: nothing to say
    assert rc == 0 and "execution facts" not in err, err
