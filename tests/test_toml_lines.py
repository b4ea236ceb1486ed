"""The TOML line locator (llm_dit.config.toml_lines): hand-written texts and the line of each path in them."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from llm_dit.config import TomlLines, TomlPath, parse_toml
from llm_dit.errors import ConfigError


def _value_at(data: Any, path: TomlPath) -> Any:
    for part in path:
        data = data[part]
    return data


def assert_lines(text: str, expected: dict[TomlPath, int]) -> None:
    """Every expected path exists in what tomllib parses (so the test itself is right) and has its line."""
    data = tomllib.loads(text)
    for path in expected:
        _value_at(data, path)
    lines = TomlLines(text)
    assert {path: lines.line_of(*path) for path in expected} == expected


def test_tables_keys_and_comments() -> None:
    text = (
        "# a comment with [brackets] and key = value\n"  # 1
        "top = 1  # trailing = comment\n"  # 2
        "\n"  # 3
        "[default]\n"  # 4
        "model_path = 'tiny'\n"  # 5
        "   # indented comment\n"  # 6
        "[default.encoder]  # header comment\n"  # 7
        "hidden_layer = -2\n"  # 8
    )
    assert_lines(
        text,
        {
            ("top",): 2,
            ("default",): 4,
            ("default", "model_path"): 5,
            ("default", "encoder"): 7,
            ("default", "encoder", "hidden_layer"): 8,
        },
    )


def test_implicit_parent_tables_point_at_their_first_header() -> None:
    text = (
        "[default.encoder]\n"  # 1
        "hidden_layer = -2\n"  # 2
        "[other.generation.extra]\n"  # 3
        "x = 1\n"  # 4
        "[default]\n"  # 5: defines the implicit table, which keeps its first line
        "model_path = 'tiny'\n"  # 6
    )
    assert_lines(
        text,
        {
            ("default",): 1,
            ("default", "encoder"): 1,
            ("other",): 3,
            ("other", "generation"): 3,
            ("other", "generation", "extra"): 3,
            ("other", "generation", "extra", "x"): 4,
            ("default", "model_path"): 6,
        },
    )


def test_dotted_keys_mark_each_level() -> None:
    text = (
        "[default]\n"  # 1
        "generation.steps = 8\n"  # 2
        "generation . guidance_scale = 0.0\n"  # 3
        "a.b.c = 1\n"  # 4
    )
    assert_lines(
        text,
        {
            ("default", "generation"): 2,
            ("default", "generation", "steps"): 2,
            ("default", "generation", "guidance_scale"): 3,
            ("default", "a"): 4,
            ("default", "a", "b"): 4,
            ("default", "a", "b", "c"): 4,
        },
    )


def test_inline_tables_and_their_nested_keys() -> None:
    text = (
        "[default]\n"  # 1
        "encoder = { hidden_layer = -2, think_block = 'none', blend = { a.b = 1 } }\n"  # 2
        "other = {}\n"  # 3
        "after = 1\n"  # 4
    )
    assert_lines(
        text,
        {
            ("default", "encoder"): 2,
            ("default", "encoder", "hidden_layer"): 2,
            ("default", "encoder", "think_block"): 2,
            ("default", "encoder", "blend", "a", "b"): 2,
            ("default", "other"): 3,
            ("default", "after"): 4,
        },
    )


AXES_HEADERS = (
    'name = "x"\n'  # 1
    "[[axes]]\n"  # 2
    'name = "shift"\n'  # 3
    "values = [1.0, 2.0]\n"  # 4
    "\n"  # 5
    "[[axes]]\n"  # 6
    'name = "steps"\n'  # 7
    "values = [\n"  # 8
    "  4,\n"  # 9
    "  8,\n"  # 10
    "]\n"  # 11
)
AXES_INLINE = (
    'name = "x"\n'  # 1
    "axes = [\n"  # 2
    '  { name = "shift", values = [1.0, 2.0] },\n'  # 3
    '  { name = "steps", values = [\n'  # 4
    "    4,\n"  # 5
    "    8,\n"  # 6
    "  ] },\n"  # 7
    "]\n"  # 8
)
AXES_PATHS: tuple[TomlPath, ...] = (
    ("axes",),
    ("axes", 0),
    ("axes", 0, "name"),
    ("axes", 0, "values", 1),
    ("axes", 1),
    ("axes", 1, "values"),
    ("axes", 1, "values", 0),
    ("axes", 1, "values", 1),
)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        pytest.param(AXES_HEADERS, (2, 2, 3, 4, 6, 8, 9, 10), id="array-of-tables"),
        pytest.param(AXES_INLINE, (2, 3, 3, 3, 4, 4, 5, 6), id="inline-array-of-tables"),
    ],
)
def test_array_of_tables_and_inline_array_of_tables_give_the_same_paths(text: str, lines: tuple[int, ...]) -> None:
    assert tomllib.loads(text) == tomllib.loads(AXES_HEADERS)  # the same data, hence the same paths
    assert_lines(text, dict(zip(AXES_PATHS, lines, strict=True)))


def test_headers_inside_an_array_of_tables_belong_to_its_latest_entry() -> None:
    text = (
        "[[axes]]\n"  # 1
        'name = "a"\n'  # 2
        "[[axes.values]]\n"  # 3
        "shift = 1.0\n"  # 4
        "[[axes]]\n"  # 5
        'name = "b"\n'  # 6
        "[axes.extra]\n"  # 7
        "note = 'x'\n"  # 8
        "[[axes.values]]\n"  # 9
        "shift = 2.0\n"  # 10
        "[[axes.values]]\n"  # 11
        "shift = 3.0\n"  # 12
    )
    assert_lines(
        text,
        {
            ("axes", 0, "values", 0): 3,
            ("axes", 0, "values", 0, "shift"): 4,
            ("axes", 1): 5,
            ("axes", 1, "extra"): 7,
            ("axes", 1, "extra", "note"): 8,
            ("axes", 1, "values"): 9,
            ("axes", 1, "values", 0): 9,
            ("axes", 1, "values", 1, "shift"): 12,
        },
    )


def test_multiline_array_lines_that_look_like_headers() -> None:
    text = (
        "[default.generation]\n"  # 1
        "sigmas = [  # a schedule [sic]\n"  # 2
        "  1.0,\n"  # 3
        "  0.5,\n"  # 4
        "]\n"  # 5
        "nested = [\n"  # 6
        "  [1, 2],\n"  # 7: looks like a [header]
        "[3],\n"  # 8: even at the start of the line
        "  ['[fake]', \"]\"],\n"  # 9: brackets inside strings
        "]\n"  # 10
        'negative_prompt = "[x"\n'  # 11
        "width = 17\n"  # 12
    )
    assert_lines(
        text,
        {
            ("default", "generation", "sigmas"): 2,
            ("default", "generation", "sigmas", 1): 4,
            ("default", "generation", "nested", 0): 7,
            ("default", "generation", "nested", 0, 1): 7,
            ("default", "generation", "nested", 1): 8,
            ("default", "generation", "nested", 2, 1): 9,
            ("default", "generation", "negative_prompt"): 11,
            ("default", "generation", "width"): 12,
        },
    )
    assert TomlLines(text).line_of("sic") == 0


def test_multiline_strings_holding_keys_and_headers() -> None:
    text = (
        "[default.encoder]\n"  # 1
        'system_prompt = """\n'  # 2
        "steps = 3\n"  # 3
        "[default.generation]\n"  # 4
        'width = 5 \\"""\n'  # 5: an escaped quote run
        '"""\n'  # 6
        "think_block = '''\n"  # 7
        "x = 'y'\n"  # 8
        "'''\n"  # 9
        'quoted_end = """ends with quotes"" """"\n'  # 10: quotes just before the closing delimiter
        "[default.generation]\n"  # 11
        "width = 17\n"  # 12
    )
    # The key and header inside the strings are not paths: a lookup of them falls back to the enclosing
    # table's line (1), not the line the text shows them on (3).
    assert TomlLines(text).line_of("default", "encoder", "steps") == 1
    assert_lines(
        text,
        {
            ("default", "encoder", "system_prompt"): 2,
            ("default", "encoder", "think_block"): 7,
            ("default", "encoder", "quoted_end"): 10,
            ("default", "generation"): 11,
            ("default", "generation", "width"): 12,
        },
    )


