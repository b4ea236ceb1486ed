"""Input images (vl_image, style_image, neutral_image, init_image) beside the results: the strip of ``llm-dit compare``
pages, the viewer's input route and payloads, and the check of every input's bytes against the sha256 recorded when
planned (``llm_dit.analysis.inputs``): a changed or missing file is a placeholder or a 409/410, never other pixels.

The stores are planned by the real planner (so params have exactly the planner's shape: absolute paths, and
``input_sha256`` with a list for vl_image), then filled by hand with solid-colour images, so every thumbnail can be
compared with the one colour it must show.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli_helpers import results_snapshot, run, subprocess_env
from llm_dit.analysis.compare import plan_grid, plan_pairs, usage_text
from llm_dit.analysis.grid import PLACEHOLDER_FILL, Box, GridCell, GridPage, layout_page
from llm_dit.analysis.inputs import (
    CHANGED,
    MISSING,
    OK,
    UNREADABLE,
    UNRECORDED,
    InputImage,
    input_status,
    read_input,
    run_inputs,
)
from llm_dit.analysis.results import load_experiment
from llm_dit.config import Settings
from llm_dit.experiments.loader import load_experiment_file
from llm_dit.experiments.planner import plan
from llm_dit.experiments.prompts import Prompt
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming
from llm_dit.viewer.server import create_app

LOCAL = "http://127.0.0.1"
RGB = tuple[int, int, int]
RED, BLUE, GREEN, YELLOW = (220, 20, 30), (20, 40, 230), (30, 200, 60), (250, 240, 10)
PROMPTS = [
    Prompt(id="animal_001", text="A fluffy orange cat", category="animals", subjects=("cat",), descriptors=()),
    Prompt(id="simple_001", text="A red apple", category="simple", subjects=("apple",), descriptors=()),
]


def solid(path: Path, colour: RGB, size: tuple[int, int] = (32, 32)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_colour(index: int) -> RGB:
    return (90 + 9 * index, 100, 110)


def planned(toml: Path, prompts: Sequence[Prompt] = PROMPTS) -> list[PlannedRun]:
    """The planner's runs of an experiment file as the store takes them (as the runner's ``store_rows`` does)."""
    runs = plan(load_experiment_file(toml), list(prompts), [1], Settings(), model_fingerprint="fp")
    return [
        PlannedRun(r.run_id, r.prompt.id, r.prompt_text, r.seed, dict(r.variables), dict(r.params), r.image_name)
        for r in runs
    ]


def store_planned(root: Path, name: str, runs: Sequence[PlannedRun]) -> None:
    """Store ``runs`` as an experiment whose runs are all done, each image a solid colour (``output_colour``)."""
    with ResultsStore(root) as store:
        store.start_experiment(name, f"{name} for the input strip", {"axes": [{"name": "ref"}]}, {})
        store.plan_runs(name, list(runs))
        for index, planned in enumerate(runs):
            image = f"{planned.run_id}.png"
            solid(store.experiment_dir(name) / image, output_colour(index), (16, 16))
            store.mark_done(name, planned.run_id, image_path=image, timing=RunTiming(0.1, 1), token_count=3, record={})


def build_vl(tmp_path: Path, name: str = "vlx") -> tuple[Path, dict[str, Path]]:
    """Experiment ``name``: axis ref = red (vl_image red.png) | blue (vl_image blue.png), every run with init_image
    green.png, 2 prompts x seed 1, planned by the planner. Returns (results root, input paths)."""
    refs = tmp_path / "refs"
    refs.mkdir(exist_ok=True)
    files = {
        "red": solid(refs / "red.png", RED),
        "blue": solid(refs / "blue.png", BLUE),
        "init": solid(refs / "init.png", GREEN),
    }
    toml = tmp_path / f"{name}.toml"
    toml.write_text(
        f'name = "{name}"\n[base]\nconditioning = "vl"\ninit_image = "{files["init"]}"\n'
        f'[[axes]]\nname = "ref"\nvalues = [\n  {{ label = "red", vl_image = "{files["red"]}" }},\n'
        f'  {{ label = "blue", vl_image = "{files["blue"]}" }},\n]\n',
        encoding="utf-8",
    )
    root = tmp_path / "results"
    store_planned(root, name, planned(toml))
    return root, files


def build_text(root: Path) -> None:
    """Experiment 'plain': the same shape without any input image (a text-conditioned sweep)."""
    runs = [
        PlannedRun(f"{p}_{ref}", p, f"text of {p}", 1, {"ref": ref}, {"shift": 3.0}) for p in ("p1", "p2")
        for ref in ("a", "b")
    ]  # fmt: skip
    store_planned(root, "plain", runs)


def pixels(image: Image.Image, box: Box) -> np.ndarray:
    return np.asarray(image.convert("RGB"))[box.y : box.bottom, box.x : box.right]


def is_solid(image: Image.Image, box: Box, colour: Sequence[int]) -> bool:
    area = pixels(image, box)
    return area.size > 0 and bool((area == np.array(colour, np.uint8)).all())


def has_colour(image: Image.Image, box: Box, colour: Sequence[int]) -> bool:
    return bool((pixels(image, box) == np.array(colour, np.uint8)).all(axis=-1).any())


@pytest.fixture
def vl(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return build_vl(tmp_path)


# -- reading inputs ---------------------------------------------------------------------------------------------


def test_run_inputs_read_the_planners_params(vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    run_ = next(r for r in load_experiment(root, "vlx").runs if r["variables"]["ref"] == "blue")
    assert run_inputs(run_["params"]) == (
        InputImage("vl_image", 0, 1, str(files["blue"].resolve()), sha256(files["blue"])),
        InputImage("init_image", 0, 1, str(files["init"].resolve()), sha256(files["init"])),
    )
    assert run_inputs({"shift": 3.0, "vl_image": None, "input_sha256": None}) == ()
    # A list of two: labelled by place; a hash list that does not line up checks nothing (never taken as verified).
    two = {"vl_image": ["/a.png", "/b.png"], "input_sha256": {"vl_image": ["a" * 64, "b" * 64]}}
    assert [(i.label, i.sha256) for i in run_inputs(two)] == [("vl_image 1/2", "a" * 64), ("vl_image 2/2", "b" * 64)]
    short = {"vl_image": ["/a.png", "/b.png"], "input_sha256": {"vl_image": ["a" * 64]}}
    assert [i.sha256 for i in run_inputs(short)] == [None, None]
    assert run_inputs({"style_image": "/s.png", "input_sha256": {"style_image": "../../etc"}})[0].sha256 is None


def test_read_input_checks_the_bytes_it_returns(tmp_path: Path) -> None:
    path = solid(tmp_path / "ref.png", RED)
    image = InputImage("vl_image", 0, 1, str(path), sha256(path))
    checked = read_input(image)
    assert (checked.status, checked.data) == (OK, path.read_bytes())
    solid(path, YELLOW)
    checked = read_input(image)
    assert (checked.status, checked.data, checked.reason) == (CHANGED, None, "changed since the run")
    assert checked.actual_sha256 == sha256(path)
    assert "has changed since the run" in checked.detail and str(tmp_path) not in checked.detail
    assert input_status(image).status == CHANGED
    path.unlink()
    assert (read_input(image).status, read_input(image).reason) == (MISSING, "missing")
    assert input_status(image).status == MISSING
    os.mkfifo(path)  # a FIFO at the path: refused on the open descriptor, never read (reading would block)
    assert read_input(image).status == MISSING
    path.unlink()
    path.mkdir()
    assert read_input(image).status == MISSING
    assert read_input(InputImage("vl_image", 0, 1, str(path), None)).status == UNRECORDED
    big = solid(tmp_path / "big.png", RED)
    assert read_input(InputImage("init_image", 0, 1, str(big), sha256(big)), max_bytes=10).status == UNREADABLE


def test_input_status_sees_an_edit_through_its_memo(tmp_path: Path) -> None:
    path = solid(tmp_path / "ref.png", RED)
    image = InputImage("vl_image", 0, 1, str(path), sha256(path))
    assert input_status(image).status == OK
    solid(path, BLUE)  # another size of file or mtime: a new memo key
    assert input_status(image).status == CHANGED


def test_reading_inputs_imports_no_model_library() -> None:
    code = (
        "import sys; from llm_dit.analysis import inputs; "
        "print(sorted(m for m in ('PIL', 'numpy', 'torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- compare pages ----------------------------------------------------------------------------------------------


def test_grid_shows_each_distinct_input_once_with_the_columns_using_it(vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    comparison = plan_grid(load_experiment(root, "vlx"), rows="prompt", cols="ref")
    page = comparison.page(0)
    assert [cell.caption for cell in page.inputs] == [
        ("vl_image", "red.png", f"sha256 {sha256(files['red'])[:8]}", "used by columns: ref=red"),
        ("vl_image", "blue.png", f"sha256 {sha256(files['blue'])[:8]}", "used by columns: ref=blue"),
        ("init_image", "init.png", f"sha256 {sha256(files['init'])[:8]}"),  # every cell: no usage line
    ]
    layout = comparison.layout(0)
    image = comparison.render(0)
    assert image.size == (layout.width, layout.height)
    for box, colour in zip(layout.inputs, (RED, BLUE, GREEN), strict=True):
        assert is_solid(image, box, colour)  # the thumbnail's pixels are the input's
    assert layout.input_placeholders == (None, None, None)
    label_text = [" ".join(label.lines) for label in layout.input_captions if label is not None]
    assert label_text[0].startswith("vl_image red.png sha256 ")
    assert layout.inputs_label is not None and layout.inputs_label.lines == ("inputs",)
    # The strip sits between the title and the table, the rule under it; the table's cells still show the runs.
    assert layout.title is not None and layout.title.box.bottom < layout.inputs[0].y
    assert layout.separator is not None
    assert max(label.box.bottom for label in layout.input_captions if label) < layout.separator.y
    assert layout.separator.bottom < min(header.box.y for header in layout.col_headers)
    exp = comparison.experiment
    for (r, c), box in np.ndenumerate(np.array(layout.cells, dtype=object).reshape(2, 2)):
        run_ = comparison.pages[0].runs[r][c]
        assert is_solid(image, box, output_colour(exp.runs.index(run_)))


def test_an_input_used_by_some_rows_is_labelled_with_them(vl: tuple[Path, dict[str, Path]]) -> None:
    root, _ = vl
    comparison = plan_grid(load_experiment(root, "vlx"), rows="ref", cols="prompt")
    usage = [cell.caption[3] if len(cell.caption) > 3 else "" for cell in comparison.page(0).inputs]
    assert usage == ["used by rows: ref=red", "used by rows: ref=blue", ""]
    # One column of the grid per page (a filter): only the red input's page shows only it.
    red_only = plan_grid(load_experiment(root, "vlx"), rows="prompt", cols="seed", filters={"ref": ["red"]})
    assert [cell.caption[:2] for cell in red_only.page(0).inputs] == [
        ("vl_image", "red.png"),
        ("init_image", "init.png"),
    ]


def test_usage_text() -> None:
    present = {(r, c) for r in range(2) for c in range(3)}
    rows, cols = ("p1\nits text", "p2"), ("a", "b", "c")
    assert usage_text(present, present, rows, cols) == ""
    assert usage_text({(0, 0), (0, 1), (0, 2)}, present, rows, cols) == "used by rows: p1"
    assert usage_text({(0, 1), (1, 1), (0, 2), (1, 2)}, present, rows, cols) == "used by columns: b, c"
    assert usage_text({(0, 0), (1, 2)}, present, rows, cols) == "used by 2 of 6 cells"
    assert usage_text({(0, 0)}, {(0, 0), (0, 1)}, ("r",), ("A: x", "B: y"), ("rows", "")) == "used by A: x"
    # a 1 x 1 selection is both a whole row and a whole column of a single-row page: the shorter wins
    assert usage_text({(0, 0)}, {(0, 0), (0, 1)}, ("r",), ("a", "b")) == "used by columns: a"


@pytest.mark.parametrize("mode", ["side-by-side", "diff"])
def test_pairs_show_the_inputs_of_a_and_b(vl: tuple[Path, dict[str, Path]], mode: str) -> None:
    root, _ = vl
    comparison = plan_pairs(load_experiment(root, "vlx"), mode, "ref", {"ref": ["red", "blue"]})
    page = comparison.page(0)
    assert [cell.caption[-1] for cell in page.inputs][:2] == ["used by A: ref=red", "used by B: ref=blue"]
    layout = comparison.layout(0)
    image = comparison.render(0)
    for box, colour in zip(layout.inputs, (RED, BLUE, GREEN), strict=True):
        assert is_solid(image, box, colour)
    if mode == "diff":  # the diff column is still the diff of A and B, under the strip
        assert page.cells[0][2].image is not None and page.cells[0][2].caption[0].startswith("changed > 8")


def test_changed_and_missing_inputs_are_placeholders_never_other_pixels(vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    planned_sha = sha256(files["blue"])
    solid(files["blue"], YELLOW)  # edited since planning: same path, other bytes
    files["init"].unlink()
    comparison = plan_grid(load_experiment(root, "vlx"), rows="prompt", cols="ref")
    layout = comparison.layout(0)
    image = comparison.render(0)
    assert is_solid(image, layout.inputs[0], RED)
    reasons = [None if label is None else " ".join(label.lines) for label in layout.input_placeholders]
    assert reasons == [None, "changed since the run", "missing"]
    for box in layout.inputs[1:]:
        assert not has_colour(image, box, YELLOW) and not has_colour(image, box, GREEN)
        assert has_colour(image, box, PLACEHOLDER_FILL)
    assert not has_colour(image, Box(0, 0, layout.width, layout.height), YELLOW)  # nowhere on the page
    # The caption still names the image and the sha256 the run used.
    assert comparison.page(0).inputs[1].caption[:3] == ("vl_image", "blue.png", f"sha256 {planned_sha[:8]}")


def test_an_input_without_a_recorded_hash_is_not_shown(tmp_path: Path) -> None:
    ref = solid(tmp_path / "ref.png", RED)
    root = tmp_path / "results"
    runs = [PlannedRun("r1", "p1", "text", 1, {"ref": "x"}, {"conditioning": "vl", "vl_image": [str(ref)]})]
    store_planned(root, "old", runs)
    comparison = plan_grid(load_experiment(root, "old"), rows="prompt", cols="ref")
    layout = comparison.layout(0)
    assert " ".join(layout.input_placeholders[0].lines) == "no sha256 recorded: not checked"
    assert not has_colour(comparison.render(0), layout.inputs[0], RED)
    assert comparison.page(0).inputs[0].caption == ("vl_image", "ref.png", "no sha256")


def test_runs_without_inputs_render_exactly_as_before(tmp_path: Path, vl: tuple[Path, dict[str, Path]]) -> None:
    root, _ = vl
    build_text(root)
    plain = plan_grid(load_experiment(root, "plain"), rows="prompt", cols="ref")
    off = plan_grid(load_experiment(root, "plain"), rows="prompt", cols="ref", show_inputs=False)
    assert plain.page(0).inputs == ()
    assert plain.layout(0) == off.layout(0)
    assert plain.layout(0).inputs == () and plain.layout(0).separator is None
    assert np.array_equal(np.asarray(plain.render(0)), np.asarray(off.render(0)))
    # With inputs, the strip only pushes the table down: every box of the table moves by one and the same offset.
    with_strip = plan_grid(load_experiment(root, "vlx"), rows="prompt", cols="ref").layout(0)
    without = plan_grid(load_experiment(root, "vlx"), rows="prompt", cols="ref", show_inputs=False).layout(0)
    assert without.inputs == () and without.inputs_label is None
    offsets = {(a.x - b.x, a.y - b.y) for ra, rb in zip(with_strip.cells, without.cells, strict=True)
               for a, b in zip(ra, rb, strict=True)}  # fmt: skip
    offsets |= {(a.box.x - b.box.x, a.box.y - b.box.y) for a, b in zip(with_strip.col_headers, without.col_headers,
                                                                          strict=True)}  # fmt: skip
    ((dx, dy),) = offsets
    assert dx == 0 and dy > 0


def test_a_page_without_inputs_keeps_the_geometry_it_had_before_the_strip() -> None:
    """The numbers ``layout_page`` gave this page before input strips existed (narrow row labels: a strip's label
    must not widen their column when there is no strip)."""
    picture = Image.new("RGB", (8, 8), (1, 2, 3))
    cells = tuple(tuple(GridCell(picture, ("ssim\t0.5",) if c else ()) for c in range(3)) for _ in range(2))
    layout = layout_page(GridPage("a title", ("a", "b=2", "c"), ("r", "s\nt"), cells), 40, 30)
    assert (layout.width, layout.height) == (180, 179)
    assert [[(b.x, b.y, b.width, b.height) for b in row] for row in layout.cells] == [
        [(28, 59, 40, 30), (78, 59, 40, 30), (128, 59, 40, 30)],
        [(28, 118, 40, 30), (78, 118, 40, 30), (128, 118, 40, 30)],
    ]
    assert [(label.box.x, label.box.y, label.box.width, label.box.height) for label in layout.labels()] == [
        (12, 12, 156, 18), (28, 40, 40, 15), (78, 40, 40, 15), (128, 40, 40, 15), (12, 59, 6, 15), (12, 118, 6, 30),
        (78, 93, 40, 15), (128, 93, 40, 15), (78, 152, 40, 15), (128, 152, 40, 15),
    ]  # fmt: skip
    assert layout.inputs == () and layout.inputs_label is None and layout.separator is None


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_compare_cli_draws_the_strip_and_no_inputs_leaves_it_out(
    capsys: pytest.CaptureFixture[str], vl: tuple[Path, dict[str, Path]], tmp_path: Path, monkeypatch: Any
) -> None:
    root, _ = vl
    monkeypatch.chdir(tmp_path)
    before = results_snapshot(root)
    rc, _out, err = run(capsys, "compare", "-e", "vlx", "--cols", "ref", "-o", "with.png", "--output-dir", root)
    assert rc == 0, err
    layout = plan_grid(load_experiment(root, "vlx"), cols="ref").layout(0)
    with Image.open(tmp_path / "with.png") as image:
        assert image.size == (layout.width, layout.height)
        for box, colour in zip(layout.inputs, (RED, BLUE, GREEN), strict=True):
            assert is_solid(image, box, colour)
    argv = ["compare", "-e", "vlx", "--mode", "diff", "--axis", "ref", "--no-inputs", "-o", "without.png"]
    rc, _out, err = run(capsys, *argv, "--output-dir", root)
    assert rc == 0, err
    layout = plan_pairs(load_experiment(root, "vlx"), "diff", "ref", show_inputs=False).layout(0)
    with Image.open(tmp_path / "without.png") as image:
        assert image.size == (layout.width, layout.height)
        whole = Box(0, 0, image.width, image.height)
        assert not any(has_colour(image, whole, colour) for colour in (RED, BLUE, GREEN))
    rc, out, _err = run(capsys, "compare", "--help")
    assert "--no-inputs" in out
    assert results_snapshot(root) == before  # read-only, inputs included


# -- the viewer -----------------------------------------------------------------------------------------------------


@pytest.fixture
def client(vl: tuple[Path, dict[str, Path]]) -> TestClient:
    return TestClient(create_app(vl[0]), base_url=LOCAL)


def entries_by_file(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["file"]: entry for entry in body["inputs"]}


def test_the_experiment_payload_lists_its_inputs(client: TestClient, vl: tuple[Path, dict[str, Path]]) -> None:
    _root, files = vl
    body = client.get("/api/experiments/vlx").json()
    assert [(e["id"], e["label"], e["file"], e["status"]) for e in body["inputs"]] == [
        (0, "vl_image", "red.png", OK),
        (1, "vl_image", "blue.png", OK),
        (2, "init_image", "init.png", OK),
    ]
    entry = body["inputs"][1]
    assert entry["sha256"] == sha256(files["blue"])
    assert entry["url"] == f"/api/experiments/vlx/inputs/{entry['sha256']}"
    for run_ in body["runs"]:
        assert run_["inputs"] == [0 if run_["variables"]["ref"] == "red" else 1, 2]
    # The payload names input files by their name only (it holds no params): not where they lie.
    assert str(files["red"].parent) not in client.get("/api/experiments/vlx").text
    # The run record lists the run's own inputs (its params still hold the full paths, as recorded).
    first = body["runs"][0]
    record = client.get(f"/api/experiments/vlx/runs/{first['run_id']}").json()
    assert [(e["label"], e["file"], e["status"], e["url"]) for e in record["inputs"]] == [
        (body["inputs"][i]["label"], body["inputs"][i]["file"], OK, body["inputs"][i]["url"]) for i in first["inputs"]
    ]


def test_the_input_route_serves_a_recorded_input_checked(client: TestClient, vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    url = f"/api/experiments/vlx/inputs/{sha256(files['red'])}"
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == files["red"].read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get(url, params={"size": 64}).content == files["red"].read_bytes()  # no larger than 64: as it is
    big = solid(files["red"].parent / "big.png", RED, (300, 200))
    store_planned(root, "big", planned(_one_input_toml(root.parent, big), PROMPTS[:1]))
    response = TestClient(create_app(root), base_url=LOCAL).get(
        f"/api/experiments/big/inputs/{sha256(big)}", params={"size": 128}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert thumb.size == (128, 85)
    assert client.get(url, params={"size": 100}).status_code == 400


def test_an_input_in_another_format_is_sent_as_png(vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    bmp = files["red"].parent / "ref.bmp"
    Image.new("RGB", (8, 4), BLUE).save(bmp)
    store_planned(root, "big", planned(_one_input_toml(root.parent, bmp), PROMPTS[:1]))
    response = TestClient(create_app(root), base_url=LOCAL).get(f"/api/experiments/big/inputs/{sha256(bmp)}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (8, 4) and (np.asarray(image.convert("RGB")) == np.array(BLUE, np.uint8)).all()


def test_a_large_input_is_fitted_into_its_box_keeping_its_shape(vl: tuple[Path, dict[str, Path]]) -> None:
    root, files = vl
    wide = solid(files["red"].parent / "wide.png", RED, (1200, 600))
    store_planned(root, "big", planned(_one_input_toml(root.parent, wide), PROMPTS[:1]))
    comparison = plan_grid(load_experiment(root, "big"), rows="prompt", cols="ref")
    box = comparison.layout(0).inputs[0]  # 128 x 128 (16 px results, enlarged to the 128 px minimum)
    image = comparison.render(0)
    assert (box.width, box.height) == (128, 128)
    assert is_solid(image, Box(box.x, box.y + 32, 128, 64), RED)  # 2:1, centred
    assert not has_colour(image, Box(box.x, box.y, 128, 32), RED)
    assert not has_colour(image, Box(box.x, box.y + 96, 128, 32), RED)


def _one_input_toml(directory: Path, image: Path) -> Path:
    toml = directory / "big.toml"
    toml.write_text(
        f'name = "big"\n[base]\nconditioning = "vl"\n[[axes]]\nname = "ref"\n'
        f'values = [{{ label = "big", vl_image = "{image}" }}]\n',
        encoding="utf-8",
    )
    return toml


@pytest.mark.parametrize(
    "tail",
    [
        "0" * 64,  # well-formed, recorded nowhere
        "etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "red.png",
        "",
    ],
)
def test_the_input_route_refuses_anything_not_recorded(
    client: TestClient, vl: tuple[Path, dict[str, Path]], tail: str
) -> None:
    response = client.get(f"/api/experiments/vlx/inputs/{tail}")
    assert response.status_code in (403, 404), (tail, response.status_code)
    assert not response.content.startswith(b"\x89PNG")


def test_an_input_of_another_experiment_or_a_result_image_is_not_served(
    vl: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    root, files = vl
    build_text(root)
    other = solid(tmp_path / "other.png", YELLOW)
    params = {"vl_image": [str(other)], "input_sha256": {"vl_image": [sha256(other)]}}
    store_planned(root, "other", [PlannedRun("o1", "p1", "t", 1, {"ref": "o"}, params)])
    client = TestClient(create_app(root), base_url=LOCAL)
    assert client.get(f"/api/experiments/other/inputs/{sha256(other)}").status_code == 200
    assert client.get(f"/api/experiments/vlx/inputs/{sha256(other)}").status_code == 404  # recorded elsewhere only
    assert client.get(f"/api/experiments/plain/inputs/{sha256(files['red'])}").status_code == 404
    result_image = next((root / "vlx").glob("*.png"))
    assert client.get(f"/api/experiments/vlx/inputs/{sha256(result_image)}").status_code == 404
    assert client.get(f"/api/experiments/nope/inputs/{sha256(files['red'])}").status_code == 404


def test_a_changed_or_missing_input_is_reported_not_served(
    client: TestClient, vl: tuple[Path, dict[str, Path]]
) -> None:
    _root, files = vl
    red, init = sha256(files["red"]), sha256(files["init"])
    solid(files["red"], YELLOW)
    files["init"].unlink()
    response = client.get(f"/api/experiments/vlx/inputs/{red}")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "vl_image 'red.png' has changed since the run" in detail and red[:8] in detail
    assert str(files["red"].parent) not in response.text
    response = client.get(f"/api/experiments/vlx/inputs/{init}", params={"size": 64})
    assert response.status_code == 410
    assert "init_image 'init.png' is missing since the run" in response.json()["detail"]
    body = client.get("/api/experiments/vlx").json()
    assert [(e["file"], e["status"], e["reason"]) for e in body["inputs"]] == [
        ("red.png", CHANGED, "changed since the run"),
        ("blue.png", OK, ""),
        ("init.png", MISSING, "missing"),
    ]
    solid(files["red"], RED)  # put back exactly: served again
    assert client.get(f"/api/experiments/vlx/inputs/{red}").status_code == 200
