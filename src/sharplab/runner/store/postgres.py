"""The shared backend: the results store in a PostgreSQL database, for a study run by many machines.

Chosen by a URL (``--store postgresql://user:password@host:5432/db`` or ``$SHARPLAB_STORE``); the run
folders (checkpoints, history files, figures) stay under ``--out`` on a folder every host can reach. One
database holds one output folder's runs. The schema and the operations are those of the SQLite backend
(:mod:`sharplab.runner.store.sql`); here a claim locks its row with ``SELECT ... FOR UPDATE SKIP LOCKED``
(two hosts never claim one run; a row another host is claiming this instant counts as busy), every
token check holds the row lock until its transaction commits, and heartbeat ages are measured on the
server's clock, so hosts need not agree on the time.

Connection faults: a transaction that loses its connection (server restarted, network blip) is retried
whole on a new connection with exponential backoff, for at most ``$SHARPLAB_STORE_RETRY`` seconds
(default 300) before :class:`StoreUnavailable`; every write is idempotent under such a retry (a claim
recognises its own token). Wrong credentials, an unknown database or an unreachable host at the first
connection give one line, before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sharplab.runner.store.base import StoreError, StoreUnavailable, env_seconds
from sharplab.runner.store.sql import SQLStore, Tx

T = TypeVar("T")
SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq BIGSERIAL,
    run_id TEXT PRIMARY KEY,
    lab TEXT NOT NULL,
    study TEXT NOT NULL DEFAULT '',
    seed BIGINT NOT NULL,
    nproc INTEGER NOT NULL DEFAULT 1,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
    metrics TEXT,
    error TEXT,
    diverged_step BIGINT,
    last_step BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    heartbeat DOUBLE PRECISION,
    pid_start TEXT,
    threads INTEGER,
    files TEXT,
    token TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step BIGINT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION,
    PRIMARY KEY (run_id, step, name)
);
"""
#: messages of connection failures worth waiting out (anything else, e.g. a bad password, is final)
_TRANSIENT = ("could not connect", "connection refused", "server closed the connection", "terminating connection",
              "the database system is starting up", "the database system is shutting down", "no such file",
              "connection already closed", "timeout expired", "connection timed out", "could not receive data",
              "could not send data", "server conn crashed", "ssl syscall", "the database system is in recovery",
              "cannot connect now")
_SCHEMA_LOCK = 0x5348_4C42  # "SHLB": serialises schema creation of workers starting together


def retry_budget() -> float:
    """Seconds a running study waits for a lost server before giving up (``$SHARPLAB_STORE_RETRY``)."""
    return env_seconds("SHARPLAB_STORE_RETRY", 300.0)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _driver() -> Any:
    try:
        import psycopg2
        import psycopg2.extras  # noqa: F401
    except ImportError:
        raise StoreError("a postgresql:// store needs the psycopg2 driver: pip install psycopg2-binary") from None
    return psycopg2


def _transient(exc: BaseException) -> bool:
    psycopg2 = _driver()
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    if isinstance(exc, psycopg2.extensions.TransactionRollbackError):  # serialization failure, deadlock
        return True
    text = str(exc).lower()
    return isinstance(exc, psycopg2.OperationalError) and any(s in text for s in _TRANSIENT)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]


class PostgresStore(SQLStore):
    """The results store in the PostgreSQL database at ``url``, for the output folder ``out_dir``.

    ``create``: make the tables if missing (``False``/``readonly``: the store must hold runs already).
    ``wait``: when the server cannot be reached at all, wait for it (within :func:`retry_budget`) instead
    of failing at once; commands use ``wait=False`` for their first connection, so that a wrong URL is
    reported before anything starts."""

    shared = True
    paramstyle = "pyformat"
    lock_skip = " FOR UPDATE SKIP LOCKED"
    lock_wait = " FOR UPDATE"
    order_column = "seq"

    def __init__(self, url: str, out_dir: str | os.PathLike, create: bool = True, readonly: bool = False,
                 wait: bool = True) -> None:
        self._init_tokens()
        self.url = url
        scheme, sep, rest = url.partition("://")
        self._dsn = f"postgresql://{rest}" if sep and scheme in SCHEMES else url
        self.location = redact(url)
        self.out_dir = Path(out_dir)
        self.readonly = readonly
        self.conn: Any = None
        self._connect(first=True, wait=wait)
        try:
            if readonly or not create:
                exists = self._run(lambda tx: tx.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0],
                                   write=False)
                if not exists:
                    raise StoreError(f"no results in {self.location}; run `sharplab run STUDY.toml --out DIR "
                                     f"--store URL` first")
            else:
                self._run(self._create_schema)
            self.clock_offset = self.now() - time.time()
        except BaseException:
            self.close()
            raise

    def _create_schema(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                tx.execute(stmt)

    def _connect(self, first: bool = False, wait: bool = True) -> None:
        psycopg2 = _driver()
        deadline = time.monotonic() + retry_budget()
        delay = 0.2
        while True:
            try:
                self.conn = psycopg2.connect(self._dsn, connect_timeout=10,
                                             cursor_factory=psycopg2.extras.DictCursor,
                                             application_name="sharplab")
                if self.readonly:
                    self.conn.set_session(readonly=True)
                return
            except psycopg2.Error as exc:
                if not (wait and _transient(exc)) or time.monotonic() > deadline:
                    if first and not wait:
                        raise StoreError(f"store {self.location} cannot be opened: {_line(exc)}") from None
                    raise StoreUnavailable(f"store {self.location} unreachable for {retry_budget():.0f} s "
                                           f"({_line(exc)}); re-run the command once the server is back "
                                           "(finished work is kept)") from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _now(self, tx: Tx) -> float:
        return float(tx.execute("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")
                     .fetchone()[0])

    def _run(self, work: Callable[[Tx], T], write: bool = True) -> T:
        """``work`` in one transaction; on a lost connection, the whole transaction again on a new one."""
        psycopg2 = _driver()
        if write and self.readonly:
            raise StoreError(f"{self.location} was opened read-only")
        deadline: float | None = None
        delay = 0.2
        told = False
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self._connect()
                with self.conn.cursor() as cur:
                    result = work(Tx(cur, self.paramstyle))
                self.conn.commit()
                return result
            except psycopg2.Error as exc:
                self._drop(exc)
                if not _transient(exc):
                    raise StoreError(f"store {self.location}: {_line(exc)}") from None
                deadline = deadline or time.monotonic() + retry_budget()
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"store {self.location} unreachable for {retry_budget():.0f} s "
                                           f"({_line(exc)}); re-run the command once the server is back "
                                           "(finished work is kept)") from None
                if not told:
                    print(f"store {self.location}: {_line(exc)}; retrying for up to {retry_budget():.0f} s",
                          file=sys.stderr)
                    told = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except BaseException:
                self._drop(None)
                raise

    def _drop(self, exc: BaseException | None) -> None:
        """Roll back (a live connection) or forget (a broken one)."""
        if self.conn is None:
            return
        try:
            if exc is not None and _transient(exc):
                raise ConnectionError
            self.conn.rollback()
        except Exception:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def __enter__(self) -> PostgresStore:
        return self
