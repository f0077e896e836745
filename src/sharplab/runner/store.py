"""The results store: one SQLite database (WAL mode) per output folder.

Tables::

    runs(run_id PRIMARY KEY, lab, study, seed, nproc, config JSON, status, metrics JSON, error,
         diverged_step, last_step, attempts, created, started, finished, seconds, pid, host)
    epochs(run_id, step, name, value, PRIMARY KEY (run_id, step, name))   -- per-epoch metrics, long format

``status`` is one of ``pending``, ``running``, ``done``, ``failed``, ``diverged``. Every change is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a process killed at any moment leaves each row as it
was before or after the change, never half-written; several processes (``--jobs``, sweep workers) share
the file through SQLite's locking (``busy_timeout`` 60 s).

Stale runs: a ``running`` row is taken over (see :meth:`RunRecord.takeover_reason`) when its process is
gone (its pid is not alive, or now belongs to another process: the start time differs), its heartbeat is
older than :func:`heartbeat_timeout` seconds (``$SHARPLAB_HEARTBEAT_TIMEOUT``, default 120; the running
process beats every 15 s), or it was claimed on another host (a restarted container). ``sharplab status``
says why a run is blocked; ``sharplab reset DIR RUN`` makes a run pending again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
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
#: columns added after the first release; an older store gains them on open
_EXTRA_COLUMNS = {"heartbeat": "REAL", "pid_start": "TEXT", "threads": "INTEGER", "files": "TEXT"}
HEARTBEAT_EVERY = 15.0


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a ``running`` row is taken over."""
    try:
        value = float(os.environ.get("SHARPLAB_HEARTBEAT_TIMEOUT", "120"))
    except ValueError:
        raise SharplabError("$SHARPLAB_HEARTBEAT_TIMEOUT must be a number of seconds, e.g. 120") from None
    return value if value > 0 else 120.0


