"""The viewer end to end: the real server (uvicorn on a free loopback port) and the real page in headless Chromium
(Debian's /usr/bin/chromium driven by Playwright). Every view is exercised as a user would, and every test also
checks that the page made no request outside the server's origin and logged no console error.

Screenshots go to a temp dir, or to $LLM_DIT_VIEWER_SHOTS when set (to look at them while working on the page).
"""

from __future__ import annotations

import http.client
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import numpy as np
import pytest
from PIL import Image

from llm_dit.analysis.diff import diff_image, diff_stats
from llm_dit.analysis.results import ExperimentResults, load_experiment
from llm_dit.experiments.store import PlannedRun, ResultsStore, RunTiming
from llm_dit.files import write_atomic
from llm_dit.viewer.server import running

pytestmark = pytest.mark.slow

TRICKY_LABEL = '<i>&"q"'
TRICKY_PROMPT = '<script>window.hacked = 1</script> & "quoted", <b>bold</b>'


def build_tricky(root: Path) -> None:
    """Experiment 'pix': prompt custom_001 (HTML-like text) and custom_002 x axis label ('a,b', TRICKY_LABEL),
    seed 5; (custom_002, TRICKY_LABEL) failed."""
    rng = np.random.default_rng(1)
    store = ResultsStore(root)
    store.start_experiment("pix", "labels that look like HTML", {"axes": [{"name": "label"}]}, {})
    plan = [
        PlannedRun("r_a", "custom_001", TRICKY_PROMPT, 5, {"label": "a,b"}),
        PlannedRun("r_b", "custom_001", TRICKY_PROMPT, 5, {"label": TRICKY_LABEL}),
        PlannedRun("r_c", "custom_002", "a plain prompt", 5, {"label": "a,b"}),
        PlannedRun("r_fail", "custom_002", "a plain prompt", 5, {"label": TRICKY_LABEL}),
    ]
    store.plan_runs("pix", plan)
    for run in plan[:3]:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
        write_atomic(root / "pix" / f"{run.run_id}.png", buffer.getvalue())
        record = {"formatted_prompt": f"<|im_start|>user\n{run.prompt_text}<|im_end|>\n", "sigmas": [1.0, 0.0]}
        store.mark_done("pix", run.run_id, image_path=f"{run.run_id}.png", timing=RunTiming(0.1, 1), token_count=3,
                        record=record)  # fmt: skip
    store.mark_failed("pix", "r_fail", "boom <b>")
    store.start_experiment("empty", "started, nothing planned yet", {}, {})
    store.close()


@pytest.fixture(scope="module")
def server_url(tiny_results: Path) -> Iterator[str]:
    with running(tiny_results) as url:
        yield url


@pytest.fixture(scope="module")
def tricky_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tricky") / "results"
    build_tricky(root)
    with running(root) as url:
        yield url


@pytest.fixture(scope="module")
def look(tiny_results: Path) -> ExperimentResults:
    return load_experiment(tiny_results, "look")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("LLM_DIT_VIEWER_SHOTS")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen)
    return tmp_path_factory.mktemp("viewer_shots")


class Watched:
    """A page plus everything it requested and every console error, checked when the test ends."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.refused: list[str] = []  # paths of responses with a 4xx/5xx status
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("response", lambda res: res.status >= 400 and self.refused.append(urlsplit(res.url).path))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("dialog", lambda dialog: self.errors.append(f"dialog opened: {dialog.message}"))

    def open(self, url: str) -> Any:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def check(self, origin: str) -> None:
        outside = [url for url in self.requests if not url.startswith((origin, "data:", "blob:"))]
        assert outside == [], f"requests outside {origin}: {outside}"
        assert self.errors == [], self.errors
        assert self.refused == [], self.refused
        assert self.page.evaluate("window.hacked") is None  # no prompt text ever ran as a script


@pytest.fixture
def watched(browser: Any, server_url: str) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = Watched(context.new_page())
    yield page
    page.check(server_url.rstrip("/"))
    context.close()


def shot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def hash_url(base: str, **params: str) -> str:
    return f"{base}#{urlencode(params)}"


def js_number(value: float) -> str:
    """A number as the page prints it: JavaScript's String() (integral floats without '.0')."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def js_metric(value: float) -> str:
    """A metric value as the page prints it: 4 significant digits, 'inf' for infinity."""
    if value == float("inf"):
        return "inf"
    return js_number(float(f"{value:.4g}"))


