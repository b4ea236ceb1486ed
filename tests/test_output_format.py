"""What the CLI prints for people and for scripts: tables that keep every name whole at any width
(``terminal.print_table``), ``--format table|json|csv`` on every listing and info command (parsed back here), and
progress that streams a plain line per update into a pipe or a log (``terminal.PlainProgress``).

Widths are given explicitly (a Console of that width, or COLUMNS in a child's environment), except in the tests
marked ``terminal``, which run at the suite's pinned width (80, and 40 in make test's second pass).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cli_helpers import assert_user_error, run, subprocess_env
from llm_dit.cli import terminal
from llm_dit.cli.terminal import Column, PlainProgress, print_table

# Box-drawing and key=value separators: what splits a printed line into the tokens a user copies.
SEPARATORS = re.compile(r"[\s│┃|]+")


def tokens(text: str) -> set[str]:
    """Every whitespace/border separated token of ``text``, and for key=value tokens the value too."""
    out: set[str] = set()
    for token in SEPARATORS.split(text):
        out.add(token)
        out.add(token.partition("=")[2])
    return out


def rendered(width: int, records: list[dict[str, Any]], columns: list[Column]) -> list[str]:
    buffer = io.StringIO()
    print_table(Console(file=buffer, width=width), records, columns)
    return buffer.getvalue().splitlines()


# -- tables -----------------------------------------------------------------------------------------------------

NAMES = ["hidden_layer_blend", "shift_steps_grid", "token_importance", "x"]
PROSE = (
    "Which compression keeps the most of a prompt longer than the token cap (max_text_tokens, default the hard "
    "cap 1504): truncate, interpolate, pool or attention_pool?"
)
RECORDS = [{"name": name, "question": PROSE[: 40 + 30 * i], "variables": "token_manipulation"} for i, name in
           enumerate(NAMES)]  # fmt: skip
COLUMNS = [Column("name", "experiment", whole=True), Column("question"), Column("variables")]


@pytest.mark.parametrize("width", range(20, 141, 4))
def test_a_table_never_cuts_a_name_or_any_cell(width: int) -> None:
    lines = rendered(width, RECORDS, COLUMNS)
    text = "\n".join(lines)
    assert "…" not in text
    body = [line for line in lines if line.startswith("│")]
    if body:  # a table: within the width, names on one line each, the other columns folded but complete
        assert all(len(line) <= width for line in lines)
        cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in body]
        names = [row[0] for row in cells if row[0]]
        assert names == NAMES
        for i, record in enumerate(RECORDS):  # the cells of record i: from its name's line to the next name's
            start = next(k for k, row in enumerate(cells) if row[0] == NAMES[i])
            end = next((k for k, row in enumerate(cells) if k > start and row[0]), len(cells))
            for j, key in ((1, "question"), (2, "variables")):
                joined = "".join(row[j] for row in cells[start:end])
                assert joined.replace(" ", "") == record[key].replace(" ", ""), (width, key)
    else:  # too narrow for that: one record per line, every value whole
        assert lines == [f"name={r['name']}  question={r['question']}  variables={r['variables']}" for r in RECORDS]


def test_layout_gives_the_widest_column_the_cut_and_keeps_names_whole() -> None:
    # room = 40 - 3 x 3 - 1 = 30 cells of content; natural widths 10 (whole), 24, 1: the 24 is cut to 30 - 11.
    columns = [Column("a", whole=True), Column("b"), Column("c")]
    cells = [["abcdefghij", "aaaa bbbb cccc dddd eeee", "x"]]
    assert terminal._layout(40, columns, cells) == [10, 19, 1]
    # At 32 cells: room 22; "b" may narrow to its floor (its longest word, but at least FOLD_FLOOR = 10), and
    # level 11 is the widest that fits: 10 + 11 + 1.
    assert terminal._layout(32, columns, cells) == [10, 11, 1]
    # At 30: room 20 < 10 + 10 + 1: nothing left to relax, so no table.
    assert terminal._layout(30, columns, cells) is None


def test_layout_folds_prose_before_lists_of_names() -> None:
    # A 60-cell question (longest word 15) and a list of names (18): at width 60 (room 50) the floors 20 + 15 + 18
    # do not fit; the column with the most text (the question) gives way to FOLD_FLOOR, the names keep 18.
    question = "abcdefghijklmno " + "word " * 8 + "end of it there"
    assert len(question) == 71
    columns = [Column("name", whole=True), Column("question"), Column("variables")]
    cells = [["n" * 20, question, "token_manipulation"]]
    assert terminal._layout(60, columns, cells) == [20, 12, 18]


def test_headers_wrap_before_a_table_gives_way() -> None:
    # "runs per prompt" (15 cells) over 1-cell values: with room for the values, the header wraps between words.
    columns = [Column("name", whole=True), Column("runs", "runs per prompt")]
    lines = rendered(28, [{"name": "hidden_layer_blend", "runs": 8}], columns)  # room 21 < 18 + "prompt"'s 6
    assert lines == ["name=hidden_layer_blend  runs=8"]
    lines = rendered(32, [{"name": "hidden_layer_blend", "runs": 8}], columns)  # room 25 >= 18 + 6
    assert sum("┃" in line for line in lines) == 3  # the header on three lines: runs / per / prompt
    assert all(len(line) <= 32 for line in lines) and "hidden_layer_blend" in tokens("\n".join(lines))


# -- --format json | csv ----------------------------------------------------------------------------------------


def parsed(fmt: str, out: str) -> list[dict[str, Any]]:
    if fmt == "json":
        return json.loads(out)
    return list(csv.DictReader(io.StringIO(out)))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_list_experiments_and_prompts_as_data(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.cli.ablate import EXPERIMENT_FIELDS, PROMPT_FIELDS
    from llm_dit.experiments.loader import builtin_experiments
    from llm_dit.experiments.prompts import list_prompts, load_library

    rc, out, err = run(capsys, "ablate", "--list-experiments", "--format", fmt)
    assert rc == 0, err
    assert "\x1b" not in out  # unstyled
    rows = parsed(fmt, out)
    experiments = builtin_experiments()
    assert [row["name"] for row in rows] == list(experiments)
    assert all(list(row) == list(EXPERIMENT_FIELDS) for row in rows)
    for row in rows:
        exp = experiments[row["name"]]
        seeds = row["seeds"] if fmt == "json" else json.loads(row["seeds"])  # csv: lists as JSON text
        variables = row["variables"] if fmt == "json" else json.loads(row["variables"])
        assert seeds == list(exp.seeds) and variables == list(exp.variables())
        assert row["description"] == exp.description.strip()  # whole, not the table's first sentence
        assert int(row["runs_per_prompt"]) == exp.runs_per_prompt_seed() * len(exp.seeds)

    rc, out, err = run(capsys, "ablate", "--list-prompts", "--format", fmt)
    assert rc == 0, err
    rows = parsed(fmt, out)
    library = list_prompts(load_library())
    assert [{k: row[k] for k in PROMPT_FIELDS} for row in rows] == [
        {"id": p.id, "category": p.category, "text": p.text} for p in library
    ]
    assert max(len(p.text) for p in library) > 90  # the table cuts these texts; json and csv keep them whole


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_metrics_list_as_data(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.cli.metrics import METRIC_FIELDS
    from llm_dit.metrics.registry import METRICS, SET_METRICS, UNAVAILABLE

    config = tmp_path / "config.toml"
    config.write_text(f'[default.metrics]\nsiglip_path = "{tmp_path / "siglip"}"\n', encoding="utf-8")
    rc, out, err = run(capsys, "metrics", "--list", "--config", config, "--format", fmt)
    assert rc == 0, err
    rows = {row["name"]: row for row in parsed(fmt, out)}
    assert list(rows) == [*METRICS, *SET_METRICS, *UNAVAILABLE]
    assert all(list(row) == list(METRIC_FIELDS) for row in rows.values())
    empty = None if fmt == "json" else ""
    yes = True if fmt == "json" else "true"  # csv: JSON's spelling
    assert rows["siglip"]["status"] == "ready" and rows["siglip"]["setting"] == "siglip_path"
    assert rows["clip_score"]["status"] == "set clip_path"
    assert rows["ssim"]["setting"] == empty and rows["ssim"]["higher_is_better"] == yes
    assert rows["clip_score"]["description"] == METRICS["clip_score"].description  # whole, colon and all
    assert rows["image_reward"]["status"] == "unavailable"
    assert rows["image_reward"]["description"] == UNAVAILABLE["image_reward"]
    assert rows["fid"]["status"] == "set inception_weights" and rows["fid"]["description"] == SET_METRICS["fid"]
    assert rows["kid"]["kind"] == "set" and rows["kid"]["setting"] == "inception_weights"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_config_show_as_data(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.config import load_settings

    config = tmp_path / "config.toml"
    config.write_text('[default.generation]\nsteps = 4\n[fast.encoder]\nlayer_weights = {"-2" = 0.5}\n')
    rc, out, err = run(capsys, "config", "show", "--config", config, "--profile", "fast", "--format", fmt)
    assert rc == 0, err
    rows = {row["key"]: row for row in parsed(fmt, out)}
    dump = load_settings(config, "fast").settings.model_dump(mode="json")
    every_key = [key for key, value in dump.items() if not isinstance(value, dict)]
    every_key += [f"{section}.{name}" for section, values in dump.items() if isinstance(values, dict)
                  for name in values]  # fmt: skip
    assert sorted(rows) == sorted(every_key)  # one record per setting, none left out
    value = (lambda row: row["value"]) if fmt == "json" else (lambda row: json.loads(row["value"] or "null"))
    assert value(rows["generation.steps"]) == 4 and "[default]" in rows["generation.steps"]["source"]
    assert value(rows["encoder.layer_weights"]) == {"-2": 0.5} and "[fast]" in rows["encoder.layer_weights"]["source"]
    assert value(rows["generation.width"]) == 1024 and rows["generation.width"]["source"] == "default"
    assert value(rows["model_path"]) is None  # unset


@pytest.mark.usefixtures("cached_tokenizer")
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_embed_stats_summary_as_data(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.conditioning.embedding_stats import SUMMARY_COLUMNS

    argv = ["embed-stats", "--model", "tiny", "--prompt", "A tabby cat", "-c", "think_block=none"]
    rc, out, err = run(capsys, *argv, "-c", "hidden_layer=-6", "--format", fmt)
    assert rc == 0, err
    rows = parsed(fmt, out)
    assert [row["condition"] for row in rows] == ["think_block=none", "hidden_layer=-6"]
    assert all(list(row) == list(SUMMARY_COLUMNS) for row in rows)
    reference, other = rows
    assert float(reference["token_cosine"]) == 1.0 and float(other["token_cosine"]) < 1.0
    assert int(reference["prompts"]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["ablate", "--list-experiments"],
        ["metrics", "--list"],
        ["config", "show"],
        ["compare", "--list"],
        ["embed-stats", "-c", "default", "--prompt", "x"],
    ],
)
def test_an_unknown_format_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    assert_user_error(*run(capsys, *argv, "--format", "yaml"), "--format 'yaml'", "table, json, csv")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ablate", "--list-experiments", "--list-prompts", "--format", "json"], "one listing"),
        (["ablate", "-e", "hidden_layer", "--format", "csv"], "--dry-run; drop it to run"),
        (["metrics", "some_experiment", "--format", "json"], "--list"),
        (["compare", "-e", "some_experiment", "--format", "json"], "--list and --info"),
    ],
)
def test_format_where_it_has_nothing_to_format_is_refused(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    assert_user_error(*run(capsys, *argv), "--format", needle)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_dry_run_as_data_is_every_planned_run(
    fmt: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    """Every planned run, not the first 12 of the table: the ids, variables and params the planner made."""
    from llm_dit.config import load_settings
    from llm_dit.experiments.preparation import prepare_experiment

    selection = ["--prompt-ids", "animal_001,animal_002", "--seeds", "1,2"]
    argv = ["ablate", "-e", "shift_sweep", "--dry-run", "--model-path", tiny_checkpoint, "--output-dir", tmp_path]
    rc, out, err = run(capsys, *argv, *selection, "--format", fmt)
    assert rc == 0, err
    records = parsed(fmt, out)
    settings = load_settings(None, None, {"model_path": str(tiny_checkpoint)}).settings
    runs = prepare_experiment(
        "shift_sweep", settings=settings, prompt_ids=["animal_001", "animal_002"], seeds=[1, 2]
    ).runs
    assert len(records) == len(runs) == 28  # (6 shifts + the converged reference) x 2 prompts x 2 seeds: > 12
    assert list(records[0]) == ["run_id", "prompt_id", "seed", "variables", "params", "image_name", "done"]
    for record, planned in zip(records, runs, strict=True):
        assert record["run_id"] == planned.run_id and record["image_name"] == planned.image_name
        assert record["prompt_id"] == planned.prompt.id
        if fmt == "json":
            assert (record["seed"], record["done"]) == (planned.seed, False)
            assert record["variables"] == dict(planned.variables) and record["params"] == dict(planned.params)
        else:  # csv: objects and booleans are JSON text
            assert (record["seed"], record["done"]) == (str(planned.seed), "false")
            assert json.loads(record["variables"]) == dict(planned.variables)
            assert json.loads(record["params"]) == json.loads(json.dumps(dict(planned.params)))
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


# A two-run results directory for compare --list/--info: one prompt, a layer axis whose second label holds a comma.
SMALL_EXPERIMENT = """
name = "fmt"
description = "two layers, for the output format tests"
seeds = [3]

