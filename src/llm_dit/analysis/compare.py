"""Comparisons of an experiment's images: grids, side-by-side pairs and pixel diffs, as pages of a table.

Planning is cheap and reads no pixels: :func:`plan_grid` and :func:`plan_pairs` pick the runs each cell shows
and split large tables into pages, so every mistake in a request (an unknown dimension or value, a pair that is
not two values) fails before any image loads. :meth:`Comparison.page` then loads a page's images (and computes
its diffs) into a :class:`~llm_dit.analysis.grid.GridPage`, and :meth:`Comparison.render` draws it.

When the runs of a page had input images (``vl_image``, ``style_image``, ``neutral_image``, ``init_image``), the page
starts with a strip of them, each distinct one once, labelled with its setting, file name, short sha256 and (when
not every cell used it) the rows or columns that did. An input whose file changed since planning or is gone is a
placeholder that says so: its bytes are checked against the sha256 recorded at planning (:mod:`.inputs`).

In a notebook::

    exp = load_experiment("experiments/results", "shift_sweep")
    comparison = plan_grid(exp, rows="prompt", cols="shift", filters={"seed": ["42"]})
    comparison.render(0)  # a PIL image

Only the results store and image files are read; nothing is ever written into the results directory.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from llm_dit.analysis.diff import DEFAULT_THRESHOLD, check_diff_params, diff_with_stats
from llm_dit.analysis.grid import GridCell, GridPage, PageLayout, layout_page, load_image, render_page
from llm_dit.analysis.inputs import InputImage, decode_input, inputs_of_runs, read_input
from llm_dit.analysis.output import check_output_path
from llm_dit.analysis.results import PROMPT, SEED, ExperimentResults, dimension_value
from llm_dit.errors import LlmDitError
from llm_dit.files import write_atomic

GRID, SIDE_BY_SIDE, DIFF = "grid", "side-by-side", "diff"
MODES: tuple[str, ...] = (GRID, SIDE_BY_SIDE, DIFF)
IMAGE_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
DEFAULT_MAX_ROWS = 8
DEFAULT_MAX_COLS = 8
# Default cell: the images' own size, enlarged to at least 128 px (labels need the room) and shrunk to at most
# 256 px (a page of 8 x 8 stays a few thousand pixels wide).
MIN_DEFAULT_CELL, MAX_DEFAULT_CELL = 128, 256
MIN_CELL, MAX_CELL = 32, 2048
TITLE_SEP = " · "


@dataclass(frozen=True)
class PlannedPage:
    """A page before its images load: ``runs[row][col]`` is the run shown in each cell (None: no run there).

    In diff mode each row holds runs A and B; the page's third column (the diff) is computed from them.
    """

    title: str
    col_labels: tuple[str, ...]
    row_labels: tuple[str, ...]
    runs: tuple[tuple[dict[str, Any] | None, ...], ...]


@dataclass(frozen=True)
class Comparison:
    """A planned comparison of one experiment: its pages, and how to turn each into a picture."""

    experiment: ExperimentResults
    mode: str
    pages: tuple[PlannedPage, ...]
    metrics: tuple[str, ...]  # metric values shown under each image
    cell_size: tuple[int, int]  # image area of a cell, px (width, height)
    diff_mode: str = "highlight"
    threshold: int = DEFAULT_THRESHOLD
    gain: float = 1.0
    show_inputs: bool = True  # the strip of input images above the table (False: never drawn)
    # Each input file is read, checked and decoded once per comparison, however many pages show it.
    _inputs: dict[InputImage, GridCell] = field(default_factory=dict, compare=False, repr=False)

    def page(self, index: int) -> GridPage:
        """Page ``index`` with its images (files are read when drawn; diffs are computed here)."""
        planned = self.pages[index]
        cells = []
        for runs in planned.runs:
            row = [run_cell(self.experiment, run, self.metrics) for run in runs]
            if self.mode == DIFF:
                row = self.diff_row(row)
            cells.append(tuple(row))
        inputs = self.input_cells(planned) if self.show_inputs else ()
        return GridPage(planned.title, planned.col_labels, planned.row_labels, tuple(cells), inputs)

    def input_cells(self, planned: PlannedPage) -> tuple[GridCell, ...]:
        """The distinct input images of the page's runs, each checked against its recorded sha256, captioned with
        its setting, file name, short sha256 and which rows or columns use it (when not all of them)."""
        positions = [(r, c) for r, runs in enumerate(planned.runs) for c, run in enumerate(runs) if run is not None]
        runs = [planned.runs[r][c] for r, c in positions]
        out = []
        for image, users in inputs_of_runs(run for run in runs if run is not None).items():
            used = {positions[i] for i in users}
            caption = [image.label, image.file_name, f"sha256 {image.short_sha}" if image.sha256 else "no sha256"]
            names = ("rows", "columns") if self.mode == GRID else ("rows", "")  # a pair's columns are A and B
            usage = usage_text(used, set(positions), planned.row_labels, planned.col_labels, names)
            cell = self._input_cell(image)
            out.append(replace(cell, caption=(*caption, *([usage] if usage else []))))
        return tuple(out)

    def _input_cell(self, image: InputImage) -> GridCell:
        """The input's pixels (decoded from the bytes whose sha256 was checked), or a placeholder saying why not."""
        if image not in self._inputs:
            checked = read_input(image)
            if not checked.ok:
                self._inputs[image] = GridCell(missing=checked.reason)
            else:
                try:  # at most twice the cell: a 6000 px photo need not stay in memory at full size
                    picture = decode_input(checked, 2 * max(self.cell_size))
                except OSError as exc:
                    self._inputs[image] = GridCell(missing=f"cannot read image: {exc}")
                else:
                    self._inputs[image] = GridCell(picture)
        return self._inputs[image]

    def diff_row(self, row: list[GridCell]) -> list[GridCell]:
        """Cells A and B with their images loaded (each file is decoded once), then their diff picture with its
        statistics as the caption."""
        import numpy as np

        if not isinstance(row[0].image, Path) or not isinstance(row[1].image, Path):
            return [*row, GridCell(missing="no diff: needs both images")]
        try:
            a, b = (load_image(cell.image) for cell in row)
        except OSError as exc:
            return [*row, GridCell(missing=f"no diff: cannot read image: {exc}")]
        if a.size != b.size:
            return [*row, GridCell(missing=f"no diff: sizes differ ({a.width}x{a.height} vs {b.width}x{b.height})")]
        picture, stats = diff_with_stats(np.asarray(a), np.asarray(b), self.diff_mode, self.threshold, self.gain)
        loaded = [replace(cell, image=image) for cell, image in zip(row, (a, b), strict=True)]
        return [*loaded, GridCell(Image.fromarray(picture), diff_caption(stats, self.diff_mode))]

    def layout(self, index: int) -> PageLayout:
        """Geometry and text of page ``index`` (loads and diffs its images, draws nothing)."""
        return layout_page(self.page(index), *self.cell_size)

    def render(self, index: int) -> Image.Image:
        """Page ``index`` as an RGB image."""
        page = self.page(index)
        return render_page(page, layout_page(page, *self.cell_size))

    def images(self) -> Iterator[Image.Image]:
        """Every page as an image, one at a time (a large comparison never holds all pages in memory)."""
        for index in range(len(self.pages)):
            yield self.render(index)


