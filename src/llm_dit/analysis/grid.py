"""Comparison pages as pictures: a pure layout, then PIL drawing.

A page is a table of images: a title, one header per column, one label per row, and under each image a caption
(metric values, diff statistics); optionally a strip of input images (what the runs were conditioned on) between
the title and the table. :func:`layout_page` turns a :class:`GridPage` into a :class:`PageLayout`: the
canvas size, every image box and every text block with its exact (wrapped, truncated) lines. It needs no image
pixels, so tests check geometry and label text exactly; :func:`render_page` only draws what the layout says.

Text uses Pillow's built-in scalable font (``ImageFont.load_default(size=N)``), so pages look the same on every
machine, with or without system fonts. It covers Latin-1 (and '…'); other characters draw as boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

FONT_MIN, FONT_MAX = 12, 18  # px; the font scales with the cell width; below 12 px its spaces collapse
MAX_HEADER_LINES = 4  # a column header (a prompt column: id + 3 lines of its text)
MAX_TITLE_LINES = 2
MIN_INPUTS_PER_ROW = 4  # the input strip wraps after max(columns, this) thumbnails
MAX_INPUT_LINES = 3  # each caption line of an input thumbnail (a long file name, the rows using it) wraps to this
ELLIPSIS = "…"
CAPTION_SEP = "\t"  # in a caption line, "name\tvalue": name left-aligned, value right-aligned

BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)
MUTED = (100, 100, 100)  # row-label text after its first paragraph (e.g. a prompt's text under its id)
PLACEHOLDER_FILL = (228, 228, 228)
PLACEHOLDER_EDGE = (160, 160, 160)
PLACEHOLDER_TEXT = (80, 80, 80)

Align = Literal["left", "center"]


@dataclass(frozen=True)
class Box:
    """A pixel rectangle: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height


@dataclass(frozen=True)
class Label:
    """A block of text: its lines exactly as drawn, in a box exactly ``len(lines)`` lines high."""

    box: Box
    lines: tuple[str, ...]
    size: int  # font size, px
    align: Align = "left"
    emphasis: int = 0  # the first lines drawn in the text colour; the rest muted (0 = all in the text colour)


@dataclass(frozen=True)
class GridCell:
    """What one cell shows: an image (a file, loaded when drawn, or a picture) or a placeholder saying why not."""

    image: Path | Image.Image | None = None
    caption: tuple[str, ...] = ()  # lines under the image; "name\tvalue" puts the value on the right
    missing: str = ""  # why there is no image; drawn inside a grey placeholder


@dataclass(frozen=True)
class GridPage:
    """One page: ``cells[row][col]``; a row label's paragraphs are separated by '\\n' (the first one stands out)."""

    title: str
    col_labels: tuple[str, ...]
    row_labels: tuple[str, ...]
    cells: tuple[tuple[GridCell, ...], ...]
    # Input images drawn in a strip above the table, each with its caption (wrapped, not cut); () = no strip, and
    # then the page is laid out exactly as without one.
    inputs: tuple[GridCell, ...] = ()
    inputs_label: str = "inputs"

    def __post_init__(self) -> None:
        if len(self.cells) != len(self.row_labels) or any(len(row) != len(self.col_labels) for row in self.cells):
            raise ValueError(
                f"page {self.title!r}: cells must be {len(self.row_labels)} rows of {len(self.col_labels)}, "
                f"got {[len(row) for row in self.cells]}"
            )