def find(results: ExperimentResults, **dims: str) -> dict[str, Any]:
    """The run of ``results`` with these values (prompt, seed, axes) along its dimensions."""
    hits = [
        run for run in results.runs
        if all(str(run["prompt_id"] if d == "prompt" else run["seed"] if d == "seed" else run["variables"][d]) == v
               for d, v in dims.items())
    ]  # fmt: skip
    assert len(hits) == 1, dims
    return hits[0]


def run_ids(page: Any, testid: str, attribute: str = "data-run-id") -> list[str]:
    return page.locator(f'[data-testid="{testid}"]').evaluate_all(
        f"nodes => nodes.map(n => n.getAttribute('{attribute}'))"
    )


def texts(page: Any, testid: str) -> list[str]:
    return page.locator(f'[data-testid="{testid}"]').evaluate_all("nodes => nodes.map(n => n.textContent)")


def choose(page: Any, testid: str, value: str) -> None:
    page.locator(f'[data-testid="{testid}"]').select_option(value=value)


# Page functions are written as functions, never as bare expressions: Playwright evaluates a bare expression with
# eval(), which the viewer's Content-Security-Policy forbids (as it should).


def set_range(page: Any, testid: str, value: int) -> None:
    page.locator(f'[data-testid="{testid}"]').evaluate(
        "(node, v) => { node.value = String(v); node.dispatchEvent(new Event('input', {bubbles: true}));"
        " node.dispatchEvent(new Event('change', {bubbles: true})); }",
        value,
    )


def image_pixels(page: Any, testid: str) -> np.ndarray:
    """The RGB pixels of a loaded <img> as the browser decoded them (drawn 1:1 onto a canvas)."""
    data = page.locator(f'[data-testid="{testid}"]').evaluate(
        """img => {
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            return {w: canvas.width, h: canvas.height,
                    px: Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data)};
        }"""
    )
    return np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)[..., :3]


def read_rgb(results: ExperimentResults, run: dict[str, Any]) -> np.ndarray:
    with Image.open(results.directory / run["image_path"]) as image:
        return np.asarray(image.convert("RGB"))


def wait_loaded(page: Any, testid: str) -> None:
    page.wait_for_function(
        "id => { const n = document.querySelector(`[data-testid='${id}']`);"
        " return n && n.complete && n.naturalWidth > 0; }",
        arg=testid,
    )


def src_of(page: Any, testid: str) -> str:
    return unquote(urlsplit(page.locator(f'[data-testid="{testid}"]').evaluate("n => n.src")).path)


# ---- tests -----------------------------------------------------------------------------------------------------------


def test_home_lists_experiments_and_opens_one(watched: Watched, server_url: str, shots: Path) -> None:
    page = watched.open(server_url)
    rows = page.locator('[data-testid="experiment-row"]')
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.name)") == ["look", "look_custom"]
    assert "36/36" in rows.first.inner_text()
    shot(page, shots, "home")
    page.get_by_role("link", name="look", exact=True).click()
    page.wait_for_selector('[data-testid="grid"]')
    assert "exp=look" in page.url
    assert page.locator('[data-testid="experiment-counts"]').inner_text() == "36 runs, 36 done"
    # The experiment select switches experiments too.
    choose(page, "experiment-select", "look_custom")
    page.wait_for_function("() => document.title.startsWith('look_custom')")
    assert len(run_ids(page, "grid-image")) == 6  # 1 prompt: layer (2) x shift (3) at seed 1


