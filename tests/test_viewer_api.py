"""The viewer's HTTP API without a browser: listing, experiment data, records, images, server-side diffs, the path
rules of /files, the Host guard, read-only behaviour, and the ``llm-dit view`` command's checks and defaults."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli_helpers import SRC, assert_user_error, results_snapshot, run, subprocess_env
from llm_dit.analysis.diff import DIFF_MODES, diff_image, diff_stats
from llm_dit.analysis.results import load_experiment
from llm_dit.cli import view as cli_view
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DB_NAME, PlannedRun, ResultsStore, RunTiming
from llm_dit.files import write_atomic
from llm_dit.viewer import server as viewer_server
from llm_dit.viewer.server import create_app, host_header_name, is_loopback

LOCAL = "http://127.0.0.1"  # the TestClient's base URL: a loopback Host header, as a browser on this machine sends

# Labels and prompt text with everything that breaks naive HTML or CSV handling.
TRICKY_LABEL = '<i>&"q"'
TRICKY_PROMPT = '<script>alert(1)</script> & "quoted", <b>bold</b>'


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def build_pix(root: Path) -> dict[str, np.ndarray]:
    """Experiment 'pix': axis 'label' ('a,b', TRICKY_LABEL) x prompts custom_001, custom_002, seed 5.

    r_a, r_b: custom_001, 8x6 images that differ in a known block; r_big: custom_002 'a,b', 10x10 (another size);
    r_fail: custom_002 TRICKY_LABEL, failed. Returns the images by run id."""
    rng = np.random.default_rng(0)
    image_a = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image_b = image_a.copy()
    shifted = image_b[1:4, 2:6].astype(int) + np.array([40, -3, 12])
    image_b[1:4, 2:6] = np.clip(shifted, 0, 255).astype(np.uint8)
    images = {"r_a": image_a, "r_b": image_b, "r_big": rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)}
    store = ResultsStore(root)
    store.start_experiment("pix", "pixel tests", {"axes": [{"name": "label"}]}, {})
    plan = [
        PlannedRun("r_a", "custom_001", TRICKY_PROMPT, 5, {"label": "a,b"}, {"shift": 3.0}, "r_a.png"),
        PlannedRun("r_b", "custom_001", TRICKY_PROMPT, 5, {"label": TRICKY_LABEL}, {"shift": 3.0}, "r_b.png"),
        PlannedRun("r_big", "custom_002", "a square", 5, {"label": "a,b"}, {}, "r_big.png"),
        PlannedRun("r_fail", "custom_002", "a square", 5, {"label": TRICKY_LABEL}, {}, "r_fail.png"),
    ]
    store.plan_runs("pix", plan)
    for run_id, array in images.items():
        write_atomic(root / "pix" / f"{run_id}.png", png(array))
        record = {"formatted_prompt": f"<|im_start|>user\n{run_id}<|im_end|>\n", "sigmas": [1.0, 0.5, 0.0]}
        store.mark_done(
            "pix", run_id, image_path=f"{run_id}.png", timing=RunTiming(0.5, 1), token_count=4, record=record
        )
    store.mark_failed("pix", "r_fail", "out of memory <really>")
    store.add_metrics("pix", "r_a", {"psnr": float("inf"), "mad": 0.0})
    store.add_metrics("pix", "r_b", {"psnr": 31.5, "mad": 2.25})
    store.close()
    return images


@pytest.fixture
def pix(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "results"
    return root, build_pix(root)


@pytest.fixture
def pix_client(pix: tuple[Path, dict[str, np.ndarray]]) -> TestClient:
    return TestClient(create_app(pix[0]), base_url=LOCAL)


@pytest.fixture(scope="module")
def tiny_client(tiny_results: Path) -> TestClient:
    return TestClient(create_app(tiny_results), base_url=LOCAL)


# ---- listing, experiment data, records -----------------------------------------------------------------------------


def test_lists_experiments_from_the_store(tiny_client: TestClient) -> None:
    body = tiny_client.get("/api/experiments").json()
    rows = {row["name"]: row for row in body["experiments"]}
    assert sorted(rows) == ["look", "look_custom"]
    assert rows["look"]["counts"] == {"planned": 0, "done": 36, "failed": 0, "total": 36}
    assert rows["look"]["status"] == "complete"
    assert rows["look_custom"]["counts"]["total"] == 6
    assert "comparison tools" in rows["look"]["description"]


def test_experiment_payload_matches_the_store(tiny_client: TestClient, tiny_results: Path) -> None:
    body = tiny_client.get("/api/experiments/look").json()
    expected = load_experiment(tiny_results, "look")
    assert body["dimensions"] == expected.dimensions
    assert body["dimensions"]["layer"] == ["-2", "-2:0.5,-5:0.5"]
    assert body["axes"] == ["shift", "layer"]
    assert [m["name"] for m in body["metrics"]] == expected.metrics
    assert {m["name"]: m["higher_is_better"] for m in body["metrics"]}["mad"] is False
    assert body["categories"] == expected.categories
    assert [r["run_id"] for r in body["runs"]] == [r["run_id"] for r in expected.runs]
    for got, stored in zip(body["runs"], expected.runs, strict=True):
        assert got["dims"] == {"prompt": stored["prompt_id"], **stored["variables"], "seed": str(stored["seed"])}
        # Every image URL serves exactly the run's file.
        response = tiny_client.get(got["image_url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content == (expected.directory / stored["image_path"]).read_bytes()
    # JSON has no inf: PSNR of a reference run (identical to itself) comes as the string 'inf'.
    psnr = [run["metrics"]["psnr"] for run in body["runs"]]
    assert "inf" in psnr
    assert all(value == "inf" or isinstance(value, float) for value in psnr)


def test_record_has_the_formatted_prompt_sigmas_and_metrics(tiny_client: TestClient, tiny_results: Path) -> None:
    run = load_experiment(tiny_results, "look").runs[5]
    body = tiny_client.get(f"/api/experiments/look/runs/{run['run_id']}").json()
    assert body["record"]["formatted_prompt"] == run["record"]["formatted_prompt"]
    assert "\n" in body["record"]["formatted_prompt"]
    assert body["record"]["sigmas"] == run["record"]["sigmas"]
    assert body["prompt_text"] == run["prompt_text"]
    assert body["seed"] == run["seed"]
    assert body["params"] == run["params"]
    assert body["category"] == "animals"
    assert set(body["metrics"]) == {"ssim", "psnr", "mad", "diversity_mad"}
    assert body["record"]["model_fingerprint"] == run["record"]["model_fingerprint"]


def test_unknown_experiment_and_run_are_404_with_a_reason(tiny_client: TestClient) -> None:
    response = tiny_client.get("/api/experiments/lok")
    assert response.status_code == 404
    assert "did you mean 'look'" in response.json()["detail"]
    response = tiny_client.get("/api/experiments/look/runs/nope")
    assert response.status_code == 404
    assert "no run 'nope'" in response.json()["detail"]


def test_the_api_never_shows_where_the_results_lie(pix: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory goes by its name and files by their path inside it: no absolute spelling of the results path
    (resolved, or as given, or relative to the working directory) in listings, records, run errors or 404s."""
    root, _ = pix
    linked = root.parent / "linked"
    linked.symlink_to(root)  # the path the viewer is given is not the resolved one
    with ResultsStore(root) as store:  # an error text that names a file in the results, as an OSError's would
        store.mark_failed("pix", "r_fail", f"disk full: cannot write {root.resolve()}/pix/r_fail.png")
    monkeypatch.chdir(root.parent)
    for given in (linked, Path("results")):
        client = TestClient(create_app(given), base_url=LOCAL)
        responses = [
            client.get("/api/experiments"),
            client.get("/api/experiments/pix"),
            client.get("/api/experiments/pix/runs/r_fail"),
            client.get("/api/experiments/pix/runs/r_a"),
            client.get("/api/experiments/nope"),
        ]
        for response in responses:
            for spelling in (str(root.resolve()), str(linked), str(given.absolute())):
                assert spelling not in response.text, (response.url, spelling)
        listing, _, failed, _, missing = (response.json() for response in responses)
        assert listing["root"] == given.resolve().name == "results"
        assert failed["error"] == "disk full: cannot write pix/r_fail.png"
        # the database still named: by its name, or by the relative path the viewer was given
        assert missing["detail"].startswith(
            f"no experiment 'nope' in {'' if given.is_absolute() else 'results/'}results.db"
        )


