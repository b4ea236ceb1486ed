"""``llm-dit compare`` as a user runs it, on the session's tiny-model results (``tiny_results``): --list, --info,
grids, side-by-side, diffs, filters (a value label with a comma included), output formats, one-line errors, and the
results directory left exactly as it was."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_user_error, flat, results_snapshot, run, subprocess_env
from llm_dit.analysis.compare import plan_grid, plan_pairs
from llm_dit.analysis.diff import diff_image
from llm_dit.analysis.grid import Box
from llm_dit.analysis.results import load_experiment

BLEND = "-2:0.5,-5:0.5"  # a layer label with a comma
WROTE = re.compile(r"^wrote (\S+) \((\d+)x(\d+)\)$", re.MULTILINE)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory (default outputs land in the current directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def written(err: str) -> list[tuple[Path, tuple[int, int]]]:
    """The (path, size) of every 'wrote PATH (WxH)' line."""
    return [(Path(path), (int(w), int(h))) for path, w, h in WROTE.findall(err)]


def find_run(root: Path, experiment: str, **dims: str) -> dict[str, Any]:
    exp = load_experiment(root, experiment)
    (match,) = [
        r
        for r in exp.runs
        if r["prompt_id"] == dims["prompt"]
        and str(r["seed"]) == dims["seed"]
        and all(r["variables"][axis] == value for axis, value in dims.items() if axis not in ("prompt", "seed"))
    ]
    return match


def source_pixels(root: Path, experiment: str, scale: int = 2, **dims: str) -> np.ndarray:
    """A run's image enlarged ``scale`` times by pixel repetition (64 px images -> 128 px cells)."""
    run_ = find_run(root, experiment, **dims)
    with Image.open(root / experiment / run_["image_path"]) as img:
        return np.asarray(img.convert("RGB")).repeat(scale, 0).repeat(scale, 1)


def cell(path: Path, box: Box) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))[box.y : box.bottom, box.x : box.right]


# -- --list and --info ------------------------------------------------------------------------------------------


def test_list(capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path) -> None:
    rc, out, err = run(capsys, "compare", "--list", "--output-dir", tiny_results)
    assert rc == 0, err
    line = next(line for line in out.splitlines() if " look " in line)
    assert re.search(r"36/36\s*[│|]\s*0\s*[│|]\s*complete", line), line
    line = next(line for line in out.splitlines() if " look_custom " in line)
    assert re.search(r"6/6\s*[│|]\s*0\s*[│|]\s*complete", line), line
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", out)  # started / finished


def test_list_without_a_database_names_output_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, in_tmp: Path
) -> None:
    assert_user_error(*run(capsys, "compare", "--list", "--output-dir", tmp_path / "nowhere"), "--output-dir")
    assert not (tmp_path / "nowhere").exists()


def test_info(capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path) -> None:
    rc, out, err = run(capsys, "compare", "-e", "look", "--info", "--output-dir", tiny_results)
    assert rc == 0, err
    text = flat(out)
    assert "look: shift x layer on the tiny model" in text
    assert "runs: 36 done, 0 failed, 0 planned, 36 total" in text
    assert re.search(r"shift\s*[│|]\s*2\.0, 3\.0, 6\.0", out)
    assert re.search(r'layer\s*[│|]\s*-2, "-2:0\.5,-5:0\.5"', out)  # quoted as --values needs it
    assert re.search(r"animal_001\s*[│|]\s*animals\s*[│|]\s*A tabby cat sleeping on a windowsill", out)
    assert re.search(r"simple_001\s*[│|]\s*simple\s*[│|]", out)
    assert "seeds (--seed): 1, 2" in text
    for metric in ("ssim", "psnr", "mad", "diversity_mad"):
        assert f"{metric} (36 values)" in text
    rc, out, err = run(capsys, "compare", "-e", "look_custom", "--info", "--output-dir", tiny_results)
    assert rc == 0, err
    assert re.search(r"custom_001\s*[│|]\s*custom\s*[│|]\s*A red cube on a blue table", out)
    assert "metrics: none yet" in flat(out)


# -- pictures ---------------------------------------------------------------------------------------------------


