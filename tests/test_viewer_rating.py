"""The viewer's opt-in rating mode (``llm-dit view --rate``): blind pairs, the token and same-origin guard of its
one write route, judgements stored beside the images (the results store and every result untouched), the
preference summary route, the command's refusals, and one real-browser session in headless Chromium."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli_helpers import assert_user_error, results_snapshot, run
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DB_NAME, PlannedRun, ResultsStore, RunTiming
from llm_dit.files import write_atomic
from llm_dit.metrics.preferences import PREFERENCES_NAME, read_judgements
from llm_dit.viewer.server import RATE_TOKEN_HEADER, create_app, running

LOCAL = "http://127.0.0.1"
LABELS = ("zebra_label_alpha", "zebra_label_beta")  # no other text on the page could contain these


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def build(root: Path) -> dict[str, str]:
    """Experiment 'blind': axis 'style' (LABELS) x prompts custom_001, custom_002, seed 3: two pairs to rate.
    Returns each run's image sha256."""
    store = ResultsStore(root)
    store.start_experiment("blind", "rating", {"axes": [{"name": "style"}]}, {})
    plan = [
        PlannedRun(f"{prompt}_{i}", prompt, f"text of {prompt}", 3, {"style": label})
        for prompt in ("custom_001", "custom_002")
        for i, label in enumerate(LABELS)
    ]
    store.plan_runs("blind", plan)
    hashes = {}
    for n, planned in enumerate(plan):
        data = png(n)
        write_atomic(root / "blind" / f"{planned.run_id}.png", data)
        hashes[planned.run_id] = hashlib.sha256(data).hexdigest()
        store.mark_done(
            "blind", planned.run_id, image_path=f"{planned.run_id}.png", timing=RunTiming(0.1, 1), token_count=1,
            record={}, image_sha256=hashes[planned.run_id],
        )  # fmt: skip
    store.close()
    return hashes


