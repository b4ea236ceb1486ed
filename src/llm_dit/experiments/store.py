"""The results store: one SQLite database per results root, plus per-experiment exports.

Layout under ``root`` (default ``experiments/results``)::

    root/results.db                 the source of truth for every experiment in this root
    root/<experiment>/.lock         held (flock) by the process running the experiment
    root/<experiment>/.metrics.lock held (flock) by the process computing its metrics
    root/<experiment>/*.png         the images (written by the runner, atomically)
    root/<experiment>/metadata.json export, regenerated from the database by ``export``
    root/<experiment>/results.csv   export, regenerated from the database by ``export``

Crash safety: every write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction in WAL mode, so a process killed
with SIGKILL at any moment leaves each row either fully written or absent. Exports and images are written to a
temp file in the same directory, fsynced, then renamed over the target (``write_atomic``), so a reader never sees
a half-written file; an interrupted write leaves only a temp file, which ``cleanup_temp_files`` removes.

``synchronous=FULL``: each commit fsyncs the WAL. A commit happens once per generated image (seconds of GPU
work), so the extra milliseconds are invisible, and in exchange a committed ``done`` survives power loss and OS
crashes too, not only process crashes (which ``NORMAL`` already covers). With the image fsynced before
``mark_done``, the database can never say ``done`` for an image that is not on disk.

Images and metric values are tied by content hash (schema 4): each done run stores the sha256 of its PNG file as
written (``image_sha256``), each metric value the hash of the image it was computed from and, in its params
(``input_sha256``), the hashes of the other runs' images it used (its reference, the other seeds of its group). A
value is *current* when all of them are the runs' hashes now; readers (``runs``, the exports, ``load_results``,
plots, the viewer) see only current values, and a metrics pass recomputes the others. Regenerating a run
(``mark_done`` with another hash) thereby retires its values and every value that used its image.

Runs done before schema 4 have no hash: a metrics pass hashes their files as it finds them (``image_hash_origin``
'found': unverified, the file may have changed since it was generated) and says so; their metric values, stored
without an image hash, count as missing. Hashing at migration would have claimed the same files verified.

A damaged database (not SQLite, truncated, a table missing) is refused in one line naming the file, before
anything is written: nothing is re-created over it.

This module deliberately imports no torch or model code: analysis tools and the CLI read results cheaply.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.constants import MAX_SEED
from llm_dit.errors import LlmDitError
from llm_dit.files import is_temp_file, write_csv, write_json

if TYPE_CHECKING:
    import pandas

# 2: metrics are keyed by version and carry params; 3: runs.in_plan; 4: image hashes (runs and metric values),
# execution facts, batch timing (generation_time_s renamed seconds_per_image_batched), timed medians, peak memory;
# 5: the captions table (caption studies).
SCHEMA_VERSION = 5
# A read-only open needs no migration for these: version 2 lacks runs.in_plan (read as "in the plan"), versions 2
# and 3 the columns of 4 (read as NULL: their metric values, tied to no image hash, are not current), versions
# before 5 the captions table (read as no captions).
READABLE_VERSIONS = (2, 3, 4, 5)
DB_NAME = "results.db"
LOCK_NAME = ".lock"
METRICS_LOCK_NAME = ".metrics.lock"
SQLITE_MAGIC = b"SQLite format 3\x00"
METADATA_NAME = "metadata.json"
RESULTS_NAME = "results.csv"
DEFAULT_ROOT = Path("experiments/results")
STATUSES = ("planned", "done", "failed")
# Long enough to ride out another process's export or a burst of commits; short enough to report a wedged db.
BUSY_TIMEOUT_S = 60.0
# Columns of results.csv before the variable columns, between them and the metric columns.
LEADING_COLUMNS = ("run_id", "prompt_id", "prompt_text")
TRAILING_COLUMNS = (
    "seed", "status", "error", "seconds_per_image_batched", "batch_seconds", "batch_size", "batch_position",
    "timed_median_s", "timed_min_s", "timed_max_s", "timed_repeats", "peak_memory_bytes", "token_count",
    "output_path", "image_sha256",
)  # fmt: skip
FIXED_COLUMNS = frozenset(LEADING_COLUMNS + TRAILING_COLUMNS)
FLOAT_COLUMNS = frozenset(
    {"seconds_per_image_batched", "batch_seconds", "timed_median_s", "timed_min_s", "timed_max_s"}
)
INT_COLUMNS = frozenset({"batch_size", "batch_position", "timed_repeats", "peak_memory_bytes", "token_count"})
# Where a metric value's params list the other runs' images it used: run id -> sha256 of that run's image.
INPUTS_KEY = "input_sha256"
HASH_WRITTEN, HASH_FOUND = "written", "found"  # runs.image_hash_origin
# Columns version 4 added to runs, with their types (the migration adds them; read-only opens of older databases
# read them as NULL).
_V4_RUN_COLUMNS = {
    "image_sha256": "TEXT",
    "image_hash_origin": "TEXT",
    "batch_seconds": "REAL",
    "batch_size": "INTEGER",
    "batch_position": "INTEGER",
    "peak_memory_bytes": "INTEGER",
    "timed_median_s": "REAL",
    "timed_min_s": "REAL",
    "timed_max_s": "REAL",
    "timed_repeats": "INTEGER",
    "execution": "TEXT",
}

# Metric values, keyed by run, name and version: a new version of a metric's code never mixes with values of an
# older one. ``params`` is what the value depends on besides the image (reference run, scorer weights, the group
# of seeds, ...): a value whose params differ from the current ones counts as missing and is recomputed.
_METRICS_TABLE = """CREATE TABLE IF NOT EXISTS metrics (
    experiment  TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    value       REAL,                         -- NULL: not a number (e.g. undefined for this image)
    params      TEXT NOT NULL DEFAULT '{}',   -- JSON: what the value depends on besides the image
    computed_at TEXT,
    image_sha256 TEXT,                        -- the run's image it was computed from (NULL: before schema 4)
    PRIMARY KEY (experiment, run_id, name, version),
    FOREIGN KEY (experiment, run_id) REFERENCES runs (experiment, run_id) ON DELETE CASCADE
)"""

# A caption study's captions, one per source run: made by Qwen3-VL or given in a file (``origin``). ``params`` is what
# the caption depends on (the VL model, instruction, seed and token budget, the source image's hash; or the file):
# a caption whose params differ from the current ones is made again.
_CAPTIONS_TABLE = """CREATE TABLE IF NOT EXISTS captions (
    experiment    TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE,
    source_run_id TEXT NOT NULL,
    caption       TEXT NOT NULL,
    origin        TEXT NOT NULL CHECK (origin IN ('generated', 'given')),
    params        TEXT NOT NULL DEFAULT '{}',  -- JSON: what the caption depends on besides the image
    token_count   INTEGER,                    -- Qwen3 tokens of the caption text alone
    created_at    TEXT NOT NULL,
    PRIMARY KEY (experiment, source_run_id)
)"""

# One statement per string: splitting a script on ';' would break on comments, and executescript() COMMITs.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS experiments (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    definition  TEXT NOT NULL DEFAULT '{}',   -- JSON: the experiment definition as given
    metadata    TEXT NOT NULL DEFAULT '{}',   -- JSON: model, devices, versions; 'starts' lists each start
    summary     TEXT,                         -- JSON: given to finish_experiment
    started_at  TEXT,                         -- first start (UTC ISO 8601)
    finished_at TEXT                          -- last finish, reset by a new start
)""",
    """CREATE TABLE IF NOT EXISTS runs (
    experiment        TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE,
    run_id            TEXT NOT NULL,
    seq               INTEGER NOT NULL,       -- position in the latest plan: the order of runs() and exports
    in_plan           INTEGER NOT NULL DEFAULT 1,  -- 1: in the latest plan; 0: kept from an earlier plan
    prompt_id         TEXT NOT NULL,
    prompt_text       TEXT NOT NULL,
    seed              INTEGER NOT NULL,
    variables         TEXT NOT NULL DEFAULT '{}',  -- JSON object: axis name -> value label, in axis order
    params            TEXT NOT NULL DEFAULT '{}',  -- JSON object: every resolved generation parameter
    image_name        TEXT NOT NULL,          -- planned file name, relative to the experiment dir
    status            TEXT NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'done', 'failed')),
    error             TEXT,
    image_path        TEXT,                   -- written file, relative to the experiment dir (done runs)
    image_sha256      TEXT,                   -- sha256 of that file as written (NULL: done before schema 4)
    image_hash_origin TEXT,                   -- 'written': of the bytes written; 'found': hashed later (unverified)
    seconds_per_image_batched REAL,           -- batch_seconds / batch_size (before schema 4: generation_time_s)
    batch_seconds     REAL,                   -- wall time of the batch the image was made in
    batch_size        INTEGER,                -- images in that batch
    batch_position    INTEGER,                -- this image's index in it (0-based)
    peak_memory_bytes INTEGER,                -- CUDA max allocated during the batch, max over its devices; NULL: CPU
    timed_median_s    REAL,                   -- --timing: median of timed_repeats batch-1 generations
    timed_min_s       REAL,                   -- their spread: the fastest and
    timed_max_s       REAL,                   -- the slowest repeat
    timed_repeats     INTEGER,
    execution         TEXT,                   -- JSON: execution facts (see runner.execution_facts)
    token_count       INTEGER,
    record            TEXT,                   -- JSON: the image's full record
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (experiment, run_id)
)""",
    "CREATE INDEX IF NOT EXISTS runs_by_seq ON runs (experiment, seq)",
    _METRICS_TABLE,
    _CAPTIONS_TABLE,
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    # Paths are common in resolved parameters (model_path); anything else unserializable is a caller bug.
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    # No sort_keys: key order carries meaning (axis order of variables).
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment as planned by the runner. ``run_id`` is deterministic (same plan, same ids)."""

    run_id: str
    prompt_id: str
    prompt_text: str
    seed: int
    variables: dict[str, str] = field(default_factory=dict)  # axis name -> value label, in axis order
    params: dict[str, Any] = field(default_factory=dict)  # every resolved parameter
    image_name: str = ""  # file name relative to the experiment dir; defaults to '<run_id>.png'


@dataclass(frozen=True)
class MetricValue:
    """One stored metric value of a run. ``value`` None = not a number for this image (stored as NULL)."""

    run_id: str
    name: str
    value: float | None
    version: int = 1
    params: dict[str, Any] = field(default_factory=dict)  # what the value depends on besides the image
    # The run's image it was computed from; None when stored: the run's image at that moment.
    image_sha256: str | None = None


@dataclass(frozen=True)
class TimedStats:
    """A ``--timing`` measurement of one run: the median of ``repeats`` synchronised batch-1 generations after a
    warm-up, and their spread as the fastest and slowest repeat (with a handful of repeats, an IQR says less)."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    @classmethod
    def from_samples(cls, seconds: Sequence[float]) -> TimedStats:
        if not seconds:
            raise LlmDitError("a timed run needs at least one repeat")
        return cls(float(statistics.median(seconds)), float(min(seconds)), float(max(seconds)), len(seconds))