def test_tricky_labels_and_statuses_round_trip(pix: tuple[Path, Any]) -> None:
    (pix[0] / "stray").mkdir()  # a directory the store does not know is no experiment
    write_atomic(pix[0] / "stray" / "x.png", png(np.zeros((2, 2, 3), np.uint8)))
    pix_client = TestClient(create_app(pix[0]), base_url=LOCAL)
    assert [row["name"] for row in pix_client.get("/api/experiments").json()["experiments"]] == ["pix"]
    body = pix_client.get("/api/experiments/pix").json()
    assert body["dimensions"]["label"] == ["a,b", TRICKY_LABEL]
    assert body["prompt_texts"]["custom_001"] == TRICKY_PROMPT
    runs = {run["run_id"]: run for run in body["runs"]}
    assert runs["r_fail"]["status"] == "failed"
    assert runs["r_fail"]["image_url"] is None
    assert runs["r_fail"]["error"] == "out of memory <really>"
    assert runs["r_a"]["metrics"] == {"mad": 0.0, "psnr": "inf"}
    assert runs["r_b"]["dims"]["label"] == TRICKY_LABEL


def test_experiment_without_runs(pix: tuple[Path, Any]) -> None:
    with ResultsStore(pix[0]) as store:
        store.start_experiment("empty", "nothing planned yet", {}, {})
    client = TestClient(create_app(pix[0]), base_url=LOCAL)
    rows = {row["name"]: row for row in client.get("/api/experiments").json()["experiments"]}
    assert rows["empty"]["status"] == "empty"
    body = client.get("/api/experiments/empty").json()
    assert (body["runs"], body["dimensions"], body["counts"]["total"]) == ([], {"prompt": [], "seed": []}, 0)


