"""Comparison pages: the pure layout (geometry, label text), the drawing (exact pixels), and the planning of grids,
pages, facets, side-by-side pairs and diffs (``llm_dit.analysis.grid`` and ``llm_dit.analysis.compare``).

Planning and pixels are checked on small synthetic results stores whose images are solid colours made by hand, so
every cell of a rendered page can be compared with the one colour it must show.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.analysis import compare
from llm_dit.analysis.compare import format_metric, page_paths, plan_grid, plan_pairs
from llm_dit.analysis.grid import (
    BACKGROUND,
    ELLIPSIS,
    PLACEHOLDER_FILL,
    Box,
    GridCell,
    GridPage,
    PageLayout,
    fit,
    layout_page,
    line_height,
    render_page,
    text_width,
    wrap,
)
from llm_dit.analysis.results import ExperimentResults, load_experiment
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming

RGB = tuple[int, int, int]
Key = tuple[str, ...]  # (prompt id, each axis value, seed)


# -- synthetic stores -------------------------------------------------------------------------------------------


def colour_of(index: int) -> RGB:
    """A distinct solid colour per run index (R differs for every index below 35)."""
    return (10 + 7 * index, 200 - 5 * index, (index * 40) % 256)


def make_experiment(
    root: Path,
    *,
    name: str = "syn",
    prompts: Sequence[str] = ("p1", "p2"),
    axes: Mapping[str, Sequence[str]] | None = None,
    seeds: Sequence[int] = (1, 2),
    size: tuple[int, int] = (16, 16),
    outcome: Callable[[Key], str] = lambda key: "done",
    sizes: Mapping[Key, tuple[int, int]] | None = None,
) -> tuple[ExperimentResults, dict[Key, RGB]]:
    """A results store with one experiment: every prompt x axis values x seed, each run's image a solid colour.

    ``outcome(key)``: 'done' (default), 'failed', 'planned' or 'deleted' (done, then its image removed).
    Metrics: ssim = 0.5 + index/100 for every done run, psnr inf on the first run and None on the second.
    Returns the loaded experiment and key -> colour.
    """
    axes = dict(axes or {"shift": ("1.0", "2.0", "3.0")})
    store = ResultsStore(root)
    definition = {"axes": [{"name": axis} for axis in axes]}
    store.start_experiment(name, f"synthetic {name}", definition, {})
    keys = [
        (prompt, *values, str(seed))
        for prompt, values, seed in itertools.product(prompts, itertools.product(*axes.values()), seeds)
    ]
    runs = [
        PlannedRun(
            run_id="_".join(key),
            prompt_id=key[0],
            prompt_text=f"the text of {key[0]}",
            seed=int(key[-1]),
            variables=dict(zip(axes, key[1:-1], strict=True)),
            image_name=f"{'_'.join(key)}.png",
        )
        for key in keys
    ]
    store.plan_runs(name, runs)
    colours = {}
    directory = store.experiment_dir(name)
    for index, (key, run) in enumerate(zip(keys, runs, strict=True)):
        colours[key] = colour_of(index)
        status = outcome(key)
        if status == "failed":
            store.mark_failed(name, run.run_id, "boom: out of memory\ntraceback line")
            continue
        if status == "planned":
            continue
        path = directory / run.image_name
        Image.new("RGB", (sizes or {}).get(key, size), colours[key]).save(path)
        store.mark_done(
            name, run.run_id, image_path=run.image_name, timing=RunTiming(0.1, 1), token_count=None, record={}
        )
        values = {"ssim": 0.5 + index / 100, "psnr": math.inf if index == 0 else (None if index == 1 else 20.0)}
        store.add_metrics(name, run.run_id, values)
        if status == "deleted":
            path.unlink()
    store.close()
    return load_experiment(root, name), colours


def crop(image: Image.Image, box: Box) -> np.ndarray:
    return np.asarray(image)[box.y : box.bottom, box.x : box.right]


def is_solid(image: Image.Image, box: Box, colour: Sequence[int]) -> bool:
    pixels = crop(image, box)
    return pixels.size > 0 and bool((pixels == np.array(colour, np.uint8)).all())


def assert_cells_show(
    image: Image.Image, layout: PageLayout, expected: Sequence[Sequence[RGB | None]], fill: RGB = PLACEHOLDER_FILL
) -> None:
    """Each cell's box is exactly the expected run's colour (None: a placeholder, grey with text in it)."""
    for r, row in enumerate(expected):
        for c, colour in enumerate(row):
            box = layout.cells[r][c]
            if colour is None:
                pixels = crop(image, box)
                assert (pixels == fill).all(axis=2).mean() > 0.5, f"cell {r},{c}: expected a placeholder"
                assert not (pixels == fill).all(), f"cell {r},{c}: placeholder without text"
            else:
                assert is_solid(image, box, colour), f"cell {r},{c}: expected {colour}, got {crop(image, box)[0, 0]}"


def solid(colour: RGB, size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


# -- wrapping ---------------------------------------------------------------------------------------------------


def test_wrap_fits_width_and_breaks_at_spaces_then_separators_then_anywhere() -> None:
    size = 12
    assert wrap("shift=2.0", 500, size) == ("shift=2.0",)
    words = "A tabby cat sleeping on a windowsill"
    lines = wrap(words, 80, size)
    assert len(lines) > 1 and " ".join(lines) == words  # spaces at breaks dropped, nothing else lost
    assert all(text_width(line, size) <= 80 for line in lines)
    label = "layer=-2:0.5,-5:0.5"
    narrow = text_width("layer=-2:0.5,", size) + 1
    lines = wrap(label, narrow, size)
    assert "".join(lines) == label
    assert all(text_width(line, size) <= narrow for line in lines)
    assert all(line[-1] in ",=:;/_" for line in lines[:-1])  # broken after separators
    # no separators at all: broken anywhere, still nothing lost
    lines = wrap("x" * 40, 50, size)
    assert len(lines) > 1 and "".join(lines) == "x" * 40 and all(text_width(line, size) <= 50 for line in lines)
    # paragraphs start new lines
    assert wrap("p1\nthe text", 500, size) == ("p1", "the text")


def test_wrap_truncates_with_an_ellipsis_that_fits() -> None:
    text = "one two three four five six seven eight nine ten"
    lines = wrap(text, 60, 12, max_lines=2)
    assert len(lines) == 2
    assert lines[-1].endswith(ELLIPSIS)
    assert all(text_width(line, 12) <= 60 for line in lines)
    assert wrap(text, 60, 12, max_lines=99) == wrap(text, 60, 12)  # nothing to cut: no ellipsis
    assert not any(line.endswith(ELLIPSIS) for line in wrap(text, 60, 12))


# -- layout -----------------------------------------------------------------------------------------------------


def sample_page(captions: int = 2, missing: tuple[int, int] | None = None) -> GridPage:
    colours = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(200, 200, 0), (0, 200, 200), (200, 0, 200)]]
    cells = tuple(
        tuple(
            GridCell(missing="failed: boom")
            if (r, c) == missing
            else GridCell(solid(colour, (4, 3)), tuple(f"m{i}\t{i}.5" for i in range(captions)))
            for c, colour in enumerate(row)
        )
        for r, row in enumerate(colours)
    )
    return GridPage(
        "syn · seed=1",
        ("shift=1.0", "shift=2.0", "shift=3.0 with a long label that wraps over lines"),
        ("p1\nthe text of p1", "p2\nthe text of p2"),
        cells,
    )


def test_layout_geometry_is_a_regular_table_inside_the_canvas() -> None:
    page = sample_page()
    layout = layout_page(page, 100, 80, font_size=12)
    line = line_height(12)
    assert layout.line_height == line
    cells = layout.cells
    # rows line up, columns line up, one gap apart
    for r in range(2):
        assert {box.y for box in cells[r]} == {cells[r][0].y}
        assert all((box.width, box.height) == (100, 80) for box in cells[r])
        assert [cells[r][c + 1].x - cells[r][c].right for c in range(2)] == [layout.gap, layout.gap]
    assert [box.x for box in cells[0]] == [box.x for box in cells[1]]
    # the second row starts one gap below the first row's captions
    assert cells[1][0].y == layout.captions[0][0].box.bottom + layout.gap
    # the canvas ends one margin after the last cell / caption
    assert layout.width == cells[0][-1].right + layout.margin
    assert layout.height == layout.captions[1][0].box.bottom + layout.margin
    # every text block is inside the canvas and overlaps no image
    boxes = [box for row in cells for box in row]
    for label in layout.labels():
        b = label.box
        assert b.x >= 0 and b.y >= 0 and b.right <= layout.width and b.bottom <= layout.height, label
        assert b.height == len(label.lines) * (line if label.size == 12 else line_height(label.size))
        for box in boxes:
            overlap = min(b.right, box.right) > max(b.x, box.x) and min(b.bottom, box.bottom) > max(b.y, box.y)
            assert not overlap, (label, box)


def test_layout_label_text_and_placement() -> None:
    page = sample_page()
    layout = layout_page(page, 100, 80, font_size=12)
    assert layout.title is not None and layout.title.lines == ("syn · seed=1",)
    assert layout.title.size > 12  # a larger font for the title
    headers = layout.col_headers
    assert [h.lines for h in headers[:2]] == [("shift=1.0",), ("shift=2.0",)]
    assert len(headers[2].lines) > 1 and " ".join(headers[2].lines) == page.col_labels[2]
    # headers are centred over their column, their bottoms on one line just above the images
    for header, box in zip(headers, layout.cells[0], strict=True):
        assert (header.box.x, header.box.width, header.align) == (box.x, box.width, "center")
        assert 0 < box.y - header.box.bottom <= 12
    assert len({h.box.bottom for h in headers}) == 1
    # row labels: the prompt id, then its text (muted), left of the row
    for r, label in enumerate(layout.row_labels):
        assert label.lines == (f"p{r + 1}", f"the text of p{r + 1}")
        assert label.emphasis == 1
        assert label.box.y == layout.cells[r][0].y and label.box.right < layout.cells[r][0].x
    # captions: right under each image, one line per caption entry, as given
    caption = layout.captions[1][2]
    assert caption is not None and caption.lines == ("m0\t0.5", "m1\t1.5")
    assert (caption.box.x, caption.box.width) == (layout.cells[1][2].x, 100)
    assert 0 < caption.box.y - layout.cells[1][2].bottom <= 12
    assert all(p is None for row in layout.placeholders for p in row)


def test_layout_without_captions_or_title_is_tighter() -> None:
    with_captions = layout_page(sample_page(captions=2), 100, 80, font_size=12)
    without = layout_page(sample_page(captions=0), 100, 80, font_size=12)
    assert all(c is None for row in without.captions for c in row)
    # two rows lose 2 caption lines each (and the pad above them)
    assert with_captions.height - without.height > 4 * line_height(12)
    untitled = GridPage("", ("a",), ("r",), ((GridCell(solid((1, 2, 3))),),))
    layout = layout_page(untitled, 50, 50, font_size=12)
    assert layout.title is None
    assert layout.col_headers[0].box.y == layout.margin


def test_layout_font_scales_with_the_cell_and_long_labels_are_cut() -> None:
    small = layout_page(sample_page(), 128, 128)
    large = layout_page(sample_page(), 256, 256)
    assert (small.font_size, large.font_size) == (12, 18)
    long_text = "p1\n" + " ".join(["word"] * 400)
    page = GridPage("t", ("a",), (long_text,), ((GridCell(solid((1, 2, 3))),),))
    layout = layout_page(page, 100, 80, font_size=12)
    label = layout.row_labels[0]
    assert label.lines[-1].endswith(ELLIPSIS)
    assert label.box.height <= 80  # within its row (no captions here)
    assert all(text_width(line, 12) <= label.box.width for line in label.lines)


def test_caption_keeps_the_value_and_shortens_the_name() -> None:
    page = GridPage("", ("a",), ("r",), ((GridCell(solid((1, 2, 3)), ("a_very_long_metric_name\t12.5",)),),))
    caption = layout_page(page, 60, 60, font_size=12).captions[0][0]
    assert caption is not None
    name, value = caption.lines[0].split("\t")
    assert value == "12.5" and name.endswith(ELLIPSIS)
    assert text_width(name, 12) + text_width(value, 12) < 60


def test_page_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="2 rows of 1"):
        GridPage("t", ("a",), ("r1", "r2"), ((GridCell(),),))


# -- drawing ----------------------------------------------------------------------------------------------------


def test_render_shows_each_image_in_its_box_and_draws_every_label() -> None:
    page = sample_page(missing=(1, 1))
    layout = layout_page(page, 64, 48, font_size=12)
    image = render_page(page, layout)
    assert image.size == (layout.width, layout.height) and image.mode == "RGB"
    expected = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(200, 200, 0), None, (200, 0, 200)]]
    assert_cells_show(image, layout, expected)
    placeholder = layout.placeholders[1][1]
    assert placeholder is not None and placeholder.lines == ("failed:", "boom")  # wrapped to the 64 px cell
    for label in layout.labels():
        pixels = crop(image, label.box)
        assert (pixels != BACKGROUND).any(axis=2).any(), f"label {label.lines} drew nothing"
    # the gap between two cells stays background
    gap = Box(layout.cells[0][0].right, layout.cells[0][0].y, layout.gap, 48)
    assert is_solid(image, gap, BACKGROUND)


def test_fit_keeps_the_aspect_ratio_centred_and_enlarges_pixel_exactly() -> None:
    checker = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [9, 9, 9]]], np.uint8))
    resized, target = fit(checker, Box(10, 20, 64, 64))
    assert target == Box(10, 20, 64, 64)
    assert np.array_equal(np.asarray(resized), np.asarray(checker).repeat(32, 0).repeat(32, 1))
    wide = solid((5, 6, 7), (40, 20))
    resized, target = fit(wide, Box(0, 0, 80, 80))
    assert target == Box(0, 20, 80, 40) and resized.size == (80, 40)
    resized, target = fit(solid((5, 6, 7), (400, 100)), Box(0, 0, 80, 80))  # shrinking
    assert target == Box(0, 30, 80, 20) and (np.asarray(resized) == (5, 6, 7)).all()


def test_unreadable_image_file_becomes_a_placeholder(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    page = GridPage("", ("a", "b"), ("r",), ((GridCell(broken), GridCell(solid((1, 2, 3)))),))
    layout = layout_page(page, 64, 64, font_size=12)
    image = render_page(page, layout)
    assert_cells_show(image, layout, [[None, (1, 2, 3)]])


# -- planning grids ---------------------------------------------------------------------------------------------


def test_default_grid_is_prompts_by_first_axis_with_a_page_per_seed(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path)
    comparison = plan_grid(exp)
    assert comparison.mode == "grid"
    assert comparison.cell_size == (128, 128)  # 16 px images, enlarged to the 128 px minimum
    assert [page.title for page in comparison.pages] == ["syn · seed=1", "syn · seed=2"]
    for page in comparison.pages:
        assert page.col_labels == ("shift=1.0", "shift=2.0", "shift=3.0")
        assert page.row_labels == ("p1\nthe text of p1", "p2\nthe text of p2")
    for index, seed in enumerate(("1", "2")):
        image = comparison.render(index)
        layout = comparison.layout(index)
        expected = [[colours[(p, v, seed)] for v in ("1.0", "2.0", "3.0")] for p in ("p1", "p2")]
        assert_cells_show(image, layout, expected)


def test_grid_takes_any_two_dimensions_and_facets_the_rest(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path, axes={"shift": ("1.0", "2.0"), "steps": ("4", "8")})
    comparison = plan_grid(exp, rows="seed", cols="prompt")
    # facets: shift x steps, in dimension order
    assert [page.title for page in comparison.pages] == [
        "syn · shift=1.0 · steps=4",
        "syn · shift=1.0 · steps=8",
        "syn · shift=2.0 · steps=4",
        "syn · shift=2.0 · steps=8",
    ]
    page = comparison.pages[1]
    assert page.row_labels == ("seed=1", "seed=2")
    assert page.col_labels == ("p1\nthe text of p1", "p2\nthe text of p2")
    layout = comparison.layout(1)
    assert layout.col_headers[0].lines == ("p1", "the text of p1") and layout.col_headers[0].emphasis == 1
    expected = [[colours[(p, "1.0", "8", s)] for p in ("p1", "p2")] for s in ("1", "2")]
    assert_cells_show(comparison.render(1), layout, expected)


def test_filters_fix_dimensions_into_the_title_and_keep_the_given_order(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path, axes={"shift": ("1.0", "2.0", "3.0"), "steps": ("4", "8")})
    comparison = plan_grid(exp, cols="shift", filters={"shift": ["3.0", "1.0"], "seed": ["2"], "steps": ["8"]})
    assert len(comparison.pages) == 1
    page = comparison.pages[0]
    assert page.title == "syn · steps=8 · seed=2"
    assert page.col_labels == ("shift=3.0", "shift=1.0")
    expected = [[colours[(p, v, "8", "2")] for v in ("3.0", "1.0")] for p in ("p1", "p2")]
    assert_cells_show(comparison.render(0), comparison.layout(0), expected)
    # a single prompt goes into the title with its text
    one = plan_grid(exp, rows="seed", filters={"prompt": ["p2"], "steps": ["4"]})
    assert one.pages[0].title == 'syn · p2 "the text of p2" · steps=4'


def test_large_grids_split_into_pages(tmp_path: Path) -> None:
    exp, colours = make_experiment(
        tmp_path, prompts=("p1", "p2", "p3"), axes={"shift": ("1", "2", "3", "4", "5")}, seeds=(7,)
    )
    comparison = plan_grid(exp, max_rows=2, max_cols=3)
    titles = [page.title for page in comparison.pages]
    assert titles == [
        "syn · seed=7 · rows 1-2 of 3 · columns 1-3 of 5",
        "syn · seed=7 · rows 1-2 of 3 · columns 4-5 of 5",
        "syn · seed=7 · rows 3-3 of 3 · columns 1-3 of 5",
        "syn · seed=7 · rows 3-3 of 3 · columns 4-5 of 5",
    ]
    last = comparison.pages[3]
    assert last.row_labels == ("p3\nthe text of p3",) and last.col_labels == ("shift=4", "shift=5")
    assert_cells_show(
        comparison.render(3), comparison.layout(3), [[colours[("p3", "4", "7")], colours[("p3", "5", "7")]]]
    )
    # every cell of the table is on exactly one page
    shown = [run["run_id"] for page in comparison.pages for row in page.runs for run in row if run]
    assert sorted(shown) == sorted(run["run_id"] for run in exp.runs)
    assert [p.name for p in page_paths(Path("out/grid.png"), 4)] == [
        "grid_p01.png", "grid_p02.png", "grid_p03.png", "grid_p04.png",
    ]  # fmt: skip
    assert page_paths(Path("out/grid.webp"), 1) == [Path("out/grid.webp")]
    assert page_paths(Path("g.png"), 100)[-1].name == "g_p100.png"


def test_missing_images_are_placeholders_that_say_why(tmp_path: Path) -> None:
    outcomes = {("p1", "2.0", "1"): "failed", ("p2", "1.0", "1"): "planned", ("p2", "3.0", "1"): "deleted"}
    exp, colours = make_experiment(tmp_path, seeds=(1,), outcome=lambda key: outcomes.get(key, "done"))
    comparison = plan_grid(exp)
    page = comparison.page(0)
    missing = [[cell.missing for cell in row] for row in page.cells]
    assert missing == [["", "failed: boom: out of memory", ""], ["not generated yet", "", "image file missing"]]
    expected = [
        [colours[("p1", "1.0", "1")], None, colours[("p1", "3.0", "1")]],
        [None, colours[("p2", "2.0", "1")], None],
    ]
    layout = comparison.layout(0)
    assert_cells_show(comparison.render(0), layout, expected)
    assert layout.placeholders[0][1] is not None and "failed: boom" in " ".join(layout.placeholders[0][1].lines)


def test_a_combination_without_a_run_is_a_placeholder(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path, seeds=(1,))
    # a run of another seed for one cell only: seed 2 becomes a facet whose page is mostly empty
    replan = [
        PlannedRun(r["run_id"], r["prompt_id"], r["prompt_text"], r["seed"], r["variables"], image_name=r["image_name"])
        for r in exp.runs
    ]
    replan.append(PlannedRun("extra", "p1", "the text of p1", 2, {"shift": "1.0"}, image_name="extra.png"))
    with ResultsStore(tmp_path) as store:
        store.plan_runs("syn", replan)
    exp = load_experiment(tmp_path, "syn")
    comparison = plan_grid(exp)
    assert [page.title for page in comparison.pages] == ["syn · seed=1", "syn · seed=2"]
    missing = [[cell.missing for cell in row] for row in comparison.page(1).cells]
    assert missing == [["not generated yet", "no run planned", "no run planned"], ["no run planned"] * 3]


def test_metric_values_under_images(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path, prompts=("p1",), seeds=(1,))
    assert exp.metrics == ["psnr", "ssim"]
    page = plan_grid(exp).page(0)
    # registry order (ssim before psnr); first run psnr inf, second None
    assert [cell.caption for cell in page.cells[0]] == [
        ("ssim\t0.5", "psnr\tinf"),
        ("ssim\t0.51", "psnr\t-"),
        ("ssim\t0.52", "psnr\t20"),
    ]
    only = plan_grid(exp, metrics=["psnr"]).page(0)
    assert only.cells[0][0].caption == ("psnr\tinf",)
    assert plan_grid(exp, metrics=[]).page(0).cells[0][0].caption == ()
    with pytest.raises(LlmDitError, match=r"no values of metric 'lpips'; metrics present: psnr, ssim"):
        plan_grid(exp, metrics=["lpips"])


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan"), (0.81234, "0.812"),
     (31.456, "31.5"), (4.0, "4"), (1234.6, "1235"), (0.0001234, "0.000123")],
)  # fmt: skip
def test_format_metric(value: float | None, text: str) -> None:
    assert format_metric(value) == text


def test_non_square_images_get_non_square_cells(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path, prompts=("p1",), seeds=(1,), size=(40, 20))
    comparison = plan_grid(exp)
    assert comparison.cell_size == (128, 64)
    assert_cells_show(
        comparison.render(0), comparison.layout(0), [[colours[("p1", v, "1")] for v in ("1.0", "2.0", "3.0")]]
    )
    assert plan_grid(exp, cell_size=300).cell_size == (300, 150)
    big, _ = make_experiment(tmp_path / "big", prompts=("p1",), seeds=(1,), size=(600, 300))
    assert plan_grid(big).cell_size == (256, 128)  # large images shrink to 256 px


def test_grid_errors(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path)
    with pytest.raises(LlmDitError, match="rows and columns are both 'shift'"):
        plan_grid(exp, rows="shift", cols="shift")
    with pytest.raises(LlmDitError, match=r"no dimension 'shfit' \(did you mean 'shift'\?\)"):
        plan_grid(exp, cols="shfit")
    with pytest.raises(LlmDitError, match=r"shift has no value '9.0'"):
        plan_grid(exp, filters={"shift": ["9.0"]})
    with pytest.raises(LlmDitError, match=r"--max-cols must be >= 1"):
        plan_grid(exp, max_cols=0)
    with pytest.raises(LlmDitError, match=r"--cell-size must be 32..2048"):
        plan_grid(exp, cell_size=8)


# -- pairs and diffs --------------------------------------------------------------------------------------------


def test_side_by_side_rows_are_the_other_combinations(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path, axes={"shift": ("1.0", "2.0", "3.0"), "steps": ("4", "8")}, seeds=(1,))
    comparison = plan_pairs(exp, "side-by-side", axis="steps")  # two values: no --values needed
    page = comparison.pages[0]
    assert page.title == "syn · steps=4 vs steps=8 · seed=1"
    assert page.col_labels == ("A: steps=4", "B: steps=8")
    assert page.row_labels[:2] == ("p1 · shift=1.0\nthe text of p1", "p1 · shift=2.0\nthe text of p1")
    assert len(page.row_labels) == 6
    expected = [
        [colours[(p, s, "4", "1")], colours[(p, s, "8", "1")]] for p in ("p1", "p2") for s in ("1.0", "2.0", "3.0")
    ]
    assert_cells_show(comparison.render(0), comparison.layout(0), expected)
    # B, A order as given; max_rows pages
    swapped = plan_pairs(exp, "side-by-side", axis="steps", filters={"steps": ["8", "4"], "prompt": ["p2"]}, max_rows=2)
    assert [p.title for p in swapped.pages] == [
        'syn · steps=8 vs steps=4 · p2 "the text of p2" · seed=1 · rows 1-2 of 3',
        'syn · steps=8 vs steps=4 · p2 "the text of p2" · seed=1 · rows 3-3 of 3',
    ]
    assert swapped.pages[0].row_labels == ("shift=1.0", "shift=2.0")  # the prompt is in the title
    assert_cells_show(
        swapped.render(1), swapped.layout(1), [[colours[("p2", "3.0", "8", "1")], colours[("p2", "3.0", "4", "1")]]]
    )


def test_pairs_of_prompts(tmp_path: Path) -> None:
    exp, colours = make_experiment(tmp_path, axes={"shift": ("1.0", "2.0")}, seeds=(1,))
    comparison = plan_pairs(exp, "side-by-side", axis="prompt", filters={"prompt": ["p2", "p1"]})
    page = comparison.pages[0]
    assert page.title == "syn · p2 vs p1 · seed=1"
    assert page.col_labels == ("A: p2\nthe text of p2", "B: p1\nthe text of p1")
    assert page.row_labels == ("shift=1.0", "shift=2.0")
    expected = [[colours[("p2", s, "1")], colours[("p1", s, "1")]] for s in ("1.0", "2.0")]
    assert_cells_show(comparison.render(0), comparison.layout(0), expected)


def test_pairs_need_exactly_two_values(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path)
    with pytest.raises(LlmDitError, match=r"compares exactly two values of shift, got 3 \('1.0', '2.0', '3.0'\)"):
        plan_pairs(exp, "side-by-side")
    with pytest.raises(LlmDitError, match=r"got 1 \('2.0'\); choose two with --values A,B"):
        plan_pairs(exp, "diff", filters={"shift": ["2.0"]})
    with pytest.raises(LlmDitError, match="diff mode 'blink'"):
        plan_pairs(exp, "diff", filters={"shift": ["1.0", "2.0"]}, diff_mode="blink")
    with pytest.raises(LlmDitError, match="--gain must be a finite number > 0"):
        plan_pairs(exp, "diff", filters={"shift": ["1.0", "2.0"]}, gain=-1)


@pytest.mark.parametrize("diff_mode", ["highlight", "absolute", "heatmap"])
def test_diff_column_is_the_diff_of_a_and_b(tmp_path: Path, diff_mode: str) -> None:
    exp, colours = make_experiment(tmp_path, prompts=("p1",), seeds=(1,))
    comparison = plan_pairs(exp, "diff", filters={"shift": ["1.0", "3.0"]}, diff_mode=diff_mode, gain=2)
    a, b = colours[("p1", "1.0", "1")], colours[("p1", "3.0", "1")]
    # by hand: colour_of(0) = (10, 200, 0), colour_of(2) = (24, 190, 80): |A-B| = (14, 10, 80), mean 34.67
    assert (a, b) == ((10, 200, 0), (24, 190, 80))
    expected_diff = {
        "highlight": (255, 0, 0),  # 14 and 80 exceed the threshold 8
        "absolute": (28, 20, 160),  # x2
        "heatmap": tuple(compare_lut_top()),  # every pixel is the pair's maximum
    }[diff_mode]
    page = comparison.page(0)
    assert comparison.pages[0].col_labels[2].startswith("diff")
    caption = page.cells[0][2].caption
    assert caption[:3] == ("changed > 8\t100.0%", "mean |A-B|\t34.67", "max |A-B|\t80")
    assert (caption[3:] == ("top colour\t34.7",)) == (diff_mode == "heatmap")
    assert_cells_show(comparison.render(0), comparison.layout(0), [[a, b, expected_diff]])


def compare_lut_top() -> np.ndarray:
    from llm_dit.analysis.diff import heatmap_lut

    return heatmap_lut()[255]


def test_diff_of_missing_or_mismatched_images_is_a_placeholder(tmp_path: Path) -> None:
    sizes = {("p1", "2.0", "1"): (8, 8)}
    outcomes = {("p2", "2.0", "1"): "failed"}
    exp, colours = make_experiment(tmp_path, seeds=(1,), sizes=sizes, outcome=lambda key: outcomes.get(key, "done"))
    comparison = plan_pairs(exp, "diff", filters={"shift": ["1.0", "2.0"]})
    page = comparison.page(0)
    assert page.cells[0][2].missing == "no diff: sizes differ (16x16 vs 8x8)"
    assert page.cells[1][2].missing == "no diff: needs both images"
    assert page.cells[1][1].missing.startswith("failed")
    expected = [
        [colours[("p1", "1.0", "1")], colours[("p1", "2.0", "1")], None],
        [colours[("p2", "1.0", "1")], None, None],
    ]
    assert_cells_show(comparison.render(0), comparison.layout(0), expected)


# -- output files -----------------------------------------------------------------------------------------------


def test_outputs_are_checked_before_rendering(tmp_path: Path) -> None:
    results = tmp_path / "results"
    make_experiment(results)
    compare.check_outputs([tmp_path / "a.png", tmp_path / "new" / "b.jpg"], results)
    with pytest.raises(LlmDitError, match=r"unknown image type '.gif'; end the name in .png, .jpg, .jpeg, .webp"):
        compare.check_outputs([tmp_path / "a.gif"], results)
    with pytest.raises(LlmDitError, match="inside the results directory"):
        compare.check_outputs([results / "syn" / "grid.png"], results)
    (tmp_path / "old.png").write_bytes(b"x")
    with pytest.raises(LlmDitError, match="already exists; choose another path or pass --overwrite"):
        compare.check_outputs([tmp_path / "old.png"], results)
    compare.check_outputs([tmp_path / "old.png"], results, overwrite=True)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(LlmDitError, match="is a directory"):
        compare.check_outputs([tmp_path / "dir.png"], results, overwrite=True)


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_write_pages_in_the_suffix_format(tmp_path: Path, suffix: str, fmt: str) -> None:
    exp, _ = make_experiment(tmp_path / "results")
    comparison = plan_grid(exp)
    written = compare.write_pages(comparison, tmp_path / f"grid{suffix}")
    assert [path.name for path, _ in written] == [f"grid_p01{suffix}", f"grid_p02{suffix}"]
    for path, size in written:
        with Image.open(path) as img:
            assert (img.format, img.size) == (fmt, size)
    assert size == (comparison.layout(1).width, comparison.layout(1).height)
