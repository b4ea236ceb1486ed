"""``llm-dit report``: the report folder of the tiny-model experiment 'look' (shift x layer, 3 prompts, 2 seeds).

Its numbers are checked against the functions summary.csv uses and against scipy on hand-built pairs, Holm's
correction by hand, the Conclusions text across a regeneration, the images and their relative links, the refusals,
and the page as a browser renders it (Chromium: the test fails without it, as the viewer's do).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from cli_helpers import run as cli
from llm_dit.analysis import report as rep
from llm_dit.analysis.results import ExperimentResults, load_experiment
from llm_dit.experiments.store import DB_NAME, ResultsStore
from llm_dit.metrics.registry import DIVERSITY_METRICS
from llm_dit.metrics.summary import metric_value, summarize, t_interval

SECTIONS = [
    "## Question", "## What was run", "## Commands", "## Provenance", "## Summary", "## Significance", "## Grids",
    "## Plots", "## Conclusions",
]  # fmt: skip
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]*)\)")


@pytest.fixture(scope="module")
def look(tiny_results: Path) -> ExperimentResults:
    return load_experiment(tiny_results, "look")


@pytest.fixture(scope="module")
def built(tiny_results: Path, look: ExperimentResults) -> rep.Report:
    with ResultsStore(tiny_results, read_only=True) as store:
        info = store.experiment("look")
    return rep.build_report(look, info)


@pytest.fixture(scope="module")
def folder(tiny_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of 'look', written outside the (read-only) session results."""
    out = tmp_path_factory.mktemp("report") / "look-report"
    path = rep.write_report(tiny_results, "look", out)
    assert path == out / rep.REPORT_NAME
    return out


def test_the_page_has_every_section_in_order_and_its_facts(folder: Path, look: ExperimentResults) -> None:
    text = (folder / rep.REPORT_NAME).read_text(encoding="utf-8")
    positions = [text.find(f"\n{heading}\n") for heading in SECTIONS]
    assert -1 not in positions and positions == sorted(positions)
    assert look.description in text.replace("\\", "")  # the question, as the experiment states it
    assert "| 36 | 0 | 0 | 36 |" in text  # done, failed, planned, total
    assert "--experiment-file" in text and "--set width=64 --set height=64 --set steps=4" in text
    assert "--prompt-ids animal_001,animal_002,simple_001 --seeds 1,2" in text and "Reconstructed" in text
    for fact in ("| model fingerprint |", "| git commit |", "| host |", "| torch |", "<details>"):
        assert fact in text
    assert "<summary>Resolved configuration" in text and '"generation": {' in text
    assert "paired t-test (scipy.stats.ttest_rel" in text and "Wilcoxon signed-rank test" in text
    assert "Holm" in text and "not enough pairs" in text
    assert text.count(rep.CONCLUSIONS_BEGIN) == 1 and rep.CONCLUSIONS_PLACEHOLDER in text


def test_summary_tables_are_summary_csv_numbers(built: rep.Report, folder: Path, look: ExperimentResults) -> None:
    expected = summarize(look.runs, look.axes, built.metrics, [m for m in built.metrics if m in DIVERSITY_METRICS])
    assert built.summary == expected
    assert {"ssim", "psnr", "mad", "diversity_mad", "seconds_per_image_batched"} <= set(built.metrics)
    text = (folder / rep.REPORT_NAME).read_text(encoding="utf-8")
    for row in expected:
        line = f"| `{row['axis']}` | `{row['value']}` | {row['n']} | {rep.fmt(row['mean'])} | {rep.interval(row)} |"
        assert line in text, line
    # mad at shift 2.0, by hand: every done run there (both layers, all prompts and seeds)
    values = [run["metrics"]["mad"] for run in look.runs if run["variables"]["shift"] == "2.0"]
    row = next(r for r in expected if (r["metric"], r["axis"], r["value"]) == ("mad", "shift", "2.0"))
    assert row["n"] == 12 and row["mean"] == pytest.approx(sum(values) / 12)


