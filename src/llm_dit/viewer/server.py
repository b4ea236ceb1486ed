"""The viewer's web server: a read-only JSON API over the results store, the run images, server-side diffs and the
static page (``static/``), as one FastAPI app.

Security model (the server has no authentication, so it relies on where it listens and what it will serve):

- It binds to 127.0.0.1 unless told otherwise; on a loopback bind it also refuses requests whose ``Host`` header is
  not a loopback name, so a web page on another origin cannot reach it through DNS rebinding.
- Every route is GET and nothing writes: the store is opened read-only (SQLite ``mode=ro``), diffs are encoded in
  memory, and no file is created in the results directory (SQLite itself may create its ``-wal``/``-shm``
  sidecars to read a WAL database; the database file is never changed).
- ``/files/<path>`` serves only image files (png, jpg, jpeg, webp) whose resolved path (symlinks followed) lies
  inside the resolved results root, is a regular file and has no dot-named component: ``results.db``, ``.lock``,
  exports, temp files and anything outside the root are 404; malformed paths (``..``, absolute, NUL,
  backslashes) are 400. ``/thumbs/<path>?size=N`` (grid thumbnails, WebP made in memory) follows the same rules.
- ``/api/experiments/<name>/inputs/<sha256>`` serves a run's input image (``vl_image``, ``init_image``, ...), which
  usually lies outside the results root. It takes no path at all: only a sha256 that the store records as an input
  of a run of that experiment (anything else is 404), read from a path recorded with it, and the bytes are sent
  only if their sha256 is that one (a file changed since planning is 409, a missing one 410). So it can only ever
  send bytes whose hash the experiment recorded, whatever lies at those paths now.
- Responses carry ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that allows this origin only,
  so the page can load nothing from elsewhere.
- Rating mode (``rate=True``, ``llm-dit view --rate``) adds the only route that writes: POST
  ``/api/rate/<name>/judgements`` appends one judgement to ``<results>/<name>/preferences.jsonl`` (never the store,
  an image or an export). It needs the per-session token (random, made when the app is created, embedded in the
  rating page, sent in the ``X-Rate-Token`` header: anything else is 403) and a same-origin request (an ``Origin``
  or ``Sec-Fetch-Site`` header naming another site is 403). Without ``rate`` these routes do not exist (404).
"""

from __future__ import annotations

