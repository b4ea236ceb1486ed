"""Crash-safe file writes shared by every layer that writes results (images, exports, JSON reports), and the check
that a user's output path can be written (a real probe), made before any compute (no heavy import)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm_dit.errors import LlmDitError


def _umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any threads of ours exist
    # (the runner writes images on a writer thread, where touching the process-wide umask would race).
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    A temp file ``.<name>.<random>.tmp`` in the same directory (same filesystem, so the rename is atomic) is
    written, fsynced and renamed over ``path``; then the directory is fsynced so the rename itself is durable.
    On any error the temp file is removed and the old ``path`` is left as it was. Killed mid-write, only a
    temp file can be left behind (see :func:`is_temp_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Best effort: some filesystems refuse to open or fsync a directory; the data itself is already synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a leftover of an interrupted :func:`write_atomic` (``.<name>.<random>.tmp``).

    ``*.png.tmp`` is also matched: earlier versions wrote images as ``.<stem>.<random>.png.tmp``.
    """
    return (name.startswith(".") and name.endswith(".tmp") and len(name) > len(".tmp") + 1) or name.endswith(".png.tmp")


def csv_cell(value: Any) -> Any:
    """A CSV cell: None is empty; floats keep full precision (repr round-trips, inf/nan included)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file (header + rows, cells by :func:`csv_cell`), written atomically. The csv module quotes commas,
    quotes and newlines inside fields (prompts have them)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[csv_cell(value) for value in row] for row in rows])
    write_atomic(path, buffer.getvalue().encode())


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (e.g. an overflowed bf16 statistic) as None, keys as strings: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Indented UTF-8 JSON (non-ASCII kept as is) with a final newline, written atomically."""
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False, default=default) + "\n").encode())


def ensure_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Check, before any compute, that an output file can be written; never clobber silently.

    The directory is probed by really creating (and removing) a file in it, see :func:`probe_directory`.
    """
    path = Path(path)
    if path.is_dir():  # first: --overwrite cannot help here, so the message must not suggest it
        raise LlmDitError(f"output {path} is a directory; give a file path such as {path / 'image.png'}")
    if path.exists() and not overwrite:
        raise LlmDitError(f"output {path} already exists; choose another path or pass --overwrite")
    probe_directory(path.parent, f"cannot write {path}")
    return path


def probe_directory(directory: str | Path, what: str) -> None:
    """Raise LlmDitError (``what``: the start of its one line) unless files can be created in ``directory``.

    Asking the OS (``os.access``) is not enough: root is told yes for read-only mounts and for /proc. So a
    temp file is created and removed in the directory, or, when the directory does not exist yet, a temp
    directory in its nearest existing ancestor (where the missing folders would be made). Nothing is left.
    """
    target = Path(directory)
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise LlmDitError(f"{what}: {probe} is not a writable directory")
    try:
        if probe == target:
            fd, name = tempfile.mkstemp(prefix=".llm-dit-probe.", dir=probe)
            os.close(fd)
            os.unlink(name)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".llm-dit-probe.", dir=probe))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LlmDitError(f"{what}: {probe} is not a writable directory ({reason})") from None


def input_image(path: str | Path, setting: str) -> tuple[Path, str]:
    """A conditioning image a run reads: (absolute path, sha256 of its bytes), or one line naming the setting.

    The file must exist and PIL must decode it whole (a truncated file fails here, in one line, not in the middle of
    a run once the models have loaded; no model library is needed). Run ids hash the bytes, not the path: a moved
    file keeps its runs, an edited one does not.
    """
    full = Path(path).expanduser().absolute()
    if not full.is_file():
        what = "a directory" if full.is_dir() else "no such file"
        # The example names the setting only where it is one (caption's IMAGE is an argument, not a NAME=VALUE).
        example = f", e.g. {setting}=ref.png" if setting in IMAGE_SETTINGS else ""
        raise LlmDitError(f"{setting} {str(path)!r}: {what}; give an image file (PNG, JPEG, WebP){example}")
    stat = full.stat()
    return full, _checked_image_sha256(str(full), stat.st_size, stat.st_mtime_ns, setting, str(path))


@lru_cache(maxsize=256)
def _checked_image_sha256(full: str, size: int, mtime_ns: int, setting: str, shown: str) -> str:
    """sha256 of an image file that PIL decodes whole; memoised on (path, size, mtime): a sweep checks every run's
    inputs, and one reference image must not be read and decoded once per run. ``size``/``mtime_ns`` key the cache
    only (an edited file is read again)."""
    import hashlib

    from PIL import Image, UnidentifiedImageError

    data = Path(full).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the pixels too: a file cut short passes the header parse
    except UnidentifiedImageError:
        # PIL's message names the in-memory buffer (``<_io.BytesIO object at 0x...>``), not the file: not shown.
        raise LlmDitError(
            f"{setting} {shown!r} is not an image PIL can read (unknown format); give a PNG, JPEG or WebP"
        ) from None
    except OSError as exc:
        raise LlmDitError(
            f"{setting} {shown!r} is not an image PIL can read ({exc}); give a PNG, JPEG or WebP"
        ) from None
    return hashlib.sha256(data).hexdigest()


# The settings that name input images (init_image is a generation setting, the others conditioning ones).
IMAGE_SETTINGS: tuple[str, ...] = ("vl_image", "style_image", "neutral_image", "init_image")


def check_input_images(values: Any) -> None:
    """Every input image a set of values names (a mapping, ConditioningSettings or GenerationSettings) exists and is
    an image (:func:`input_image`)."""
    for name in IMAGE_SETTINGS:
        value = values.get(name) if isinstance(values, dict) else getattr(values, name, None)
        for path in value if isinstance(value, list) else [value] if value else []:
            input_image(path, name)