def test_category_tables_by_hand(built: rep.Report, look: ExperimentResults) -> None:
    values = [
        run["metrics"]["mad"]
        for run in look.runs
        if run["prompt_id"].startswith("animal_") and run["variables"]["layer"] == "-2:0.5,-5:0.5"
    ]
    cell = built.categories["mad"]["layer"][("animals", "-2:0.5,-5:0.5")]
    assert cell == t_interval(values) and cell["n"] == 12
    # diversity: each condition (prompt, shift, layer) averaged over its seeds first
    conditions: dict[tuple[str, str], list[float]] = {}
    for run in look.runs:
        if run["prompt_id"] == "simple_001":
            conditions.setdefault((run["variables"]["layer"], run["variables"]["shift"]), []).append(
                run["metrics"]["diversity_mad"]
            )
    per_condition = [sum(v) / len(v) for (layer, _), v in conditions.items() if layer == "-2"]
    assert built.categories["diversity_mad"]["layer"][("simple", "-2")] == t_interval(per_condition)


def test_paired_tests_are_scipys_on_hand_built_pairs() -> None:
    values = [0.91, 0.85, 0.88, 0.95, 0.80, 0.86, 0.90]
    references = [0.89, 0.86, 0.80, 0.90, 0.78, 0.80, 0.84]
    out = rep.paired_test(values, references)
    assert out["t_p"] == stats.ttest_rel(values, references).pvalue
    assert out["wilcoxon_p"] == stats.wilcoxon(values, references).pvalue
    assert out["n_pairs"] == 7 and out["note"] == ""
    assert out["diff"] == t_interval([v - r for v, r in zip(values, references, strict=True)])
    few = rep.paired_test(values[:5], references[:5])
    assert few["t_p"] is None and few["wilcoxon_p"] is None and few["note"] == "not enough pairs (5 < 6)"
    same = rep.paired_test(values, values)
    assert same["t_p"] is None and same["note"] == "identical in every pair"


def test_the_report_pairs_prompt_seed_and_the_other_axis(built: rep.Report, look: ExperimentResults) -> None:
    assert built.references["shift"][0] == "3.0" and built.references["layer"][0] == "-2"
    found, left_out = rep.pairs(look, "mad", "shift", "6.0", "3.0")
    assert len(found) == 12 and left_out == 0  # 3 prompts x 2 seeds x 2 layers
    by = {(r["prompt_id"], r["variables"]["layer"], r["seed"], r["variables"]["shift"]): r for r in look.runs}
    for (prompt, layer, seed), value, reference in found:
        assert value == metric_value(by[(prompt, layer, seed, "6.0")], "mad")
        assert reference == metric_value(by[(prompt, layer, seed, "3.0")], "mad")
    test = next(t for t in built.tests if (t.metric, t.axis, t.value) == ("mad", "shift", "6.0"))
    assert test.n_pairs == 12
    assert test.t_p == stats.ttest_rel([v for _, v, _ in found], [r for _, _, r in found]).pvalue
    assert test.wilcoxon_p == stats.wilcoxon([v for _, v, _ in found], [r for _, _, r in found]).pvalue
    # diversity pairs per condition (seeds averaged): 3 prompts x 2 layers
    assert len(rep.pairs(look, "diversity_mad", "shift", "6.0", "3.0")[0]) == 6
    # PSNR of the reference runs is inf: those runs cannot pair
    psnr = next(t for t in built.tests if (t.metric, t.axis, t.value) == ("psnr", "shift", "2.0"))
    assert psnr.left_out > 0 and psnr.n_pairs == 12 - psnr.left_out


def test_holm_by_hand_and_over_the_whole_report(built: rep.Report) -> None:
    # m = 4 tested: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept monotone: 0.06
    assert rep.holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert rep.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    tested = [t for t in built.tests if t.tested]
    assert len(tested) >= 6
    assert [t.t_p_holm for t in built.tests] == rep.holm([t.t_p for t in built.tests])
    assert [t.wilcoxon_p_holm for t in built.tests] == rep.holm([t.wilcoxon_p for t in built.tests])
    assert all(t.t_p_holm >= t.t_p for t in tested)


def test_images_exist_and_every_link_is_relative(folder: Path) -> None:
    text = (folder / rep.REPORT_NAME).read_text(encoding="utf-8")
    links = IMAGE_LINK.findall(text)
    assert links, "no images"
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and ".." not in link, link
        assert (folder / link).is_file(), link
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / rep.IMAGES_DIR).iterdir())
    assert files == sorted(set(links))
    assert "images/grid_p01.png" in links and "images/line_mad_shift.png" in links
    assert not any("pareto" in link for link in links)  # no run was timed (ablate --timing)
    assert str(folder) not in text  # nothing points at this machine's copy of the folder


