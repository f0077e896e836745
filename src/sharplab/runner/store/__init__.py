"""The results store of ``sharplab run``: one interface, two backends chosen by URL.

* no URL (the default): SQLite, ``DIR/results.sqlite`` beside the run folders (:mod:`.sqlite`);
* ``sqlite:///FILE``: SQLite in another file;
* ``postgresql://user:pass@host:port/db``: PostgreSQL, shared by many machines (:mod:`.postgres`).

The URL comes from ``--store`` or, when that is not given, ``$SHARPLAB_STORE``. Semantics (claims,
tokens, heartbeats, stale runs) are in :mod:`.base`; the SQL both backends run is in :mod:`.sql`.
``ResultsStore(DIR)`` is the SQLite store, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sharplab.runner.store.base import (
    DISPLAY_ORDER,
    FINISHED,
    HEARTBEAT_EVERY,
    STATUSES,
    STORE_NAME,
    ClaimLost,
    RunRecord,
    Store,
    StoreError,
    StoreUnavailable,
    check_out_dir,
    heartbeat_every,
    heartbeat_timeout,
    host_identity,
    pid_alive,
    process_start,
    status_line,
)
from sharplab.runner.store.heartbeat import Heartbeat
from sharplab.runner.store.sql import SQLStore
from sharplab.runner.store.sqlite import SQLiteStore

ResultsStore = SQLiteStore
STORE_ENV = "SHARPLAB_STORE"
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")

__all__ = ["DISPLAY_ORDER", "FINISHED", "HEARTBEAT_EVERY", "STATUSES", "STORE_NAME", "ClaimLost", "Heartbeat",
           "ResultsStore", "RunRecord", "SQLStore", "SQLiteStore", "Store", "StoreError", "StoreUnavailable",
           "check_out_dir", "check_store_url", "heartbeat_every", "heartbeat_timeout", "host_identity",
           "open_location", "open_store", "pid_alive", "process_start", "resolve_store", "status_line"]


def resolve_store(url: str | None) -> str | None:
    """``url``, else ``$SHARPLAB_STORE``, else None (SQLite in the output folder); checked."""
    url = url if url is not None else (os.environ.get(STORE_ENV, "").strip() or None)
    if url is not None:
        check_store_url(url)
    return url


def check_store_url(url: str) -> str:
    """One-line :class:`StoreError` for a store URL of an unknown scheme or without a path/database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", *POSTGRES_SCHEMES):
        raise StoreError(f"--store {url!r} is not a store URL; use postgresql://user@host/db or sqlite:///FILE")
    if scheme == "sqlite" and (not rest.startswith("/") or rest == "/"):
        raise StoreError(f"--store {url!r}: write sqlite:///relative/path.sqlite or sqlite:////absolute.sqlite")
    return url


def open_store(out_dir: str | os.PathLike, url: str | None = None, *, create: bool = True,
               readonly: bool = False, wait: bool = True) -> SQLStore:
    """The store of output folder ``out_dir``: PostgreSQL or SQLite per ``url`` (see :func:`resolve_store`).

    ``create=False``: the store must exist; ``readonly``: open to read only, writing nothing (status,
    export, report); ``wait=False``: fail at once with one line when a server cannot be reached."""
    url = resolve_store(url)
    if url is None:
        return SQLiteStore(out_dir, create=create, readonly=readonly)
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        return SQLiteStore(out_dir, create=create, readonly=readonly, path=rest[1:])
    from sharplab.runner.store.postgres import PostgresStore

    return PostgresStore(url, out_dir, create=create, readonly=readonly, wait=wait)


def open_location(location: str, readonly: bool) -> Any:
    """A store named by a folder (its ``results.sqlite``) or a URL, for ``sharplab store copy``."""
    if "://" in location:
        check_store_url(location)
        folder = Path(location.partition("://")[2][1:]).parent if location.startswith("sqlite") else Path(".")
        return open_store(folder, location, create=not readonly, readonly=readonly, wait=False)
    return SQLiteStore(location, create=not readonly, readonly=readonly)
