"""Human A/B preference judgements: their file and their aggregation into win rates and Bradley-Terry scores per
axis value, as rows shaped like :func:`llm_dit.metrics.summary.summarize`'s (so summary.csv, the plots and the report
show them like any other metric). The viewer's rating mode (``llm-dit view --rate``) writes the judgements; the pairs
it offers are :func:`llm_dit.analysis.preferences.rating_pairs`.

Storage: one append-only JSON Lines file per experiment, ``<results>/<experiment>/preferences.jsonl``, never the
results store. Why a file and not a table in ``results.db``: the viewer opens the store read-only (SQLite ``mode=ro``)
and must stay unable to change it; a separate SQLite file would be a second database with its own locks for a few
hundred small records. Each judgement is one line written with a single ``O_APPEND`` write and ``fsync``, so
a crash leaves at most a torn last line (skipped when read), concurrent writers never interleave, and the file
is readable and diffable as text.

Aggregation (per axis; a judgement counts for the axis its two runs differ in):

- win rate of a value = (wins + ties / 2) / judgements it took part in, with a Wilson score 95% interval;
- Bradley-Terry strengths fitted by Hunter's (2004) MM algorithm, ties counted as half a win for each side,
  reported as log-strengths with the axis' first value (in planned order) pinned to 0, and 95% Wald intervals from
  the observed Fisher information of the log-strengths (deterministic, no resampling). When the comparison graph is
  not strongly connected (some value never lost, or never won, against the rest) the maximum does not exist and
  the scores are NaN.

Judgements of an image that has since been regenerated (its sha256 differs from the one recorded) are stale and
left out. Pure Python and numpy.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_dit.errors import LlmDitError
from llm_dit.experiments.store import file_sha256

PREFERENCES_NAME = "preferences.jsonl"
CHOICES = ("a", "b", "tie")
SIDES = ("a", "b")
MAX_RATER = 100
BT_METRIC = "preference_bt"
WIN_METRIC = "win_rate"
# Summary rows of these come from the judgements, not from runs: one per axis value, n counting judgements.
PREFERENCE_METRICS = (WIN_METRIC, BT_METRIC)
Z95 = 1.959963984540054  # two-sided 95% normal quantile
_append_lock = threading.Lock()


@dataclass(frozen=True)
class Judgement:
    """One A/B judgement. A and B are in a fixed order (A's axis value comes first in planned order);
    ``shown_left`` says which of them the rater saw on the left; ``choice`` is 'a', 'b' or 'tie'."""

    experiment: str
    axis: str
    run_a: str
    run_b: str
    sha256_a: str
    sha256_b: str
    shown_left: str
    choice: str
    rater: str
    time: str  # UTC, ISO 8601
    session: str

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise LlmDitError(f"choice must be one of {', '.join(CHOICES)}, got {self.choice!r}")
        if self.shown_left not in SIDES:
            raise LlmDitError(f"shown_left must be 'a' or 'b', got {self.shown_left!r}")
        if not self.rater.strip() or len(self.rater) > MAX_RATER or any(ord(c) < 32 for c in self.rater):
            raise LlmDitError(f"rater must be a name of 1-{MAX_RATER} printable characters, got {self.rater!r}")
        if self.run_a == self.run_b:
            raise LlmDitError(f"a judgement compares two runs, got {self.run_a!r} twice")


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (what a judgement records)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def append_judgement(path: str | Path, judgement: Judgement) -> None:
    """Append one judgement as one line: a single O_APPEND write, then fsync, so lines never interleave or tear
    except the very last one on a crash (which :func:`read_judgements` skips)."""
    path = Path(path)
    line = (json.dumps(asdict(judgement), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _append_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_judgements(path: str | Path) -> list[Judgement]:
    """Every judgement in the file (none when it does not exist); a torn or foreign line is skipped, not fatal."""
    path = Path(path)
    if not path.is_file():
        return []
    out: list[Judgement] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(Judgement(**json.loads(line)))
        except (ValueError, TypeError, LlmDitError):
            continue
    return out


# ---- statistics ----------------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may be fractional: ties count half); NaN for n 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def strongly_connected(wins: np.ndarray) -> bool:
    """Whether every item reaches every other along 'has won (some share) against' edges: the condition (Hunter
    2004, assumption 1) under which the Bradley-Terry maximum likelihood estimate exists and is unique."""
    k = wins.shape[0]
    if k <= 1:
        return True
    adjacency = wins > 0
    for matrix in (adjacency, adjacency.T):
        seen, frontier = {0}, [0]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(matrix[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    frontier.append(int(j))
        if len(seen) < k:
            return False
    return True


def bradley_terry(wins: np.ndarray, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """Log-strengths θ (θ[0] = 0) maximising the Bradley-Terry likelihood of ``wins`` (wins[i, j]: how often i
    beat j; a tie adds 0.5 to both), by Hunter's MM update p_i <- W_i / Σ_j n_ij / (p_i + p_j). All NaN when the
    maximum does not exist (:func:`strongly_connected` is False)."""
    wins = np.asarray(wins, dtype=float)
    k = wins.shape[0]
    if wins.shape != (k, k) or (wins < 0).any():
        raise LlmDitError(f"wins must be a square non-negative matrix, got shape {wins.shape}")
    if k == 0:
        return np.zeros(0)
    if not strongly_connected(wins):
        return np.full(k, math.nan)
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    p = np.ones(k)
    for _ in range(max_iter):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        updated = total_wins / denominator
        updated /= math.exp(np.log(updated).mean())  # scale is free: keep it near 1
        done = np.max(np.abs(np.log(updated) - np.log(p))) < tol
        p = updated
        if done:
            break
    theta = np.log(p)
    return theta - theta[0]


def bt_standard_errors(wins: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Standard errors of θ (θ[0] pinned, so its error is 0) from the observed Fisher information: the Hessian
    of the negative log-likelihood, H_ii = Σ_j n_ij p_i p_j / (p_i + p_j)², H_ij = -n_ij p_i p_j / (p_i + p_j)²,
    inverted without the pinned row and column. NaN where θ is NaN or the information is singular."""
    k = len(theta)
    if k == 0 or not np.isfinite(theta).all():
        return np.full(k, math.nan)
    games = np.asarray(wins, dtype=float) + np.asarray(wins, dtype=float).T
    p = np.exp(theta)
    weight = games * np.outer(p, p) / (p[:, None] + p[None, :]) ** 2
    np.fill_diagonal(weight, 0.0)
    hessian = np.diag(weight.sum(axis=1)) - weight
    out = np.zeros(k)
    if k > 1:
        try:
            covariance = np.linalg.inv(hessian[1:, 1:])
        except np.linalg.LinAlgError:
            return np.full(k, math.nan)
        out[1:] = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return out


# ---- aggregation ---------------------------------------------------------------------------------------------------


def current_judgements(
    judgements: Sequence[Judgement], current_sha256: Mapping[str, str | None]
) -> tuple[list[Judgement], int]:
    """(judgements whose two images are still the ones judged, how many were left out as stale or of runs no
    longer in the experiment)."""
    kept = [
        j for j in judgements if current_sha256.get(j.run_a) == j.sha256_a and current_sha256.get(j.run_b) == j.sha256_b
    ]
    return kept, len(judgements) - len(kept)


def preference_rows(
    judgements: Sequence[Judgement],
    values_of: Mapping[str, Mapping[str, str]],
    axis_values: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """Rows like :func:`llm_dit.metrics.summary.summarize`'s, per (metric, axis, value): ``win_rate`` (mean =
    (wins + ties/2) / n, Wilson 95% interval) and ``preference_bt`` (log-strength, first value 0, Wald 95% interval
    from the Fisher information; ``std`` is its standard error). Each row also carries ``wins``, ``ties``,
    ``losses``; n counts judgements.

    ``values_of``: run id -> its variables (axis -> value label); ``axis_values``: axis -> values in planned order.
    A value that no judgement involves gets no row."""
    rows: list[dict[str, Any]] = []
    by_axis: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_axis.setdefault(j.axis, []).append(j)
    for axis, values in axis_values.items():
        chosen = by_axis.get(axis, [])
        index = {value: i for i, value in enumerate(values)}
        k = len(values)
        wins = np.zeros((k, k))
        record = np.zeros((k, 3))  # wins, ties, losses
        for j in chosen:
            a = index.get(str(values_of.get(j.run_a, {}).get(axis)))
            b = index.get(str(values_of.get(j.run_b, {}).get(axis)))
            if a is None or b is None or a == b:
                continue
            if j.choice == "a":
                wins[a, b] += 1
                record[a, 0] += 1
                record[b, 2] += 1
            elif j.choice == "b":
                wins[b, a] += 1
                record[b, 0] += 1
                record[a, 2] += 1
            else:
                wins[a, b] += 0.5
                wins[b, a] += 0.5
                record[a, 1] += 1
                record[b, 1] += 1
        used = [i for i in range(k) if record[i].sum() > 0]
        if not used:
            continue
        sub = wins[np.ix_(used, used)]
        theta = bradley_terry(sub)
        errors = bt_standard_errors(sub, theta)
        for i in used:
            w, t, losses = (int(x) for x in record[i])
            n = w + t + losses
            rate = (w + t / 2) / n
            low, high = wilson_interval(w + t / 2, n)
            counts = {"wins": w, "ties": t, "losses": losses}
            rows.append(
                {"metric": WIN_METRIC, "axis": axis, "value": values[i], "n": n, "mean": rate,
                 "std": math.sqrt(rate * (1 - rate) / n), "ci95_low": low, "ci95_high": high, **counts}
            )  # fmt: skip
        for position, i in enumerate(used):
            w, t, losses = (int(x) for x in record[i])
            score, error = float(theta[position]), float(errors[position])
            rows.append(
                {"metric": BT_METRIC, "axis": axis, "value": values[i], "n": w + t + losses, "mean": score,
                 "std": error, "ci95_low": score - Z95 * error, "ci95_high": score + Z95 * error,
                 "wins": w, "ties": t, "losses": losses}
            )  # fmt: skip
    return rows


def run_image_sha256(directory: Path, run: Mapping[str, Any]) -> str | None:
    """The sha256 of a done run's image: the one the store recorded when it wrote the file (a regenerated image
    records its new hash), else the file's bytes hashed now (stores from before schema 4); None without an image.
    ``directory``: the experiment's folder, which image paths are relative to."""
    if run["status"] != "done" or not run.get("image_path"):
        return None
    if run.get("image_sha256"):
        return str(run["image_sha256"])
    path = directory / run["image_path"]
    return file_sha256(path) if path.is_file() else None


def axis_values(runs: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> dict[str, list[str]]:
    """axis -> its value labels in planned order (the order of ``runs``)."""
    return {
        axis: list(dict.fromkeys(str(run["variables"][axis]) for run in runs if axis in run["variables"]))
        for axis in axes
    }


def experiment_preferences(
    directory: Path, runs: Sequence[Mapping[str, Any]], values: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """An experiment's preference summary: ``rows`` (:func:`preference_rows` over the current judgements),
    ``judgements`` (all in the file), ``stale`` (left out: an image regenerated since, or a run gone) and
    ``raters``. ``directory``: the experiment's folder; ``runs``: its runs; ``values``: axis -> labels in planned
    order (:func:`axis_values`)."""
    judgements = read_judgements(directory / PREFERENCES_NAME)
    if not judgements:
        return {"rows": [], "judgements": 0, "stale": 0, "raters": []}
    kept, stale = current_judgements(judgements, {run["run_id"]: run_image_sha256(directory, run) for run in runs})
    values_of = {run["run_id"]: {k: str(v) for k, v in run["variables"].items()} for run in runs}
    return {
        "rows": preference_rows(kept, values_of, values),
        "judgements": len(judgements),
        "stale": stale,
        "raters": sorted({j.rater for j in kept}),
    }