[prompts]
ids = ["simple_001"]

[[axes]]
name = "layer"
values = [
  { label = "-2", hidden_layer = -2 },
  { label = "-2:0.5,-5:0.5", layer_weights = { "-2" = 0.5, "-5" = 0.5 } },
]
"""


@pytest.fixture(scope="module")
def small_results(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llm_dit.cli import main

    root = tmp_path_factory.mktemp("fmt-results")
    toml = root.parent / "fmt.toml"
    toml.write_text(SMALL_EXPERIMENT, encoding="utf-8")
    argv = ["ablate", "--model-path", str(tiny_checkpoint), "--output-dir", str(root), "--experiment-file", str(toml)]
    argv += ["--set", "width=64", "--set", "height=64", "--set", "steps=2", "--compute-metrics", "--metric", "mad"]
    assert main(argv) == 0
    return root


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_compare_list_and_info_as_data(fmt: str, small_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.cli.compare import INFO_FIELDS, LIST_FIELDS

    rc, out, err = run(capsys, "compare", "--list", "--output-dir", small_results, "--format", fmt)
    assert rc == 0, err
    (row,) = parsed(fmt, out)
    assert list(row) == list(LIST_FIELDS)
    assert row["name"] == "fmt" and row["status"] == "complete"
    assert [int(row[k]) for k in ("done", "failed", "planned", "total")] == [2, 0, 0, 2]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", row["finished_at"])  # the full stamp

    rc, out, err = run(capsys, "compare", "-e", "fmt", "--info", "--output-dir", small_results, "--format", fmt)
    assert rc == 0, err
    if fmt == "json":
        info = json.loads(out)
        assert info["axes"] == [{"name": "layer", "values": ["-2", "-2:0.5,-5:0.5"]}]  # raw labels, not quoted
        assert [p["id"] for p in info["prompts"]] == ["simple_001"] and info["seeds"] == [3]
        assert info["metrics"] == [{"name": "mad", "count": 2}] and info["counts"]["done"] == 2
    else:
        rows = list(csv.DictReader(io.StringIO(out)))
        assert all(list(r) == list(INFO_FIELDS) for r in rows)
        assert [(r["kind"], r["dimension"], r["value"], r["count"]) for r in rows] == [
            ("axis", "layer", "-2", ""),
            ("axis", "layer", "-2:0.5,-5:0.5", ""),
            ("prompt", "prompt", "simple_001", ""),
            ("seed", "seed", "3", ""),
            ("metric", "metric", "mad", "2"),
        ]
        assert rows[2]["category"] == "simple" and rows[2]["text"]


@pytest.mark.terminal
def test_compare_tables_keep_names_whole(small_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "compare", "--list", "--output-dir", small_results)
    assert rc == 0, err
    assert "fmt" in tokens(out) and "…" not in out
    rc, out, err = run(capsys, "compare", "-e", "fmt", "--info", "--output-dir", small_results)
    assert rc == 0, err
    assert {"simple_001", "simple", "layer"} <= tokens(out) and "…" not in out


@pytest.mark.terminal
def test_metrics_list_table_keeps_names_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from llm_dit.metrics.registry import METRICS, UNAVAILABLE

    rc, out, err = run(capsys, "metrics", "--list")
    assert rc == 0, err
    assert {*METRICS, *UNAVAILABLE} <= tokens(out) and "…" not in out


# -- through a real pipe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["80", "40"])
@pytest.mark.parametrize(
    "argv", [["ablate", "--list-experiments"], ["ablate", "--list-prompts"], ["metrics", "--list"]]
)
def test_listings_in_a_pipe_show_every_name_whole(argv: list[str], columns: str) -> None:
    """``llm-dit ablate --list-experiments | cat`` at 80 and 40 columns: every name a user types, whole."""
    from llm_dit.experiments.loader import builtin_experiments
    from llm_dit.experiments.prompts import list_prompts, load_library
    from llm_dit.metrics.registry import METRICS, UNAVAILABLE

    done = subprocess.run(
        [sys.executable, "-m", "llm_dit.cli", *argv],
        capture_output=True,  # stdout is a pipe, as in `llm-dit ... | cat`
        text=True,
        env=subprocess_env(COLUMNS=columns),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = {
        "--list-experiments": lambda: list(builtin_experiments()),
        "--list-prompts": lambda: [p.id for p in list_prompts(load_library())],
        "--list": lambda: [*METRICS, *UNAVAILABLE],
    }[argv[-1]]()
    assert set(names) <= tokens(done.stdout), set(names) - tokens(done.stdout)
    assert "…" not in done.stdout and "\x1b" not in done.stdout


# -- progress ---------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_rate_and_eta() -> None:
    clock, lines = Clock(), []
    progress = PlainProgress("look", lines.append, clock=clock)
    for now, done, fields in [(10, 0, {}), (12, 1, {}), (13, 1, {}), (14, 2, {"failed": 1}), (18, 4, {})]:
        clock.now = now
        progress.report(done, 4, **fields)
    progress.close()
    # The rate counts from the first report (t = 10, 0 done): 1 in 2 s, 2 in 4 s, 4 in 8 s.
    assert lines == [
        "look 0/4 (0%), -/s, elapsed 0:00:10, ETA -",
        "look 1/4 (25%), 0.5/s, elapsed 0:00:12, ETA 0:00:06",
        "look 2/4 (50%), 0.5/s, elapsed 0:00:14, ETA 0:00:04, failed 1",
        "look 4/4 (100%), 0.5/s, elapsed 0:00:18, ETA 0:00:00",
    ]


def test_plain_progress_writes_a_line_per_percent_on_long_passes() -> None:
    clock, lines = Clock(), []
    progress = PlainProgress("metrics", lines.append, clock=clock)
    for done in range(1, 1001):
        clock.now = done / 100  # 10 ms per item: never a heartbeat
        progress.report(done, 1000)
    progress.close()
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts == [1, *range(10, 1001, 10)]  # the first report, then each new percent, the last included


def test_plain_progress_heartbeat_and_a_pass_that_stops_short() -> None:
    clock, lines = Clock(), []
    progress = PlainProgress("run", lines.append, clock=clock, heartbeat_s=60)
    for now, done in [(0, 1), (61, 2), (62, 3), (63, 4)]:
        clock.now = now
        progress.report(done, 1000)
    assert [line.split()[1] for line in lines] == ["1/1000", "2/1000"]  # first; then 61 s later, a heartbeat
    progress.close()  # the work stopped at 4: its last state is still written
    assert lines[-1].startswith("run 4/1000 (0%), ")
    # A first report that already counts items: the rate counts from the start (t = 0 here, 1 item at t = 0 is 0 s).
    assert "elapsed 0:01:03" in lines[-1] and "0.0635/s" in lines[-1]  # 4 items in 63 s


def test_progress_bar_streams_lines_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # rich would take either as a terminal
        monkeypatch.delenv(name, raising=False)
    seen = []  # what a reader of the pipe has after each report
    with terminal.progress_bar("metrics look", failed=0) as report:
        for done in (0, 1, 2, 2, 3):
            report(done, 3, failed=0)
            seen.append(capsys.readouterr().err)
    seen.append(capsys.readouterr().err)  # closing adds nothing: the last report has its line
    assert [text.count("\n") for text in seen] == [1, 1, 1, 0, 1, 0]  # a line as each report came, none repeated
    assert seen[0].startswith("metrics look 0/3 (0%), -/s") and seen[0].rstrip().endswith("failed 0")
    assert seen[-2].startswith("metrics look 3/3 (100%)")


def test_status_in_a_pipe_is_a_line_per_new_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    with terminal.status("loading models") as shown:
        assert capsys.readouterr().err == "loading models\n"  # at once, not when the command ends
        for text in ("generating", "generating", "generating: step 1/2"):
            shown.update(text)
    assert capsys.readouterr().err == "generating\ngenerating: step 1/2\n"


def test_progress_bar_on_a_terminal_is_rich_s_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=buffer, force_terminal=True, width=80))
    with terminal.progress_bar("look") as report:
        report(1, 2)
        report(2, 2)
    assert "look" in buffer.getvalue() and "(50%)" not in buffer.getvalue() and "\x1b[" in buffer.getvalue()


PIPE_EXPERIMENT = """
name = "pipe"
description = "eight shifts, one at a time"
seeds = [1]