def process_start(pid: int | None) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, from /proc), or None where unknown."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


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
    heartbeat: float | None = None
    pid_start: str | None = None
    threads: int | None = None
    files: dict[str, int] | None = None
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    #: the run's folder (checkpoints, artifacts), for report sections that read what the run wrote
    run_dir: Path | None = None

    def takeover_reason(self, now: float | None = None) -> str | None:
        """Why this ``running`` row may be taken over (its holder is gone), or None if it is held."""
        if self.status != "running":
            return None
        if self.host != socket.gethostname():
            return f"claimed on host {self.host!r}, not this one ({socket.gethostname()!r})"
        if not pid_alive(self.pid):
            return f"its process {self.pid} is gone"
        start = process_start(self.pid)
        if self.pid_start and start and start != self.pid_start:
            return f"pid {self.pid} now belongs to another process"
        age = (now or time.time()) - self.heartbeat if self.heartbeat is not None else 0.0
        if age > heartbeat_timeout():
            return f"no heartbeat for {age:.0f} s (timeout {heartbeat_timeout():.0f} s)"
        return None

    def blocked_by(self) -> str:
        """For a held ``running`` row: who holds it, for ``sharplab status``."""
        age = time.time() - (self.heartbeat or self.started or time.time())
        return f"held by pid {self.pid} on {self.host}, heartbeat {age:.0f} s ago"

    @property
    def stale(self) -> bool:
        """Marked running, but its holder is gone (see :meth:`takeover_reason`)."""
        return self.takeover_reason() is not None

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
        check_out_dir(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            with self.transaction() as db:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
                for col, typ in _EXTRA_COLUMNS.items():
                    if col not in have:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SharplabError(f"{self.path} is not a readable results store ({exc}); move it away and re-run "
                                "the study (finished runs resume from their folders' checkpoints)") from None

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

    def claim(self, run_id: str, threads: int | None = None) -> str:
        """Mark a run ``running`` by this process. Returns ``"claimed"``, ``"finished"`` (done or diverged:
        nothing to do) or ``"busy"`` (a live process holds it; see :meth:`RunRecord.takeover_reason`)."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise SharplabError(f"run {run_id} is not in {self.path}")
            if row["status"] in FINISHED:
                return "finished"
            rec = _record(row, self.out_dir)
            mine = rec.pid == os.getpid() and rec.host == socket.gethostname()
            if rec.status == "running" and not mine and rec.takeover_reason() is None:
                return "busy"
            now = time.time()
            db.execute(
                "UPDATE runs SET status = 'running', started = ?, attempts = attempts + 1, pid = ?, "
                "host = ?, error = NULL, heartbeat = ?, pid_start = ?, threads = COALESCE(?, threads) "
                "WHERE run_id = ?",
                (now, os.getpid(), socket.gethostname(), now, process_start(os.getpid()), threads, run_id),
            )
            return "claimed"

    def beat(self, run_id: str) -> None:
        """Heartbeat of the process holding ``run_id``."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ? AND pid = ?",
                       (time.time(), run_id, os.getpid()))

    def reset(self, run_id: str, force: bool = False) -> str:
        """Make a run ``pending`` again and forget its per-epoch history; return its previous status.

        Refuses a run held by a live process, and a finished run, unless ``force``."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise SharplabError(f"run {run_id!r} is not in {self.path}; see `sharplab status {self.out_dir}`")
            rec = _record(row, self.out_dir)
            if not force and rec.status == "running" and rec.takeover_reason() is None:
                raise SharplabError(f"run {run_id} is {rec.blocked_by()}; stop that process first, or pass --force")
            if not force and rec.status in FINISHED:
                raise SharplabError(f"run {run_id} is {rec.status}; pass --force to discard its result and rerun it")
            db.execute("UPDATE runs SET status = 'pending', pid = NULL, host = NULL, heartbeat = NULL, "
                       "pid_start = NULL, error = NULL, metrics = NULL, diverged_step = NULL, last_step = NULL, "
                       "files = NULL WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            return rec.status

    def set_files(self, run_id: str, files: dict[str, int]) -> None:
        """Record the files a finished run left in its folder (name -> size), for ``status --check``."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET files = ? WHERE run_id = ?", (json.dumps(files, sort_keys=True), run_id))

    def restore_history(self, run_id: str, rows: Iterable[tuple[int, dict[str, float]]]) -> int:
        """Insert per-epoch metrics the store lacks (from the run folder's history file); return how many."""
        n = 0
        with self.transaction() as db:
            for step, metrics in rows:
                for k, v in metrics.items():
                    cur = db.execute("INSERT OR IGNORE INTO epochs (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                                     (run_id, int(step), k, _finite_or_none(v)))
                    n += cur.rowcount
            db.execute("UPDATE runs SET last_step = (SELECT MAX(step) FROM epochs WHERE run_id = ?) "
                       "WHERE run_id = ? AND last_step IS NULL", (run_id, run_id))
        return n

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO epochs (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(step), k, _finite_or_none(v)) for k, v in metrics.items()],
            )
            db.execute("UPDATE runs SET last_step = ? WHERE run_id = ?", (int(step), run_id))

    def finish(self, run_id: str, status: str, metrics: dict[str, float] | None = None,
               error: str | None = None, diverged_step: int | None = None,
               files: dict[str, int] | None = None) -> None:
        """Record the end of an attempt; wall time since :meth:`claim` is added to ``seconds``.
        ``files``: what a finished run left in its folder (name -> bytes), checked by ``status --check``."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, metrics = ?, error = ?, diverged_step = ?, finished = ?, "
                "seconds = seconds + (? - COALESCE(started, ?)), pid = NULL, files = ? WHERE run_id = ?",
                (status, json.dumps({k: _finite_or_none(v) for k, v in (metrics or {}).items()}),
                 error, diverged_step, now, now, now,
                 json.dumps(files, sort_keys=True) if files is not None else None, run_id),
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
        heartbeat=row["heartbeat"], pid_start=row["pid_start"], threads=row["threads"],
        files=json.loads(row["files"]) if row["files"] else None,
    )


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """One-line error unless ``out_dir`` is (or can be made) a writable folder."""
    from sharplab.io import check_writable_dir

    check_writable_dir(out_dir)


class Heartbeat:
    """A daemon thread beating ``run_id`` every :data:`HEARTBEAT_EVERY` seconds (own connection)."""

    def __init__(self, out_dir: Path, run_id: str, every: float = HEARTBEAT_EVERY) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(out_dir, run_id, every), daemon=True)

    def _loop(self, out_dir: Path, run_id: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                with ResultsStore(out_dir) as store:
                    store.beat(run_id)
            except (sqlite3.Error, SharplabError):  # a busy store: the next beat will do
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