import html
import io
import ipaddress
import json
import math
import random
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from llm_dit.analysis.diff import DEFAULT_THRESHOLD, DIFF_MODES, DiffStats, check_diff_params, diff_with_stats
from llm_dit.analysis.inputs import (
    MISSING,
    CheckedInput,
    InputImage,
    decode_input,
    input_status,
    inputs_of_runs,
    read_input,
    run_inputs,
)
from llm_dit.analysis.results import (
    ExperimentResults,
    ExperimentSummary,
    dimension_value,
    list_experiments,
    load_experiment,
)
from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import DB_NAME, ResultsStore
from llm_dit.metrics.pixel import load_rgb
from llm_dit.metrics.registry import METRICS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7861
IMAGE_TYPES: dict[str, str] = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Every file of static/ with its type: the viewer's page (a fixed list, so /static/<name> can never name anything
# else in the package) and the rating page's (served only in rating mode, under /rate: RATE_FILES).
STATIC_TYPES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "rate.html": "text/html; charset=utf-8",
    "rate.js": "text/javascript; charset=utf-8",
    "rate.css": "text/css; charset=utf-8",
}
VIEWER_FILES: tuple[str, ...] = ("index.html", "app.js", "style.css", "favicon.svg")  # what /static/<name> serves
MAX_GAIN = 1000.0  # beyond this every non-zero difference is already white
# Grid thumbnails: a few fixed sizes (the page picks the next one up from what it displays), so the cache is shared
# across zoom levels; a full-size 1024x1024 PNG is ~1.5 MB, a 256-px WebP ~20 KB.
THUMB_SIZES: tuple[int, ...] = (64, 128, 256, 512, 1024)
THUMB_QUALITY = 90
CACHED_THUMBS = 1024
CACHED_DECODED = 8  # full-size images as arrays: a 1024x1024 one is 3 MiB
CACHED_EXPERIMENTS = 16
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class FileRefused(Exception):
    """A ``/files`` path the server will not serve: ``status`` is 400 (malformed) or 404 (not servable)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def resolve_image(root: Path, relative: str) -> Path:
    """The image file ``relative`` (a '/'-separated path under the results root), checked against the path rules.

    ``root`` must already be resolved. Raises :class:`FileRefused` (400 for malformed paths, 404 for anything
    that is not a servable image inside the root). The checks run on the request path and again on the resolved
    path, so a symlink cannot lead outside the root, to a dotfile or to a non-image.
    """
    if not relative or "\0" in relative or "\\" in relative or any(ord(ch) < 32 for ch in relative):
        raise FileRefused(400, "malformed path")
    if relative.startswith("/"):
        raise FileRefused(400, "absolute paths are not served")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise FileRefused(400, "path segments '', '.' and '..' are not allowed")
    if any(part.startswith(".") for part in parts):
        raise FileRefused(404, "not found")
    if Path(parts[-1]).suffix.lower() not in IMAGE_TYPES:
        raise FileRefused(404, "not found")
    try:
        resolved = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        raise FileRefused(404, "not found") from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise FileRefused(404, "not found")
    inside = resolved.relative_to(root).parts
    if any(part.startswith(".") for part in inside) or resolved.suffix.lower() not in IMAGE_TYPES:
        raise FileRefused(404, "not found")
    return resolved


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP, IPv6 possibly in brackets) is only reachable from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_header_name(header: str) -> str:
    """The host part of an HTTP ``Host`` header: ``127.0.0.1:7861`` -> 127.0.0.1, ``[::1]:7861`` -> ::1."""
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as the strings 'inf', '-inf', 'nan' (JSON has no such numbers; PSNR of
    identical images is inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def _db_stamp(root: Path) -> tuple[tuple[int, int] | None, ...]:
    """What changes whenever the store changes: size and mtime of the database and its WAL (WAL-mode commits go
    to the WAL first; the database file only changes at checkpoints)."""
    out = []
    for name in (DB_NAME, f"{DB_NAME}-wal"):
        try:
            stat = (root / name).stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class ResultsCache:
    """Experiments read through the read-only store, cached until the database changes (new runs show on reload).

    One lock serializes loading: a local viewer has one user, and loading twice in parallel would only waste time.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int] | None, ...] | None = None
        self._summaries: list[ExperimentSummary] | None = None
        self._experiments: OrderedDict[str, tuple[ExperimentResults, dict[str, dict[str, Any]]]] = OrderedDict()

    def _check_fresh(self) -> None:
        # The stamp is taken before reading: a commit during the read changes it, so the next request reloads.
        stamp = _db_stamp(self.root)
        if stamp != self._stamp:
            self._stamp, self._summaries = stamp, None
            self._experiments.clear()

    def summaries(self) -> list[ExperimentSummary]:
        with self._lock:
            self._check_fresh()
            if self._summaries is None:
                self._summaries = list_experiments(self.root)
            return self._summaries

    def experiment(self, name: str) -> tuple[ExperimentResults, dict[str, dict[str, Any]]]:
        """(the experiment, its runs by id); LlmDitError if there is no such experiment."""
        with self._lock:
            self._check_fresh()
            if name not in self._experiments:
                results = load_experiment(self.root, name)
                self._experiments[name] = (results, {run["run_id"]: run for run in results.runs})
                while len(self._experiments) > CACHED_EXPERIMENTS:
                    self._experiments.popitem(last=False)
            self._experiments.move_to_end(name)
            return self._experiments[name]


class NotFound(Exception):
    """An experiment or run that does not exist (404)."""