@dataclass(frozen=True)
class PageLayout:
    """Where everything of a page goes. ``cells[r][c]`` is the image area of a cell (an image is fitted into it,
    keeping its aspect ratio, centred); ``captions[r][c]`` the text under it; ``placeholders[r][c]`` the text of a
    missing image (None where there is an image). ``inputs[i]``, ``input_captions[i]``, ``input_placeholders[i]``
    are the same for the page's input strip, ``separator`` the rule under it (all empty/None without inputs)."""

    width: int
    height: int
    font_size: int
    line_height: int
    margin: int
    gap: int
    title: Label | None
    col_headers: tuple[Label, ...]
    row_labels: tuple[Label, ...]
    cells: tuple[tuple[Box, ...], ...]
    captions: tuple[tuple[Label | None, ...], ...]
    placeholders: tuple[tuple[Label | None, ...], ...]
    inputs_label: Label | None = None
    inputs: tuple[Box, ...] = ()
    input_captions: tuple[Label | None, ...] = ()
    input_placeholders: tuple[Label | None, ...] = ()
    separator: Box | None = None

    def labels(self) -> list[Label]:
        """The page's text blocks outside the cells: title, the input strip's label and captions, headers, row
        labels, captions."""
        out = [self.title] if self.title else []
        if self.inputs_label is not None:
            out.append(self.inputs_label)
        out += [label for label in self.input_captions if label is not None]
        out += [*self.col_headers, *self.row_labels]
        for row in self.captions:
            out += [label for label in row if label is not None]
        return out


def font_size_for(cell_width: int) -> int:
    """Font size (px) for a cell width: about 1/14 of it, within FONT_MIN..FONT_MAX."""
    return max(FONT_MIN, min(FONT_MAX, round(cell_width / 14)))


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (needs Pillow built with FreeType, as its wheels are)."""
    loaded = ImageFont.load_default(size=size)
    if not isinstance(loaded, ImageFont.FreeTypeFont):  # a Pillow without FreeType: fixed-size bitmap font only
        raise RuntimeError("Pillow was built without FreeType; scalable text is needed for comparison pages")
    return loaded


def line_height(size: int) -> int:
    """Height of one line of text: the font's ascent + descent."""
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def text_width(text: str, size: int) -> float:
    return font(size).getlength(text)


