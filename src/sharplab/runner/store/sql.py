"""The SQL both backends run: every operation of the results store, written once.

A backend supplies a connection and a few dialect details (:class:`SQLStore` attributes and the
``_transaction`` hook): its placeholder style, the row-lock clauses of a claim (PostgreSQL:
``FOR UPDATE SKIP LOCKED``), the insertion-order column, and its clock. Statements are written with ``?``
placeholders and standard ``INSERT ... ON CONFLICT`` upserts, which SQLite (>= 3.24) and PostgreSQL share.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sharplab.runner.store.base import (
    EPOCH_COLUMNS,
    FINISHED,
    RUN_COLUMNS,
    STATUSES,
    ClaimLost,
    RunRecord,
    Store,
    StoreError,
    host_identity,
    process_start,
)

T = TypeVar("T")


class Tx:
    """One transaction's cursor: ``execute(sql, args)`` with ``?`` placeholders, converted for the driver."""

    def __init__(self, cursor: Any, paramstyle: str) -> None:
        self.cursor = cursor
        self._pyformat = paramstyle == "pyformat"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pyformat else sql

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        self.cursor.execute(self._sql(sql), tuple(args))
        return self.cursor

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> Any:
        self.cursor.executemany(self._sql(sql), [tuple(r) for r in rows])
        return self.cursor


