"""What the CLI prints: the shared stderr console, the one-line 'wrote' / 'note' / 'error' messages, progress, and
every listing or info table on stdout.

- Progress (:func:`progress_bar`) is a live bar on a terminal and a plain line per update in a pipe or a log
  (done/total, rate, ETA; at most about one line per percent, always the last one).
- Listings (:func:`print_records`) come as a table, JSON or CSV (``--format``). A table never cuts or folds a
  *whole* column (names and ids a user must type); other columns fold to fit, and when even that cannot fit the
  terminal, each record is printed on one line as ``key=value`` pairs. JSON and CSV carry the full values,
  unstyled, with stable keys.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

console = Console(stderr=True)

FORMATS = ("table", "json", "csv")


def say(markup: str, text: str) -> None:
    """One stderr line: ``markup`` (rich markup, e.g. a coloured word) then ``text`` printed literally."""
    console.print(f"{markup} {escape(text)}", highlight=False, soft_wrap=True)


def count_noun(count: int, noun: str) -> str:
    """'1 prompt', '2 prompts'."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def wrote(text: str) -> None:
    """'wrote <what>': the line every command prints for each file it writes."""
    say("[green]wrote[/green]", text)


def note(text: str) -> None:
    """'note: <text>': something the user should know that does not stop the command."""
    say("[yellow]note:[/yellow]", text)


def error(text: str) -> None:
    """'error: <text>': the one line a user error prints (``main`` then exits with status 2)."""
    say("[red]error:[/red]", text)


# -- progress ---------------------------------------------------------------------------------------------------


def live_terminal(target: Console) -> bool:
    """Whether ``target`` can show a live bar (rich's own test: a terminal, not a dumb one)."""
    return target.is_terminal and not target.is_dumb_terminal


@contextmanager
def progress_bar(description: str, *columns: ProgressColumn, **fields: Any) -> Iterator[Callable[..., None]]:
    """Progress on stderr; yields ``report(finished, total, **fields)``.

    On a terminal, a rich bar with ``columns`` (``fields`` are its task fields), started on the first report, i.e.
    once the work is under way (a runner holds its lock), so an error raised before that stays a single line. In
    a pipe or a log, :class:`PlainProgress` lines instead, the bar's ``fields`` appended to each.
    """
    if not live_terminal(console):
        plain = PlainProgress(
            description, lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)
        )
        try:
            yield plain.report
        finally:
            plain.close()
        return

    from rich.progress import Progress

    bar = Progress(*columns, console=console)
    task = bar.add_task(description, total=None, **fields)

    def report(finished: int, total: int, **values: Any) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=finished, total=total, **values)

    try:
        yield report
    finally:
        bar.stop()


class _PlainStatus:
    """:func:`status` in a pipe or a log: each new text on a line of its own."""

    def __init__(self, text: str) -> None:
        self.text = ""
        self.update(text)

    def update(self, text: str) -> None:
        if text != self.text:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            self.text = text


@contextmanager
def status(text: str) -> Iterator[Any]:
    """A one-line status on stderr (``.update(text)`` replaces it): rich's spinner on a terminal, in a pipe or a
    log a plain line per new text, so the log shows where the command got to."""
    if not live_terminal(console):
        yield _PlainStatus(text)
        return
    with console.status(text) as live:
        yield live