class InputRefused(Exception):
    """A recorded input image that cannot be served as recorded: 409 (changed since the run, or unreadable) or 410
    (missing)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# What the browser may be sent as is; another format PIL reads (BMP, TIFF, ...) is re-encoded as PNG in memory.
WEB_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class BadRequest(Exception):
    """A request the server understands but refuses (400), e.g. images of two sizes to diff."""


def create_app(
    root: str | Path, *, loopback_hosts_only: bool = True, rate: bool = False, rater: str | None = None
) -> FastAPI:
    """The viewer app over the results directory ``root`` (which must hold a results database).

    ``loopback_hosts_only``: refuse requests whose Host header is not a loopback name (right for a server bound
    to a loopback address; pass False when it listens on a public interface on purpose). ``rate``: add the blind
    A/B rating page (``/rate``) and its write route; ``rater``: the name the page starts with.
    """
    if rater is not None and not rate:
        raise LlmDitError("a rater name only applies to rating mode; pass rate=True (--rate) too")
    if rate and not loopback_hosts_only:
        raise LlmDitError("rating mode writes judgements and binds to loopback only; drop --host (or use 127.0.0.1)")
    root = Path(root)
    # None there (require_database), damaged or too new: refused here, before anything listens.
    ResultsStore(root, read_only=True).close()
    resolved_root = root.resolve()
    # Where the results lie on this machine is not the page's business (a --host viewer shows it to the network):
    # the API names the directory by its name and files relative to it, in errors and records too.
    spellings = sorted({str(resolved_root), str(root.absolute())}, key=len, reverse=True)
    if resolved_root == resolved_root.parent:  # the filesystem root: every '/' would go
        spellings = []

    def relative(value: Any) -> Any:
        """``value`` with every absolute spelling of the results root cut out of its strings."""
        if isinstance(value, str):
            for spelling in spellings:
                value = value.replace(spelling + "/", "").replace(spelling, resolved_root.name)
            return value
        if isinstance(value, dict):
            return {key: relative(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [relative(item) for item in value]
        return value

    cache = ResultsCache(root)
    # No OpenAPI/docs pages: they load scripts from a CDN, and the viewer promises to work offline.
    app = FastAPI(title="llm-dit viewer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if loopback_hosts_only and not is_loopback(host_header_name(request.headers.get("host", ""))):
            response: Response = JSONResponse({"detail": "Host header is not a loopback name"}, status_code=400)
        else:
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400 rather than FastAPI's 422: a bad query parameter is simply a bad request here.
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        return JSONResponse({"detail": problems}, status_code=400)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": relative(str(exc))}, status_code=404)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": relative(str(exc))}, status_code=400)

    @app.exception_handler(FileRefused)
    async def refused(request: Request, exc: FileRefused) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.exception_handler(InputRefused)
    async def input_refused(request: Request, exc: InputRefused) -> JSONResponse:
        return JSONResponse({"detail": relative(exc.reason)}, status_code=exc.status)

    def experiment_or_404(name: str) -> tuple[ExperimentResults, dict[str, dict[str, Any]]]:
        try:
            return cache.experiment(name)
        except LlmDitError as exc:
            raise NotFound(str(exc)) from None

    def run_or_404(name: str, run_id: str) -> tuple[ExperimentResults, dict[str, Any]]:
        results, by_id = experiment_or_404(name)
        if run_id not in by_id:
            raise NotFound(f"experiment {name!r} has no run {run_id!r}")
        return results, by_id[run_id]

    def image_url(results: ExperimentResults, run: dict[str, Any]) -> str | None:
        """The /files URL of a done run's image, or None when it has none that the path rules allow."""
        if run["status"] != "done" or not run.get("image_path"):
            return None
        relative = f"{results.name}/{run['image_path']}"
        try:
            resolve_image(resolved_root, relative)
        except FileRefused:
            return None
        return "/files/" + quote(relative, safe="/")

    def input_entry(name: str, image: InputImage) -> dict[str, Any]:
        """One input image as the page sees it: setting, label, file name (never its directory), recorded sha256,
        whether the file still holds those bytes (memoised on its stat; the image route itself always re-hashes),
        and the URL that serves it (None without a recorded sha256)."""
        checked = input_status(image)
        url = f"/api/experiments/{quote(name, safe='')}/inputs/{image.sha256}" if image.sha256 else None
        return {
            "setting": image.setting,
            "index": image.index,
            "count": image.count,
            "label": image.label,
            "file": image.file_name,
            "sha256": image.sha256,
            "status": checked.status,
            "reason": checked.reason,
            "detail": checked.detail,
            "url": url,
        }

    decoded: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()  # the page asks for a diff and its stats
    decoded_lock = threading.Lock()

    def image_array(results: ExperimentResults, run: dict[str, Any], which: str) -> np.ndarray:
        """The run's image as RGB, decoded once for consecutive requests (a diff and its stats) of the same file."""
        if image_url(results, run) is None:
            raise NotFound(f"run {run['run_id']!r} ({which}) has no image (status {run['status']})")
        path = resolve_image(resolved_root, f"{results.name}/{run['image_path']}")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with decoded_lock:
            if key in decoded:
                decoded.move_to_end(key)
                return decoded[key]
        try:
            array = load_rgb(path)
        except LlmDitError as exc:
            raise BadRequest(f"image of run {run['run_id']!r} ({which}): {exc}") from None
        with decoded_lock:
            decoded[key] = array
            while len(decoded) > CACHED_DECODED:
                decoded.popitem(last=False)
        return array

    def diff_of(name: str, a: str, b: str, mode: str, threshold: int, gain: float) -> tuple[np.ndarray, DiffStats]:
        """The diff picture and its numbers, or 400/404 naming what is wrong with the request."""
        if not math.isfinite(gain) or not 0 < gain <= MAX_GAIN:
            raise BadRequest(f"gain must be > 0 and <= {MAX_GAIN:g}, got {gain}")
        try:
            check_diff_params(mode, threshold, gain)
            results, run_a = run_or_404(name, a)
            _, run_b = run_or_404(name, b)
            image_a, image_b = image_array(results, run_a, "A"), image_array(results, run_b, "B")
            return diff_with_stats(image_a, image_b, mode, threshold, gain)
        except LlmDitError as exc:  # a bad mode, or images of two sizes
            raise BadRequest(str(exc)) from None

    @app.get("/")
    def index() -> Response:
        return static_file("index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        # Browsers ask for it on any page of this origin (error pages and raw images too).
        return static_file("favicon.svg")

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in VIEWER_FILES:
            raise FileRefused(404, "not found")
        data = (resources.files("llm_dit.viewer") / "static" / name).read_bytes()
        return Response(data, media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/experiments")
    def experiments() -> JSONResponse:
        rows = [
            {
                "name": s.name,
                "description": s.description,
                "counts": s.counts,
                "status": s.status,
                "started_at": s.started_at,
                "finished_at": s.finished_at,
            }
            for s in cache.summaries()
        ]
        return JSONResponse(relative({"root": resolved_root.name, "experiments": rows}))

    @app.get("/api/experiments/{name}")
    def experiment(name: str) -> JSONResponse:
        results, _ = experiment_or_404(name)
        # The experiment's distinct input images once; each run lists the ids of those it used.
        uses = inputs_of_runs(results.runs)
        inputs = [{"id": i, **input_entry(results.name, image)} for i, image in enumerate(uses)]
        ids_of_run: dict[int, list[int]] = {}
        for i, positions in enumerate(uses.values()):
            for position in positions:
                ids_of_run.setdefault(position, []).append(i)
        runs = [
            {
                "run_id": run["run_id"],
                "prompt_id": run["prompt_id"],
                "seed": run["seed"],
                "variables": run["variables"],
                "dims": {dim: dimension_value(run, dim) for dim in results.dimensions},
                "status": run["status"],
                "error": run.get("error"),
                "image_url": image_url(results, run),
                "seconds_per_image_batched": run.get("seconds_per_image_batched"),
                "metrics": run["metrics"],
                "inputs": ids_of_run.get(position, []),
            }
            for position, run in enumerate(results.runs)
        ]
        metrics = [
            {
                "name": metric,
                "higher_is_better": METRICS[metric].higher_is_better if metric in METRICS else None,
                "description": METRICS[metric].description if metric in METRICS else "",
            }
            for metric in results.metrics
        ]
        body = {
            "name": results.name,
            "description": results.description,
            "axes": results.axes,
            "dimensions": results.dimensions,
            "metrics": metrics,
            "prompt_texts": results.prompt_texts,
            "categories": results.categories,
            "counts": results.counts,
            "inputs": inputs,
            "runs": runs,
        }
        return JSONResponse(jsonable(relative(body)))

    @app.get("/api/experiments/{name}/runs/{run_id}")
    def run_record(name: str, run_id: str) -> JSONResponse:
        results, run = run_or_404(name, run_id)
        keys = (
            "run_id", "prompt_id", "prompt_text", "seed", "variables", "params", "status", "error",
            "seconds_per_image_batched", "token_count", "created_at", "updated_at", "metrics", "record", "image_path",
        )  # fmt: skip
        body = {key: run.get(key) for key in keys}
        body.update(
            experiment=results.name,
            category=results.category(run["prompt_id"]),
            dims={dim: dimension_value(run, dim) for dim in results.dimensions},
            image_url=image_url(results, run),
            inputs=[input_entry(results.name, image) for image in run_inputs(run.get("params"))],
        )
        return JSONResponse(jsonable(relative(body)))

    @app.get("/api/experiments/{name}/inputs/{sha256}")
    def input_file(name: str, sha256: str, size: int | None = Query(None)) -> Response:
        """An input image recorded for runs of ``name``, by its recorded sha256; ``size``: at most that many px on
        its longer side (WebP, for strips; a smaller image is sent as it is)."""
        if size is not None and size not in THUMB_SIZES:
            raise BadRequest(f"size must be one of {', '.join(map(str, THUMB_SIZES))}, got {size}")
        results, _ = experiment_or_404(name)
        candidates = list({i.path: i for i in inputs_of_runs(results.runs) if i.sha256 == sha256}.values())
        if not candidates:  # also every malformed value: only recorded hashes name anything
            raise NotFound(f"no run of experiment {results.name!r} recorded an input image with sha256 {sha256!r}")
        checked = serve_checked(candidates)
        return input_response(checked, size)

    def serve_checked(candidates: list[InputImage]) -> CheckedInput:
        """The first recorded path whose bytes still hash to the record (the same image may be recorded at several
        paths), or InputRefused naming what each path holds now: 410 when every one is gone, else 409."""
        problems: list[CheckedInput] = []
        for image in candidates:
            checked = read_input(image)
            if checked.ok:
                return checked
            problems.append(checked)
        gone = all(problem.status == MISSING for problem in problems)
        raise InputRefused(410 if gone else 409, "; ".join(problem.detail for problem in problems))

    def input_response(checked: CheckedInput, size: int | None) -> Response:
        from PIL import Image

        assert checked.data is not None  # an OK check carries its bytes
        headers = {"Cache-Control": "no-cache"}  # revalidated on reload: a file changed later shows as changed
        try:
            with Image.open(io.BytesIO(checked.data)) as image:
                kind, width, height = image.format, image.width, image.height
            small = size is not None and max(width, height) > size
            if kind in WEB_FORMATS and not small:  # the very bytes that were hashed
                return Response(checked.data, media_type=WEB_FORMATS[kind], headers=headers)
            picture = decode_input(checked, size)
        except OSError as exc:
            what = f"{checked.image.label} {checked.image.file_name!r}"
            raise InputRefused(409, f"{what} cannot be decoded: {exc}") from None
        buffer = io.BytesIO()
        if small:
            picture.save(buffer, format="WEBP", quality=THUMB_QUALITY)
            return Response(buffer.getvalue(), media_type="image/webp", headers=headers)
        picture.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)

    @app.get("/api/experiments/{name}/diff")
    def diff_png(
        name: str,
        a: str,
        b: str,
        mode: str = Query("highlight", description=" | ".join(DIFF_MODES)),
        threshold: int = Query(DEFAULT_THRESHOLD, ge=0, le=255),
        gain: float = 1.0,
    ) -> Response:
        from PIL import Image

        picture, _ = diff_of(name, a, b, mode, threshold, gain)
        buffer = io.BytesIO()  # in memory: the viewer writes no file, anywhere
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/experiments/{name}/diff-stats")
    def diff_numbers(
        name: str,
        a: str,
        b: str,
        threshold: int = Query(DEFAULT_THRESHOLD, ge=0, le=255),
    ) -> JSONResponse:
        picture, stats = diff_of(name, a, b, "highlight", threshold, 1.0)
        return JSONResponse(
            {
                "max_abs_diff": stats.max_abs_diff,
                "mean_abs_diff": stats.mean_abs_diff,
                "max_mean_diff": stats.max_mean_diff,
                "changed_fraction": stats.changed_fraction,
                "threshold": stats.threshold,
                "width": int(picture.shape[1]),
                "height": int(picture.shape[0]),
            }
        )

    thumbs: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
    thumbs_lock = threading.Lock()

    @app.get("/thumbs/{path:path}")
    def thumb(path: str, size: int = Query(256)) -> Response:
        """The image at most ``size`` px on its longer side (WebP), for grids; a smaller image is sent as it is."""
        from fastapi.responses import FileResponse
        from PIL import Image

        if size not in THUMB_SIZES:
            raise BadRequest(f"size must be one of {', '.join(map(str, THUMB_SIZES))}, got {size}")
        resolved = resolve_image(resolved_root, path)
        stat = resolved.stat()
        key = (str(resolved), stat.st_mtime_ns, stat.st_size, size)  # a regenerated image gets a new thumbnail
        with thumbs_lock:
            data = thumbs.get(key)
            if data is not None:
                thumbs.move_to_end(key)
        if data is None:
            try:
                with Image.open(resolved) as image:
                    if max(image.size) <= size:
                        return FileResponse(resolved, media_type=IMAGE_TYPES[resolved.suffix.lower()])
                    small = image.convert("RGB")
                    small.thumbnail((size, size), Image.Resampling.LANCZOS)
            except OSError as exc:
                raise BadRequest(f"image {path} cannot be read: {exc}") from None
            buffer = io.BytesIO()
            small.save(buffer, format="WEBP", quality=THUMB_QUALITY)
            data = buffer.getvalue()
            with thumbs_lock:
                thumbs[key] = data
                while len(thumbs) > CACHED_THUMBS:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/webp")

    @app.get("/files/{path:path}")
    def files(path: str) -> Response:
        from fastapi.responses import FileResponse

        resolved = resolve_image(resolved_root, path)
        return FileResponse(resolved, media_type=IMAGE_TYPES[resolved.suffix.lower()])

    @app.get("/api/experiments/{name}/preferences")
    def preferences(name: str) -> JSONResponse:
        """Win rates and Bradley-Terry scores of the experiment's A/B judgements (read-only; empty without any)."""
        from llm_dit.analysis.preferences import experiment_preferences

        results, _ = experiment_or_404(name)
        return JSONResponse(jsonable(relative({"experiment": results.name, **experiment_preferences(results)})))

    if rate:
        add_rating_routes(app, experiment_or_404, resolved_root, rater or "")
    return app


RATE_TOKEN_HEADER = "X-Rate-Token"
MAX_JUDGEMENT_BYTES = 4096
# The rating page's own files under /rate/static/, served only in rating mode (rate.html is /rate itself).
RATE_FILES: tuple[str, ...] = ("rate.js", "rate.css")


def same_origin(request: Request) -> bool:
    """Whether a write comes from this server's own page: an ``Origin`` header, when sent (browsers always send it
    on a POST from a page), must be this very origin, and ``Sec-Fetch-Site`` must not name another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def add_rating_routes(
    app: FastAPI,
    experiment_or_404: Callable[[str], tuple[ExperimentResults, dict[str, dict[str, Any]]]],
    resolved_root: Path,
    rater: str,
) -> None:
    """The rating page, its blind pairs, their images and the one write route (see the module docstring).

    Blind: the page gets neither labels nor run ids nor file names, only opaque ids made for this server session
    (the image route takes one of those), so nothing in the DOM or the URLs tells the conditions apart."""
    from llm_dit.analysis.preferences import preferences_path, rating_pairs
    from llm_dit.metrics.preferences import CHOICES, Judgement, append_judgement, run_image_sha256, utc_now

    token = secrets.token_urlsafe(32)
    session = secrets.token_hex(8)
    shuffler = random.SystemRandom()
    opaque: dict[tuple[str, str], str] = {}  # (experiment, run id) -> opaque id
    runs_of: dict[str, tuple[str, str]] = {}  # opaque id -> (experiment, run id)
    lock = threading.Lock()

    def opaque_id(experiment: str, run_id: str) -> str:
        with lock:
            if (experiment, run_id) not in opaque:
                made = secrets.token_hex(8)
                opaque[(experiment, run_id)] = made
                runs_of[made] = (experiment, run_id)
            return opaque[(experiment, run_id)]

    def pairs_of(results: ExperimentResults, axis: str | None) -> dict[frozenset[str], tuple[str, str, str]]:
        """{the two runs: (axis, A, B)} over the servable pairs."""
        try:
            found = rating_pairs(results, None if axis is None else [axis])
        except LlmDitError as exc:
            raise BadRequest(str(exc)) from None
        return {frozenset((a, b)): (ax, a, b) for ax, a, b in found}

    def page_text(name: str) -> bytes:
        return (resources.files("llm_dit.viewer") / "static" / name).read_bytes()

    @app.get("/rate")
    def rate_page() -> Response:
        text = page_text("rate.html").decode("utf-8")
        text = text.replace("{{TOKEN}}", token).replace("{{RATER}}", html.escape(rater, quote=True))
        return Response(text, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    @app.get("/rate/static/{name}")
    def rate_static(name: str) -> Response:
        if name not in RATE_FILES:
            raise FileRefused(404, "not found")
        return Response(page_text(name), media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/rate/{name}/pairs")
    def rate_pairs(name: str, axis: str | None = None) -> JSONResponse:
        """Every pair to rate, shuffled, each with random sides: opaque ids and image URLs, nothing else."""
        results, _ = experiment_or_404(name)
        found = list(pairs_of(results, axis).values())
        shuffler.shuffle(found)
        out = []
        for _, a, b in found:
            left, right = (a, b) if shuffler.random() < 0.5 else (b, a)
            ids = opaque_id(results.name, left), opaque_id(results.name, right)
            out.append({"left": ids[0], "right": ids[1], "left_url": f"/rate/images/{ids[0]}",
                        "right_url": f"/rate/images/{ids[1]}"})  # fmt: skip
        return JSONResponse({"experiment": results.name, "axes": results.axes, "pairs": out})

    @app.get("/rate/images/{image_id}")
    def rate_image(image_id: str) -> Response:
        from fastapi.responses import FileResponse

        if image_id not in runs_of:
            raise FileRefused(404, "not found")
        experiment, run_id = runs_of[image_id]
        results, by_id = experiment_or_404(experiment)
        run = by_id.get(run_id)
        if run is None or run["status"] != "done" or not run.get("image_path"):
            raise FileRefused(404, "not found")
        resolved = resolve_image(resolved_root, f"{results.name}/{run['image_path']}")
        return FileResponse(
            resolved, media_type=IMAGE_TYPES[resolved.suffix.lower()], headers={"Cache-Control": "no-store"}
        )

    @app.post("/api/rate/{name}/judgements")
    async def rate_judgement(name: str, request: Request) -> JSONResponse:
        """Record one judgement: 403 without this session's token or from another origin, 400 for a bad body."""
        if not secrets.compare_digest(request.headers.get(RATE_TOKEN_HEADER, "").encode(), token.encode()):
            return JSONResponse({"detail": f"missing or wrong {RATE_TOKEN_HEADER}"}, status_code=403)
        if not same_origin(request):
            return JSONResponse({"detail": "cross-origin writes are refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise BadRequest("a judgement is sent as application/json")
        raw = await request.body()
        if len(raw) > MAX_JUDGEMENT_BYTES:
            raise BadRequest(f"a judgement is at most {MAX_JUDGEMENT_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("left", "right", "choice", "rater")
        ):
            raise BadRequest("a judgement is {left, right, choice, rater}, all strings")
        if body["choice"] not in ("left", "right", "tie"):
            raise BadRequest(f"choice must be left, right or tie, got {body['choice']!r}")
        results, by_id = experiment_or_404(name)
        left, right = runs_of.get(body["left"]), runs_of.get(body["right"])
        if left is None or right is None or left[0] != results.name or right[0] != results.name:
            raise BadRequest("left and right must be image ids this page was given for this experiment")
        pair = pairs_of(results, None).get(frozenset((left[1], right[1])))
        if pair is None:
            raise BadRequest("left and right are not a pair to rate")
        axis, run_a, run_b = pair
        shown_left = "a" if left[1] == run_a else "b"
        side = {"left": shown_left, "right": "b" if shown_left == "a" else "a", "tie": "tie"}[body["choice"]]
        assert side in CHOICES
        hashes = [run_image_sha256(results.directory, by_id[run_id]) for run_id in (run_a, run_b)]
        if None in hashes:
            raise BadRequest("an image of this pair is gone; reload")
        try:
            judgement = Judgement(
                experiment=results.name, axis=axis, run_a=run_a, run_b=run_b, sha256_a=str(hashes[0]),
                sha256_b=str(hashes[1]), shown_left=shown_left, choice=side, rater=body["rater"].strip(),
                time=utc_now(), session=session,
            )  # fmt: skip
        except LlmDitError as exc:
            raise BadRequest(str(exc)) from None
        append_judgement(preferences_path(results), judgement)
        return JSONResponse({"stored": True})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port), or LlmDitError naming the fix.

    The server binds before it announces its URL, so the URL printed is one that already answers.
    """
    if not 0 <= port <= 65535:
        raise LlmDitError(f"--port {port} is not a TCP port; use 1..65535 (or 0 for any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LlmDitError(f"--host {host!r} cannot be resolved ({exc.strerror}); use an IP address") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LlmDitError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT/`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    root: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    announce: Callable[[str], None] | None = None,
    rate: bool = False,
    rater: str | None = None,
) -> None:
    """Serve the viewer over ``root`` until interrupted (Ctrl-C). ``announce(url)`` is called once it listens;
    ``rate``/``rater``: rating mode (:func:`create_app`).

    Everything that can fail on bad input (no database, a taken port, an unknown host) fails before serving.
    """
    import uvicorn

    app = create_app(root, loopback_hosts_only=is_loopback(host), rate=rate, rater=rater)
    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if announce is not None:
        announce(url_of(sock))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal; stopping is what was asked for.
        pass
    finally:
        sock.close()


@contextmanager
def running(
    root: str | Path, host: str = DEFAULT_HOST, port: int = 0, *, rate: bool = False, rater: str | None = None
) -> Iterator[str]:
    """The viewer over ``root`` in a background thread (port 0: a free one); yields its base URL, stops on exit.

    For notebooks, scripts and tests: ``with running(root) as url: ...``.
    """
    import uvicorn

    app = create_app(
        root, loopback_hosts_only=is_loopback(host), rate=rate, rater=rater
    )  # before binding: a bad root leaks no socket
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise LlmDitError(f"the viewer over {root} did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