@dataclass(frozen=True)
class RunTiming:
    """How long a run's image took and what it held: the batch it was made in (seconds, size, this image's
    position), the batch's peak CUDA memory (None on a CPU: no number is made up) and, for ``--timing``, the
    timed statistics."""

    batch_seconds: float
    batch_size: int
    batch_position: int | None = None
    peak_memory_bytes: int | None = None
    timed: TimedStats | None = None

    @property
    def seconds_per_image_batched(self) -> float:
        """The batch's time over its size: what one image cost *in that batch* (it moves with batching)."""
        return self.batch_seconds / self.batch_size


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes: the identity of a run's image."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Where an experiment's metadata holds the defaults its plan resolved parameters against (PlanDefaults).
PLAN_DEFAULTS_KEY = "plan_defaults"


@dataclass(frozen=True)
class PlanDefaults:
    """What an experiment's plan took as defaults, stored with it so that readers (the metrics' choice of the
    default reference run) use the plan's values, never those of the code reading the store later.

    ``params``: parameter -> default value, as the runs' params are stored (JSON types, inert values None).
    ``replaces``: parameter -> the parameters a value of it makes irrelevant (hidden_layer -> layer_weights,
    sigmas -> steps and shift, ...). ``stored`` is False for an experiment planned before plans stored their
    defaults; it then gets :data:`LEGACY_PLAN_DEFAULTS`.
    """

    params: dict[str, Any]
    replaces: dict[str, tuple[str, ...]]
    stored: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"params": dict(self.params), "replaces": {k: list(v) for k, v in self.replaces.items()}}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> PlanDefaults:
        """The defaults stored in an experiment's metadata, or :data:`LEGACY_PLAN_DEFAULTS` if it has none."""
        stored = (metadata or {}).get(PLAN_DEFAULTS_KEY)
        if not isinstance(stored, Mapping):
            return LEGACY_PLAN_DEFAULTS
        return cls(
            dict(stored.get("params") or {}),
            {str(k): tuple(v) for k, v in (stored.get("replaces") or {}).items()},
        )