[prompts]
ids = ["simple_001"]

[[axes]]
name = "shift"
values = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
"""

# The child marks each batch on stderr before it samples, so the test can see where each progress line came.
CHILD = """
import sys
from llm_dit.cli import main
from llm_dit.generation.pipeline import LlmDitPipeline

real = LlmDitPipeline.generate_batch
batches = 0

def marked(self, requests, *args, **kwargs):
    global batches
    batches += 1
    print(f"BATCH {batches}", file=sys.stderr, flush=True)
    return real(self, requests, *args, **kwargs)

LlmDitPipeline.generate_batch = marked
sys.exit(main(sys.argv[1:]))
"""


def test_ablate_progress_streams_through_a_pipe(tiny_checkpoint: Path, tmp_path: Path) -> None:
    toml = tmp_path / "pipe.toml"
    toml.write_text(PIPE_EXPERIMENT, encoding="utf-8")
    argv = ["ablate", "--model-path", str(tiny_checkpoint), "--output-dir", str(tmp_path / "results")]
    argv += ["--experiment-file", str(toml), "--batch-size", "1", "--set", "width=64", "--set", "height=64"]
    argv += ["--set", "steps=2"]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    events = [line for line in done.stderr.splitlines() if line.startswith(("BATCH ", "pipe "))]
    counts = [int(line.split()[1].split("/")[0]) for line in events if line.startswith("pipe ")]
    assert counts == list(range(9))  # one line per finished run (8 runs, under 100: every update), from 0/8
    assert events[0].startswith("pipe 0/8 (0%)")  # written once the work is set up, before the first batch
    assert events[-1].startswith("pipe 8/8 (100%)")
    last_batch = max(i for i, line in enumerate(events) if line.startswith("BATCH "))
    # The runner finishes image writes while later batches sample (at most two batches behind): lines for runs
    # already written come before the last batch, not all at the end.
    assert any(line.startswith("pipe ") and not line.startswith("pipe 0/") for line in events[:last_batch])
    assert "\x1b" not in done.stderr