def test_new_runs_show_on_the_next_request(pix: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = pix
    client = TestClient(create_app(root), base_url=LOCAL)
    before = client.get("/api/experiments/pix").json()
    assert before["counts"]["failed"] == 1
    with ResultsStore(root) as store:  # another process finishing the failed run
        write_atomic(root / "pix" / "r_fail.png", png(np.zeros((4, 4, 3), np.uint8)))
        store.mark_done("pix", "r_fail", image_path="r_fail.png", timing=RunTiming(1.0, 1), token_count=1, record={})
    after = client.get("/api/experiments/pix").json()
    assert after["counts"] == {"planned": 0, "done": 4, "failed": 0, "total": 4}
    assert {run["run_id"]: run for run in after["runs"]}["r_fail"]["image_url"] == "/files/pix/r_fail.png"
    assert client.get("/api/experiments").json()["experiments"][0]["status"] == "complete"


# ---- diffs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", DIFF_MODES)
def test_diff_png_is_diff_image_of_the_two_runs(
    pix_client: TestClient, pix: tuple[Path, dict[str, np.ndarray]], mode: str
) -> None:
    images = pix[1]
    response = pix_client.get(
        "/api/experiments/pix/diff", params={"a": "r_a", "b": "r_b", "mode": mode, "threshold": 5, "gain": 3}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    expected = diff_image(images["r_a"], images["r_b"], mode=mode, threshold=5, gain=3.0)
    np.testing.assert_array_equal(decode(response.content), expected)


def test_diff_on_tiny_results_matches_and_stats_agree(tiny_client: TestClient, tiny_results: Path) -> None:
    results = load_experiment(tiny_results, "look")
    run_a, run_b = results.runs[0], results.runs[2]  # shift 2.0 vs 3.0: different pictures

    def read(run: dict[str, Any]) -> np.ndarray:
        return decode((results.directory / run["image_path"]).read_bytes())

    params = {"a": run_a["run_id"], "b": run_b["run_id"], "threshold": 8}
    response = tiny_client.get("/api/experiments/look/diff", params={**params, "mode": "heatmap"})
    np.testing.assert_array_equal(decode(response.content), diff_image(read(run_a), read(run_b), "heatmap", 8))
    stats = tiny_client.get("/api/experiments/look/diff-stats", params=params).json()
    expected = diff_stats(read(run_a), read(run_b), 8)
    assert stats["changed_fraction"] == pytest.approx(expected.changed_fraction)
    assert stats["max_abs_diff"] == expected.max_abs_diff > 0
    assert (stats["width"], stats["height"]) == (64, 64)


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"a": "r_a", "b": "r_b", "mode": "sparkle"}, 400, "diff mode 'sparkle' is not valid"),
        ({"a": "r_a", "b": "r_b", "threshold": 256}, 400, "threshold"),
        ({"a": "r_a", "b": "r_b", "threshold": "x"}, 400, "threshold"),
        ({"a": "r_a", "b": "r_b", "gain": 0}, 400, "gain must be > 0"),
        ({"a": "r_a", "b": "r_b", "gain": "inf"}, 400, "gain must be > 0"),
        ({"a": "r_a"}, 400, "query.b: Field required"),
        ({"a": "r_a", "b": "r_big"}, 400, "images differ in size (8x6 vs 10x10)"),
        ({"a": "r_a", "b": "r_fail"}, 404, "has no image (status failed)"),
        ({"a": "r_a", "b": "nope"}, 404, "no run 'nope'"),
    ],
)
def test_bad_diff_requests_say_why(pix_client: TestClient, params: dict[str, Any], status: int, needle: str) -> None:
    response = pix_client.get("/api/experiments/pix/diff", params=params)
    assert response.status_code == status
    assert needle in response.json()["detail"]