def test_grid_follows_axes_fixed_values_and_filters(
    watched: Watched, server_url: str, look: ExperimentResults, shots: Path
) -> None:
    page = watched.open(hash_url(server_url, exp="look"))
    page.wait_for_selector('[data-testid="grid-image"]')
    # Default layout of a two-axis sweep: first axis on columns, second on rows, prompt and seed fixed.
    assert texts(page, "grid-col") == ["shift=2.0", "shift=3.0", "shift=6.0"]
    assert texts(page, "grid-row") == ["layer=-2", "layer=-2:0.5,-5:0.5"]
    expected = [
        find(look, prompt="animal_001", seed="1", layer=layer, shift=shift)
        for layer in ("-2", "-2:0.5,-5:0.5")
        for shift in ("2.0", "3.0", "6.0")
    ]
    assert run_ids(page, "grid-image") == [run["run_id"] for run in expected]
    captions = texts(page, "grid-caption")
    for run, caption in zip(expected, captions, strict=True):
        for name in ("mad", "psnr", "ssim", "diversity_mad"):
            assert f"{name} {js_metric(run['metrics'][name])}" in caption, (caption, run["metrics"])
    page.wait_for_function("() => [...document.querySelectorAll('img[data-run-id]')].every(n => n.naturalWidth)")
    # Cells show thumbnails at the next size up from the displayed one (160 px by default, pixel ratio 1); the
    # full image stays one click away.
    paths = [quote(f"look/{run['image_path']}") for run in expected]
    assert run_ids(page, "grid-image", "src") == [f"/thumbs/{path}?size=256" for path in paths]
    assert run_ids(page, "grid-image", "data-full") == [f"/files/{path}" for path in paths]
    page.locator('[data-testid="grid-size"]').fill("400")
    assert run_ids(page, "grid-image", "src") == [f"/thumbs/{path}?size=512" for path in paths]
    page.locator('[data-testid="grid-size"]').fill("160")
    shot(page, shots, "grid_default")

    # Prompts on the rows: 3 x 3, with the layer now fixed by a select.
    choose(page, "grid-rows", "prompt")
    assert len(run_ids(page, "grid-image")) == 9
    assert texts(page, "grid-row")[0] == f"animal_001{look.prompt_texts['animal_001']}"
    choose(page, "fixed-layer", "-2:0.5,-5:0.5")
    blend = [
        find(look, prompt=p, seed="1", layer="-2:0.5,-5:0.5", shift=s)["run_id"]
        for p in ("animal_001", "animal_002", "simple_001")
        for s in ("2.0", "3.0", "6.0")
    ]
    assert run_ids(page, "grid-image") == blend

    # Filters: untick shift 6.0 and prompt animal_002.
    page.locator('[data-testid="filter-shift"] input[data-value="6.0"]').uncheck()
    page.locator('[data-testid="filter-prompt"] input[data-value="animal_002"]').uncheck()
    assert texts(page, "grid-col") == ["shift=2.0", "shift=3.0"]
    assert len(run_ids(page, "grid-image")) == 4
    # Seeds on the columns: shift becomes fixed, offering only the values the filter left.
    choose(page, "grid-cols", "seed")
    assert texts(page, "grid-col") == ["seed=1", "seed=2"]
    options = page.locator('[data-testid="fixed-shift"] option').evaluate_all("os => os.map(o => o.value)")
    assert options == ["2.0", "3.0"]
    shown = run_ids(page, "grid-image")
    assert shown == [
        find(look, prompt=p, seed=s, layer="-2:0.5,-5:0.5", shift="2.0")["run_id"]
        for p in ("animal_001", "simple_001")
        for s in ("1", "2")
    ]
    shot(page, shots, "grid_filtered")
    # The hash holds the whole state: a reload shows the same grid.
    page.reload()
    page.wait_for_selector('[data-testid="grid-image"]')
    assert run_ids(page, "grid-image") == shown
    assert not page.locator('[data-testid="filter-shift"] input[data-value="6.0"]').is_checked()
    # Every value filtered out: a message, not an empty table.
    page.locator('[data-testid="filter-seed"] button', has_text="none").click()
    assert page.locator('[data-testid="grid-empty"]').is_visible()