@pytest.fixture
def blind(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "results"
    return root, build(root)


def token_of(client: TestClient) -> str:
    page = client.get("/rate")
    assert page.status_code == 200
    match = re.search(r'<meta name="rate-token" content="([^"]+)">', page.text)
    assert match, page.text
    return match.group(1)


def post(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/rate/blind/judgements", json=body, headers=headers)


# ---- API -----------------------------------------------------------------------------------------------------------


def test_without_rate_the_rating_routes_do_not_exist(blind: tuple[Path, dict[str, str]]) -> None:
    client = TestClient(create_app(blind[0]), base_url=LOCAL)
    assert client.get("/rate").status_code == 404
    assert client.get("/api/rate/blind/pairs").status_code == 404
    assert client.get("/rate/static/rate.js").status_code == 404
    assert client.get("/static/rate.js").status_code == 404  # the viewer's /static serves its own four files only
    assert client.get("/static/rate.html").status_code == 404
    body = {"left": "x", "right": "y", "choice": "tie", "rater": "ann"}
    assert post(client, body, **{RATE_TOKEN_HEADER: "anything"}).status_code == 404
    assert not (blind[0] / "blind" / PREFERENCES_NAME).exists()


def test_judgements_need_the_token_and_the_same_origin(blind: tuple[Path, dict[str, str]]) -> None:
    root, hashes = blind
    before = results_snapshot(root)
    client = TestClient(create_app(root, rate=True, rater="ann"), base_url=LOCAL)
    token = token_of(client)
    pairs = client.get("/api/rate/blind/pairs").json()
    assert pairs["axes"] == ["style"] and len(pairs["pairs"]) == 2
    text = client.get("/api/rate/blind/pairs").text
    assert not any(word in text for word in (*LABELS, *hashes, "custom_00"))  # blind: no labels, runs or prompts
    pair = pairs["pairs"][0]
    body = {"left": pair["left"], "right": pair["right"], "choice": "left", "rater": "ann"}

    assert post(client, body).status_code == 403  # no token
    assert post(client, body, **{RATE_TOKEN_HEADER: token[:-1] + "x"}).status_code == 403
    assert post(client, body, **{RATE_TOKEN_HEADER: token, "Origin": "http://evil.example"}).status_code == 403
    assert post(client, body, **{RATE_TOKEN_HEADER: token, "Origin": "http://127.0.0.1:9"}).status_code == 403
    assert post(client, body, **{RATE_TOKEN_HEADER: token, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert post(client, body, **{RATE_TOKEN_HEADER: token, "Host": "evil.example"}).status_code == 400
    assert not (root / "blind" / PREFERENCES_NAME).exists()  # nothing refused was written
    # Another app (another session) has another token.
    assert token != token_of(TestClient(create_app(root, rate=True), base_url=LOCAL))

    for bad in ({**body, "choice": "a"}, {**body, "rater": ""}, {**body, "left": pair["right"]}, {"left": 1}):
        assert post(client, bad, **{RATE_TOKEN_HEADER: token, "Origin": LOCAL}).status_code == 400, bad
    good = post(client, body, **{RATE_TOKEN_HEADER: token, "Origin": LOCAL, "Sec-Fetch-Site": "same-origin"})
    assert good.status_code == 200, good.text
    tie = {"left": pairs["pairs"][1]["left"], "right": pairs["pairs"][1]["right"], "choice": "tie", "rater": "bob"}
    assert post(client, tie, **{RATE_TOKEN_HEADER: token}).status_code == 200

    stored = read_judgements(root / "blind" / PREFERENCES_NAME)
    assert len(stored) == 2
    first = stored[0]
    # Sides are random per listing: over 20 listings, each judgement's shown_left names the run whose image was on
    # the left (all 20 on the same side by chance: 2**-20).
    sides = []
    for _ in range(20):
        shown = client.get("/api/rate/blind/pairs").json()["pairs"][0]
        vote = {"left": shown["left"], "right": shown["right"], "choice": "right", "rater": "dan"}
        assert post(client, vote, **{RATE_TOKEN_HEADER: token}).status_code == 200
        last = read_judgements(root / "blind" / PREFERENCES_NAME)[-1]
        left_run = last.run_a if last.shown_left == "a" else last.run_b
        assert client.get(shown["left_url"]).content == (root / "blind" / f"{left_run}.png").read_bytes()
        assert last.choice == ("b" if last.shown_left == "a" else "a")  # 'right better': the side shown right
        sides.append(last.shown_left)
    assert set(sides) == {"a", "b"}
    assert first.choice == first.shown_left  # 'left better' is the side that was shown left
    assert (first.run_a.endswith("_0"), first.run_b.endswith("_1")) == (True, True)  # A: the first planned value
    assert (first.sha256_a, first.sha256_b) == (hashes[first.run_a], hashes[first.run_b])
    assert first.experiment == "blind" and first.axis == "style" and first.rater == "ann"
    assert stored[1].choice == "tie" and stored[1].rater == "bob" and stored[1].session == first.session
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first.time)

    after = results_snapshot(root)
    assert after.pop(f"blind/{PREFERENCES_NAME}")
    assert after == before  # results.db, every image: byte-identical
    assert DB_NAME in before

    summary = client.get("/api/experiments/blind/preferences").json()
    assert summary["judgements"] == 22 and summary["stale"] == 0 and summary["raters"] == ["ann", "bob", "dan"]
    rows = {(row["metric"], row["value"]): row for row in summary["rows"]}
    wins = sum(j.choice == "a" for j in read_judgements(root / "blind" / PREFERENCES_NAME))
    assert rows[("win_rate", LABELS[0])]["mean"] == pytest.approx((wins + 0.5) / 22)  # bob's tie: half a win
    assert rows[("win_rate", LABELS[0])]["n"] == 22
    assert rows[("preference_bt", LABELS[0])]["mean"] == 0.0  # the first planned value is the reference


def test_preferences_route_is_empty_without_judgements(blind: tuple[Path, dict[str, str]]) -> None:
    client = TestClient(create_app(blind[0]), base_url=LOCAL)
    assert client.get("/api/experiments/blind/preferences").json()["rows"] == []
    assert client.get("/api/experiments/nope/preferences").status_code == 404


def test_rating_mode_refuses_bad_arguments(blind: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(LlmDitError, match="rate=True"):
        create_app(blind[0], rater="ann")
    with pytest.raises(LlmDitError, match="loopback"):
        create_app(blind[0], rate=True, loopback_hosts_only=False)
    root = str(blind[0])
    rc, out, err = run(capsys, "view", "--output-dir", root, "--rater", "ann", "--port", "70000")
    assert_user_error(rc, out, err, "--rater only applies to rating mode", "--rate")
    rc, out, err = run(capsys, "view", "--output-dir", root, "--rate", "--host", "0.0.0.0", "--port", "70000")
    assert_user_error(rc, out, err, "--rate writes judgements and listens on loopback only")
    rc, out, err = run(capsys, "view", "--output-dir", root, "--rate", "--rater", " ", "--port", "70000")
    assert_user_error(rc, out, err, "--rater must be a name")
    rc, out, err = run(capsys, "view", "--output-dir", root, "--rate", "--port", "70000")
    assert_user_error(rc, out, err, "--port 70000 is not a TCP port")  # the flags themselves are accepted


# ---- the real browser ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rating_two_pairs_in_the_browser(blind: tuple[Path, dict[str, str]], browser: Any) -> None:
    root, _ = blind
    before = results_snapshot(root)
    with running(root, rate=True, rater="carol") as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url + "rate")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator('[data-testid="rate-rater"]').input_value() == "carol"
        assert "0 / 2" in page.locator('[data-testid="rate-progress"]').text_content()
        shown: list[str] = []
        for n, button in enumerate(("rate-left", "rate-right")):
            page.wait_for_function("() => document.getElementById('rate-left-img').complete")
            dom = page.locator("body").evaluate("node => node.innerText + ' ' + node.outerHTML")
            assert not any(label in dom for label in LABELS)
            assert "custom_00" not in dom  # neither prompt ids nor run ids
            shown.append(page.locator('[data-testid="rate-left-img"]').get_attribute("src"))
            page.locator(f'[data-testid="{button}"]').click()
            page.wait_for_selector(f"body[data-rated='{n + 1}']")
        assert "All 2 pairs done" in page.locator('[data-testid="rate-message"]').text_content()
        assert "2 / 2" in page.locator('[data-testid="rate-progress"]').text_content()
        assert errors == [], errors
        assert all(r.startswith(url) for r in requests), requests
        context.close()
    stored = read_judgements(root / "blind" / PREFERENCES_NAME)
    assert len(stored) == 2 and {j.rater for j in stored} == {"carol"}
    assert stored[0].choice == stored[0].shown_left  # clicked 'left better'
    assert stored[1].choice == ("b" if stored[1].shown_left == "a" else "a")  # clicked 'right better'
    assert len({(j.run_a, j.run_b) for j in stored}) == 2  # two different pairs
    after = results_snapshot(root)
    after.pop(f"blind/{PREFERENCES_NAME}")
    assert after == before