# -- planning ---------------------------------------------------------------------------------------------------


def plan_grid(
    exp: ExperimentResults,
    rows: str | None = None,
    cols: str | None = None,
    filters: Mapping[str, Sequence[str]] | None = None,
    metrics: Sequence[str] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_cols: int = DEFAULT_MAX_COLS,
    cell_size: int | None = None,
    show_inputs: bool = True,
) -> Comparison:
    """A grid of ``rows`` x ``cols`` (any two dimensions; default prompts x the first swept axis).

    ``filters`` ({dimension: values}) select runs; a filtered dimension keeps the order its values are given in,
    the others their planned order. Every other dimension with more than one value left is a facet: one page per
    combination of its values (titled with them). Rows and columns beyond ``max_rows`` / ``max_cols`` continue
    on further pages. ``metrics``: values shown under each image (None = every metric the experiment has).
    ``show_inputs``: the strip of the runs' input images above each table (pages of runs without inputs have none).
    """
    rows = exp.check_dimension(rows or PROMPT)
    cols = exp.check_dimension(cols or default_axis(exp))
    if rows == cols:
        raise LlmDitError(f"rows and columns are both {rows!r}; choose two different dimensions (--rows, --cols)")
    _check_page_limit("--max-rows", max_rows)
    _check_page_limit("--max-cols", max_cols)
    values, index = _select(exp, filters)
    facets = [dim for dim in exp.dimensions if dim not in (rows, cols) and len(values[dim]) > 1]
    fixed = {dim: values[dim][0] for dim in exp.dimensions if dim not in (rows, cols) and len(values[dim]) == 1}
    row_values, col_values = values[rows], values[cols]
    pages = []
    for combination in itertools.product(*(values[dim] for dim in facets)):
        at = {**fixed, **dict(zip(facets, combination, strict=True))}
        for r0 in range(0, len(row_values), max_rows):
            for c0 in range(0, len(col_values), max_cols):
                page_rows, page_cols = row_values[r0 : r0 + max_rows], col_values[c0 : c0 + max_cols]
                title = _title(
                    exp, at, rows=(r0, len(page_rows), len(row_values)), cols=(c0, len(page_cols), len(col_values))
                )
                runs = tuple(
                    tuple(index.get(_key(exp, {**at, rows: r, cols: c})) for c in page_cols) for r in page_rows
                )
                pages.append(
                    PlannedPage(
                        title,
                        tuple(dimension_label(exp, cols, c) for c in page_cols),
                        tuple(dimension_label(exp, rows, r) for r in page_rows),
                        runs,
                    )
                )
    if not pages:  # only runs planned without a value along rows or cols (older plans of the experiment)
        raise LlmDitError(f"no runs of {exp.name!r} have both a {rows} and a {cols} value; choose --rows/--cols")
    return Comparison(
        exp, GRID, tuple(pages), _metrics(exp, metrics), _cell_size(exp, cell_size), show_inputs=show_inputs
    )