def test_slider_divider_follows_drag_and_keys(
    watched: Watched, server_url: str, look: ExperimentResults, shots: Path
) -> None:
    page = watched.open(hash_url(server_url, exp="look", view="slider", dim="shift", a="2.0", b="6.0"))
    run_a = find(look, prompt="animal_001", seed="1", layer="-2", shift="2.0")
    run_b = find(look, prompt="animal_001", seed="1", layer="-2", shift="6.0")
    wait_loaded(page, "slider-a")
    wait_loaded(page, "slider-b")
    assert src_of(page, "slider-a").endswith(run_a["image_path"])
    assert src_of(page, "slider-b").endswith(run_b["image_path"])
    top = page.locator('[data-testid="slider-a"]')
    assert top.evaluate("n => getComputedStyle(n).clipPath") == "inset(0px 50% 0px 0px)"
    box = page.locator('[data-testid="slider-stage"]').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.2, y, steps=4)
    page.mouse.up()
    divider = page.locator('[data-testid="slider-divider"]')
    assert int(divider.get_attribute("aria-valuenow")) == 20
    assert top.evaluate("n => getComputedStyle(n).clipPath") == "inset(0px 80% 0px 0px)"
    line = divider.bounding_box()
    assert abs(line["x"] - (box["x"] + box["width"] * 0.2)) <= 2
    # On screen: A left of the divider, B right of it. The stage is 512 px wide for a 64 px image, so each image
    # pixel is an 8x8 block (pixelated scaling); sample block centres in rows clear of the labels and the handle.
    assert box["width"] == 512
    screen = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB"))
    blocks = screen[4::8, 4::8].astype(int)  # 64x64: one sample per image pixel
    a, b = read_rgb(look, run_a).astype(int), read_rgb(look, run_b).astype(int)
    rows = slice(40, 60)
    assert np.abs(blocks[rows, :11] - a[rows, :11]).max() <= 2  # columns 0..10 lie left of 20% (12.8)
    assert np.abs(blocks[rows, 15:] - b[rows, 15:]).max() <= 2
    assert np.abs(a[rows, 15:] - b[rows, 15:]).max() > 20  # A and B differ there: the check can tell them apart
    shot(page, shots, "slider")
    # Keyboard: the divider is a focusable slider.
    divider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    assert int(divider.get_attribute("aria-valuenow")) == 35
    assert "split=35" in page.url
    page.keyboard.press("End")
    assert top.evaluate("n => getComputedStyle(n).clipPath") == "inset(0px 0% 0px 0px)"


def test_ab_toggle_swaps_on_click(watched: Watched, server_url: str, look: ExperimentResults, shots: Path) -> None:
    page = watched.open(hash_url(server_url, exp="look", view="ab", dim="layer", a="-2", b="-2:0.5,-5:0.5"))
    run_a = find(look, prompt="animal_001", seed="1", layer="-2", shift="2.0")
    run_b = find(look, prompt="animal_001", seed="1", layer="-2:0.5,-5:0.5", shift="2.0")
    wait_loaded(page, "ab-image")
    image = page.locator('[data-testid="ab-image"]')
    label = page.locator('[data-testid="ab-label"]')
    assert (image.get_attribute("data-shown"), label.inner_text()) == ("A", "A · layer=-2")
    assert src_of(page, "ab-image").endswith(run_a["image_path"])
    shot(page, shots, "ab_a")
    page.locator('[data-testid="ab-toggle"]').click()
    wait_loaded(page, "ab-image")
    assert (image.get_attribute("data-shown"), label.inner_text()) == ("B", "B · layer=-2:0.5,-5:0.5")
    assert src_of(page, "ab-image").endswith(run_b["image_path"])
    np.testing.assert_array_equal(image_pixels(page, "ab-image"), read_rgb(look, run_b))
    page.keyboard.press("Space")  # the toggle is a button: keyboard works too
    assert image.get_attribute("data-shown") == "A"
    # Swapping A and B in the controls swaps what A shows.
    page.locator('[data-testid="pair-swap"]').click()
    assert src_of(page, "ab-image").endswith(run_b["image_path"])
    # Another fixed value changes both images.
    choose(page, "fixed-prompt", "simple_001")
    assert src_of(page, "ab-image").endswith(find(look, prompt="simple_001", seed="1", layer="-2:0.5,-5:0.5",
                                                  shift="2.0")["image_path"])  # fmt: skip


