"""The results store: one SQLite database per results root, plus per-experiment exports.

Layout under ``root`` (default ``experiments/results``)::

    root/results.db                 the source of truth for every experiment in this root
    root/<experiment>/.lock         held (flock) by the process running the experiment
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

This module deliberately imports no torch or model code: analysis tools and the CLI read results cheaply.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
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

SCHEMA_VERSION = 3  # 2: metrics are keyed by version and carry params; 3: runs.in_plan
# A read-only open needs no migration for these: version 2 lacks only runs.in_plan (read as "in the plan").
READABLE_VERSIONS = (2, 3)
DB_NAME = "results.db"
LOCK_NAME = ".lock"
METADATA_NAME = "metadata.json"
RESULTS_NAME = "results.csv"
DEFAULT_ROOT = Path("experiments/results")
STATUSES = ("planned", "done", "failed")
# Long enough to ride out another process's export or a burst of commits; short enough to report a wedged db.
BUSY_TIMEOUT_S = 60.0
# Columns of results.csv before the variable columns, between them and the metric columns.
LEADING_COLUMNS = ("run_id", "prompt_id", "prompt_text")
TRAILING_COLUMNS = ("seed", "status", "error", "generation_time_s", "token_count", "output_path")
FIXED_COLUMNS = frozenset(LEADING_COLUMNS + TRAILING_COLUMNS)

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
    PRIMARY KEY (experiment, run_id, name, version),
    FOREIGN KEY (experiment, run_id) REFERENCES runs (experiment, run_id) ON DELETE CASCADE
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
    generation_time_s REAL,
    token_count       INTEGER,
    record            TEXT,                   -- JSON: the image's full record
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (experiment, run_id)
)""",
    "CREATE INDEX IF NOT EXISTS runs_by_seq ON runs (experiment, seq)",
    _METRICS_TABLE,
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
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


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
    if parts[-1] in (LOCK_NAME, METADATA_NAME, RESULTS_NAME) or is_temp_file(parts[-1]):
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
        created, migrated or written, and every write method raises.
        """
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        self.read_only = read_only
        self._mutex = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._held: set[str] = set()
        if read_only:
            if not self.db_path.is_file():
                raise LlmDitError(
                    f"no results database {self.db_path}; pass the --output-dir the experiments ran with"
                )
            self._check_schema()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LlmDitError(f"cannot create results directory {self.root}: {exc.strerror}") from exc
        self._init_schema()

    # -- connection and transactions -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(): the child would share the parent's file locks and state.
        if self._conn is None or self._pid != os.getpid():
            # mode=ro: SQLite itself refuses writes, whatever a caller tries.
            target = f"{self.db_path.resolve().as_uri()}?mode=ro" if self.read_only else str(self.db_path)
            try:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each public call is one transaction.
                conn = sqlite3.connect(
                    target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                    uri=self.read_only,
                )
            except sqlite3.Error as exc:
                raise LlmDitError(f"cannot open results database {self.db_path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            if self.read_only:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                self._conn, self._pid = conn, os.getpid()
                return conn
            # busy_timeout first: switching to WAL needs a lock that another process may briefly hold.
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise LlmDitError(
                    f"results database {self.db_path} cannot use WAL mode (got {mode!r}); "
                    "put the results directory on a local filesystem"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so concurrent writers queue on the
        busy timeout instead of failing with SQLITE_BUSY when a read transaction tries to upgrade."""
        self._check_writable()
        with self._mutex:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: a transaction left open would make every later BEGIN fail.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: several SELECTs see one consistent snapshot while others write."""
        with self._mutex:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0]
            if version is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise LlmDitError(
                    f"results database {self.db_path} has schema version {version}, newer than this llm-dit "
                    f"understands ({SCHEMA_VERSION}); upgrade llm-dit or use another --output-dir"
                )
            elif version < SCHEMA_VERSION:
                _migrate(conn, version)

    def _check_writable(self) -> None:
        if self.read_only:
            raise LlmDitError(f"results database {self.db_path} was opened read-only; nothing can be written")

    def _check_schema(self) -> None:
        """Read-only opening: the schema must be this version's (an older one is migrated by any writer)."""
        try:
            with self._read() as conn:
                version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise LlmDitError(f"cannot read results database {self.db_path}: {exc}") from exc
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
        self._check_writable()
        directory = self.experiment_dir(experiment)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise LlmDitError(
                    f"experiment {experiment!r} in {self.root} is already being run by another process "
                    f"({holder}); wait for it or use another --output-dir"
                ) from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_dumps(info) + "\n").encode(), 0)
            self._held.add(experiment)
            try:
                yield
            finally:
                self._held.discard(experiment)
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
        directory = self.experiment_dir(experiment)
        with self._read() as conn:
            rows = conn.execute(_DONE_SQL, (experiment,)).fetchall()
        return {row[0] for row in _with_image(directory, rows)}

    def mark_done(
        self,
        experiment: str,
        run_id: str,
        *,
        image_path: str | Path,
        generation_time_s: float,
        token_count: int | None,
        record: Mapping[str, Any],
    ) -> None:
        """Record a finished run. Write (and fsync) the image first: then ``done`` always has its file.

        ``image_path`` is relative to the experiment dir (an absolute path inside it is made relative).
        Clears any earlier error.
        """
        rel = self._relative_image_path(experiment, image_path)
        try:
            record_json = _dumps(dict(record))
        except TypeError as exc:
            raise LlmDitError(f"run {run_id!r}: the record must be JSON-serializable: {exc}") from exc
        with self._write() as conn:
            cursor = conn.execute(
                """UPDATE runs SET status = 'done', error = NULL, image_path = ?, generation_time_s = ?,
                       token_count = ?, record = ?, updated_at = ? WHERE experiment = ? AND run_id = ?""",
                (rel, float(generation_time_s), None if token_count is None else int(token_count), record_json,
                 _now(), experiment, run_id),
            )  # fmt: skip
            if cursor.rowcount == 0:
                raise self._unplanned(experiment, run_id)

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
        all. A value is replaced only by one of the same run, name and version."""
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
            rows.append((experiment, item.run_id, item.name, item.version, value, params))
        if not rows:
            return
        now = _now()
        with self._write() as conn:
            known = {row[0] for row in conn.execute("SELECT run_id FROM runs WHERE experiment = ?", (experiment,))}
            for row in rows:
                if row[1] not in known:
                    raise self._unplanned(experiment, row[1])
            conn.executemany(
                """INSERT INTO metrics (experiment, run_id, name, version, value, params, computed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (experiment, run_id, name, version) DO UPDATE SET value = excluded.value,
                       params = excluded.params, computed_at = excluded.computed_at""",
                [(*row, now) for row in rows],
            )

    def metric_values(self, experiment: str) -> list[MetricValue]:
        """Every stored metric value of the experiment, all versions (ordered by run, name, version)."""
        with self._read() as conn:
            return [
                MetricValue(row[0], row[1], row[2], row[3], _loads(row[4]) or {})
                for row in conn.execute(
                    """SELECT run_id, name, value, version, params FROM metrics WHERE experiment = ?
                       ORDER BY run_id, name, version""",
                    (experiment,),
                )
            ]

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        """All runs of the experiment in planned order, JSON fields decoded, ``in_plan`` a bool (False: a run kept
        from an earlier plan), plus ``metrics`` (name -> value)."""
        with self._read() as conn:
            return self._runs(conn, experiment)

    def _runs(self, conn: sqlite3.Connection, experiment: str) -> list[dict[str, Any]]:
        metrics: dict[str, dict[str, float | None]] = {}
        # The newest version of each metric wins (rows come in ascending version order).
        for row in conn.execute(
            "SELECT run_id, name, value FROM metrics WHERE experiment = ? ORDER BY name, version", (experiment,)
        ):
            metrics.setdefault(row[0], {})[row[1]] = row[2]
        out = []
        for row in conn.execute("SELECT * FROM runs WHERE experiment = ? ORDER BY seq, rowid", (experiment,)):
            run = dict(row)
            for key in ("variables", "params", "record"):
                run[key] = _loads(run[key])
            run["in_plan"] = bool(run.get("in_plan", 1))  # a read-only open of a version-2 database lacks it
            run["metrics"] = metrics.get(run["run_id"], {})
            out.append(run)
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


# Done runs as (run_id, image_path, generation_time_s); resume and dry runs keep those whose image still exists.
_DONE_SQL = "SELECT run_id, image_path, generation_time_s FROM runs WHERE experiment = ? AND status = 'done'"


def _with_image(directory: Path, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows of _DONE_SQL whose image file exists (a deleted image means the run is to be redone)."""
    return [row for row in rows if row[1] and (directory / row[1]).is_file()]


def peek_done(root: str | Path, experiment: str) -> tuple[set[str], list[float]]:
    """Read-only look for dry runs: ids of done runs whose image exists, and their generation times.

    Opens the database with ``mode=ro``: nothing is created or changed (no schema setup, no WAL switch), and
    a missing database or experiment simply means nothing is done yet.
    """
    db = Path(root) / DB_NAME
    if not db.is_file():
        return set(), []
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            rows = conn.execute(_DONE_SQL, (experiment,)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return set(), []
    directory = Path(root) / experiment
    done = _with_image(directory, rows)
    return {row[0] for row in done}, [float(row[2]) for row in done if row[2]]


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
    loads; the one check of every reader: metrics, the viewer, load_results)."""
    db = Path(root) / DB_NAME
    if not db.is_file():
        raise LlmDitError(
            f"no results database in {root}; pass the --output-dir the experiments ran with "
            "(e.g. --output-dir outputs/results)"
        )
    return db


def load_results(root: str | Path, experiment: str) -> pandas.DataFrame:
    """One row per run (planned order): the results.csv columns, read from the database with proper dtypes.

    ``seed`` int64, ``generation_time_s`` and metrics float64, ``token_count`` Int64 (nullable), the rest
    strings (missing values NaN). Raises ``LlmDitError`` if there is no database or no such experiment.
    """
    import pandas as pd  # only here: the store itself stays importable without pandas

    require_database(root)
    with ResultsStore(root, read_only=True) as store:  # a reader: never migrates or writes
        columns, sources, rows = store.table(experiment)
    frame = pd.DataFrame(rows, columns=columns)
    for name, (kind, key) in zip(columns, sources, strict=True):
        if kind == "metric" or (kind, key) == ("fixed", "generation_time_s"):
            frame[name] = frame[name].astype("float64")
        elif (kind, key) == ("fixed", "seed"):
            frame[name] = frame[name].astype("int64")
        elif (kind, key) == ("fixed", "token_count"):
            frame[name] = frame[name].astype("Int64")
        else:
            frame[name] = frame[name].astype("str")
    return frame