def plan_pairs(
    exp: ExperimentResults,
    mode: str = SIDE_BY_SIDE,
    axis: str | None = None,
    filters: Mapping[str, Sequence[str]] | None = None,
    metrics: Sequence[str] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    cell_size: int | None = None,
    diff_mode: str = "highlight",
    threshold: int = DEFAULT_THRESHOLD,
    gain: float = 1.0,
    show_inputs: bool = True,
) -> Comparison:
    """Two values A and B of ``axis`` (default: the first swept axis) side by side, one row per combination of
    the other dimensions (prompt x other axes x seed, after ``filters``); in ``diff`` mode a third column shows
    their pixel difference (``diff_mode``, ``threshold``, ``gain`` as in :func:`llm_dit.analysis.diff.diff_image`).
    ``show_inputs`` as in :func:`plan_grid`.

    ``filters[axis]`` are A and B, in that order; without it the axis must have exactly two values.
    """
    if mode not in (SIDE_BY_SIDE, DIFF):
        raise LlmDitError(f"pair mode {mode!r} is not valid; use {SIDE_BY_SIDE} or {DIFF}")
    check_diff_params(diff_mode, threshold, gain)
    axis = exp.check_dimension(axis or default_axis(exp))
    _check_page_limit("--max-rows", max_rows)
    values, index = _select(exp, filters)
    pair = values[axis]
    if len(pair) != 2:
        shown = ", ".join(repr(v) for v in pair)
        raise LlmDitError(
            f"{mode} compares exactly two values of {axis}, got {len(pair)} ({shown}); "
            f"choose two with --values A,B (or --axis for another dimension)"
        )
    others = [dim for dim in exp.dimensions if dim != axis]
    varying = [dim for dim in others if dim != PROMPT and len(values[dim]) > 1]
    # Rows name their prompt (id and text) when prompts vary, or when nothing else would name the row.
    prompt_rows = axis != PROMPT and (len(values[PROMPT]) > 1 or not varying)
    fixed = {dim: values[dim][0] for dim in others if len(values[dim]) == 1 and (dim != PROMPT or not prompt_rows)}
    lines: list[tuple[str, tuple[dict[str, Any] | None, ...]]] = []
    for combination in itertools.product(*(values[dim] for dim in others)):
        at = dict(zip(others, combination, strict=True))
        runs = tuple(index.get(_key(exp, {**at, axis: value})) for value in pair)
        if runs == (None, None):  # a combination the plan never had: nothing to show, not a gap
            continue
        lines.append((_pair_row_label(exp, at, varying, prompt_rows), runs))
    if not lines:
        raise LlmDitError(f"no runs of {exp.name!r} have {axis} = {pair[0]!r} or {pair[1]!r} with these filters")
    col_labels = tuple(f"{letter}: {dimension_label(exp, axis, v)}" for letter, v in zip("AB", pair, strict=True))
    if mode == DIFF:
        col_labels += (diff_header(diff_mode, threshold, gain),)
    heading = " vs ".join(value if axis == PROMPT else f"{axis}={value_text(value)}" for value in pair)
    pages = []
    for r0 in range(0, len(lines), max_rows):
        chunk = lines[r0 : r0 + max_rows]
        title = _title(exp, fixed, rows=(r0, len(chunk), len(lines)), lead=heading)
        pages.append(
            PlannedPage(title, col_labels, tuple(label for label, _ in chunk), tuple(runs for _, runs in chunk))
        )
    metric_names = _metrics(exp, metrics)
    return Comparison(
        exp, mode, tuple(pages), metric_names, _cell_size(exp, cell_size), diff_mode, threshold, gain, show_inputs
    )