# ---- path rules ------------------------------------------------------------------------------------------------------


@pytest.fixture
def hostile_root(pix: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> Path:
    """The pix root plus files that must never be served: links out of the root and to the database, a dot
    directory, a non-image, a directory named like an image."""
    root = pix[0]
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(np.zeros((2, 2, 3), np.uint8)))
    (root / "pix" / "link_out.png").symlink_to(outside)
    (root / "pix" / "link_db.png").symlink_to(root / DB_NAME)
    (root / "pix" / "link_dir").symlink_to(tmp_path)  # a directory link: link_dir/secret.png is outside
    (root / "pix" / ".hidden").mkdir()
    (root / "pix" / ".hidden" / "x.png").write_bytes(png(np.zeros((2, 2, 3), np.uint8)))
    (root / "pix" / "link_hidden.png").symlink_to(root / "pix" / ".hidden" / "x.png")
    (root / "pix" / "notes.txt").write_text("not an image")
    (root / "pix" / "folder.png").mkdir()
    (root / "pix" / "UPPER.PNG").write_bytes(png(np.zeros((2, 2, 3), np.uint8)))
    (root / "pix" / "link_ok.png").symlink_to(root / "pix" / "r_a.png")  # inside the root: allowed
    return root


BLOCKED = [
    ("/files/results.db", 404),
    (f"/files/{DB_NAME}-wal", 404),
    ("/files/pix/.lock", 404),
    ("/files/pix/results.csv", 404),
    ("/files/pix/notes.txt", 404),
    ("/files/pix/folder.png", 404),
    ("/files/pix/missing.png", 404),
    ("/files/pix/.hidden/x.png", 404),
    ("/files/pix/link_out.png", 404),
    ("/files/pix/link_db.png", 404),
    ("/files/pix/link_dir/secret.png", 404),
    ("/files/pix/link_hidden.png", 404),
    ("/files/%2e%2e/secret.png", 400),
    ("/files/pix/%2e%2e/%2e%2e/secret.png", 400),
    ("/files/pix/..%2f..%2fsecret.png", 400),
    ("/files/pix%2f..%2f..%2fsecret.png", 400),
    ("/files/%2Fetc%2Fpasswd", 400),
    ("/files//etc/passwd", 400),
    ("/files/pix/r_a.png%00.png", 400),
    ("/files/pix%5c..%5c..%5csecret.png", 400),
    ("/static/..%2fserver.py", 404),
    ("/static/server.py", 404),
    ("/files/", 400),
    # Thumbnails follow the same path rules.
    ("/thumbs/results.db?size=64", 404),
    ("/thumbs/pix/link_out.png?size=64", 404),
    ("/thumbs/pix/%2e%2e/%2e%2e/secret.png?size=64", 400),
    ("/thumbs/pix/r_a.png?size=100", 400),  # not one of the sizes
]