# What every llm-dit before stored plan defaults (0.1.0 and earlier) planned with: the official Z-Image-Turbo
# recipe, unchanged over that history. Frozen on purpose: it describes old stores, not today's code defaults.
LEGACY_PLAN_DEFAULTS = PlanDefaults(
    params={
        "hidden_layer": -2,
        "layer_weights": None,
        "system_prompt": None,
        "think_block": "none",
        "max_text_tokens": 1504,
        "long_prompt_mode": "truncate",
        "padding": "diffusers",
        "width": 1024,
        "height": 1024,
        "steps": 8,
        "shift": 3.0,
        "sigmas": None,
        "guidance_scale": 0.0,
        "negative_prompt": None,
        "refiner": "default",
        "token_manipulation": None,
    },
    replaces={
        "hidden_layer": ("layer_weights",),
        "layer_weights": ("hidden_layer",),
        "sigmas": ("steps", "shift"),
        "steps": ("sigmas",),
        "shift": ("sigmas",),
    },
    stored=False,
)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring an older database up to SCHEMA_VERSION inside the caller's transaction (all or nothing)."""
    if version < 2:
        # v1 metrics had no version or params: rebuild the table (SQLite cannot change a primary key in place).
        columns = {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}
        if "version" not in columns:
            conn.execute("ALTER TABLE metrics RENAME TO metrics_v1")
            conn.execute(_METRICS_TABLE)
            conn.execute(
                """INSERT INTO metrics (experiment, run_id, name, version, value, params)
                   SELECT experiment, run_id, name, 1, value, '{}' FROM metrics_v1"""
            )
            conn.execute("DROP TABLE metrics_v1")
    if version < 3:
        # Which plan a run came from was not recorded: every existing run counts as in the latest plan.
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "in_plan" not in columns:
            conn.execute("ALTER TABLE runs ADD COLUMN in_plan INTEGER NOT NULL DEFAULT 1")
    if version < 4:
        # The old per-image time was exactly the batch time over its size: renamed for what it is. No image is
        # hashed here: a file found now need not be the one generated (see the module docstring).
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "generation_time_s" in columns:
            conn.execute("ALTER TABLE runs RENAME COLUMN generation_time_s TO seconds_per_image_batched")
        for name, kind in _V4_RUN_COLUMNS.items():
            if name not in columns:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        if "image_sha256" not in {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}:
            conn.execute("ALTER TABLE metrics ADD COLUMN image_sha256 TEXT")
    if version < 5:
        conn.execute(_CAPTIONS_TABLE)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def _damaged(path: Path, what: str) -> LlmDitError:
    return LlmDitError(
        f"results database {path} is damaged ({what}); nothing was changed: restore it from a backup, or use "
        "another --output-dir"
    )


def _check_database_file(path: Path) -> None:
    """Refuse a results.db that cannot be an intact SQLite database, from its size and 100-byte header alone:
    empty, not SQLite, or shorter than its pages say (a truncated copy). Reads only; a live WAL (non-empty
    ``-wal``) may hold pages the main file lacks, so the size check is skipped then."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise LlmDitError(f"cannot read results database {path}: {exc.strerror}") from exc
    if size == 0:
        raise _damaged(path, "the file is empty")
    if not header.startswith(SQLITE_MAGIC):
        raise _damaged(path, "not a SQLite database")
    if len(header) < 100:
        raise _damaged(path, f"truncated to {size} bytes")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = header[92:96] == header[24:28]  # SQLite's rule for trusting the in-header page count
    wal = path.with_name(path.name + "-wal")
    live_wal = wal.is_file() and wal.stat().st_size > 0
    if not live_wal and (size % page_size or (header_size_valid and size < pages * page_size)):
        raise _damaged(path, f"truncated: {size} bytes where its header says {pages} pages of {page_size}")


def _validate_tables(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of an existing database, after checking every table is there (reads only). A missing
    table is damage: re-creating it empty would silently lose what it held."""
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in names:
        raise _damaged(path, "no schema_version table: not an llm-dit results database")
    version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if version is None:
        raise _damaged(path, "its schema_version table is empty")
    missing = sorted({"experiments", "runs", "metrics", *(("captions",) if version >= 5 else ())} - names)
    if missing:
        raise _damaged(path, f"table {', '.join(missing)} missing")
    return int(version)