def default_axis(exp: ExperimentResults) -> str:
    """The first swept axis with more than one value (else the first axis; ``seed`` if there is none)."""
    for axis in exp.axes:
        if len(exp.dimensions.get(axis, [])) > 1:
            return axis
    return exp.axes[0] if exp.axes else SEED


def _select(
    exp: ExperimentResults, filters: Mapping[str, Sequence[str]] | None
) -> tuple[dict[str, list[str]], dict[tuple[str | None, ...], dict[str, Any]]]:
    """Runs of every status matching ``filters``: (values of each dimension among them, run by dimension key).

    Failed and unfinished runs stay in: their cells say why they have no image. Where two runs share a key, one
    with an image wins.
    """
    filters = {dim: list(dict.fromkeys(vals)) for dim, vals in (filters or {}).items()}
    for dim, vals in filters.items():
        if not vals:
            raise LlmDitError(f"the filter on {dim!r} selects no values; give at least one")
    pool = exp.select(filters, runs=exp.runs)
    if not pool:
        shown = "; ".join(f"{dim}={','.join(vals)}" for dim, vals in filters.items())
        raise LlmDitError(f"no runs of {exp.name!r} match {shown or 'the selection'}; see --info for what exists")
    values: dict[str, list[str]] = {}
    for dim, planned in exp.dimensions.items():
        present = {dimension_value(run, dim) for run in pool}
        values[dim] = filters[dim] if dim in filters else [v for v in planned if v in present]
    index: dict[tuple[str | None, ...], dict[str, Any]] = {}
    for run in pool:
        key = tuple(dimension_value(run, dim) for dim in exp.dimensions)
        if key not in index or (not exp.has_image(index[key]) and exp.has_image(run)):
            index[key] = run
    return values, index


def _key(exp: ExperimentResults, at: Mapping[str, str]) -> tuple[str | None, ...]:
    return tuple(at.get(dim) for dim in exp.dimensions)


def _check_page_limit(flag: str, value: int) -> None:
    if value < 1:
        raise LlmDitError(f"{flag} must be >= 1, got {value}")


def _metrics(exp: ExperimentResults, names: Sequence[str] | None) -> tuple[str, ...]:
    """Metrics to show: the requested ones (each must have values in this experiment), else all it has, in the
    registry's order (ssim, psnr, mad, ...)."""
    from llm_dit.metrics.registry import METRICS

    if names is None:
        order = list(METRICS)
        return tuple(sorted(exp.metrics, key=lambda m: (order.index(m) if m in order else len(order), m)))
    for name in names:
        if name not in exp.metrics:
            present = ", ".join(exp.metrics) or "none"
            raise LlmDitError(
                f"experiment {exp.name!r} has no values of metric {name!r}; metrics present: {present} "
                f"(compute more with: llm-dit metrics {exp.name} --metric {name})"
            )
    return tuple(dict.fromkeys(names))