class PlainProgress:
    """Progress as plain lines, for a pipe or a log: ``<description> 8/24 (33%), 0.52/s, elapsed 0:00:15, ETA
    0:00:31[, <field> <value>...]``, each written (and flushed) as the report arrives.

    A line is written for the first report, for each report that moves the count into a new percent of the total
    (so at most about 101 lines for any total, and one per update while the total is 100 or less), for a report
    at least ``heartbeat_s`` after the last line (a long pass stays visibly alive), and for the last report:
    at ``finished == total`` or, if the work stopped short, on :meth:`close`. A report repeating the count of the
    last line is never written again. The rate counts from the first report (work before it, such as loading a
    model, is not in it); before any item is done, rate and ETA show as '-'.
    """

    def __init__(
        self,
        description: str,
        write: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_s: float = 60.0,
    ) -> None:
        self.description = description
        self.write = write
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.start = clock()
        self.base: tuple[int, float] | None = None  # (count, time) of the first report: the rate's origin
        self.written: tuple[int, int] | None = None  # (finished, total) of the last line
        self.written_at = self.start
        self.pending: tuple[int, int, dict[str, Any], float] | None = None  # the last report, if not written

    def report(self, finished: int, total: int, **fields: Any) -> None:
        now = self.clock()
        if self.base is None:
            # A first report that already counts items started with the context (its work is in the rate).
            self.base = (0, self.start) if finished > 0 else (finished, now)
        self.pending = (finished, total, fields, now)
        if self.written is not None:
            last, last_total = self.written
            if (finished, total) == (last, last_total):
                self.pending = None  # nothing new to say
                return
            new_percent = _percent(finished, total) > _percent(last, last_total) or total != last_total
            due = new_percent or finished >= total or now - self.written_at >= self.heartbeat_s
            if not due:
                return
        self._write_pending()

    def close(self) -> None:
        """Write the last report if no line shows it yet."""
        if self.pending is not None:
            self._write_pending()

    def _write_pending(self) -> None:
        assert self.pending is not None and self.base is not None
        finished, total, fields, now = self.pending
        base_count, base_time = self.base
        rate = (finished - base_count) / (now - base_time) if finished > base_count and now > base_time else None
        parts = [f"{self.description} {finished}/{total}" + (f" ({_percent(finished, total)}%)" if total else "")]
        parts.append(f"{rate:.3g}/s" if rate else "-/s")
        parts.append(f"elapsed {_clock_time(now - self.start)}")
        parts.append(f"ETA {_clock_time(max(total - finished, 0) / rate)}" if rate else "ETA -")
        parts += [f"{name} {value}" for name, value in fields.items()]
        self.write(", ".join(parts))
        self.written, self.written_at, self.pending = (finished, total), now, None


def _percent(finished: int, total: int) -> int:
    return 100 * finished // total if total > 0 else 0


def _clock_time(seconds: float) -> str:
    """H:MM:SS, as rich's bar shows elapsed and remaining time."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# -- listings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column of :func:`print_records`: the record key it shows, its header, and how.

    ``whole``: a name or id the user types; never wrapped, folded or cut (the column takes its full width, or the
    table gives way to one record per line). ``show`` turns the value into the cell text (default:
    :func:`cell_text`).
    """

    key: str
    header: str = ""
    whole: bool = False
    show: Callable[[Any], str] | None = None

    @property
    def title(self) -> str:
        return self.header or self.key

    def text(self, record: Mapping[str, Any]) -> str:
        value = record[self.key]
        return self.show(value) if self.show is not None else cell_text(value)


def cell_text(value: Any) -> str:
    """A table cell: None blank, a list as 'a, b', floats to 4 significant digits, the rest as str."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(item) for item in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check_format(fmt: str) -> str:
    """``--format``'s value, checked (before any work)."""
    if fmt not in FORMATS:
        raise LlmDitError(f"--format {fmt!r} is not valid; use one of: {', '.join(FORMATS)}")
    return fmt


def print_records(
    fmt: str,
    fields: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
) -> None:
    """``records`` on stdout as ``fmt``: a table of ``columns`` (see :func:`print_table`, ``title`` on a line
    above), or JSON (a list of objects) or CSV (a header row then a row per record), both with exactly the keys
    ``fields`` in that order, the full values and no styling.

    JSON: values keep their types; a NaN or infinite float is null (strict JSON). CSV: None is an empty cell, a
    float keeps full precision, a bool, list or object is its JSON text (a label may hold a comma).
    """
    if fmt == "table":
        out = Console()
        if title is not None:
            out.print(title, markup=False, highlight=False, soft_wrap=True)
        print_table(out, records, columns)
        return
    rows = [{key: record[key] for key in fields} for record in records]
    if fmt == "json":
        write_json(rows)
    elif fmt == "csv":
        write_csv(fields, rows)
    else:
        check_format(fmt)