def test_diff_overlay_shows_the_servers_diff(
    watched: Watched, server_url: str, look: ExperimentResults, shots: Path
) -> None:
    page = watched.open(hash_url(server_url, exp="look", view="diff", dim="shift", a="2.0", b="6.0"))
    run_a = find(look, prompt="animal_001", seed="1", layer="-2", shift="2.0")
    run_b = find(look, prompt="animal_001", seed="1", layer="-2", shift="6.0")
    a, b = read_rgb(look, run_a), read_rgb(look, run_b)
    wait_loaded(page, "diff-image")
    wait_loaded(page, "diff-base")
    np.testing.assert_array_equal(image_pixels(page, "diff-image"), diff_image(a, b, "highlight", 8))
    stats = diff_stats(a, b, 8)
    page.wait_for_function("() => document.querySelector('[data-testid=diff-stats]').textContent.includes('%')")
    summary = page.locator('[data-testid="diff-stats"]').inner_text()
    assert f"{stats.changed_fraction * 100:.2f}% of pixels changed" in summary
    shot(page, shots, "diff_highlight")

    choose(page, "diff-mode", "heatmap")
    page.wait_for_function("() => document.querySelector('[data-testid=diff-image]').src.includes('mode=heatmap')")
    wait_loaded(page, "diff-image")
    np.testing.assert_array_equal(image_pixels(page, "diff-image"), diff_image(a, b, "heatmap", 8))

    choose(page, "diff-mode", "absolute")
    set_range(page, "diff-gain", 4)
    page.wait_for_function("() => document.querySelector('[data-testid=diff-image]').src.includes('gain=4')")
    wait_loaded(page, "diff-image")
    np.testing.assert_array_equal(image_pixels(page, "diff-image"), diff_image(a, b, "absolute", 8, 4.0))

    choose(page, "diff-mode", "highlight")
    set_range(page, "diff-threshold", 30)
    page.wait_for_function("() => document.querySelector('[data-testid=diff-image]').src.includes('threshold=30')")
    wait_loaded(page, "diff-image")
    np.testing.assert_array_equal(image_pixels(page, "diff-image"), diff_image(a, b, "highlight", 30))
    set_range(page, "diff-opacity", 40)
    assert page.locator('[data-testid="diff-image"]').evaluate("n => getComputedStyle(n).opacity") == "0.4"
    shot(page, shots, "diff_blend")
    page.reload()  # the mode, threshold and opacity come back from the hash
    wait_loaded(page, "diff-image")
    assert "threshold=30" in page.locator('[data-testid="diff-image"]').evaluate("n => n.src")
    assert page.locator('[data-testid="diff-image"]').evaluate("n => getComputedStyle(n).opacity") == "0.4"


def test_clicking_an_image_shows_its_full_record(
    watched: Watched, server_url: str, look: ExperimentResults, shots: Path
) -> None:
    page = watched.open(hash_url(server_url, exp="look", rows="prompt", cols="shift"))
    first = page.locator('[data-testid="grid-image"]').first
    run = next(r for r in look.runs if r["run_id"] == first.get_attribute("data-run-id"))
    first.click()
    dialog = page.locator('[data-testid="record"]')
    dialog.wait_for(state="visible")
    record = run["record"]
    assert run["run_id"] in page.locator('[data-testid="record-title"]').inner_text()
    assert page.locator('[data-testid="record-prompt"]').text_content() == run["prompt_text"]
    formatted = page.locator('[data-testid="record-formatted"]')
    # Whitespace is visible by default: one ↵ per newline; unticked, the text is exactly the formatted prompt.
    assert formatted.text_content().count("↵") == record["formatted_prompt"].count("\n") > 0
    page.locator('[data-testid="record-ws"]').uncheck()
    assert formatted.text_content() == record["formatted_prompt"]
    sigmas = page.locator('[data-testid="record-sigmas"]').text_content()
    assert sigmas == ", ".join(js_number(s) for s in record["sigmas"])
    assert page.locator('[data-testid="record-seed"]').text_content() == str(run["seed"])
    metrics = page.locator('[data-testid="record-metrics"]').inner_text()
    assert f"psnr ↑\t{js_number(run['metrics']['psnr'])}" in metrics  # full precision in the record
    assert record["model_fingerprint"] in page.locator('[data-testid="record-model"]').inner_text()
    assert record["versions"]["numpy"] in page.locator('[data-testid="record-versions"]').inner_text()
    params = page.locator('[data-testid="record-params"]').inner_text()
    assert f"shift\t{js_number(run['params']['shift'])}" in params
    shot(page, shots, "record")
    # The open record is part of the link: a reload opens it again; Escape closes it.
    page.reload()
    dialog.wait_for(state="visible")
    assert run["run_id"] in page.locator('[data-testid="record-title"]').inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert "record=" not in page.url
    # The pairwise views open A's and B's records from buttons.
    page.locator('[data-testid="tab-slider"]').click()
    page.locator('[data-testid="record-b"]').click()
    dialog.wait_for(state="visible")
    assert f"shift={look.dimensions['shift'][1]}" in page.locator('[data-testid="record-summary"]').inner_text()
    page.locator('[data-testid="record-close"]').click()
    dialog.wait_for(state="hidden")


