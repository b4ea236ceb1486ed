"""Where things are in a TOML text: the one scanner behind every ``file:LINE`` message (tomllib gives no positions).

Owns :func:`parse_toml` (tomllib with a ``file:LINE`` syntax error) and :class:`TomlLines` (the line of each
table, key and array element), used by the config file loader and the experiment loader alike. A leaf of the
config layer: it imports the standard library and ``llm_dit.errors`` only, never pydantic, torch or another
llm_dit module.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from typing import Any

from llm_dit.errors import ConfigError

__all__ = ["TomlLines", "TomlPath", "parse_toml"]

# Keys and 0-based indices: ("axes", 1, "values", 2) is the third value of the second axis.
TomlPath = tuple[str | int, ...]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# A date-time may hold one space ("1979-05-27 07:32:00Z"); any other scalar (number, boolean, date) ends at the
# first separator.
_SCALAR_RE = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d[^,\]}\s#]*|[^,\]}\s#]+")
_SYNTAX_LINE_RE = re.compile(r"at line (\d+)")


def parse_toml(text: str, label: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; a syntax error is a ConfigError ``"<label>:<line>: TOML syntax error: ..."``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _SYNTAX_LINE_RE.search(str(exc))
        where = f"{label}:{line.group(1)}" if line else label
        raise ConfigError(f"{where}: TOML syntax error: {exc}") from None


class TomlLines:
    """The (1-based) line of each table, key, ``[[table]]`` entry and array element of a valid TOML text.

    A path is where tomllib puts the value: ``("axes", 1, "values", 2)`` whether the file writes ``[[axes]]``
    or an inline array of tables, and ``("default", "encoder", "steps")`` whether it writes a ``[default.encoder]``
    header, a dotted key or an inline table. A path gets the line where it first appears, so an implicit parent
    table (``default`` of ``[default.encoder]``) points at the first header or dotted key that names it.

    A best-effort scanner, meant for text tomllib accepted: any surprise leaves the paths after it to the line of
    their nearest enclosing path.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.paths: dict[TomlPath, int] = {}
        self._pos = 0
        # Marks come in text order, so line numbers are counted incrementally up to the latest mark.
        self._counted_to = 0
        self._line = 1
        # The latest index of each array of tables, by its resolved path ("axes",) -> 2.
        self._table_arrays: dict[TomlPath, int] = {}
        with contextlib.suppress(IndexError, ValueError):  # keep the lines found so far
            self._document()

    def line_of(self, *path: str | int) -> int:
        """The line of ``path``, else of its nearest enclosing path that has one; 0 when none does."""
        for n in range(len(path), 0, -1):
            line = self.paths.get(path[:n])
            if line is not None:
                return line
        return 0

    def where(self, label: str, *path: str | int) -> str:
        """``"<label>:<line>"`` for ``path`` (see :meth:`line_of`), or ``label`` alone when no line is known."""
        line = self.line_of(*path)
        return f"{label}:{line}" if line else label

    # -- scanner -------------------------------------------------------------------------------------

    def _mark(self, path: TomlPath, pos: int) -> None:
        self._line += self.text.count("\n", self._counted_to, pos)
        self._counted_to = pos
        for n in range(1, len(path) + 1):
            self.paths.setdefault(path[:n], self._line)

    def _peek(self, n: int = 1) -> str:
        return self.text[self._pos : self._pos + n]

    def _skip(self, newlines: bool) -> None:
        blanks = " \t\r\n" if newlines else " \t"
        while self._pos < len(self.text):
            char = self.text[self._pos]
            if char in blanks:
                self._pos += 1
            elif char == "#":
                end = self.text.find("\n", self._pos)
                self._pos = len(self.text) if end < 0 else end
            else:
                return

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            if self._peek() in ('"', "'"):
                start = self._pos
                self._string()
                quoted = self.text[start : self._pos]
                # Only a basic string can hold escapes; let tomllib decode them.
                parts.append(next(iter(tomllib.loads(f"{quoted} = 0"))) if "\\" in quoted else quoted[1:-1])
            else:
                bare = _BARE_KEY_RE.match(self.text, self._pos)
                if not bare:
                    raise ValueError("no key")
                parts.append(bare.group(0))
                self._pos = bare.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._pos += 1

    def _string(self) -> None:
        delim = next(d for d in ('"""', "'''", '"', "'") if self.text.startswith(d, self._pos))
        self._pos += len(delim)
        while True:
            if self.text[self._pos] == "\\" and delim[0] == '"':
                self._pos += 2
            elif self.text.startswith(delim, self._pos):
                self._pos += len(delim)
                while len(delim) == 3 and self._peek() == delim[0]:  # quotes just before a closing """
                    self._pos += 1
                return
            else:
                self._pos += 1

    def _value(self, path: TomlPath) -> None:
        self._skip(newlines=False)
        char = self._peek()
        if char == "[":
            self._pos += 1
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._pos += 1
                    return
                self._mark((*path, index), self._pos)
                self._value((*path, index))
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._pos += 1
                    index += 1
        elif char == "{":
            self._pos += 1
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self._pos += 1
                    return
                self._key_value(path)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._pos += 1
        elif char in ('"', "'"):
            self._string()
        else:
            scalar = _SCALAR_RE.match(self.text, self._pos)
            if not scalar:
                raise ValueError("no value")
            self._pos = scalar.end()

    def _key_value(self, table: TomlPath) -> None:
        start = self._pos
        key = (*table, *self._key())
        self._mark(key, start)
        self._pos += 1  # "="
        self._value(key)

    def _header_path(self, name: tuple[str, ...]) -> TomlPath:
        """A header's key path with the current index of each array of tables it goes through."""
        path: list[str | int] = []
        for part in name:
            path.append(part)
            index = self._table_arrays.get(tuple(path))
            if index is not None:
                path.append(index)
        return tuple(path)

    def _document(self) -> None:
        table: TomlPath = ()
        while True:
            self._skip(newlines=True)
            if self._pos >= len(self.text):
                return
            start = self._pos
            if self.text.startswith("[[", self._pos):
                self._pos += 2
                name = self._key()
                self._pos += 2
                array = (*self._header_path(name[:-1]), name[-1])
                self._table_arrays[array] = self._table_arrays.get(array, -1) + 1
                table = (*array, self._table_arrays[array])
                self._mark(table, start)
            elif self._peek() == "[":
                self._pos += 1
                table = self._header_path(self._key())
                self._pos += 1
                self._mark(table, start)
            else:
                self._key_value(table)