class SQLStore(Store):
    """The results store's operations over a SQL connection; see :mod:`sharplab.runner.store.base`.

    Subclasses set :attr:`location` (for messages), :attr:`out_dir`, :attr:`readonly` and implement
    :meth:`_transaction`, :meth:`_now` and :meth:`close`.
    """

    #: a store many hosts share: another host's running row is taken over only after the heartbeat timeout
    shared = False
    paramstyle = "qmark"
    #: appended to the claim's SELECT: lock the row, skip it if another claim holds the lock
    lock_skip = ""
    #: appended to a token check's SELECT: lock the row until this transaction ends
    lock_wait = ""
    #: the column that orders rows as they were inserted
    order_column = "rowid"
    location = ""
    out_dir = Path(".")
    readonly = False

    def _init_tokens(self) -> None:
        self._tokens: dict[str, str] = {}
        self.clock_offset = 0.0

    # --- backend hooks -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        raise NotImplementedError

    def _run(self, work: Callable[[Tx], T], write: bool = True) -> T:
        """``work`` in one transaction (a backend that can reconnect retries it whole)."""
        if write and self.readonly:
            raise StoreError(f"{self.location} was opened read-only")
        with self._transaction(write) as tx:
            return work(tx)

    def _now(self, tx: Tx) -> float:
        return time.time()

    def __enter__(self) -> SQLStore:
        return self

    def now(self) -> float:
        """The store's clock (seconds since the epoch), which heartbeat ages are measured on."""
        return self._run(self._now, write=False)

    def token(self, run_id: str) -> str | None:
        """The claim token this store object holds for ``run_id`` (None: it did not claim the run)."""
        return self._tokens.get(run_id)

    # --- writes ------------------------------------------------------------------------------------
    def add_runs(self, specs: Iterable[Any]) -> int:
        """Insert pending rows for specs not yet known (``RunSpec``-like); return how many were new."""
        rows = [(s.run_id, s.lab, s.study, s.seed, s.nproc, json.dumps(s.config, sort_keys=True)) for s in specs]

        def work(tx: Tx) -> int:
            now = self._now(tx)
            n = 0
            for row in rows:
                cur = tx.execute("INSERT INTO runs (run_id, lab, study, seed, nproc, config, status, created) "
                                 "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT (run_id) DO NOTHING",
                                 (*row, now))
                n += max(cur.rowcount, 0)
            return n

        return self._run(work)

    def claim(self, run_id: str, threads: int | None = None) -> str:
        """Mark a run ``running`` by this process under a fresh claim token. Returns ``"claimed"``,
        ``"finished"`` (done or diverged: nothing to do) or ``"busy"`` (held by a live process, or being
        claimed by another host this instant; see :meth:`RunRecord.takeover_reason`)."""
        token = uuid.uuid4().hex
        pid, host = os.getpid(), host_identity()

        def work(tx: Tx) -> str:
            now = self._now(tx)
            row = tx.execute(f"SELECT * FROM runs WHERE run_id = ?{self.lock_skip}", (run_id,)).fetchone()
            if row is None:
                if tx.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                    raise StoreError(f"run {run_id} is not in {self.location}")
                return "busy"  # another host's claim holds the row lock right now
            rec = self._record(row)
            if rec.token == token:  # this very claim, committed before a lost connection: retried
                return "claimed"
            if rec.status in FINISHED:
                return "finished"
            mine = rec.pid == pid and rec.host == host
            if rec.status == "running" and not mine and rec.takeover_reason(now) is None:
                return "busy"
            tx.execute(
                "UPDATE runs SET status = 'running', started = ?, attempts = attempts + 1, pid = ?, host = ?, "
                "error = NULL, heartbeat = ?, pid_start = ?, threads = COALESCE(?, threads), token = ? "
                "WHERE run_id = ?",
                (now, pid, host, now, process_start(pid), threads, token, run_id))
            return "claimed"

        result = self._run(work)
        if result == "claimed":
            self._tokens[run_id] = token
        return result

    def _check_held(self, tx: Tx, run_id: str, token: str | None) -> None:
        """Raise :class:`ClaimLost` unless the row still carries ``token`` (no check when ``token`` is None)."""
        if token is None:
            return
        row = tx.execute(f"SELECT token, status, pid, host FROM runs WHERE run_id = ?{self.lock_wait}",
                         (run_id,)).fetchone()
        if row is not None and row["token"] == token:
            return
        if row is None:
            why = "it is no longer in the store"
        elif row["status"] == "running":
            why = f"taken over by pid {row['pid']} on {row['host']}"
        elif row["token"] is None:
            why = f"it was reset by `sharplab reset --force` and is now {row['status']}"
        else:
            why = f"it is now {row['status']}, ended by another process on {row['host']}"
        raise ClaimLost(f"run {run_id}: this process no longer holds it ({why}); stopped without writing")

    def check_held(self, run_id: str, token: str | None = None) -> None:
        """Raise :class:`ClaimLost` if this process's claim on ``run_id`` was reset or taken over."""
        token = token or self._tokens.get(run_id)
        self._run(lambda tx: self._check_held(tx, run_id, token), write=False)

    def beat(self, run_id: str, token: str | None = None) -> None:
        """Heartbeat of the process holding ``run_id`` (:class:`ClaimLost` if it no longer does)."""
        token = token or self._tokens.get(run_id)

        def work(tx: Tx) -> None:
            self._check_held(tx, run_id, token)
            if token is None:
                tx.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ? AND pid = ?",
                           (self._now(tx), run_id, os.getpid()))
            else:
                tx.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ?", (self._now(tx), run_id))

        self._run(work)

    def reset(self, run_id: str, force: bool = False) -> str:
        """Make a run ``pending`` again and forget its per-epoch history; return its previous status.

        Refuses a run held by a live process, and a finished run, unless ``force``. The claim token is
        cleared, so a process still running the run stops at its next write (:class:`ClaimLost`)."""

        def work(tx: Tx) -> str:
            row = tx.execute(f"SELECT * FROM runs WHERE run_id = ?{self.lock_wait}", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"run {run_id!r} is not in {self.location}; see `sharplab status {self.out_dir}`")
            rec = self._record(row)
            if not force and rec.status == "running" and rec.takeover_reason(self._now(tx)) is None:
                raise StoreError(f"run {run_id} is {rec.blocked_by()}; stop that process first, or pass --force")
            if not force and rec.status in FINISHED:
                raise StoreError(f"run {run_id} is {rec.status}; pass --force to discard its result and rerun it")
            tx.execute("UPDATE runs SET status = 'pending', pid = NULL, host = NULL, heartbeat = NULL, "
                       "pid_start = NULL, error = NULL, metrics = NULL, diverged_step = NULL, last_step = NULL, "
                       "files = NULL, token = NULL WHERE run_id = ?", (run_id,))
            tx.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            return rec.status

        return self._run(work)

    def set_files(self, run_id: str, files: dict[str, Any]) -> None:
        """Record the files a finished run left in its folder (name -> size), for ``status --check``."""
        token = self._tokens.get(run_id)

        def work(tx: Tx) -> None:
            self._check_held(tx, run_id, token)
            tx.execute("UPDATE runs SET files = ? WHERE run_id = ?", (json.dumps(files, sort_keys=True), run_id))

        self._run(work)

    def restore_history(self, run_id: str, rows: Iterable[tuple[int, dict[str, float]]]) -> int:
        """Insert per-epoch metrics the store lacks (from the run folder's history file); return how many."""
        token = self._tokens.get(run_id)
        values = [(run_id, int(step), k, _finite_or_none(v)) for step, metrics in rows for k, v in metrics.items()]

        def work(tx: Tx) -> int:
            self._check_held(tx, run_id, token)
            n = 0
            for value in values:
                cur = tx.execute("INSERT INTO epochs (run_id, step, name, value) VALUES (?, ?, ?, ?) "
                                 "ON CONFLICT (run_id, step, name) DO NOTHING", value)
                n += max(cur.rowcount, 0)
            tx.execute("UPDATE runs SET last_step = (SELECT MAX(step) FROM epochs WHERE run_id = ?) "
                       "WHERE run_id = ? AND last_step IS NULL", (run_id, run_id))
            return n

        return self._run(work)

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Record (or replace) the metrics of ``step``; :class:`ClaimLost` if this process lost the run."""
        token = self._tokens.get(run_id)
        values = [(run_id, int(step), k, _finite_or_none(v)) for k, v in metrics.items()]

        def work(tx: Tx) -> None:
            self._check_held(tx, run_id, token)
            tx.executemany("INSERT INTO epochs (run_id, step, name, value) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (run_id, step, name) DO UPDATE SET value = excluded.value", values)
            tx.execute("UPDATE runs SET last_step = ? WHERE run_id = ?", (int(step), run_id))

        self._run(work)

    def finish(self, run_id: str, status: str, metrics: dict[str, float] | None = None,
               error: str | None = None, diverged_step: int | None = None,
               files: dict[str, Any] | None = None, token: str | None = None) -> None:
        """Record the end of an attempt; wall time since :meth:`claim` is added to ``seconds``.

        ``files``: what a finished run left in its folder (name -> bytes), checked by ``status --check``.
        The claim token (``token``, else this store's own claim of the run) is checked in the same
        transaction: :class:`ClaimLost` if the run was reset or taken over meanwhile. A store that never
        claimed the run and passes no token writes unchecked (tools and tests filling a store)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        token = token or self._tokens.get(run_id)
        clean = json.dumps({k: _finite_or_none(v) for k, v in (metrics or {}).items()})
        listing = json.dumps(files, sort_keys=True) if files is not None else None

        def work(tx: Tx) -> None:
            self._check_held(tx, run_id, token)
            now = self._now(tx)
            tx.execute(
                "UPDATE runs SET status = ?, metrics = ?, error = ?, diverged_step = ?, finished = ?, "
                "seconds = seconds + (? - COALESCE(started, ?)), pid = NULL, files = ? WHERE run_id = ?",
                (status, clean, error, diverged_step, now, now, now, listing, run_id))

        self._run(work)
        self._tokens.pop(run_id, None)

    # --- reads -------------------------------------------------------------------------------------
    def runs(self, lab: str | None = None, status: str | None = None,
             history: bool = True) -> list[RunRecord]:
        """All runs (optionally of one lab / status), oldest first, with per-epoch history."""
        query, args = "SELECT * FROM runs WHERE 1 = 1", []
        if lab is not None:
            query, args = query + " AND lab = ?", [*args, lab]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]

        def work(tx: Tx) -> list[RunRecord]:
            rows = tx.execute(query + f" ORDER BY created, {self.order_column}", args).fetchall()
            records = [self._record(r) for r in rows]
            if history and records:
                by_id = {r.run_id: r for r in records}
                for run_id, step, name, value in tx.execute("SELECT run_id, step, name, value FROM epochs"):
                    if run_id in by_id:
                        by_id[run_id].history.setdefault(step, {})[name] = _nan_if_none(value)
                for r in records:
                    r.history = dict(sorted(r.history.items()))
            return records

        return self._run(work, write=False)

    def get(self, run_id: str) -> RunRecord:
        """One run with its per-epoch history."""

        def work(tx: Tx) -> RunRecord:
            row = tx.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"run {run_id!r} is not in {self.location}; see `sharplab status {self.out_dir}`")
            rec = self._record(row)
            for step, name, value in tx.execute(
                    "SELECT step, name, value FROM epochs WHERE run_id = ? ORDER BY step", (run_id,)).fetchall():
                rec.history.setdefault(step, {})[name] = _nan_if_none(value)
            return rec

        return self._run(work, write=False)

    # --- copies ------------------------------------------------------------------------------------
    def raw_rows(self) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        """Every ``runs`` row (column -> value, in insertion order) and every ``epochs`` row, as stored."""

        def work(tx: Tx) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
            rows = tx.execute(f"SELECT * FROM runs ORDER BY created, {self.order_column}").fetchall()
            runs = [{c: _get(r, c) for c in RUN_COLUMNS} for r in rows]
            epochs = [tuple(e) for e in tx.execute(
                "SELECT run_id, step, name, value FROM epochs ORDER BY run_id, step, name").fetchall()]
            return runs, epochs

        return self._run(work, write=False)

    def insert_raw(self, runs: list[dict[str, Any]], epochs: list[tuple[Any, ...]]) -> tuple[int, int]:
        """Add rows copied from another store in one transaction: runs already here and identical (with
        their history) are skipped; any that differ refuse the whole copy. Returns (runs added, kept)."""
        by_run: dict[str, list[tuple[Any, ...]]] = {}
        for e in epochs:
            by_run.setdefault(e[0], []).append(tuple(e))

        def work(tx: Tx) -> tuple[int, int]:
            have = {r["run_id"]: {c: _get(r, c) for c in RUN_COLUMNS}
                    for r in tx.execute("SELECT * FROM runs").fetchall()}
            have_epochs: dict[str, list[tuple[Any, ...]]] = {}
            for e in tx.execute("SELECT run_id, step, name, value FROM epochs ORDER BY run_id, step, name"):
                have_epochs.setdefault(e[0], []).append(tuple(e))
            conflicts = [r["run_id"] for r in runs if r["run_id"] in have and (
                have[r["run_id"]] != r
                or sorted(have_epochs.get(r["run_id"], [])) != sorted(by_run.get(r["run_id"], [])))]
            if conflicts:
                raise StoreError(f"{self.location} already has {len(conflicts)} of these runs with other contents "
                                 f"(e.g. {conflicts[0]}); nothing copied")
            new = [r for r in runs if r["run_id"] not in have]
            cols = ", ".join(RUN_COLUMNS)
            marks = ", ".join("?" for _ in RUN_COLUMNS)
            tx.executemany(f"INSERT INTO runs ({cols}) VALUES ({marks})", [[r[c] for c in RUN_COLUMNS] for r in new])
            tx.executemany(f"INSERT INTO epochs ({', '.join(EPOCH_COLUMNS)}) VALUES (?, ?, ?, ?)",
                           [e for r in new for e in by_run.get(r["run_id"], [])])
            return len(new), len(runs) - len(new)

        return self._run(work)

    def _record(self, row: Any) -> RunRecord:
        metrics = json.loads(row["metrics"]) if row["metrics"] else {}
        files = _get(row, "files")
        return RunRecord(
            run_id=row["run_id"], lab=row["lab"], study=row["study"], seed=row["seed"], nproc=row["nproc"],
            config=json.loads(row["config"]), status=row["status"],
            metrics={k: _nan_if_none(v) for k, v in metrics.items()}, error=row["error"],
            diverged_step=row["diverged_step"], last_step=row["last_step"], attempts=row["attempts"],
            created=row["created"], started=row["started"], finished=row["finished"], seconds=row["seconds"],
            pid=row["pid"], host=row["host"], run_dir=self.out_dir / "runs" / row["run_id"],
            heartbeat=_get(row, "heartbeat"), pid_start=_get(row, "pid_start"), threads=_get(row, "threads"),
            files=json.loads(files) if files else None, token=_get(row, "token"),
            shared=self.shared, clock_offset=self.clock_offset,
        )


def _get(row: Any, column: str) -> Any:
    """``row[column]``, or None for a column an older store lacks (opened read-only, so not migrated)."""
    try:
        return row[column]
    except (IndexError, KeyError):
        return None


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


def _nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else float(v)