def write_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (NaN and infinities as null, non-ASCII kept)."""
    sys.stdout.write(json.dumps(_json_safe(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def write_csv(fields: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A header row of ``fields``, then each row's cells (see :func:`print_records`), on stdout."""
    from llm_dit.files import csv_cell

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(_csv_cell(row[key], csv_cell) for key in fields)
    sys.stdout.flush()


def _csv_cell(value: Any, scalar: Callable[[Any], Any]) -> Any:
    """A list, object or bool as its JSON text (true/false, not Python's True); other scalars by ``scalar``
    (files.csv_cell)."""
    if isinstance(value, list | tuple | Mapping | bool):
        return json.dumps(_json_safe(value), ensure_ascii=False)
    return scalar(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# rich's default table: one space of padding each side of a cell, one border line between and around cells.
_CELL_PADDING = 2


def print_table(out: Console, records: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    """``records`` as a table laid out to ``out``'s width, or, where even that cannot fit, one line per record
    (``key=value`` pairs, two spaces apart, left to the terminal to wrap).

    Whole columns keep their full width and never wrap. The others narrow, widest first, to share what is left:
    down to their longest word (text wraps between words), or where that cannot fit, down to ``FOLD_FLOOR`` cells
    (a longer word folds onto the next line). No cell is ever cut.
    """
    cells = [[column.text(record) for column in columns] for record in records]
    widths = _layout(out.width, columns, cells)
    if widths is None:
        for row in cells:
            pairs = (f"{column.key}={cell}" for column, cell in zip(columns, row, strict=True))
            out.print("  ".join(pairs), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table()
    for column, width in zip(columns, widths, strict=True):
        table.add_column(escape(column.title), width=width, no_wrap=column.whole, overflow="fold")
    for row in cells:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)


# A column other than a whole one narrows to its longest word; where the table cannot fit that way, the columns
# with the most text (prose, not lists of names) give way first, down to this many cells, folding longer words.
FOLD_FLOOR = 10


def _layout(width: int, columns: Sequence[Column], cells: Sequence[Sequence[str]]) -> list[int] | None:
    """Content widths of ``columns`` for a table of at most ``width`` cells, or None where it cannot fit."""
    room = width - (_CELL_PADDING + 1) * len(columns) - 1
    wide: list[int] = []  # every cell and header on one line
    natural: list[int] = []  # every cell on one line, headers wrapped between words
    floor: list[int] = []
    for i, column in enumerate(columns):
        texts = [row[i] for row in cells]
        longest = max([1, *(cell_len(text) for text in texts)])
        header_word = max([1, *(cell_len(word) for word in column.title.split())])
        word = max([header_word, *(cell_len(word) for text in texts for word in text.split())])
        wide.append(max(longest, cell_len(column.title)))
        natural.append(max(longest, header_word))
        floor.append(natural[i] if column.whole else min(natural[i], max(word, FOLD_FLOOR)))
    if sum(wide) <= room:
        return wide
    while sum(floor) > room:
        relaxable = [i for i, c in enumerate(columns) if not c.whole and floor[i] > min(natural[i], FOLD_FLOOR)]
        if not relaxable:
            return None
        most_text = max(relaxable, key=lambda i: natural[i])
        floor[most_text] = min(natural[most_text], FOLD_FLOOR)

    def widths_at(level: int) -> list[int]:
        """The widest columns cut to ``level``, none below its floor or above its natural width."""
        return [min(full, max(low, level)) for full, low in zip(natural, floor, strict=True)]

    low, high = 0, max(natural)  # the largest level whose widths fit the room
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(widths_at(mid)) <= room else (low, mid - 1)
    widths = widths_at(low)
    spare = room - sum(widths)
    for i, full in enumerate(natural):  # the cells the level left over, one each to the columns it cut
        if spare and widths[i] < full:
            widths[i] += 1
            spare -= 1
    return widths


def print_rows(out: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows whose every cell must stay whole (run ids, prompt ids, values): a table when it fits ``out``'s width,
    else one ``header=value`` line per row (see :func:`print_table`)."""
    columns = [Column(header, whole=True) for header in headers]
    print_table(out, [dict(zip(headers, row, strict=True)) for row in rows], columns)