def test_labels_and_prompts_are_text_never_markup(browser: Any, tricky_url: str, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    watched = Watched(context.new_page())
    try:
        page = watched.open(hash_url(tricky_url, exp="pix"))
        page.wait_for_selector('[data-testid="grid"]')
        assert texts(page, "grid-col") == ["label=a,b", f"label={TRICKY_LABEL}"]
        rows = texts(page, "grid-row")
        assert rows[0] == f"custom_001{TRICKY_PROMPT}"
        assert page.locator('[data-testid="grid"] i, [data-testid="grid"] b, [data-testid="grid"] script').count() == 0
        # The failed run is a placeholder saying so.
        assert texts(page, "grid-missing") == ["failed"]
        assert page.locator('[data-testid="grid-missing"]').get_attribute("title") == "boom <b>"
        shot(page, shots, "tricky_grid")
        page.locator('[data-testid="grid-image"]').first.click()
        page.locator('[data-testid="record"]').wait_for(state="visible")
        assert page.locator('[data-testid="record-prompt"]').text_content() == TRICKY_PROMPT
        assert page.locator('[data-testid="record"] script, [data-testid="record"] b').count() == 0
        page.keyboard.press("Escape")
        # A label with a comma, quotes and '<' in the hash, in the A/B view.
        page.goto(hash_url(tricky_url, exp="pix", view="ab", dim="label", a=TRICKY_LABEL, b="a,b"))
        wait_loaded(page, "ab-image")
        assert page.locator('[data-testid="ab-label"]').inner_text() == f"A · label={TRICKY_LABEL}"
        assert src_of(page, "ab-image") == "/files/pix/r_b.png"
        # An experiment with no runs yet says so.
        page.goto(hash_url(tricky_url, exp="empty"))
        assert page.locator('[data-testid="no-runs"]').inner_text() == "This experiment has no runs yet."
        watched.check(tricky_url.rstrip("/"))
    finally:
        context.close()


ATTACKS = [
    "files/%2e%2e/results.db",
    "files/look/%2e%2e/%2e%2e/etc/passwd",
    "files/look%2f..%2f..%2fetc%2fpasswd",
    "files/%2fetc%2fpasswd",
    "files/results.db",
    "files/look/.lock",
    "files/look/results.csv",
    "files/look/metadata.json",
    "static/..%2fserver.py",
    "files/look/x.png%00",
]


def test_path_traversal_is_refused_in_the_browser(watched: Watched, server_url: str, look: ExperimentResults) -> None:
    page = watched.page
    good = page.request.get(server_url + f"files/look/{look.runs[0]['image_path']}")
    assert good.status == 200
    for attack in ATTACKS:
        response = page.request.get(server_url + attack)
        assert response.status in (400, 404), (attack, response.status)
        assert not response.body().startswith(b"SQLite format")
    # Navigating to a traversal URL: the browser may normalise it first; either way no file comes back.
    navigations = ("files/%2e%2e/results.db", "files/../results.db", "files/look/%2e%2e%2f%2e%2e%2fetc%2fpasswd")
    for attack in navigations:
        response = page.goto(server_url + attack)
        assert response.status in (400, 404), attack
    # Chromium treats %2e%2e as '..' and removes it before sending (so that attack asks for /results.db, which no
    # route serves); the encoded-slash one reaches the server. Each refused navigation is logged as a console
    # error: expected here, and only those.
    assert sorted(watched.refused) == ["/files/look/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/results.db", "/results.db"]
    assert len(watched.errors) == len(navigations)
    assert all(error.startswith("Failed to load resource: the server responded with a status of 4")
               for error in watched.errors)  # fmt: skip
    watched.errors.clear()
    watched.refused.clear()
    # Paths exactly as written ('..' not normalised away by a client) reach the server and get 400.
    host, port = urlsplit(server_url).hostname, urlsplit(server_url).port
    for raw in ("/files/../results.db", "/files/look/../../../etc/passwd", "/files/look/./x.png"):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("GET", raw)
        assert connection.getresponse().status == 400, raw
        connection.close()


# ---- input images -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The 'vlx' store of test_input_images_display (axis ref: vl_image red.png | blue.png, init_image init.png on
    every run), with blue.png edited since planning."""
    from test_input_images_display import YELLOW, build_vl, solid

    root, files = build_vl(tmp_path_factory.mktemp("inputs"))
    solid(files["blue"], YELLOW)
    return root, files


def test_input_images_beside_the_grid_pairs_and_record(
    browser: Any, inputs_root: tuple[Path, dict[str, Path]], shots: Path
) -> None:
    from test_input_images_display import GREEN, RED, YELLOW, sha256, solid

    root, files = inputs_root
    red, init = sha256(files["red"]), sha256(files["init"])
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    watched = Watched(context.new_page())
    with running(root) as url:
        try:
            page = watched.open(hash_url(url, exp="vlx", rows="prompt", cols="ref"))
            page.wait_for_selector('[data-testid="inputs-strip"]')
            statuses = page.locator('[data-testid="input"]').evaluate_all(
                "nodes => nodes.map(n => [n.dataset.setting, n.dataset.status])"
            )
            assert statuses == [["vl_image", "ok"], ["vl_image", "changed"], ["init_image", "ok"]]
            captions = texts(page, "input-caption")
            assert captions[0] == f"vl_imagered.pngsha256 {red[:8]}used by columns: ref=red"
            assert captions[1].startswith("vl_imageblue.pngsha256 ") and captions[1].endswith("ref=blue")
            assert captions[2] == f"init_imageinit.pngsha256 {init[:8]}"  # used by every cell shown
            # The changed input is a placeholder saying so (its file was never requested); the others are the
            # recorded bytes, pixel for pixel.
            assert texts(page, "input-missing") == ["changed since the run"]
            assert run_ids(page, "input-image", "src") == [
                f"/api/experiments/vlx/inputs/{red}?size=256",
                f"/api/experiments/vlx/inputs/{init}?size=256",
            ]
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=input-image]')].every(n => n.naturalWidth)"
            )
            pictures = page.locator('[data-testid="input-image"]')
            for index, colour in enumerate((RED, GREEN)):
                data = pictures.nth(index).evaluate(
                    """img => { const c = document.createElement("canvas"); c.width = img.naturalWidth;
                    c.height = img.naturalHeight; const x = c.getContext("2d"); x.drawImage(img, 0, 0);
                    return Array.from(x.getImageData(0, 0, c.width, c.height).data); }"""
                )
                pixels = np.array(data, dtype=np.uint8).reshape(-1, 4)[:, :3]
                assert (pixels == np.array(colour, np.uint8)).all(), index
            shot(page, shots, "inputs_grid")
            # Filtered to the red column: only its inputs, used by every cell now.
            page.locator('[data-testid="filter-ref"] input[data-value="blue"]').uncheck()
            assert texts(page, "input-caption") == [
                f"vl_imagered.pngsha256 {red[:8]}",
                f"init_imageinit.pngsha256 {init[:8]}",
            ]
            # The record of a run lists its own inputs.
            page.locator('[data-testid="grid-image"]').first.click()
            page.locator('[data-testid="record"]').wait_for(state="visible")
            record = page.locator('[data-testid="record-inputs"] [data-testid="record-input"]')
            assert record.evaluate_all("nodes => nodes.map(n => n.dataset.sha)") == [red, init]
            shot(page, shots, "inputs_record")
            page.keyboard.press("Escape")
            # A pair: which of A and B uses which input.
            page.goto(hash_url(url, exp="vlx", view="slider", dim="ref", a="red", b="blue"))
            page.wait_for_selector('[data-testid="inputs-strip"]')
            usage = texts(page, "input-caption")
            assert usage[0].endswith("used by A") and usage[1].endswith("used by B") and "used by" not in usage[2]
            shot(page, shots, "inputs_slider")
            # A file changed after the page listed it as unchanged: the server refuses it (409), and the page asks
            # why and shows the placeholder instead of a broken image.
            page.goto(hash_url(url, exp="vlx", rows="prompt", cols="ref"))
            page.wait_for_selector('[data-testid="grid"]')
            solid(files["red"], YELLOW)
            set_range(page, "grid-size", 400)  # a new thumbnail size: a new request
            missing = "[data-testid=inputs-strip] [data-testid=input-missing]"
            page.wait_for_function(f"() => document.querySelectorAll('{missing}').length === 2")
            strip = page.locator(missing)
            assert strip.evaluate_all("nodes => nodes.map(n => n.textContent)") == ["changed since the run"] * 2
            title = strip.first.get_attribute("title")
            assert "vl_image 'red.png' has changed since the run" in title
            assert watched.refused == [f"/api/experiments/vlx/inputs/{red}"] * 2  # the thumbnail, then the reason
            assert all(error.startswith("Failed to load resource: the server responded with a status of 409")
                       for error in watched.errors)  # fmt: skip
            watched.refused.clear()
            watched.errors.clear()
            watched.check(url.rstrip("/"))
        finally:
            context.close()