@pytest.mark.parametrize(("url", "status"), BLOCKED)
def test_files_outside_the_rules_are_refused(hostile_root: Path, url: str, status: int) -> None:
    client = TestClient(create_app(hostile_root), base_url=LOCAL)
    response = client.get(url)
    assert response.status_code == status, (url, response.text)
    assert response.headers["content-type"] == "application/json"  # never the file's bytes


def test_images_inside_the_root_are_served(hostile_root: Path) -> None:
    client = TestClient(create_app(hostile_root), base_url=LOCAL)
    a = (hostile_root / "pix" / "r_a.png").read_bytes()
    assert client.get("/files/pix/r_a.png").content == a
    assert client.get("/files/pix/link_ok.png").content == a  # a link that stays inside the root
    assert client.get("/files/pix/UPPER.PNG").status_code == 200


def raw_get(app: Any, path: str) -> int:
    """Status of a GET whose path reaches the app exactly as given (HTTP clients remove '..' before sending)."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:7861")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7861),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return statuses[0]


def test_thumbnails_are_the_image_shrunk_to_a_fixed_size(tmp_path: Path) -> None:
    root = tmp_path / "results"
    build_pix(root)
    big = np.zeros((300, 200, 3), np.uint8)
    big[:, :100] = (250, 10, 10)  # left half red, right half black
    write_atomic(root / "pix" / "large.png", png(big))
    client = TestClient(create_app(root), base_url=LOCAL)
    response = client.get("/thumbs/pix/large.png?size=128")
    assert response.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (85, 128))  # the longer side is 128, the aspect kept
        pixels = np.asarray(thumb.convert("RGB")).astype(int)
    assert np.abs(pixels[64, 10] - (250, 10, 10)).max() < 12 and pixels[64, 75].max() < 12
    assert client.get("/thumbs/pix/large.png?size=128").content == response.content  # cached, same bytes
    # An image no larger than the size is sent as it is (no re-encoding).
    assert client.get("/thumbs/pix/r_a.png?size=64").content == (root / "pix" / "r_a.png").read_bytes()
    # A regenerated image gets a new thumbnail (the cache is keyed by mtime and size). Its mtime is set a second
    # on explicitly: a rewrite within the file system's timestamp granularity, at the same size, would not show.
    before = (root / "pix" / "large.png").stat().st_mtime_ns
    write_atomic(root / "pix" / "large.png", png(np.full((300, 200, 3), 200, np.uint8)))
    os.utime(root / "pix" / "large.png", ns=(before + 10**9, before + 10**9))
    with Image.open(io.BytesIO(client.get("/thumbs/pix/large.png?size=128").content)) as thumb:
        assert np.abs(np.asarray(thumb.convert("RGB")).astype(int) - 200).max() < 12


@pytest.mark.parametrize(
    "path",
    ["/files/../results.db", "/files/pix/../../secret.png", "/files/pix/../results.db", "/files/../pix/r_a.png",
     "/files/pix/./r_a.png", "/files/pix//r_a.png"],
)  # fmt: skip
def test_raw_dot_dot_paths_are_400(hostile_root: Path, path: str) -> None:
    assert raw_get(create_app(hostile_root), path) == 400


def test_resolve_image_rules_directly(hostile_root: Path) -> None:
    root = hostile_root.resolve()
    assert viewer_server.resolve_image(root, "pix/r_b.png") == root / "pix" / "r_b.png"
    for relative, status in [("pix/link_out.png", 404), ("../x.png", 400), ("/etc/x.png", 400), ("pix\\a.png", 400)]:
        with pytest.raises(viewer_server.FileRefused) as info:
            viewer_server.resolve_image(root, relative)
        assert info.value.status == status


# ---- the server's guards -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/", "/static/app.js", "/api/experiments", "/api/experiments/pix", "/api/experiments/pix/runs/r_a",
            "/api/experiments/pix/diff?a=r_a&b=r_b", "/files/pix/r_a.png"]
)  # fmt: skip
def test_every_route_is_get_only(pix_client: TestClient, url: str) -> None:
    assert pix_client.get(url).status_code == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert pix_client.request(method, url).status_code == 405, (method, url)


def test_security_headers_and_no_docs_pages(pix_client: TestClient) -> None:
    for url in ("/", "/api/experiments", "/files/pix/r_a.png", "/files/results.db"):
        headers = pix_client.get(url).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in headers["content-security-policy"]
    for url in ("/docs", "/redoc", "/openapi.json"):  # Swagger pages load scripts from a CDN
        assert pix_client.get(url).status_code == 404


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:7861", 200), ("localhost:7861", 200), ("[::1]:7861", 200), ("127.0.0.2", 200),
     ("evil.example:7861", 400), ("evil.example", 400), ("192.168.1.5:7861", 400), ("", 400)],
)  # fmt: skip
def test_loopback_server_refuses_foreign_host_headers(pix: tuple[Path, Any], host: str, status: int) -> None:
    # A page on another site can point its own DNS name at 127.0.0.1 (DNS rebinding): its requests then carry
    # that name in Host, which a loopback-bound viewer refuses.
    client = TestClient(create_app(pix[0]), base_url=LOCAL)
    assert client.get("/api/experiments", headers={"host": host}).status_code == status
    exposed = TestClient(create_app(pix[0], loopback_hosts_only=False), base_url="http://evil.example")
    assert exposed.get("/api/experiments").status_code == 200


def test_loopback_and_host_header_parsing() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LocalHost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.0.1", "example.com", "10.0.0.1", ""))
    assert host_header_name("127.0.0.1:7861") == "127.0.0.1"
    assert host_header_name("[::1]:7861") == "::1"
    assert host_header_name("localhost") == "localhost"


def test_static_page_loads_nothing_from_elsewhere_and_never_parses_data_as_html() -> None:
    from importlib import resources

    static = resources.files("llm_dit.viewer") / "static"
    names = sorted(p.name for p in static.iterdir())
    assert names == sorted(viewer_server.STATIC_TYPES)
    for name in names:
        text = (static / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I) or name == "favicon.svg", name
        assert "@import" not in text and "url(http" not in text
    app_js = (static / "app.js").read_text(encoding="utf-8")
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", app_js)


def test_viewer_never_writes_into_the_results_dir(tiny_results: Path) -> None:
    before = results_snapshot(tiny_results)
    db_bytes = (tiny_results / DB_NAME).read_bytes()
    client = TestClient(create_app(tiny_results), base_url=LOCAL)
    body = client.get("/api/experiments/look").json()
    run_a, run_b = body["runs"][0]["run_id"], body["runs"][1]["run_id"]
    urls = ["/", "/static/app.js", "/api/experiments", "/api/experiments/look_custom",
            f"/api/experiments/look/runs/{run_a}", body["runs"][0]["image_url"], "/files/results.db",
            f"/api/experiments/look/diff-stats?a={run_a}&b={run_b}"]  # fmt: skip
    urls += [f"/api/experiments/look/diff?a={run_a}&b={run_b}&mode={mode}" for mode in DIFF_MODES]
    for url in urls:
        client.get(url)
    after = results_snapshot(tiny_results)
    assert after == before
    assert (tiny_results / DB_NAME).read_bytes() == db_bytes


# ---- the command -----------------------------------------------------------------------------------------------------


def test_command_defaults_are_loopback_and_7861() -> None:
    import typer.main

    from llm_dit.cli import app

    command = typer.main.get_command(app).commands["view"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in command.params}
    assert defaults["host"] == "127.0.0.1" == viewer_server.DEFAULT_HOST == cli_view.DEFAULT_HOST
    assert defaults["port"] == 7861 == viewer_server.DEFAULT_PORT == cli_view.DEFAULT_PORT
    assert str(defaults["output_dir"]) == "experiments/results"


def damage(root: Path, kind: str) -> None:
    """Spoil the results database under ``root``: random bytes, or a schema version from a newer llm-dit."""
    db = root / DB_NAME
    if kind == "garbage":
        db.write_bytes(np.random.default_rng(0).integers(0, 256, db.stat().st_size, dtype=np.uint8).tobytes())
    else:
        conn = sqlite3.connect(db, isolation_level=None)  # closing the last connection folds the WAL back in
        try:
            conn.execute("UPDATE schema_version SET version = 99")
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("missing", ["no results database in", "--output-dir"]),
        ("garbage", [DB_NAME, "is damaged (not a SQLite database)"]),
        ("future", [DB_NAME, "has schema version 99", "upgrade llm-dit"]),
    ],
)
def test_a_database_it_cannot_read_fails_before_fastapi_is_imported(
    pix: tuple[Path, Any], kind: str, needles: list[str]
) -> None:
    """No database, a damaged one or a newer one: one line at start (before the viewer is even imported), not a
    server that starts and answers every request with a 500."""
    root = pix[0] / "nowhere" if kind == "missing" else pix[0]
    if kind != "missing":
        damage(root, kind)
    before = results_snapshot(pix[0])
    code = (
        "import sys; from llm_dit.cli import main; rc = main(['view', '--output-dir', sys.argv[1], '--port', '0']); "
        "print(rc, 'fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]
    assert results_snapshot(pix[0]) == before


@pytest.mark.parametrize("kind", ["garbage", "future"])
def test_the_app_refuses_a_database_it_cannot_read_before_binding(pix: tuple[Path, Any], kind: str) -> None:
    """Through the Python API too: create_app, and running() before it takes a socket."""
    root = pix[0]
    damage(root, kind)
    with pytest.raises(LlmDitError, match=DB_NAME):
        create_app(root)
    bound: list[Any] = []
    real_bind = viewer_server.bind_socket

    def spy(host: str, port: int) -> socket.socket:
        bound.append(port)
        return real_bind(host, port)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(viewer_server, "bind_socket", spy)
        with pytest.raises(LlmDitError, match=DB_NAME), viewer_server.running(root):
            pass
    assert bound == []


def test_taken_port_and_bad_port_are_user_errors(capsys: pytest.CaptureFixture[str], pix: tuple[Path, Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = run(capsys, "view", "--output-dir", pix[0], "--port", port)
        assert_user_error(rc, out, err, f"cannot listen on 127.0.0.1:{port}", "pick another --port")
    rc, out, err = run(capsys, "view", "--output-dir", pix[0], "--port", "70000")
    assert_user_error(rc, out, err, "--port 70000 is not a TCP port")


def test_public_host_gets_a_warning(capsys: pytest.CaptureFixture[str], pix: tuple[Path, Any]) -> None:
    # The bad port stops it before anything listens; the warning comes first.
    rc, _, err = run(capsys, "view", "--output-dir", pix[0], "--host", "0.0.0.0", "--port", "70000")
    lines = err.strip().splitlines()
    assert rc == 2
    assert lines[0].startswith("warning: --host 0.0.0.0 makes the viewer reachable from other machines")
    assert lines[-1].startswith("error: --port 70000")
    rc, _, err = run(capsys, "view", "--output-dir", pix[0], "--host", "127.0.0.1", "--port", "70000")
    assert rc == 2
    assert "warning" not in err


def test_view_command_serves_until_interrupted(tiny_results: Path) -> None:
    """The real command in a child process: prints a loopback URL that answers, refuses foreign Host headers,
    and stops cleanly on Ctrl-C (SIGINT)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "llm_dit.cli", "view", "--output-dir", str(tiny_results), "--port", "0"],
        env=subprocess_env(PYTHONPATH=str(SRC)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/) ", line)
        assert match, line
        url = match.group(1)
        with urllib.request.urlopen(url + "api/experiments", timeout=30) as response:
            names = [row["name"] for row in json.load(response)["experiments"]]
        assert names == ["look", "look_custom"]
        request = urllib.request.Request(url + "api/experiments", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 400
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stderr = child.stderr.read() if child.stderr else ""
    assert "Traceback" not in stderr