def _cell_size(exp: ExperimentResults, cell_size: int | None) -> tuple[int, int]:
    """(width, height) of a cell's image area: the longer side ``cell_size`` (default: the images' own, within
    128..256 px), the shape of the experiment's first image."""
    if cell_size is not None and not MIN_CELL <= cell_size <= MAX_CELL:
        raise LlmDitError(f"--cell-size must be {MIN_CELL}..{MAX_CELL} px, got {cell_size}")
    width, height = _image_size(exp)
    longest = cell_size or max(MIN_DEFAULT_CELL, min(MAX_DEFAULT_CELL, max(width, height)))
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _image_size(exp: ExperimentResults) -> tuple[int, int]:
    """Size of the experiment's first readable image (header only); square if it has none."""
    for run in exp.done():
        try:
            with Image.open(exp.directory / run["image_path"]) as img:
                return img.size
        except OSError:
            continue
    return (MAX_DEFAULT_CELL, MAX_DEFAULT_CELL)


# -- cells and labels -------------------------------------------------------------------------------------------


def run_cell(exp: ExperimentResults, run: Mapping[str, Any] | None, metrics: Sequence[str]) -> GridCell:
    """A run's image with its metric values under it, or a placeholder saying why there is no image."""
    if run is None:
        return GridCell(missing="no run planned")
    if exp.has_image(run):
        caption = tuple(f"{name}\t{format_metric(run['metrics'].get(name))}" for name in metrics)
        return GridCell(exp.image_path(run), caption)
    if run["status"] == "failed":
        error = (run.get("error") or "").strip().splitlines()
        return GridCell(missing="failed" + (f": {error[0]}" if error else ""))
    if run["status"] == "done":
        return GridCell(missing="image file missing")
    return GridCell(missing="not generated yet")


