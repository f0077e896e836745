"""The embedded backend: one SQLite database (WAL mode) per output folder, ``DIR/results.sqlite``.

Every change is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, so a process killed at any moment
leaves each row as it was before or after the change; several processes of one machine (``--jobs``,
sweep workers) share the file through SQLite's locking (``busy_timeout`` 60 s). SQLite's locking is not
safe on network file systems: for many machines use the PostgreSQL backend. A read-only open
(``status``, ``export``, ``report``) writes nothing, not even the schema, and works in a read-only folder.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sharplab.runner.store.base import STORE_NAME, StoreError, check_out_dir
from sharplab.runner.store.sql import SQLStore, Tx

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
#: columns added after the first release; an older store gains them on a writable open
_EXTRA_COLUMNS = {"heartbeat": "REAL", "pid_start": "TEXT", "threads": "INTEGER", "files": "TEXT", "token": "TEXT"}
_MAGIC = b"SQLite format 3\x00"


def is_sqlite_file(path: Path) -> bool:
    """True for an empty file or one that starts with SQLite's header (what SQLite itself would open).

    Only for a file no connection of this process has open (e.g. before a sweep's storage is created):
    closing the descriptor read here would drop SQLite's POSIX locks on it (see :class:`SQLiteStore`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError:
        return False
    return head == b"" or head == _MAGIC


class SQLiteStore(SQLStore):
    """Open (creating if needed) ``<out_dir>/results.sqlite``; ``readonly`` opens an existing one to read.

    ``path``: another database file than ``<out_dir>/results.sqlite`` (``sqlite:///FILE`` URLs)."""

    def __init__(self, out_dir: str | os.PathLike, create: bool = True, readonly: bool = False,
                 path: str | os.PathLike | None = None) -> None:
        self._init_tokens()
        self.out_dir = Path(out_dir)
        self.path = Path(path) if path is not None else self.out_dir / STORE_NAME
        self.location = str(self.path)
        self.readonly = readonly
        if (readonly or not create) and not self.path.exists():
            raise StoreError(f"no results in {str(self.out_dir)!r}; run `sharplab run STUDY.toml --out DIR` first")
        # No header check with Python's open() here: closing any descriptor of the database file drops every
        # POSIX lock this process holds on it, so a second store opened beside a live one (the heartbeat's)
        # would let another process take the file as unused, checkpoint and delete the WAL under us -- a
        # corrupt store under --jobs. SQLite's own open reports a file that is not a database instead.
        if readonly:
            self.db = self._open_readonly()
            return
        check_out_dir(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
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
            with contextlib.suppress(Exception):
                self.db.close()
            raise _open_error(self.path, exc) from None

    def _open_readonly(self) -> sqlite3.Connection:
        """A connection that never writes: ``mode=ro``, or ``immutable=1`` where the folder is read-only
        (WAL's shared-memory file cannot be made there)."""
        last: sqlite3.DatabaseError | None = None
        for flags in ("mode=ro", "immutable=1"):
            db = None
            try:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{flags}", uri=True, timeout=60,
                                     isolation_level=None, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA busy_timeout = 60000")
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
                return db
            except sqlite3.DatabaseError as exc:
                if db is not None:
                    db.close()
                last = exc
                if "no such table" in str(exc):
                    break
        assert last is not None
        if "no such table" in str(last):
            raise StoreError(f"no results in {str(self.out_dir)!r} ({self.path} holds no runs table); "
                             "run `sharplab run STUDY.toml --out DIR` first")
        raise _open_error(self.path, last)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SQLiteStore:
        return self

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

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        try:
            self.db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.DatabaseError as exc:
            raise _open_error(self.path, exc) from None
        try:
            yield Tx(self.db.cursor(), self.paramstyle)
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if not _store_fault(exc):  # a constraint or a statement error is a bug: keep its traceback
                raise
            # disk full, I/O error, locked past busy_timeout, or a damaged page ("disk image is malformed")
            raise _open_error(self.path, exc) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise _open_error(self.path, exc) from None

    def integrity_problems(self) -> list[str]:
        """What SQLite's ``PRAGMA quick_check`` finds wrong in the database file (empty: nothing)."""
        try:
            rows = [" ".join(str(r[0]).split()) for r in self.db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [] if rows == ["ok"] else rows


def _store_fault(exc: sqlite3.DatabaseError) -> bool:
    """True for errors of the database file or its disk (not of a statement): OperationalError and the
    plain DatabaseError SQLite raises for a damaged page."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _open_error(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """A one-line error that tells a full disk or a permission problem from a damaged store."""
    text = str(exc)
    if "file is not a database" in text:
        return StoreError(f"{path} is not a SQLite results store (no SQLite header); move it away and re-run the "
                          "study (finished runs resume from their folders' checkpoints)")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StoreError(f"{path} is locked by another process for over 60 s ({text}); nothing was lost: run the "
                          "command again when that process is done")
    if isinstance(exc, sqlite3.OperationalError) and any(
            s in text for s in ("full", "readonly", "read-only", "unable to open", "disk I/O")):
        return StoreError(f"{path} cannot be used now ({text}); the store is not damaged and nothing was lost: "
                          "free disk space or fix permissions, then run the command again")
    return StoreError(f"{path} is not a readable results store ({text}); move it away and re-run the study "
                      "(finished runs resume from their folders' checkpoints)")
