"""The input images of runs: what a run was conditioned on (``vl_image``, ``style_image``, ``neutral_image``) or
started from (``init_image``), as the planner recorded it, and whether the file at the recorded path still holds
exactly those bytes.

The planner stores each input's absolute path in the run's params and the sha256 of its bytes in
``params["input_sha256"]`` (setting -> sha256, or a list of them for a list setting such as ``vl_image``). A file
edited, replaced or deleted since then would show other pixels than the run saw, so nothing here hands out an image
without checking: :func:`read_input` reads the file once, hashes those very bytes and returns them only when they
match the record (no window between checking one read and showing another). Comparison pages
(:mod:`llm_dit.analysis.compare`) and the viewer both go through it.

Standard library only at import; PIL is imported by :func:`decode_input`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.files import IMAGE_SETTINGS

if TYPE_CHECKING:
    from PIL import Image

# The params that name input images, in the order pages show them.
INPUT_SETTINGS: tuple[str, ...] = IMAGE_SETTINGS
SHA256_KEY = "input_sha256"
OK, CHANGED, MISSING, UNREADABLE, UNRECORDED = "ok", "changed", "missing", "unreadable", "unrecorded"
STATUSES: tuple[str, ...] = (OK, CHANGED, MISSING, UNREADABLE, UNRECORDED)
# A reference image is a few MB; anything far larger at a recorded path is not the image a run read (and would be
# read into memory whole), so it is refused instead.
MAX_INPUT_BYTES = 256 * 2**20
SHORT_SHA = 8  # hex digits shown for a sha256, as a label (the full one is in the record)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class InputImage:
    """One input image of a run as recorded: the setting, its place in the setting's list, the path, the sha256."""

    setting: str  # vl_image, style_image, neutral_image or init_image
    index: int  # position in the setting's list (0 for a one-path setting)
    count: int  # how many images the setting names in this run
    path: str  # as recorded: absolute, as planned
    sha256: str | None  # as hashed when planned; None where the record has none (then it cannot be checked)

    @property
    def label(self) -> str:
        """'vl_image', or 'vl_image 2/3' for the second of three."""
        return self.setting if self.count == 1 else f"{self.setting} {self.index + 1}/{self.count}"

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    @property
    def short_sha(self) -> str:
        return self.sha256[:SHORT_SHA] if self.sha256 else ""


@dataclass(frozen=True)
class CheckedInput:
    """An input image checked against its record. ``data`` (the file's bytes) only when ``status`` is OK."""

    image: InputImage
    status: str  # one of STATUSES
    detail: str = ""  # why not OK, one line (file names only, never the directory)
    actual_sha256: str | None = None  # sha256 of what the path holds now (OK or CHANGED)
    data: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def reason(self) -> str:
        """The short text a placeholder shows instead of the image."""
        return {
            OK: "",
            CHANGED: "changed since the run",
            MISSING: "missing",
            UNREADABLE: "cannot be read",
            UNRECORDED: "no sha256 recorded: not checked",
        }[self.status]


def run_inputs(params: Mapping[str, Any] | None) -> tuple[InputImage, ...]:
    """The input images a run's params record, in :data:`INPUT_SETTINGS` order (none for a text run).

    A hash that does not line up with its setting's paths (another count, not a sha256) counts as not recorded:
    such an image is reported as unchecked, never shown as if it were verified.
    """
    params = params or {}
    hashes = params.get(SHA256_KEY)
    hashes = hashes if isinstance(hashes, Mapping) else {}
    out: list[InputImage] = []
    for setting in INPUT_SETTINGS:
        value = params.get(setting)
        paths = [p for p in (value if isinstance(value, list | tuple) else [value]) if isinstance(p, str) and p]
        if not paths:
            continue
        digests = hashes.get(setting)
        digests = list(digests) if isinstance(digests, list | tuple) else [digests]
        if len(digests) != len(paths):
            digests = [None] * len(paths)
        for index, (path, digest) in enumerate(zip(paths, digests, strict=True)):
            sha = digest if isinstance(digest, str) and _SHA256.fullmatch(digest) else None
            out.append(InputImage(setting, index, len(paths), path, sha))
    return tuple(out)