def wrap(text: str, width: float, size: int, max_lines: int | None = None) -> tuple[str, ...]:
    """``text`` broken into lines no wider than ``width`` px at font ``size``.

    Paragraphs ('\\n') start new lines; lines break at spaces (dropped), else after ',', '=', ':', ';', '/' or
    '_' (kept), else anywhere. Beyond ``max_lines`` the last kept line ends in '…'.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(_wrap_paragraph(paragraph, width, size))
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] if max_lines > 0 else []
        if lines:
            lines[-1] = truncate(lines[-1] + ELLIPSIS, width, size)
    return tuple(lines)


def truncate(text: str, width: float, size: int) -> str:
    """``text`` if it fits ``width``, else its longest prefix that fits with '…' appended."""
    if text_width(text, size) <= width:
        return text
    body = text.removesuffix(ELLIPSIS).rstrip()
    while body and text_width(body + ELLIPSIS, size) > width:
        body = body[:-1]
    return body.rstrip() + ELLIPSIS if body else ELLIPSIS


_BREAK_AFTER = ",=:;/_"


def _wrap_paragraph(paragraph: str, width: float, size: int) -> list[str]:
    if not paragraph:
        return [""]
    lines: list[str] = []
    current = _fill(paragraph.split(" "), " ", lambda text: text_width(text, size) <= width, lines, "", 0)
    lines.append(current)
    return lines


def _fill(
    units: list[str], joiner: str, fits: Callable[[str], bool], lines: list[str], current: str, level: int
) -> str:
    """Greedy line filling: append each unit to ``current`` while it fits, else start a new line (finished ones go to
    ``lines``); a unit too wide on its own is broken by the next splitter, and a single character always goes in."""
    for unit in units:
        candidate = f"{current}{joiner}{unit}" if current else unit
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        current = _fill(_SPLITTERS[level](unit), "", fits, lines, "", level + 1) if level < len(_SPLITTERS) else unit
    return current


def _pieces(word: str) -> list[str]:
    """``word`` split after each break character: 'layer=-2:0.5,-5:0.5' -> ['layer=', '-2:', '0.5,', '-5:', '0.5']."""
    pieces, start = [], 0
    for i, char in enumerate(word):
        if char in _BREAK_AFTER:
            pieces.append(word[start : i + 1])
            start = i + 1
    if start < len(word):
        pieces.append(word[start:])
    return pieces


# How a unit too wide for a line is broken next: a word after separators, then a piece anywhere.
_SPLITTERS: tuple[Callable[[str], list[str]], ...] = (_pieces, list)


def layout_page(page: GridPage, cell_width: int, cell_height: int, font_size: int | None = None) -> PageLayout:
    """The geometry and text of ``page`` with image areas of ``cell_width`` x ``cell_height`` px.

    From the top: margin, title (up to 2 lines, a larger font), the input strip if the page has inputs (its label
    in the row-label column, thumbnails of the cell size in the columns' place, at least 4 to a row, captions
    wrapped, then a rule), column headers (centred, bottom-aligned, up to 4 lines), then the rows: the row label
    left of the images, each image with its caption below. The row label column is as wide as its longest
    paragraph, capped at ``max(cell_width, 12 em)``. Every caption band is as high as the page's longest caption,
    so rows line up.
    """
    if cell_width < 1 or cell_height < 1:
        raise ValueError(f"cell size must be positive, got {cell_width}x{cell_height}")
    size = font_size or font_size_for(cell_width)
    line = line_height(size)
    margin = size
    gap = max(6, round(size * 0.8))  # wide enough that one cell's caption values never touch the next's
    pad = max(2, size // 3)  # between an image and its caption, a header and its image
    n_rows, n_cols = len(page.row_labels), len(page.col_labels)

    caption_lines = max((len(cell.caption) for row in page.cells for cell in row), default=0)
    caption_band = pad + caption_lines * line if caption_lines else 0
    row_height = cell_height + caption_band

    side_labels = (*page.row_labels, *((page.inputs_label,) if page.inputs else ()))
    widest = max((text_width(p, size) for label in side_labels for p in label.split("\n")), default=0.0)
    label_width = min(math.ceil(widest), max(cell_width, 12 * size)) if widest else 0
    cells_x = margin + (label_width + gap if label_width else 0)
    width = cells_x + n_cols * cell_width + max(n_cols - 1, 0) * gap + margin
    per_row = max(n_cols, MIN_INPUTS_PER_ROW)
    if page.inputs:  # a strip wider than the table widens the page
        strip_cols = min(len(page.inputs), per_row)
        width = max(width, cells_x + strip_cols * cell_width + (strip_cols - 1) * gap + margin)

    y = margin
    title = None
    if page.title:
        title_size = size + max(2, size // 5)
        lines = wrap(page.title, width - 2 * margin, title_size, MAX_TITLE_LINES)
        title = Label(Box(margin, y, width - 2 * margin, len(lines) * line_height(title_size)), lines, title_size)
        y = title.box.bottom + gap

    strip = _layout_inputs(page, cells_x, y, label_width, per_row, cell_width, cell_height, size, gap, pad)
    separator = None if strip is None else Box(margin, strip[-1] + gap, width - 2 * margin, 1)
    if separator is not None:  # the table starts under the strip's rule
        y = separator.bottom + gap

    header_lines = [wrap(label, cell_width, size, MAX_HEADER_LINES) for label in page.col_labels]
    header_band = max((len(lines) for lines in header_lines), default=0) * line
    headers = []
    for col, lines in enumerate(header_lines):
        height = len(lines) * line
        box = Box(cells_x + col * (cell_width + gap), y + header_band - height, cell_width, height)
        emphasis = _first_paragraph_lines(page.col_labels[col], lines, cell_width, size)
        headers.append(Label(box, lines, size, "center", emphasis))
    y += header_band + (pad if header_band else 0)

    row_labels, cells, captions, placeholders = [], [], [], []
    max_label_lines = max(1, row_height // line)
    for row in range(n_rows):
        top = y + row * (row_height + gap)
        text = page.row_labels[row]
        lines = wrap(text, label_width, size, max_label_lines) if label_width else ()
        emphasis = _first_paragraph_lines(text, lines, label_width, size)
        row_labels.append(Label(Box(margin, top, label_width, len(lines) * line), lines, size, emphasis=emphasis))
        boxes, row_captions, row_placeholders = [], [], []
        for col in range(n_cols):
            box = Box(cells_x + col * (cell_width + gap), top, cell_width, cell_height)
            cell = page.cells[row][col]
            boxes.append(box)
            row_captions.append(_caption(cell.caption, box, pad, size, line))
            row_placeholders.append(None if cell.image is not None else placeholder_label(cell.missing, box, size))
        cells.append(tuple(boxes))
        captions.append(tuple(row_captions))
        placeholders.append(tuple(row_placeholders))
    height = y + n_rows * row_height + max(n_rows - 1, 0) * gap + margin
    layout = PageLayout(
        width, height, size, line, margin, gap, title, tuple(headers), tuple(row_labels), tuple(cells),
        tuple(captions), tuple(placeholders),
    )  # fmt: skip
    if strip is None:
        return layout
    inputs_label, boxes, input_captions, input_placeholders, _ = strip
    return replace(
        layout,
        inputs_label=inputs_label,
        inputs=boxes,
        input_captions=input_captions,
        input_placeholders=input_placeholders,
        separator=separator,
    )


def _layout_inputs(
    page: GridPage,
    x: int,
    y: int,
    label_width: int,
    per_row: int,
    cell_width: int,
    cell_height: int,
    size: int,
    gap: int,
    pad: int,
) -> tuple[Label, tuple[Box, ...], tuple[Label | None, ...], tuple[Label | None, ...], int] | None:
    """The input strip from ``y``: (its label, thumbnail boxes, captions, placeholders, its bottom); None without
    inputs. Thumbnails take the cells' size and columns (wrapping after ``per_row``), captions wrap."""
    if not page.inputs:
        return None
    line = line_height(size)
    texts = [tuple(out for text in cell.caption for out in wrap(text, cell_width, size, MAX_INPUT_LINES))
             for cell in page.inputs]  # fmt: skip
    band_lines = max(len(lines) for lines in texts)
    row_height = cell_height + (pad + band_lines * line if band_lines else 0)
    lines = wrap(page.inputs_label, label_width, size, max(1, row_height // line)) if label_width else ()
    emphasis = _first_paragraph_lines(page.inputs_label, lines, label_width, size)
    left = x - label_width - gap if label_width else x  # the row labels' column (the page margin)
    label = Label(Box(left, y, label_width, len(lines) * line), lines, size, emphasis=emphasis)
    boxes, captions, placeholders = [], [], []
    for i, (cell, caption) in enumerate(zip(page.inputs, texts, strict=True)):
        row, col = divmod(i, per_row)
        box = Box(x + col * (cell_width + gap), y + row * (row_height + gap), cell_width, cell_height)
        boxes.append(box)
        captions.append(Label(Box(box.x, box.bottom + pad, cell_width, len(caption) * line), caption, size)
                        if caption else None)  # fmt: skip
        placeholders.append(None if cell.image is not None else placeholder_label(cell.missing, box, size))
    rows = math.ceil(len(page.inputs) / per_row)
    bottom = y + rows * row_height + (rows - 1) * gap
    return label, tuple(boxes), tuple(captions), tuple(placeholders), bottom


def _first_paragraph_lines(text: str, lines: Sequence[str], width: float, size: int) -> int:
    """How many of ``lines`` (``text`` wrapped) are its first paragraph's; 0 if it has only one paragraph."""
    if "\n" not in text:
        return 0
    return min(len(wrap(text.split("\n", 1)[0], width, size)), len(lines))


def _caption(caption: Sequence[str], box: Box, pad: int, size: int, line: int) -> Label | None:
    if not caption:
        return None
    lines = tuple(_fit_caption_line(text, box.width, size) for text in caption)
    return Label(Box(box.x, box.bottom + pad, box.width, len(lines) * line), lines, size)


def _fit_caption_line(text: str, width: int, size: int) -> str:
    """A caption line that fits the cell: 'name\\tvalue' keeps the value whole and shortens the name."""
    name, sep, value = text.partition(CAPTION_SEP)
    if not sep:
        return truncate(text, width, size)
    room = width - text_width(value, size) - text_width("  ", size)
    return f"{truncate(name, max(room, 0), size)}{CAPTION_SEP}{value}"


def placeholder_label(reason: str, box: Box, size: int) -> Label:
    """The text of a missing image's placeholder, centred in its cell."""
    inset = max(2, size // 2)
    line = line_height(size)
    lines = wrap(reason or "no image", box.width - 2 * inset, size, max(1, (box.height - 2 * inset) // line))
    height = len(lines) * line
    return Label(
        Box(box.x + inset, box.y + (box.height - height) // 2, box.width - 2 * inset, height), lines, size, "center"
    )


def fit(image: Image.Image, box: Box) -> tuple[Image.Image, Box]:
    """``image`` scaled to fit ``box`` (aspect ratio kept) and the box it fills, centred in ``box``.

    Enlarging uses nearest neighbour (each source pixel becomes a block: diff pixels stay exact and sharp);
    shrinking uses Lanczos (no aliasing).
    """
    scale = min(box.width / image.width, box.height / image.height)
    width = max(1, min(box.width, round(image.width * scale)))
    height = max(1, min(box.height, round(image.height * scale)))
    target = Box(box.x + (box.width - width) // 2, box.y + (box.height - height) // 2, width, height)
    if (width, height) == image.size:
        return image, target
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return image.resize((width, height), resample), target


def load_image(source: Path | Image.Image) -> Image.Image:
    """A cell's image as RGB (files are read fully and closed)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
    with Image.open(source) as img:
        return img.convert("RGB")


def render_page(page: GridPage, layout: PageLayout) -> Image.Image:
    """Draw ``page`` as ``layout`` places it: an RGB image of ``layout.width`` x ``layout.height``."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for cell, box, placeholder in zip(page.inputs, layout.inputs, layout.input_placeholders, strict=True):
        _draw_cell(canvas, draw, cell, box, placeholder, layout.font_size)
    if layout.separator is not None:
        sep = layout.separator
        draw.rectangle((sep.x, sep.y, sep.right - 1, sep.bottom - 1), PLACEHOLDER_EDGE)
    for row, cells in enumerate(page.cells):
        for col, cell in enumerate(cells):
            _draw_cell(canvas, draw, cell, layout.cells[row][col], layout.placeholders[row][col], layout.font_size)
    for label in layout.labels():
        draw_label(draw, label)
    return canvas


def _draw_cell(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, cell: GridCell, box: Box, placeholder: Label | None, size: int
) -> None:
    """A cell's image fitted into ``box``, or its grey placeholder with the reason."""
    if cell.image is not None:
        try:
            image = load_image(cell.image)
        except OSError as exc:  # a damaged file: say so in its cell, draw everything else
            placeholder = placeholder_label(f"cannot read image: {exc}", box, size)
        else:
            resized, target = fit(image, box)
            canvas.paste(resized, (target.x, target.y))
    if placeholder is not None:
        draw.rectangle((box.x, box.y, box.right - 1, box.bottom - 1), PLACEHOLDER_FILL, PLACEHOLDER_EDGE)
        draw_label(draw, placeholder, PLACEHOLDER_TEXT)


def draw_label(draw: ImageDraw.ImageDraw, label: Label, colour: tuple[int, int, int] = TEXT) -> None:
    """Draw a label's lines top to bottom; 'name\\tvalue' lines put the value flush right."""
    face = font(label.size)
    step = line_height(label.size)
    for i, text in enumerate(label.lines):
        fill = colour if not label.emphasis or i < label.emphasis else MUTED
        y = label.box.y + i * step
        name, sep, value = text.partition(CAPTION_SEP)
        if sep:
            draw.text((label.box.x, y), name, fill=fill, font=face, anchor="la")
            draw.text((label.box.right, y), value, fill=fill, font=face, anchor="ra")
        elif label.align == "center":
            draw.text((label.box.x + label.box.width / 2, y), text, fill=fill, font=face, anchor="ma")
        else:
            draw.text((label.box.x, y), text, fill=fill, font=face, anchor="la")
