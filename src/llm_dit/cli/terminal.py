"""What the CLI prints on stderr: the shared console, the one-line 'wrote' / 'note' / 'error' messages, and a
progress bar that appears with its first report. Tables and results go to stdout (a fresh ``Console()`` each),
through :func:`print_rows` where a row holds ids or names a user must copy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

console = Console(stderr=True)


def say(markup: str, text: str) -> None:
    """One stderr line: ``markup`` (rich markup, e.g. a coloured word) then ``text`` printed literally."""
    console.print(f"{markup} {escape(text)}", highlight=False, soft_wrap=True)


def wrote(text: str) -> None:
    """'wrote <what>': the line every command prints for each file it writes."""
    say("[green]wrote[/green]", text)


def note(text: str) -> None:
    """'note: <text>': something the user should know that does not stop the command."""
    say("[yellow]note:[/yellow]", text)


def error(text: str) -> None:
    """'error: <text>': the one line a user error prints (``main`` then exits with status 2)."""
    say("[red]error:[/red]", text)


@contextmanager
def progress_bar(description: str, *columns: ProgressColumn, **fields: Any) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``report(finished, total, **fields)`` and stops the bar on exit.

    The bar starts on the first report, i.e. once the work is under way (a runner holds its lock): an error raised
    before that stays a single line.
    """
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


def print_rows(out: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows as a table when it fits ``out``'s width, else one ``header=value`` line per row: a table squeezed into a
    narrow terminal cuts cells ("4f3a…"), and ids or names must stay whole to be copied."""
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    if sum(widths) + 3 * len(headers) + 1 > out.width:  # the cells plus rich's borders and padding
        for row in rows:
            line = "  ".join(f"{header}={cell}" for header, cell in zip(headers, row, strict=True))
            out.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    table = Table(*headers)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)