def test_default_grid_pages_per_layer_and_seed(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path
) -> None:
    rc, _out, err = run(capsys, "compare", "-e", "look", "--output-dir", tiny_results)
    assert rc == 0, err
    pages = written(err)
    assert [path.name for path, _ in pages] == [f"look_grid_p0{i}.png" for i in (1, 2, 3, 4)]
    comparison = plan_grid(load_experiment(tiny_results, "look"))
    assert [p.title for p in comparison.pages] == [
        "look · layer=-2 · seed=1",
        "look · layer=-2 · seed=2",
        f"look · layer={BLEND} · seed=1",
        f"look · layer={BLEND} · seed=2",
    ]
    for index, (path, size) in enumerate(pages):
        with Image.open(in_tmp / path) as img:
            assert (img.format, img.size) == ("PNG", size)
        layout = comparison.layout(index)
        assert size == (layout.width, layout.height)
    # page 4 (layer = the blend, seed 2): row simple_001, column shift=6.0 is that run's image, doubled
    layout = comparison.layout(3)
    expected = source_pixels(tiny_results, "look", prompt="simple_001", shift="6.0", layer=BLEND, seed="2")
    assert np.array_equal(cell(in_tmp / pages[3][0], layout.cells[2][2]), expected)


def test_grid_of_chosen_dimensions_with_filters(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path
) -> None:
    argv = ["compare", "-e", "look", "--rows", "seed", "--cols", "layer", "--values", f'"{BLEND}",-2']
    argv += ["--prompt", "animal_002", "--where", "shift=2.0,6.0", "--metric", "ssim,psnr", "-o", "g.png"]
    rc, _out, err = run(capsys, *argv, "--output-dir", tiny_results)
    assert rc == 0, err
    assert [path.name for path, _ in written(err)] == ["g_p01.png", "g_p02.png"]  # a page per shift
    exp = load_experiment(tiny_results, "look")
    filters = {"layer": [BLEND, "-2"], "prompt": ["animal_002"], "shift": ["2.0", "6.0"]}
    comparison = plan_grid(exp, "seed", "layer", filters, ["ssim", "psnr"])
    page = comparison.page(1)
    assert page.title.startswith('look · animal_002 "A fluffy orange cat')
    assert page.title.endswith("shift=6.0")
    assert page.col_labels == (f"layer={BLEND}", "layer=-2")
    assert page.row_labels == ("seed=1", "seed=2")
    assert [line.split("\t")[0] for line in page.cells[0][0].caption] == ["ssim", "psnr"]
    layout = comparison.layout(1)
    expected = source_pixels(tiny_results, "look", prompt="animal_002", shift="6.0", layer=BLEND, seed="2")
    assert np.array_equal(cell(in_tmp / "g_p02.png", layout.cells[1][0]), expected)


def test_side_by_side_with_a_comma_label(capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path) -> None:
    argv = ["compare", "-e", "look", "--mode", "side-by-side", "--axis", "layer", "--values", f'"{BLEND}",-2']
    argv += ["--prompt", "animal_001", "--seed", "1", "--output-dir", tiny_results]
    rc, _out, err = run(capsys, *argv)
    assert rc == 0, err
    ((path, size),) = written(err)
    assert path == Path("look_side-by-side.png")
    exp = load_experiment(tiny_results, "look")
    comparison = plan_pairs(
        exp, "side-by-side", "layer", {"layer": [BLEND, "-2"], "prompt": ["animal_001"], "seed": ["1"]}
    )
    planned = comparison.pages[0]
    assert planned.col_labels == (f"A: layer={BLEND}", "B: layer=-2")
    assert planned.row_labels == ("shift=2.0", "shift=3.0", "shift=6.0")
    layout = comparison.layout(0)
    assert size == (layout.width, layout.height)
    for row, shift in enumerate(("2.0", "3.0", "6.0")):
        for col, layer in enumerate((BLEND, "-2")):
            expected = source_pixels(tiny_results, "look", prompt="animal_001", shift=shift, layer=layer, seed="1")
            assert np.array_equal(cell(in_tmp / path, layout.cells[row][col]), expected), (shift, layer)