def usage_text(
    used: set[tuple[int, int]],
    present: set[tuple[int, int]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    names: tuple[str, str] = ("rows", "columns"),
) -> str:
    """Which cells of a page an input image is used by: '' when by all of them, else 'used by rows: ...' or 'used by
    columns: ...' (whichever names whole rows or columns, the shorter if both do), else 'used by N of M cells'.
    Labels are their first paragraph (a prompt's id, not its text); an empty name in ``names`` leaves the word out
    ('used by A: shift=2.0')."""
    if used == present:
        return ""
    candidates = []
    for axis, name, labels in ((0, names[0], row_labels), (1, names[1], col_labels)):
        chosen = sorted({cell[axis] for cell in used})
        if {cell for cell in present if cell[axis] in chosen} == used:
            listed = ", ".join(labels[i].split("\n")[0] for i in chosen)
            candidates.append((len(chosen), f"used by {name}: {listed}" if name else f"used by {listed}"))
    if candidates:
        return min(candidates)[1]
    return f"used by {len(used)} of {len(present)} cells"


def format_metric(value: float | None) -> str:
    """A metric value for a caption: 3 significant digits; 'inf' (PSNR of identical images); '-' if none."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def diff_caption(stats: Any, mode: str) -> tuple[str, ...]:
    """The numbers under a diff picture (a :class:`~llm_dit.analysis.diff.DiffStats`)."""
    lines = [
        f"changed > {stats.threshold}\t{_percent(stats.changed_fraction)}",
        f"mean |A-B|\t{stats.mean_abs_diff:.2f}",
        f"max |A-B|\t{stats.max_abs_diff}",
    ]
    if mode == "heatmap":
        lines.append(f"top colour\t{stats.max_mean_diff:.1f}")  # the heatmap's scale is per pair
    return tuple(lines)


def _percent(fraction: float) -> str:
    if 0 < fraction < 0.001:
        return "<0.1%"
    return f"{fraction * 100:.1f}%"


def diff_header(mode: str, threshold: int, gain: float) -> str:
    if mode == "highlight":
        return f"diff: red = changed > {threshold}"
    if mode == "absolute":
        return "diff: |A-B|" + (f" x{gain:g}" if gain != 1 else "")
    return "diff: heatmap |A-B|"


def value_text(value: str) -> str:
    """A value label as shown: the empty label as ""."""
    return value if value != "" else '""'


def dimension_label(exp: ExperimentResults, dim: str, value: str) -> str:
    """A header or row label: a prompt's id, then its text as a second paragraph; 'dim=value' otherwise."""
    if dim == PROMPT:
        text = exp.prompt_texts.get(value, "")
        return f"{value}\n{text}" if text else value
    return f"{dim}={value_text(value)}"


def _pair_row_label(exp: ExperimentResults, at: Mapping[str, str], varying: Sequence[str], prompt: bool) -> str:
    """'prompt_id · dim=value · ...' then the prompt's text as a second paragraph (without the prompt: the dims)."""
    head = TITLE_SEP.join([*([at[PROMPT]] if prompt else []), *(f"{dim}={value_text(at[dim])}" for dim in varying)])
    text = exp.prompt_texts.get(at[PROMPT], "") if prompt else ""
    return f"{head}\n{text}" if text else head


def _title(
    exp: ExperimentResults,
    at: Mapping[str, str],
    rows: tuple[int, int, int] | None = None,
    cols: tuple[int, int, int] | None = None,
    lead: str = "",
) -> str:
    """'name · lead · dim=value ...' (a single prompt with its text), plus which rows/columns a split page has."""
    parts = [exp.name, *([lead] if lead else [])]
    for dim in exp.dimensions:
        if dim not in at:
            continue
        if dim == PROMPT:
            text = exp.prompt_texts.get(at[dim], "")
            parts.append(f'{at[dim]} "{text}"' if text else at[dim])
        else:
            parts.append(f"{dim}={value_text(at[dim])}")
    for name, span in (("rows", rows), ("columns", cols)):
        if span and span[1] < span[2]:
            start, count, total = span
            parts.append(f"{name} {start + 1}-{start + count} of {total}")
    return TITLE_SEP.join(parts)


# -- output files -----------------------------------------------------------------------------------------------


def image_format(path: str | Path) -> str:
    """PIL's format name for an output file, from its suffix (png, jpg/jpeg, webp)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise LlmDitError(
            f"output {path}: unknown image type {suffix or '(no suffix)'!r}; end the name in {', '.join(IMAGE_FORMATS)}"
        )
    return IMAGE_FORMATS[suffix]


def page_paths(output: str | Path, count: int) -> list[Path]:
    """Where ``count`` pages go: ``output`` itself for one page, else ``<stem>_p01<suffix>``, ``_p02``, ..."""
    output = Path(output)
    if count == 1:
        return [output]
    digits = max(2, len(str(count)))
    return [output.with_name(f"{output.stem}_p{i:0{digits}d}{output.suffix}") for i in range(1, count + 1)]


def check_outputs(paths: Sequence[Path], results_root: str | Path, overwrite: bool = False) -> None:
    """Before rendering: every output is an image path outside the results directory, new unless ``overwrite``."""
    for path in paths:
        image_format(path)
        check_output_path(path, results_root, overwrite)


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` atomically in the format its suffix names."""
    fmt = image_format(path)
    buffer = io.BytesIO()
    options = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, format=fmt, **options)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def write_pages(comparison: Comparison, output: str | Path) -> list[tuple[Path, tuple[int, int]]]:
    """Render every page and write it (see :func:`page_paths`); returns (path, (width, height)) per page."""
    written = []
    for path, image in zip(page_paths(output, len(comparison.pages)), comparison.images(), strict=True):
        save_image(image, path)
        written.append((path, image.size))
    return written


def metric_counts(exp: ExperimentResults) -> dict[str, int]:
    """Metric name -> how many runs have a value (not None), for every metric present."""
    return {name: sum(run["metrics"].get(name) is not None for run in exp.runs) for name in exp.metrics}