def test_quoted_keys() -> None:
    text = (
        '"my key" = 1\n'  # 1
        "'literal.dot' = 2\n"  # 2: the dot is part of the key
        '"esc\\"aped" = 3\n'  # 3
        '[ "quoted table" . sub ]\n'  # 4
        "'' = 4\n"  # 5: an empty literal key
        "bare-key_1 = 5\n"  # 6
    )
    assert_lines(
        text,
        {
            ("my key",): 1,
            ("literal.dot",): 2,
            ('esc"aped',): 3,
            ("quoted table",): 4,
            ("quoted table", "sub"): 4,
            ("quoted table", "sub", ""): 5,
            ("quoted table", "sub", "bare-key_1"): 6,
        },
    )


def test_date_times_and_crlf() -> None:
    text = "when = [\r\n  1979-05-27 07:32:00Z,\r\n  1980-01-01,\r\n]\r\n[t]\r\nx = 07:32:00\r\n"
    assert_lines(text, {("when", 0): 2, ("when", 1): 3, ("t",): 5, ("t", "x"): 6})


def test_unknown_paths_fall_back_to_the_nearest_enclosing_one() -> None:
    lines = TomlLines("[default]\n\n[default.encoder]\nhidden_layer = -2\n")
    assert lines.line_of("default", "encoder", "missing") == 3
    assert lines.line_of("default", "missing", "deeper") == 1
    assert lines.line_of("nowhere") == 0
    assert lines.where("config.toml", "default", "encoder", "hidden_layer") == "config.toml:4"
    assert lines.where("config.toml", "default", "pipeline") == "config.toml:1"
    assert lines.where("config.toml", "nowhere") == "config.toml"
    assert lines.where("config.toml") == "config.toml"


def test_parse_toml_names_the_line_of_a_syntax_error() -> None:
    assert parse_toml("[a]\nx = 1\n", "f.toml") == {"a": {"x": 1}}
    with pytest.raises(ConfigError, match=r"^f\.toml:3: TOML syntax error: "):
        parse_toml("[a]\nx = 1\ny = = 2\n", "f.toml")