def test_regenerating_keeps_the_conclusions_and_rewrites_the_rest(
    tiny_results: Path, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    shutil.copytree(folder, out)
    page = out / rep.REPORT_NAME
    mine = "The blend moves the image more than shift 6.0 does.\n\n- next: try -3:0.5,-6:0.5 | more *seeds*"
    text = page.read_text(encoding="utf-8")
    begin, end = text.index(rep.CONCLUSIONS_BEGIN) + len(rep.CONCLUSIONS_BEGIN), text.index(rep.CONCLUSIONS_END)
    page.write_text(text[:begin] + "\n" + mine + "\n" + text[end:].replace("## Grids", "## Edited"), encoding="utf-8")
    (out / "images" / "grid_p01.png").unlink()
    rep.write_report(tiny_results, "look", out)
    again = page.read_text(encoding="utf-8")
    assert f"{rep.CONCLUSIONS_BEGIN}\n{mine}\n{rep.CONCLUSIONS_END}" in again
    assert rep.CONCLUSIONS_PLACEHOLDER not in again
    assert again.replace(mine, rep.CONCLUSIONS_PLACEHOLDER) == (folder / rep.REPORT_NAME).read_text(encoding="utf-8")
    assert (out / "images" / "grid_p01.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # nothing built aside is left
    page.write_text(again.replace(rep.CONCLUSIONS_END, ""), encoding="utf-8")  # markers lost: refused, kept
    broken = page.read_text(encoding="utf-8")
    with pytest.raises(rep.LlmDitError, match="lost its conclusions markers"):
        rep.write_report(tiny_results, "look", out)
    assert page.read_text(encoding="utf-8") == broken


def test_the_command_writes_the_default_folder_and_leaves_the_store_alone(
    tiny_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    shutil.copytree(tiny_results, root, ignore=shutil.ignore_patterns("*.db-shm"))
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    rc, out, err = cli(capsys, "report", "look", "--output-dir", root, "--metric", "mad,ssim")
    assert rc == 0, err
    assert out.strip() == str(root / "look" / "report" / rep.REPORT_NAME)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    new = {p for p in after if p not in before and not p.name.endswith(("-wal", "-shm"))}  # SQLite's own files
    assert all(p.parts[:2] == ("look", "report") for p in new), new
    assert {p: after[p] for p in before if p in after} == before  # results.db included, byte for byte
    assert not [p for p in (root / "look").iterdir() if p.name.startswith(".report")]
    text = (root / "look" / "report" / rep.REPORT_NAME).read_text(encoding="utf-8")
    assert "### `mad`" in text and "### `psnr`" not in text
    assert (root / DB_NAME) in {root / p for p in before}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["lookk"], "no experiment 'lookk'"),
        (["look", "--metric", "ssimm"], "unknown metric 'ssimm'"),
        (["look_custom", "--metric", "mad"], "no mad values"),
        (["look", "--baseline", "layer=-3"], "layer has no value '-3'"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    tiny_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    rc, out, err = cli(capsys, "report", *args, "--output-dir", tiny_results, "-o", tmp_path / "r")
    assert rc == 2 and not out and needle in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_chosen_baseline_is_the_reference(tiny_results: Path, look: ExperimentResults) -> None:
    with ResultsStore(tiny_results, read_only=True) as store:
        info = store.experiment("look")
    built = rep.build_report(look, info, ["mad"], {"shift": "6.0"})
    assert built.references["shift"] == ("6.0", "chosen with --baseline")
    assert {(t.value, t.reference) for t in built.tests if t.axis == "shift"} == {("2.0", "6.0"), ("3.0", "6.0")}


@pytest.mark.slow
def test_the_page_renders_with_its_images(folder: Path, tmp_path: Path, browser: Any) -> None:
    """report.md as HTML (CommonMark + tables, as a code-hosting site renders it): tables, the collapsed config,
    every image found; a Chromium screenshot in which every image loaded."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render((folder / rep.REPORT_NAME).read_text(encoding="utf-8"))
    assert body.count("<table>") >= 10 and "<details>" in body and "<h2>Conclusions</h2>" in body
    sources = re.findall(r'<img src="([^"]+)"', body)
    assert sources and all((folder / s).is_file() for s in sources)
    shutil.copytree(folder, tmp_path / "page")
    html = tmp_path / "page" / "report.html"
    html.write_text(f"<!doctype html><meta charset=utf-8><title>report</title>{body}", encoding="utf-8")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    finally:
        page.close()
    assert len(widths) == len(sources) and all(w > 0 for w in widths)
    assert (tmp_path / "report.png").stat().st_size > 10_000
