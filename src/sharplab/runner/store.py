"""The results store: one SQLite database (WAL mode) per output folder.

Tables::

    runs(run_id PRIMARY KEY, lab, study, seed, nproc, config JSON, status, metrics JSON, error,
         diverged_step, last_step, attempts, created, started, finished, seconds, pid, host)
    epochs(run_id, step, name, value, PRIMARY KEY (run_id, step, name))   -- per-epoch metrics, long format

``status`` is one of ``pending``, ``running``, ``done``, ``failed``, ``diverged``. Every change is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a process killed at any moment leaves each row as it
was before or after the change, never half-written; several processes (``--jobs``, sweep workers) share
the file through SQLite's locking (``busy_timeout`` 60 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharplab.errors import SharplabError

STORE_NAME = "results.sqlite"
STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "diverged")
DISPLAY_ORDER = ("done", "running", "interrupted", "pending", "failed", "diverged")


def status_line(statuses: Iterable[str]) -> str:
    """``"4 done, 1 running, 2 diverged"`` in :data:`DISPLAY_ORDER`."""
    from collections import Counter

    counts = Counter(statuses)
    return ", ".join(f"{counts[s]} {s}" for s in DISPLAY_ORDER if counts[s])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    lab TEXT NOT NULL,
    study TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL,
    nproc INTEGER NOT NULL DEFAULT 1,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
    metrics TEXT,
    error TEXT,
    diverged_step INTEGER,
    last_step INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, name)
);
"""


@dataclass
class RunRecord:
    """A run as stored. ``history`` maps step -> metrics (filled by :meth:`ResultsStore.runs`)."""

    run_id: str
    lab: str
    study: str
    seed: int
    nproc: int
    config: dict[str, Any]
    status: str
    metrics: dict[str, float]
    error: str | None
    diverged_step: int | None
    last_step: int | None
    attempts: int
    created: float
    started: float | None
    finished: float | None
    seconds: float
    pid: int | None
    host: str | None
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    #: the run's folder (checkpoints, artifacts), for report sections that read what the run wrote
    run_dir: Path | None = None

    @property
    def stale(self) -> bool:
        """Marked running, but its process on this machine is gone (killed or crashed)."""
        return self.status == "running" and self.host == socket.gethostname() and not pid_alive(self.pid)

    @property
    def display_status(self) -> str:
        return "interrupted" if self.stale else self.status


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """Open (creating if needed) ``<out_dir>/results.sqlite``. One instance per process."""

    def __init__(self, out_dir: str | os.PathLike, create: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STORE_NAME
        if not create and not self.path.exists():
            raise SharplabError(f"no results in {str(self.out_dir)!r}; "
                                "run `sharplab run STUDY.toml --out DIR` first")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 60000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction() as db:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- writes ------------------------------------------------------------------------------------
    def add_runs(self, specs: Iterable[Any]) -> int:
        """Insert pending rows for specs not yet known (``RunSpec``-like); return how many were new."""
        now = time.time()
        with self.transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO runs (run_id, lab, study, seed, nproc, config, status, created) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                [(s.run_id, s.lab, s.study, s.seed, s.nproc, json.dumps(s.config, sort_keys=True), now)
                 for s in specs],
            )
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] - before

    def claim(self, run_id: str) -> str:
        """Mark a run ``running`` by this process. Returns ``"claimed"``, ``"finished"`` (done or diverged:
        nothing to do) or ``"busy"`` (another live process on this machine is running it)."""
        with self.transaction() as db:
            row = db.execute("SELECT status, pid, host FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise SharplabError(f"run {run_id} is not in {self.path}")
            if row["status"] in FINISHED:
                return "finished"
            if (row["status"] == "running" and row["pid"] != os.getpid()
                    and (row["host"] != socket.gethostname() or pid_alive(row["pid"]))):
                return "busy"
            db.execute(
                "UPDATE runs SET status = 'running', started = ?, attempts = attempts + 1, pid = ?, "
                "host = ?, error = NULL WHERE run_id = ?",
                (time.time(), os.getpid(), socket.gethostname(), run_id),
            )
            return "claimed"

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO epochs (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(step), k, _finite_or_none(v)) for k, v in metrics.items()],
            )
            db.execute("UPDATE runs SET last_step = ? WHERE run_id = ?", (int(step), run_id))

    def finish(self, run_id: str, status: str, metrics: dict[str, float] | None = None,
               error: str | None = None, diverged_step: int | None = None) -> None:
        """Record the end of an attempt; wall time since :meth:`claim` is added to ``seconds``."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, metrics = ?, error = ?, diverged_step = ?, finished = ?, "
                "seconds = seconds + (? - COALESCE(started, ?)), pid = NULL WHERE run_id = ?",
                (status, json.dumps({k: _finite_or_none(v) for k, v in (metrics or {}).items()}),
                 error, diverged_step, now, now, now, run_id),
            )

    # --- reads -------------------------------------------------------------------------------------
    def runs(self, lab: str | None = None, status: str | None = None,
             history: bool = True) -> list[RunRecord]:
        """All runs (optionally of one lab / status), oldest first, with per-epoch history."""
        query, args = "SELECT * FROM runs WHERE 1 = 1", []
        if lab is not None:
            query, args = query + " AND lab = ?", [*args, lab]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        rows = self.db.execute(query + " ORDER BY created, rowid", args).fetchall()
        records = [_record(r, self.out_dir) for r in rows]
        if history and records:
            by_id = {r.run_id: r for r in records}
            for run_id, step, name, value in self.db.execute("SELECT run_id, step, name, value FROM epochs"):
                if run_id in by_id:
                    by_id[run_id].history.setdefault(step, {})[name] = _nan_if_none(value)
            for r in records:
                r.history = dict(sorted(r.history.items()))
        return records

    def get(self, run_id: str) -> RunRecord:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise SharplabError(f"run {run_id!r} is not in {self.path}; see `sharplab status {self.out_dir}`")
        rec = _record(row, self.out_dir)
        for step, name, value in self.db.execute(
            "SELECT step, name, value FROM epochs WHERE run_id = ? ORDER BY step", (run_id,)
        ):
            rec.history.setdefault(step, {})[name] = _nan_if_none(value)
        return rec


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


def _nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _record(row: sqlite3.Row, out_dir: Path) -> RunRecord:
    metrics = json.loads(row["metrics"]) if row["metrics"] else {}
    return RunRecord(
        run_id=row["run_id"], lab=row["lab"], study=row["study"], seed=row["seed"], nproc=row["nproc"],
        config=json.loads(row["config"]), status=row["status"],
        metrics={k: _nan_if_none(v) for k, v in metrics.items()}, error=row["error"],
        diverged_step=row["diverged_step"], last_step=row["last_step"], attempts=row["attempts"],
        created=row["created"], started=row["started"], finished=row["finished"], seconds=row["seconds"],
        pid=row["pid"], host=row["host"], run_dir=out_dir / "runs" / row["run_id"],
    )