@pytest.mark.parametrize("diff_mode", ["highlight", "absolute", "heatmap"])
def test_diff_modes(capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path, diff_mode: str) -> None:
    # layer has exactly two values: no --values needed
    argv = ["compare", "-e", "look", "--mode", "diff", "--axis", "layer", "--prompt", "animal_001", "--seed", "2"]
    argv += ["--where", "shift=6.0", "--diff-mode", diff_mode, *(["--gain", "4"] if diff_mode == "absolute" else [])]
    rc, _out, err = run(capsys, *argv, "--threshold", "3", "-o", "d.png", "--output-dir", tiny_results)
    assert rc == 0, err
    ((path, size),) = written(err)
    dims = {"prompt": "animal_001", "shift": "6.0", "seed": "2"}
    a = source_pixels(tiny_results, "look", scale=1, layer="-2", **dims)
    b = source_pixels(tiny_results, "look", scale=1, layer=BLEND, **dims)
    expected = (
        diff_image(a, b, diff_mode, threshold=3, gain=4 if diff_mode == "absolute" else 1).repeat(2, 0).repeat(2, 1)
    )
    exp = load_experiment(tiny_results, "look")
    comparison = plan_pairs(
        exp, "diff", "layer", {"prompt": ["animal_001"], "seed": ["2"], "shift": ["6.0"]}, diff_mode=diff_mode,
        threshold=3, gain=4 if diff_mode == "absolute" else 1,
    )  # fmt: skip
    layout = comparison.layout(0)
    assert size == (layout.width, layout.height)
    assert np.array_equal(cell(in_tmp / path, layout.cells[0][0]), a.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(cell(in_tmp / path, layout.cells[0][2]), expected)
    caption = comparison.page(0).cells[0][2].caption
    assert caption[0].startswith("changed > 3\t")
    assert caption[2] == f"max |A-B|\t{int(np.abs(a.astype(int) - b).max())}"


@pytest.mark.parametrize(("name", "fmt"), [("g.jpg", "JPEG"), ("g.webp", "WEBP"), ("sub/dir/g.png", "PNG")])
def test_output_formats(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path, name: str, fmt: str
) -> None:
    argv = ["compare", "-e", "look", "--prompt", "simple_001", "--seed", "1", "--where", "layer=-2", "-o", name]
    rc, _out, err = run(capsys, *argv, "--cell-size", "64", "--output-dir", tiny_results)
    assert rc == 0, err
    ((path, size),) = written(err)
    assert path == Path(name)
    with Image.open(in_tmp / name) as img:
        assert (img.format, img.size) == (fmt, size)


def test_existing_outputs_are_refused_before_anything_is_drawn(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path
) -> None:
    (in_tmp / "look_grid_p03.png").write_bytes(b"keep")
    assert_user_error(
        *run(capsys, "compare", "-e", "look", "--output-dir", tiny_results),
        "look_grid_p03.png already exists",
        "--overwrite",
    )
    assert sorted(p.name for p in in_tmp.iterdir()) == ["look_grid_p03.png"]  # no page written
    rc, _out, err = run(capsys, "compare", "-e", "look", "--overwrite", "--output-dir", tiny_results)
    assert rc == 0, err
    assert len(written(err)) == 4 and (in_tmp / "look_grid_p03.png").read_bytes() != b"keep"


# -- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ([], ("name an experiment", "--list")),
        (["-e", "lok"], ("no experiment 'lok'", "did you mean 'look'")),
        (["-e", "look", "--list"], ("--list",)),
        (["-e", "look", "--mode", "blink"], ("--mode 'blink'", "grid, side-by-side, diff")),
        (["-e", "look", "--values", "9.9"], ("shift has no value '9.9'",)),
        (["-e", "look", "--prompt", "animal_01"], ("no value 'animal_01'", "did you mean")),
        (["-e", "look", "--seed", "3"], ("seed has no value '3'",)),
        (["-e", "look", "--rows", "sede"], ("no dimension 'sede'", "did you mean 'seed'")),
        (["-e", "look", "--rows", "shift"], ("both 'shift'",)),
        (["-e", "look", "--where", "shift"], ("expected DIMENSION=VALUES",)),
        (["-e", "look", "--values", '"-2'], ("--values", "double quotes")),
        (["-e", "look", "--seed", "1", "--where", "seed=2"], ("--where and --seed both select seed",)),
        (["-e", "look", "--values", "2.0", "--where", "shift=3.0"], ("--where and --values both select shift",)),
        (["-e", "look", "--metric", "lpips"], ("no values of metric 'lpips'", "llm-dit metrics look")),
        (["-e", "look", "--metric", "ssim", "--no-metrics"], ("contradict",)),
        (["-e", "look", "--mode", "side-by-side"], ("exactly two values of shift, got 3", "--values A,B")),
        (["-e", "look", "--mode", "diff", "--values", "2.0"], ("exactly two values of shift, got 1",)),
        (["-e", "look", "--mode", "side-by-side", "--rows", "seed"], ("--rows applies to --mode grid",)),
        (["-e", "look", "--axis", "layer"], ("--axis applies to --mode side-by-side and diff", "--cols")),
        (["-e", "look", "--threshold", "3"], ("--threshold applies to --mode diff",)),
        (["-e", "look", "--mode", "side-by-side", "--gain", "2", "--axis", "layer"], ("--gain applies",)),
        (["-e", "look", "--mode", "diff", "--axis", "layer", "--gain", "2"], ("--gain multiplies", "absolute only")),
        (["-e", "look", "--mode", "side-by-side", "--axis", "layer", "--max-cols", "3"], ("--max-cols applies",)),
        (["-e", "look", "--max-cols", "0"], ("--max-cols must be >= 1",)),
        (["-e", "look", "--mode", "diff", "--axis", "layer", "--diff-mode", "blink"], ("diff mode 'blink'",)),
        (["-e", "look", "--mode", "diff", "--axis", "layer", "--threshold", "300"], ("--threshold must be 0..255",)),
        (["-e", "look", "-o", "grid.gif"], ("unknown image type '.gif'",)),
        (["-e", "look", "--cell-size", "5"], ("--cell-size must be 32..2048",)),
        (["-e", "look", "--max-rows", "0"], ("--max-rows must be >= 1",)),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path, args: list[str], needles: tuple[str, ...]
) -> None:
    assert_user_error(*run(capsys, "compare", *args, "--output-dir", tiny_results), *needles)
    assert list(in_tmp.iterdir()) == []  # nothing written