def _sqlite_failure(exc: sqlite3.Error, path: Path) -> LlmDitError | None:
    """A one-line error for SQLite failures that mean a damaged or unusable database; None for others (bugs)."""
    text = str(exc)
    if type(exc) is sqlite3.DatabaseError or "no such table" in text or "no such column" in text:
        return _damaged(path, text)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return LlmDitError(
            f"results database {path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s ({text}); "
            "try again when it is done"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("disk I/O" in text or "unable to open" in text):
        return LlmDitError(f"cannot use results database {path}: {text}; check the disk and its permissions")
    return None


def _validate_name(experiment: str) -> str:
    # The name becomes a directory under root: refuse anything that could escape it or hide as a dotfile.
    if (
        not isinstance(experiment, str)
        or not experiment.strip()
        or experiment != experiment.strip()
        or experiment.startswith(".")
        or any(sep in experiment for sep in ("/", "\\", "\0"))
        or any(ord(ch) < 32 for ch in experiment)
        or experiment.startswith(DB_NAME)  # results.db, results.db-wal, results.db-shm live in root
    ):
        raise LlmDitError(
            f"invalid experiment name {experiment!r}: use a plain directory name "
            "(no slashes, no leading dot or spaces, e.g. 'shift_sweep')"
        )
    return experiment


def _validate_relative(name: str, what: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or not parts:
        raise LlmDitError(f"invalid {what} {name!r}: must be a path inside the experiment directory")
    # The store's own files and temp-file names would be overwritten by exports or deleted by cleanup.
    if parts[-1] in (LOCK_NAME, METRICS_LOCK_NAME, METADATA_NAME, RESULTS_NAME) or is_temp_file(parts[-1]):
        raise LlmDitError(f"invalid {what} {name!r}: that name is reserved for the results store")
    return name


class ResultsStore:
    """Runs, their outcomes and metrics for every experiment under one results root.

    Safe to open from several processes at once (SQLite WAL + busy timeout). One instance may be shared by
    threads (calls are serialized). After ``fork`` the child opens its own connection automatically.
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT, *, read_only: bool = False) -> None:
        """Create ``root`` and the database (if missing) and check its schema version.

        ``read_only``: open an existing database for reading only (viewers, comparisons, plots): nothing is
        created, migrated or written, and every write method raises. Either way a damaged database (see
        ``_check_database_file``, ``_validate_tables``) raises ``LlmDitError`` before anything is written.
        """
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        self.read_only = read_only
        self._mutex = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._held: set[str] = set()
        self._version = SCHEMA_VERSION  # what the open database holds (read-only opens may read an older one)
        if read_only:
            require_database(self.root)  # the one message of every reader
            _check_database_file(self.db_path)
            self._check_schema()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LlmDitError(f"cannot create results directory {self.root}: {exc.strerror}") from exc
        if not self.db_path.exists():
            self._create_database()
        _check_database_file(self.db_path)
        self._init_schema()

    # -- connection and transactions -------------------------------------------------------------------------

    def _create_database(self) -> None:
        """A new database, whole or not at all: built in a temp file, then linked into place (``link`` fails if a
        concurrent process got there first; its database is used). So an empty or tableless ``results.db`` is
        never one of ours in the making, and is refused as damage."""
        fd, tmp = tempfile.mkstemp(prefix=f".{DB_NAME}.", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            try:
                conn = sqlite3.connect(tmp, isolation_level=None)
                try:
                    _use_wal(conn, self.db_path)
                    conn.execute("BEGIN")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    conn.execute("COMMIT")
                finally:
                    conn.close()  # the last connection checkpoints the WAL into the file and removes it
            except sqlite3.Error as exc:
                raise LlmDitError(f"cannot create results database {self.db_path}: {exc}") from exc
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
            try:
                os.link(tmp, self.db_path)
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                if not self.db_path.exists():
                    os.replace(tmp, self.db_path)
        finally:
            for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
                Path(leftover).unlink(missing_ok=True)

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(): the child would share the parent's file locks and state.
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = self._open()
            except sqlite3.Error as exc:
                failure = _sqlite_failure(exc, self.db_path)
                raise failure or LlmDitError(f"cannot open results database {self.db_path}: {exc}") from exc
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # mode=ro: SQLite itself refuses writes, whatever a caller tries.
        target = f"{self.db_path.resolve().as_uri()}?mode=ro" if self.read_only else str(self.db_path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each public call is one transaction.
        conn = sqlite3.connect(
            target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=self.read_only
        )
        try:
            conn.row_factory = sqlite3.Row
            # busy_timeout first: switching to WAL needs a lock that another process may briefly hold.
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Reads only, before anything could write (the WAL switch below rewrites a foreign file's header).
            _validate_tables(conn, self.db_path)
            if self.read_only:
                return conn
            _use_wal(conn, self.db_path)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so concurrent writers queue on the
        busy timeout instead of failing with SQLITE_BUSY when a read transaction tries to upgrade. SQLite
        failures that mean a damaged database become one-line errors naming it."""
        self._check_writable()
        with self._mutex:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # Also after a failed COMMIT: a transaction left open would make every later BEGIN fail.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                failure = _sqlite_failure(exc, self.db_path)
                if failure is None:
                    raise
                raise failure from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: several SELECTs see one consistent snapshot while others write."""
        with self._mutex:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                failure = _sqlite_failure(exc, self.db_path)
                if failure is None:
                    raise
                raise failure from exc

    def _init_schema(self) -> None:
        with self._write() as conn:
            # Read again inside the write transaction: a concurrent writer may have migrated meanwhile.
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LlmDitError(
                    f"results database {self.db_path} has schema version {version}, newer than this llm-dit "
                    f"understands ({SCHEMA_VERSION}); upgrade llm-dit or use another --output-dir"
                )
            if version < SCHEMA_VERSION:
                _migrate(conn, version)

    def _check_writable(self) -> None:
        if self.read_only:
            raise LlmDitError(f"results database {self.db_path} was opened read-only; nothing can be written")

    def _check_schema(self) -> None:
        """Read-only opening: the schema must be one this version reads (an older one is migrated by any writer)."""
        with self._read() as conn:
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if version not in READABLE_VERSIONS:
            raise LlmDitError(
                f"results database {self.db_path} has schema version {version}, this llm-dit reads versions "
                f"{READABLE_VERSIONS[0]} to {SCHEMA_VERSION}; "
                + (
                    "upgrade llm-dit"
                    if (version or 0) > SCHEMA_VERSION
                    else "run 'llm-dit metrics EXPERIMENT' on it once to migrate it"
                )
            )
        self._version = int(version)

    def close(self) -> None:
        """Close the database connection (reopened on the next call)."""
        with self._mutex:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- experiments -----------------------------------------------------------------------------------------

    def experiment_dir(self, experiment: str) -> Path:
        """``root/<experiment>``: images and exports. Not created here."""
        return self.root / _validate_name(experiment)

    @contextlib.contextmanager
    def lock(self, experiment: str) -> Iterator[None]:
        """Hold the exclusive run lock of ``experiment`` (``root/<experiment>/.lock``) or fail at once.

        ``flock`` belongs to the open file, so the kernel releases it when the process dies, however it dies:
        ``kill -9`` never leaves a stale lock, and the pid/start time in the file are only for the message.
        The file is never deleted: unlinking a lock file lets two processes lock two different inodes.
        A second ``lock()`` of the same experiment in the same process also fails (separate open files).
        Children forked while it is held share it until they exit.
        """
        busy = f"experiment {experiment!r} in {self.root} is already being run by another process"
        with self._flock(experiment, LOCK_NAME, busy, "wait for it or use another --output-dir"):
            self._held.add(experiment)
            try:
                yield
            finally:
                self._held.discard(experiment)

    @contextlib.contextmanager
    def metrics_lock(self, experiment: str) -> Iterator[None]:
        """Hold the metrics lock of ``experiment`` (``root/<experiment>/.metrics.lock``) or fail at once, as
        :meth:`lock` does: two metrics passes at once would both compute every missing value. A pass may run
        while the experiment is being generated (it scores the images done so far)."""
        busy = f"metrics of experiment {experiment!r} in {self.root} are being computed by another process"
        fix = "wait for it to finish; a pass after it computes only what is still missing"
        with self._flock(experiment, METRICS_LOCK_NAME, busy, fix):
            yield

    @contextlib.contextmanager
    def _flock(self, experiment: str, name: str, busy: str, fix: str) -> Iterator[None]:
        self._check_writable()
        directory = self.experiment_dir(experiment)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LlmDitError(f"{busy} ({_read_holder(fd)}); {fix}") from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_dumps(info) + "\n").encode(), 0)
            try:
                yield
            finally:
                # Clear the holder info before unlocking, so nobody reads a finished process as the holder.
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def start_experiment(
        self,
        name: str,
        description: str,
        definition: Mapping[str, Any],
        metadata: Mapping[str, Any],
        *,
        plan_defaults: PlanDefaults | None = None,
    ) -> None:
        """Create or update an experiment; each call is appended to ``metadata['starts']`` (the earliest start
        stays in ``started_at``) and clears ``finished_at``. Description, definition and metadata are replaced.
        ``plan_defaults``: the defaults the plan resolved against, read back by :meth:`plan_defaults`.
        Creates the experiment directory."""
        self.experiment_dir(name).mkdir(parents=True, exist_ok=True)
        now = _now()
        start = {"started_at": now, "pid": os.getpid(), "host": socket.gethostname()}
        with self._write() as conn:
            row = conn.execute("SELECT metadata, started_at FROM experiments WHERE name = ?", (name,)).fetchone()
            previous = _loads(row["metadata"]) if row else {}
            starts = [*(previous or {}).get("starts", []), start]
            merged = {**dict(metadata), "starts": starts}
            if plan_defaults is not None:
                merged[PLAN_DEFAULTS_KEY] = plan_defaults.to_json()
            conn.execute(
                """INSERT INTO experiments (name, description, definition, metadata, started_at, finished_at)
                   VALUES (?, ?, ?, ?, ?, NULL)
                   ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                       definition = excluded.definition, metadata = excluded.metadata, finished_at = NULL""",
                (name, description, _dumps(dict(definition)), _dumps(merged), now),
            )

    def finish_experiment(self, name: str, summary: Mapping[str, Any]) -> None:
        """Record the end of a run of the experiment (``finished_at``) and its summary."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE experiments SET finished_at = ?, summary = ? WHERE name = ?",
                (_now(), _dumps(dict(summary)), _validate_name(name)),
            )
            if cursor.rowcount == 0:
                raise self._unknown(name)

    def experiments(self) -> list[str]:
        """Names of all experiments in this root, sorted."""
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM experiments ORDER BY name")]

    def require_experiment(self, name: str) -> dict[str, Any]:
        """:meth:`experiment`, refusing an unknown name with the names there are (for commands given a name)."""
        if name not in self.experiments():
            known = ", ".join(self.experiments()) or "none yet"
            raise LlmDitError(f"no experiment {name!r} in {self.root}; experiments there: {known}")
        return self.experiment(name)

    def experiment(self, name: str) -> dict[str, Any]:
        """One experiment's row with its JSON fields decoded."""
        with self._read() as conn:
            return self._experiment_row(conn, name)

    def plan_defaults(self, name: str) -> PlanDefaults:
        """The defaults stored with the experiment's latest plan (:data:`LEGACY_PLAN_DEFAULTS` for an older one)."""
        return PlanDefaults.from_metadata(self.experiment(name)["metadata"])

    def _experiment_row(self, conn: sqlite3.Connection, name: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM experiments WHERE name = ?", (_validate_name(name),)).fetchone()
        if row is None:
            raise self._unknown(name)
        out = dict(row)
        for key in ("definition", "metadata", "summary"):
            out[key] = _loads(out[key])
        return out

    def _unknown(self, name: str) -> LlmDitError:
        return LlmDitError(f"no experiment {name!r} in {self.db_path}; start it first (start_experiment)")

    # -- runs ------------------------------------------------------------------------------------------------

    def plan_runs(self, experiment: str, runs: Sequence[PlannedRun]) -> None:
        """Insert the plan's new runs as ``planned``; one transaction.

        Existing rows keep their status. Rows that are not ``done`` take the plan's prompt, seed, variables,
        params and image name (they will be generated from this plan); ``done`` rows keep what was generated.
        Every row takes its position in this plan as its order. Runs of the experiment that are no longer in the
        plan keep their results (they stay in the database and the exports, ordered after the plan's runs) and are
        marked ``in_plan = 0``: summaries and the comparison tools show the latest plan.
        """
        ids = [run.run_id for run in runs]
        for dup, count in Counter(ids).items():
            if count > 1:
                raise LlmDitError(f"plan of {experiment!r} lists run {dup!r} twice")
        names = [run.image_name or f"{run.run_id}.png" for run in runs]
        for dup, count in Counter(names).items():
            if count > 1:
                raise LlmDitError(
                    f"plan of {experiment!r} writes image {dup!r} for two runs; image names must be unique"
                )
        rows = []
        for run, image_name in zip(runs, names, strict=True):
            if not run.run_id:
                raise LlmDitError(f"plan of {experiment!r} has a run with an empty run_id")
            if not 0 <= int(run.seed) <= MAX_SEED:
                raise LlmDitError(f"run {run.run_id!r}: seed {run.seed} is outside 0..{MAX_SEED}")
            _validate_relative(image_name, "image name")
            try:
                rows.append((run, image_name, _dumps(dict(run.variables)), _dumps(dict(run.params))))
            except TypeError as exc:
                raise LlmDitError(f"run {run.run_id!r}: variables/params must be JSON-serializable: {exc}") from exc
        now = _now()
        with self._write() as conn:
            self._experiment_row(conn, experiment)
            existing = {
                row["run_id"]: row["status"]
                for row in conn.execute("SELECT run_id, status FROM runs WHERE experiment = ?", (experiment,))
            }
            # Runs outside this plan keep their relative order, after the plan's runs.
            planned = set(ids)
            others = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM runs WHERE experiment = ? ORDER BY seq, rowid", (experiment,)
                )
                if row[0] not in planned
            ]
            for seq, (run, image_name, variables, params) in enumerate(rows):
                status = existing.get(run.run_id)
                if status is None:
                    conn.execute(
                        """INSERT INTO runs (experiment, run_id, seq, in_plan, prompt_id, prompt_text, seed,
                               variables, params, image_name, status, created_at, updated_at)
                           VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, 'planned', ?, ?)""",
                        (experiment, run.run_id, seq, run.prompt_id, run.prompt_text, int(run.seed), variables,
                         params, image_name, now, now),
                    )  # fmt: skip
                elif status == "done":
                    conn.execute(
                        "UPDATE runs SET seq = ?, in_plan = 1 WHERE experiment = ? AND run_id = ?",
                        (seq, experiment, run.run_id),
                    )
                else:
                    conn.execute(
                        """UPDATE runs SET seq = ?, in_plan = 1, prompt_id = ?, prompt_text = ?, seed = ?,
                               variables = ?, params = ?, image_name = ? WHERE experiment = ? AND run_id = ?""",
                        (seq, run.prompt_id, run.prompt_text, int(run.seed), variables, params, image_name,
                         experiment, run.run_id),
                    )  # fmt: skip
            conn.executemany(
                "UPDATE runs SET seq = ?, in_plan = 0 WHERE experiment = ? AND run_id = ?",
                [(len(rows) + i, experiment, rid) for i, rid in enumerate(others)],
            )

    def status(self, experiment: str) -> dict[str, str]:
        """run_id -> status (``planned``, ``done`` or ``failed``), in planned order."""
        with self._read() as conn:
            return {
                row[0]: row[1]
                for row in conn.execute(
                    "SELECT run_id, status FROM runs WHERE experiment = ? ORDER BY seq, rowid", (experiment,)
                )
            }

    def done_run_ids(self, experiment: str) -> set[str]:
        """Runs to skip on resume: status ``done`` AND the image file still exists (a deleted image is redone)."""
        return {row[0] for row in _with_image(self.experiment_dir(experiment), self._done_rows(experiment))}

    def timed_run_ids(self, experiment: str) -> set[str]:
        """Done runs that carry ``--timing`` statistics (a database before version 4 has none)."""
        if self._version < 4:
            return set()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT run_id FROM runs WHERE experiment = ? AND status = 'done' AND timed_repeats > 0", (experiment,)
            ).fetchall()
        return {row[0] for row in rows}

    def _done_rows(self, experiment: str) -> list[Sequence[Any]]:
        time = "seconds_per_image_batched" if self._version >= 4 else "generation_time_s"
        with self._read() as conn:
            return conn.execute(_DONE_SQL.format(time=time), (experiment,)).fetchall()

    def mark_done(
        self,
        experiment: str,
        run_id: str,
        *,
        image_path: str | Path,
        token_count: int | None,
        record: Mapping[str, Any],
        image_sha256: str | None = None,
        timing: RunTiming | None = None,
        execution: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a finished run. Write (and fsync) the image first: then ``done`` always has its file.

        ``image_path`` is relative to the experiment dir (an absolute path inside it is made relative).
        ``image_sha256``: the sha256 of the bytes written (``generation.image.write_png`` returns it); None: the
        file is hashed now, as the caller has just written it. A hash other than the run's previous one retires
        the metric values of its old image and every value that used it (they count as missing). ``timing``: the
        batch the image was made in (None: not known). ``execution``: what ran it (versions, devices, batch size).
        Clears any earlier error.
        """
        rel = self._relative_image_path(experiment, image_path)
        if image_sha256 is None:
            try:
                image_sha256 = file_sha256(self.experiment_dir(experiment) / rel)
            except OSError as exc:
                raise LlmDitError(f"run {run_id!r}: cannot read its image {rel}: {exc.strerror}") from exc
        try:
            record_json = _dumps(dict(record))
            execution_json = None if execution is None else _dumps(dict(execution))
        except TypeError as exc:
            raise LlmDitError(f"run {run_id!r}: the record must be JSON-serializable: {exc}") from exc
        t = timing
        timed = t.timed if t is not None else None
        with self._write() as conn:
            cursor = conn.execute(
                """UPDATE runs SET status = 'done', error = NULL, image_path = ?, image_sha256 = ?,
                       image_hash_origin = ?, seconds_per_image_batched = ?, batch_seconds = ?, batch_size = ?,
                       batch_position = ?, peak_memory_bytes = ?, timed_median_s = ?, timed_min_s = ?,
                       timed_max_s = ?, timed_repeats = ?, execution = ?, token_count = ?, record = ?,
                       updated_at = ? WHERE experiment = ? AND run_id = ?""",
                (rel, image_sha256, HASH_WRITTEN,
                 None if t is None else float(t.seconds_per_image_batched),
                 None if t is None else float(t.batch_seconds), None if t is None else int(t.batch_size),
                 None if t is None or t.batch_position is None else int(t.batch_position),
                 None if t is None or t.peak_memory_bytes is None else int(t.peak_memory_bytes),
                 None if timed is None else timed.median_s, None if timed is None else timed.min_s,
                 None if timed is None else timed.max_s, None if timed is None else timed.repeats,
                 execution_json, None if token_count is None else int(token_count), record_json,
                 _now(), experiment, run_id),
            )  # fmt: skip
            if cursor.rowcount == 0:
                raise self._unplanned(experiment, run_id)

    def adopt_image_hashes(self, experiment: str, hashes: Mapping[str, str]) -> int:
        """Store hashes of images found on disk for done runs that have none (made before schema 4), marked
        ``image_hash_origin = 'found'`` (unverified). A run that has a hash keeps it. Returns how many changed."""
        with self._write() as conn:
            changed = 0
            for run_id, digest in hashes.items():
                changed += conn.execute(
                    """UPDATE runs SET image_sha256 = ?, image_hash_origin = ? WHERE experiment = ? AND run_id = ?
                           AND status = 'done' AND image_sha256 IS NULL""",
                    (digest, HASH_FOUND, experiment, run_id),
                ).rowcount
        return changed

    def mark_failed(self, experiment: str, run_id: str, error: str) -> None:
        """Record a failed run and its error message (outputs of an earlier success, if any, are kept)."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = 'failed', error = ?, updated_at = ? WHERE experiment = ? AND run_id = ?",
                (str(error), _now(), experiment, run_id),
            )
            if cursor.rowcount == 0:
                raise self._unplanned(experiment, run_id)

    def add_metrics(
        self,
        experiment: str,
        run_id: str,
        metrics: Mapping[str, float | None],
        *,
        version: int = 1,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Set (insert or replace) named metric values of one run, all at one ``version``; one transaction."""
        self.put_metrics(
            experiment,
            [MetricValue(run_id, name, value, version, dict(params or {})) for name, value in metrics.items()],
        )

    def put_metrics(self, experiment: str, values: Sequence[MetricValue]) -> None:
        """Set (insert or replace) metric values of any runs in one transaction: a batch is stored whole or not at
        all. A value is replaced only by one of the same run, name and version. A value without
        ``image_sha256`` is taken to be of the run's image now (for callers that compute from the file they just
        read); the metrics pass always says which image it scored."""
        rows = []
        for item in values:
            if not isinstance(item.name, str) or not item.name:
                raise LlmDitError(f"run {item.run_id!r}: metric names must be non-empty strings, got {item.name!r}")
            if isinstance(item.version, bool) or not isinstance(item.version, int) or item.version < 1:
                raise LlmDitError(f"metric {item.name!r}: version must be an integer >= 1, got {item.version!r}")
            try:
                params = _dumps(dict(item.params))
            except TypeError as exc:
                raise LlmDitError(f"metric {item.name!r}: params must be JSON-serializable: {exc}") from exc
            value = None if item.value is None else float(item.value)
            rows.append((experiment, item.run_id, item.name, item.version, value, params, item.image_sha256))
        if not rows:
            return
        now = _now()
        with self._write() as conn:
            images = {
                row[0]: row[1]
                for row in conn.execute("SELECT run_id, image_sha256 FROM runs WHERE experiment = ?", (experiment,))
            }
            for row in rows:
                if row[1] not in images:
                    raise self._unplanned(experiment, row[1])
            conn.executemany(
                """INSERT INTO metrics (experiment, run_id, name, version, value, params, image_sha256, computed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (experiment, run_id, name, version) DO UPDATE SET value = excluded.value,
                       params = excluded.params, image_sha256 = excluded.image_sha256,
                       computed_at = excluded.computed_at""",
                [(*row[:6], row[6] if row[6] is not None else images[row[1]], now) for row in rows],
            )

    def metric_values(self, experiment: str) -> list[MetricValue]:
        """Every stored metric value of the experiment, all versions, current or not (ordered by run, name,
        version); ``image_sha256`` None: stored before schema 4."""
        with self._read() as conn:
            return [
                MetricValue(row[0], row[1], row[2], row[3], _loads(row[4]) or {}, row[5])
                for row in conn.execute(
                    f"""SELECT run_id, name, value, version, params, {self._metric_image_column} FROM metrics
                        WHERE experiment = ? ORDER BY run_id, name, version""",
                    (experiment,),
                )
            ]

    # -- captions (caption studies) -------------------------------------------------------------------------

    def put_caption(
        self,
        experiment: str,
        source_run_id: str,
        caption: str,
        *,
        origin: str,
        params: Mapping[str, Any],
        token_count: int | None,
    ) -> None:
        """Store (or replace) the caption of a source run: one transaction, so a killed study keeps every caption
        committed before it."""
        if origin not in ("generated", "given"):
            raise LlmDitError(f"caption origin must be 'generated' or 'given', got {origin!r}")
        with self._write() as conn:
            self._experiment_row(conn, experiment)
            conn.execute(
                """INSERT INTO captions (experiment, source_run_id, caption, origin, params, token_count, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (experiment, source_run_id) DO UPDATE SET caption = excluded.caption,
                       origin = excluded.origin, params = excluded.params, token_count = excluded.token_count,
                       created_at = excluded.created_at""",
                (experiment, source_run_id, caption, origin, _dumps(dict(params)), token_count, _now()),
            )

    def captions_of_run(self, source_run_id: str) -> list[dict[str, Any]]:
        """Every experiment's caption of a source run (the same run id is the same image: another study's caption of
        it can be reused), newest first, each with its ``experiment``."""
        if self._version < 5:
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM captions WHERE source_run_id = ? ORDER BY created_at DESC, rowid DESC", (source_run_id,)
            ).fetchall()
        return [{**dict(row), "params": _loads(row["params"]) or {}} for row in rows]

    def captions(self, experiment: str) -> dict[str, dict[str, Any]]:
        """source run id -> its caption row (``caption``, ``origin``, ``params`` decoded, ``token_count``,
        ``created_at``); empty for a database from before captions (schema < 5, read-only)."""
        if self._version < 5:
            return {}
        with self._read() as conn:
            out = {}
            for row in conn.execute(
                "SELECT * FROM captions WHERE experiment = ? ORDER BY rowid", (_validate_name(experiment),)
            ):
                item = dict(row)
                del item["experiment"]
                item["params"] = _loads(item["params"]) or {}
                out[item.pop("source_run_id")] = item
            return out

    @property
    def _metric_image_column(self) -> str:
        return "image_sha256" if self._version >= 4 else "NULL"

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        """All runs of the experiment in planned order, JSON fields decoded, ``in_plan`` a bool (False: a run kept
        from an earlier plan), plus ``metrics`` (name -> value): only current values, those computed from the
        run's image as it is now (and from the current images of the runs they compared with)."""
        with self._read() as conn:
            return self._runs(conn, experiment)

    def _runs(self, conn: sqlite3.Connection, experiment: str) -> list[dict[str, Any]]:
        out = []
        for row in conn.execute("SELECT * FROM runs WHERE experiment = ? ORDER BY seq, rowid", (experiment,)):
            run = dict(row)
            for key in ("variables", "params", "record", "execution"):
                run[key] = _loads(run.get(key))
            run["in_plan"] = bool(run.get("in_plan", 1))  # a read-only open of a version-2 database lacks it
            if "generation_time_s" in run:  # a read-only open of a version 2 or 3 database
                run["seconds_per_image_batched"] = run.pop("generation_time_s")
            for key in _V4_RUN_COLUMNS:
                run.setdefault(key, None)
            out.append(run)
        images = {run["run_id"]: run["image_sha256"] for run in out}
        metrics: dict[str, dict[str, float | None]] = {}
        # The newest current version of each metric wins (rows come in ascending version order).
        for run_id, name, value, params, image in conn.execute(
            f"""SELECT run_id, name, value, params, {self._metric_image_column} FROM metrics WHERE experiment = ?
                ORDER BY name, version""",
            (experiment,),
        ):
            if _is_current(image, params, images.get(run_id), images):
                metrics.setdefault(run_id, {})[name] = value
        for run in out:
            run["metrics"] = metrics.get(run["run_id"], {})
        return out

    def _relative_image_path(self, experiment: str, image_path: str | Path) -> str:
        path = Path(image_path)
        if path.is_absolute():
            directory = self.experiment_dir(experiment).resolve()
            try:
                path = path.resolve().relative_to(directory)
            except ValueError:
                raise LlmDitError(f"image {image_path} is outside the experiment directory {directory}") from None
        return _validate_relative(path.as_posix(), "image path")

    def _unplanned(self, experiment: str, run_id: str) -> LlmDitError:
        return LlmDitError(f"run {run_id!r} of experiment {experiment!r} is not planned in {self.db_path}")

    # -- exports ---------------------------------------------------------------------------------------------

    def table(self, experiment: str) -> tuple[list[str], list[tuple[str, str]], list[list[Any]]]:
        """The results table behind results.csv and ``load_results``, from one snapshot: column names, each
        column's source (see ``_columns``) and rows of Python values."""
        with self._read() as conn:
            self._experiment_row(conn, experiment)
            return _table(self._runs(conn, experiment))

    def export(self, experiment: str) -> tuple[Path, Path]:
        """Regenerate ``metadata.json`` and ``results.csv`` from one database snapshot, each atomically.

        Returns their paths. Deterministic: the same database content gives byte-identical files.
        """
        self._check_writable()
        with self._read() as conn:
            info = self._experiment_row(conn, experiment)
            runs = self._runs(conn, experiment)
        columns, sources, rows = _table(runs)
        counts = {status: sum(run["status"] == status for run in runs) for status in STATUSES}
        axes: dict[str, list[str]] = {}
        for run in runs:
            for axis, label in run["variables"].items():
                values = axes.setdefault(axis, [])
                if label not in values:
                    values.append(label)
        metadata = {
            "schema_version": SCHEMA_VERSION,
            "name": info["name"],
            "description": info["description"],
            "started_at": info["started_at"],
            "finished_at": info["finished_at"],
            "counts": {**counts, "total": len(runs)},
            # Done runs whose image hash was not taken from the bytes written (made before schema 4).
            "unverified_images": sum(
                run["status"] == "done" and run["image_hash_origin"] != HASH_WRITTEN for run in runs
            ),
            "variables": axes,
            "metrics": [key for kind, key in sources if kind == "metric"],
            "definition": info["definition"],
            "metadata": info["metadata"],
            "summary": info["summary"],
            "results_csv": RESULTS_NAME,
        }
        directory = self.experiment_dir(experiment)
        metadata_path, results_path = directory / METADATA_NAME, directory / RESULTS_NAME
        write_json(metadata_path, metadata, default=_json_default)
        write_csv(results_path, columns, rows)
        return metadata_path, results_path

    def cleanup_temp_files(self, experiment: str) -> int:
        """Delete leftovers of interrupted atomic writes in the experiment dir (see ``is_temp_file``).

        A temp file may belong to a live writer, so this needs the experiment's lock: it uses the lock this
        store already holds, or takes it for the duration (and fails clearly if another process runs the
        experiment). Returns how many files were removed.
        """
        directory = self.experiment_dir(experiment)
        if not directory.is_dir():
            return 0
        if experiment not in self._held:
            with self.lock(experiment):
                return self.cleanup_temp_files(experiment)
        removed = 0
        for entry in os.scandir(directory):
            if is_temp_file(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _use_wal(conn: sqlite3.Connection, db_path: Path) -> None:
    """Switch ``conn`` to WAL mode (the crash safety above rests on it), or say why it cannot be."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise LlmDitError(
            f"results database {db_path} cannot use WAL mode (got {mode!r}); put the results directory on a local "
            "filesystem"
        )


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid", "unknown")
    started = info.get("started_at", "unknown")
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {pid}{where}, started {started}"


def _is_current(image: str | None, params: str, run_image: str | None, images: Mapping[str, str | None]) -> bool:
    """Whether a stored metric value is of the run's image now and of the current images of the runs it used."""
    if image is None or image != run_image:
        return False
    if INPUTS_KEY not in params:  # a value of the run's image alone (CLIP/SigLIP, a source image's distance)
        return True
    inputs = (json.loads(params) or {}).get(INPUTS_KEY) or {}
    return all(images.get(run_id) == digest for run_id, digest in inputs.items())


def _columns(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Column names and, for each, its source: ('fixed', name), ('var', axis) or ('metric', name).

    A variable or metric whose name is taken (e.g. an axis called 'seed') is prefixed 'var_' / 'metric_'.
    """
    axes: list[str] = []
    for run in runs:
        axes.extend(axis for axis in run["variables"] if axis not in axes)
    metric_names = sorted({name for run in runs for name in run["metrics"]})
    names: list[str] = list(LEADING_COLUMNS)
    sources: list[tuple[str, str]] = [("fixed", c) for c in LEADING_COLUMNS]
    taken = set(FIXED_COLUMNS)
    for kind, prefix, items in (
        ("var", "var_", axes),
        ("fixed", "", TRAILING_COLUMNS),
        ("metric", "metric_", metric_names),
    ):
        for item in items:
            name = item
            if kind != "fixed":
                while name in taken:
                    name = prefix + name
                taken.add(name)
            names.append(name)
            sources.append((kind, item))
    return names, sources


def _table(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, str]], list[list[Any]]]:
    names, sources = _columns(runs)
    rows = []
    for run in runs:
        fixed = {**run, "output_path": run["image_path"]}
        row = []
        for kind, key in sources:
            if kind == "fixed":
                value = fixed[key]
            elif kind == "var":
                value = run["variables"].get(key)
            else:
                value = run["metrics"].get(key)
            row.append(_dumps(value) if isinstance(value, (list, dict)) else value)
        rows.append(row)
    return names, sources, rows


# Done runs as (run_id, image_path, seconds per image); resume and dry runs keep those whose image still exists.
_DONE_SQL = "SELECT run_id, image_path, {time} FROM runs WHERE experiment = ? AND status = 'done'"


def _with_image(directory: Path, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows of _DONE_SQL whose image file exists (a deleted image means the run is to be redone)."""
    return [row for row in rows if row[1] and (directory / row[1]).is_file()]


@dataclass(frozen=True)
class DoneRuns:
    """What a dry run needs to know of an experiment's progress: the ids of done runs whose image exists (what
    :meth:`ResultsStore.done_run_ids` gives the runner), those of them with ``--timing`` statistics, and their
    batched seconds per image."""

    done: set[str] = field(default_factory=set)
    timed: set[str] = field(default_factory=set)
    seconds: list[float] = field(default_factory=list)


def peek_runs(root: str | Path, experiment: str) -> DoneRuns:
    """Read-only look for dry runs: the done runs whose image exists, the timed ones among them, their times.

    Opens the database read-only: nothing is created or changed (no schema setup, no WAL switch), and a missing
    database or experiment simply means nothing is done yet. A damaged database raises ``LlmDitError``, as
    every open does.
    """
    if not (Path(root) / DB_NAME).is_file():
        return DoneRuns()
    with ResultsStore(root, read_only=True) as store:
        rows = store._done_rows(experiment)
        timed = store.timed_run_ids(experiment)
    done = _with_image(Path(root) / experiment, rows)
    ids = {row[0] for row in done}
    return DoneRuns(ids, timed & ids, [float(row[2]) for row in done if row[2]])


def lock_holder(root: str | Path, experiment: str) -> str | None:
    """Who runs ``experiment`` in ``root`` now ("pid 123, started ..."), or None when nobody does.

    A read-only probe for the command line, before any model loads: it takes and at once releases the run lock,
    creating nothing (no lock file: nobody has ever run it here). The runner still takes the lock for real.
    """
    path = Path(root) / _validate_name(experiment) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def require_database(root: str | Path) -> Path:
    """The results database of ``root``, or one line naming the fix when there is none (checked before anything
    loads; the one check of every reader: metrics, and every read-only :class:`ResultsStore` open: the viewer,
    load_results, dry runs)."""
    db = Path(root) / DB_NAME
    if not db.is_file():
        raise LlmDitError(
            f"no results database in {root}; pass the --output-dir the experiments ran with "
            "(e.g. --output-dir outputs/results)"
        )
    return db


def load_results(root: str | Path, experiment: str) -> pandas.DataFrame:
    """One row per run (planned order): the results.csv columns, read from the database with proper dtypes.

    ``seed`` int64; metrics and the seconds columns (``seconds_per_image_batched``, ``batch_seconds``,
    ``timed_*_s``) float64; ``token_count``, ``batch_size``, ``batch_position``, ``timed_repeats`` and
    ``peak_memory_bytes`` Int64 (nullable: no peak on a CPU); the rest strings (missing values NaN). Metrics are
    the current values only (see the module docstring). Raises ``LlmDitError`` if there is no database or no
    such experiment, or if it is damaged.
    """
    import pandas as pd  # only here: the store itself stays importable without pandas

    with ResultsStore(root, read_only=True) as store:  # a reader: never migrates or writes; none there is refused
        columns, sources, rows = store.table(experiment)
    frame = pd.DataFrame(rows, columns=columns)
    for name, (kind, key) in zip(columns, sources, strict=True):
        if kind == "metric" or (kind == "fixed" and key in FLOAT_COLUMNS):
            frame[name] = frame[name].astype("float64")
        elif (kind, key) == ("fixed", "seed"):
            frame[name] = frame[name].astype("int64")
        elif kind == "fixed" and key in INT_COLUMNS:
            frame[name] = frame[name].astype("Int64")
        else:
            frame[name] = frame[name].astype("str")
    return frame