def inputs_of_runs(runs: Iterable[Mapping[str, Any]]) -> dict[InputImage, list[int]]:
    """Each distinct input image of ``runs`` -> the positions (in ``runs``) of the runs that use it; ordered by
    setting, then place in the setting's list, then first use."""
    uses: dict[InputImage, list[int]] = {}
    for position, run in enumerate(runs):
        for image in run_inputs(run.get("params")):
            uses.setdefault(image, []).append(position)
    order = {image: i for i, image in enumerate(uses)}
    ranked = sorted(uses, key=lambda image: (INPUT_SETTINGS.index(image.setting), image.index, order[image]))
    return {image: uses[image] for image in ranked}


def read_input(image: InputImage, max_bytes: int = MAX_INPUT_BYTES) -> CheckedInput:
    """Read the file at the recorded path once and check its sha256 against the record.

    Only a regular file is read (opened non-blocking and checked on the open descriptor, so a FIFO or device swapped
    in cannot hang the reader); its bytes come back only when their sha256 is the recorded one.
    """
    if image.sha256 is None:
        return CheckedInput(image, UNRECORDED, f"{image.label} {image.file_name!r}: the run recorded no sha256")
    try:
        data = _read_regular(Path(image.path), max_bytes)
    except FileNotFoundError:
        return CheckedInput(image, MISSING, f"{image.label} {image.file_name!r} is missing since the run")
    except _NotAFile:
        return CheckedInput(image, MISSING, f"{image.label} {image.file_name!r}: no file at the recorded path")
    except _TooLarge:
        return CheckedInput(image, UNREADABLE, f"{image.label} {image.file_name!r} is larger than {max_bytes} bytes")
    except OSError as exc:
        return CheckedInput(image, UNREADABLE, f"{image.label} {image.file_name!r} cannot be read: {exc.strerror}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != image.sha256:
        return CheckedInput(image, CHANGED, _changed(image, digest), digest)
    return CheckedInput(image, OK, "", digest, data)


def input_status(image: InputImage) -> CheckedInput:
    """:func:`read_input` without the bytes, with the hash memoised on the file's identity and stat (device, inode,
    size, mtime, ctime): cheap enough to report every input of an experiment on each request. What is *served*
    always comes from :func:`read_input`, which hashes the bytes it hands out."""
    try:
        st = os.stat(image.path)
    except OSError:
        st = None
    if image.sha256 is None or st is None or not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INPUT_BYTES:
        return read_input(image)  # unrecorded, missing, not a file, too large: read_input says which, cheaply
    digest = _file_sha256(image.path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if digest is None:  # unreadable
        return read_input(image)
    if digest != image.sha256:
        return CheckedInput(image, CHANGED, _changed(image, digest), digest)
    return CheckedInput(image, OK, "", digest)


def decode_input(checked: CheckedInput, max_side: int | None = None) -> Image.Image:
    """A checked input's pixels as RGB, decoded from the very bytes that were hashed; shrunk (aspect kept) to at most
    ``max_side`` px when given. Raises OSError when PIL cannot decode them; ValueError if not checked OK."""
    from PIL import Image

    if not checked.ok or checked.data is None:
        raise ValueError(f"{checked.image.label}: not checked OK ({checked.status}); its pixels are not shown")
    with Image.open(io.BytesIO(checked.data)) as img:
        if max_side is not None:
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale directly
        picture = img.convert("RGB")
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return picture


class _NotAFile(OSError):
    pass


class _TooLarge(OSError):
    pass


def _read_regular(path: Path, max_bytes: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # before wrapping: Python refuses to wrap a directory's descriptor
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        raise _NotAFile(path) if not stat.S_ISREG(st.st_mode) else _TooLarge(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since the fstat
        raise _TooLarge(path)
    return data


@lru_cache(maxsize=512)
def _file_sha256(path: str, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> str | None:
    """sha256 of a file's bytes; the stat fields only key the cache (an edited file is hashed again)."""
    try:
        data = _read_regular(Path(path), MAX_INPUT_BYTES)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()


def _changed(image: InputImage, digest: str) -> str:
    return (
        f"{image.label} {image.file_name!r} has changed since the run: its sha256 is now {digest[:SHORT_SHA]}, "
        f"the run used {image.short_sha}"
    )