def test_output_inside_the_results_directory_is_refused(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path
) -> None:
    target = tiny_results / "look" / "grid.png"
    assert_user_error(
        *run(capsys, "compare", "-e", "look", "-o", target, "--output-dir", tiny_results),
        "inside the results directory",
    )
    assert not target.exists()


# -- read-only --------------------------------------------------------------------------------------------------


def test_the_results_directory_is_left_as_it_was(
    capsys: pytest.CaptureFixture[str], tiny_results: Path, in_tmp: Path
) -> None:
    before = results_snapshot(tiny_results)
    commands = [
        ["--list"],
        ["-e", "look", "--info"],
        ["-e", "look", "-o", "a.png"],
        ["-e", "look", "--mode", "side-by-side", "--axis", "layer", "-o", "b.png"],
        ["-e", "look", "--mode", "diff", "--values", "2.0,6.0", "--diff-mode", "heatmap", "-o", "c.webp"],
        ["-e", "look_custom", "--rows", "layer", "-o", "d.jpg"],
    ]
    for argv in commands:
        rc, _out, err = run(capsys, "compare", *argv, "--output-dir", tiny_results)
        assert rc == 0, (argv, err)
    assert run(capsys, "compare", "-e", "look", "--values", "7", "--output-dir", tiny_results)[0] == 2
    assert results_snapshot(tiny_results) == before


def test_help_is_light() -> None:
    """--help must not pay for PIL, numpy or matplotlib: the command module imports them only when it runs."""
    code = (
        "import sys, llm_dit.cli.compare; print(sorted(m for m in ('PIL', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _err = run(capsys, "compare", "--help")
    assert rc == 0
    for flag in ("--list", "--info", "--mode", "--rows", "--cols", "--axis", "--values", "--prompt", "--seed",
                 "--where", "--metric", "--no-metrics", "--diff-mode", "--threshold", "--gain", "--max-rows",
                 "--max-cols", "--cell-size", "--output", "--overwrite", "--output-dir", "--experiment"):  # fmt: skip
        assert flag in out, flag


def test_the_cli_lists_the_same_modes_as_the_comparison_code() -> None:
    """cli.compare repeats the mode names to keep --help light: they must stay those analysis.compare accepts."""
    from llm_dit.analysis import compare
    from llm_dit.cli import compare as cli_compare

    assert cli_compare.MODES == compare.MODES
