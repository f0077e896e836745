"""What every results-store backend shares: the interface (:class:`Store`), the run record, the stale-run
policy, errors.

A store holds two tables::

    runs(run_id PRIMARY KEY, lab, study, seed, nproc, config JSON, status, metrics JSON, error,
         diverged_step, last_step, attempts, created, started, finished, seconds, pid, host,
         heartbeat, pid_start, threads, files JSON, token)
    epochs(run_id, step, name, value, PRIMARY KEY (run_id, step, name))   -- per-epoch metrics, long format

``status`` is one of ``pending``, ``running``, ``done``, ``failed``, ``diverged``. Every change is one
transaction. A claim writes a fresh random ``token`` into the row; the claiming process checks it in the
same transaction as every later write of that run (history, heartbeat, finish), so a process whose run
was reset (``reset --force``) or taken over stops at its next write with :class:`ClaimLost`.

Host identity: ``$SHARPLAB_HOST`` if set, else the host name. Stale runs (:meth:`RunRecord.takeover_reason`):
a ``running`` row is taken over when its heartbeat is older than :func:`heartbeat_timeout` seconds, or
(same host identity) its process is gone or its pid now belongs to another process. On a store of one
machine (SQLite) a row claimed under another host identity is taken over at once (a restarted container);
on a shared store (PostgreSQL) another host's row is taken over only after the heartbeat timeout.
"""

from __future__ import annotations

import abc
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharplab.errors import SharplabError

STORE_NAME = "results.sqlite"
STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "diverged")
DISPLAY_ORDER = ("done", "running", "interrupted", "pending", "failed", "diverged")
HEARTBEAT_EVERY = 15.0
#: every column of ``runs``, in the order a copy writes them
RUN_COLUMNS = ("run_id", "lab", "study", "seed", "nproc", "config", "status", "metrics", "error",
               "diverged_step", "last_step", "attempts", "created", "started", "finished", "seconds", "pid",
               "host", "heartbeat", "pid_start", "threads", "files", "token")
EPOCH_COLUMNS = ("run_id", "step", "name", "value")


class StoreError(SharplabError):
    """The results store cannot be opened or used (the message names the store and what to do)."""


class StoreUnavailable(StoreError):
    """The store's server cannot be reached (after the retries allowed for a running study)."""


class ClaimLost(StoreError):
    """This process no longer holds the run it is writing: it was reset (``--force``) or taken over."""


def host_identity() -> str:
    """This host's name in the store: ``$SHARPLAB_HOST`` if set (e.g. a SLURM node or task), else the host name."""
    return os.environ.get("SHARPLAB_HOST", "").strip() or socket.gethostname()


def env_seconds(name: str, default: float) -> float:
    """Seconds from ``$name`` (``default`` when unset, not positive or infinite; one-line error when not a number)."""
    try:
        value = float(os.environ.get(name, str(default)))
    except ValueError:
        raise SharplabError(f"${name} must be a number of seconds, e.g. {default:g}") from None
    return value if value > 0 and value == value and value != float("inf") else default


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a ``running`` row is taken over (``$SHARPLAB_HEARTBEAT_TIMEOUT``)."""
    return env_seconds("SHARPLAB_HEARTBEAT_TIMEOUT", 120.0)


def heartbeat_every() -> float:
    """Seconds between heartbeats: :data:`HEARTBEAT_EVERY`, or a quarter of a shorter timeout."""
    return min(HEARTBEAT_EVERY, heartbeat_timeout() / 4)


def process_start(pid: int | None) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, from /proc), or None where unknown."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_line(statuses: Iterable[str]) -> str:
    """``"4 done, 1 running, 2 diverged"`` in :data:`DISPLAY_ORDER`."""
    counts = Counter(statuses)
    return ", ".join(f"{counts[s]} {s}" for s in DISPLAY_ORDER if counts[s])


@dataclass
class RunRecord:
    """A run as stored. ``history`` maps step -> metrics (filled by :meth:`Store.runs`)."""

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
    #: files the finished run left: name -> [size, SHA-256] (older stores: name -> size)
    files: dict[str, Any] | None = None
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    #: the run's folder (checkpoints, artifacts), for report sections that read what the run wrote
    run_dir: Path | None = None
    #: the claim token of the process holding the run (None when nobody holds it)
    token: str | None = None
    #: read from a store that many hosts share (PostgreSQL): another host's row is taken over on timeout only
    shared: bool = field(default=False, compare=False, repr=False)
    #: the store's clock minus this machine's (a server's clock decides heartbeat ages)
    clock_offset: float = field(default=0.0, compare=False, repr=False)

    def takeover_reason(self, now: float | None = None) -> str | None:
        """Why this ``running`` row may be taken over (its holder is gone), or None if it is held."""
        if self.status != "running":
            return None
        here = host_identity()
        if self.host != here and not self.shared:
            return f"claimed on host {self.host!r}, not this one ({here!r})"
        if self.host == here:
            if not pid_alive(self.pid):
                return f"its process {self.pid} is gone"
            start = process_start(self.pid)
            if self.pid_start and start and start != self.pid_start:
                return f"pid {self.pid} now belongs to another process"
        now = now if now is not None else time.time() + self.clock_offset
        age = now - self.heartbeat if self.heartbeat is not None else 0.0
        if age > heartbeat_timeout():
            return f"no heartbeat for {age:.0f} s (timeout {heartbeat_timeout():.0f} s)"
        return None

    def blocked_by(self) -> str:
        """For a held ``running`` row: who holds it, for ``sharplab status``."""
        now = time.time() + self.clock_offset
        age = now - (self.heartbeat or self.started or now)
        return f"held by pid {self.pid} on {self.host}, heartbeat {age:.0f} s ago"

    @property
    def stale(self) -> bool:
        """Marked running, but its holder is gone (see :meth:`takeover_reason`)."""
        return self.takeover_reason() is not None

    @property
    def display_status(self) -> str:
        return "interrupted" if self.stale else self.status


class Store(abc.ABC):
    """The results store's interface; :class:`~sharplab.runner.store.sql.SQLStore` implements it once for
    both backends. Writes of a run this store claimed check its claim token (:class:`ClaimLost`)."""

    #: a store many hosts share (another host's running row is taken over only after the heartbeat timeout)
    shared: bool = False
    #: where the store is, for messages (a file path, or a URL without its password)
    location: str = ""
    out_dir: Path = Path(".")

    @abc.abstractmethod
    def add_runs(self, specs: Iterable[Any]) -> int:
        """Insert pending rows for specs not yet known; return how many were new."""

    @abc.abstractmethod
    def claim(self, run_id: str, threads: int | None = None) -> str:
        """``"claimed"`` (under a fresh token), ``"finished"`` or ``"busy"``."""

    @abc.abstractmethod
    def token(self, run_id: str) -> str | None:
        """The claim token this store object holds for ``run_id``."""

    @abc.abstractmethod
    def check_held(self, run_id: str, token: str | None = None) -> None:
        """:class:`ClaimLost` unless this process still holds ``run_id``."""

    @abc.abstractmethod
    def beat(self, run_id: str, token: str | None = None) -> None:
        """Heartbeat of the holder of ``run_id``."""

    @abc.abstractmethod
    def reset(self, run_id: str, force: bool = False) -> str:
        """Make a run pending (history forgotten, holder fenced); return its previous status."""

    @abc.abstractmethod
    def set_files(self, run_id: str, files: dict[str, Any]) -> None:
        """Record the files a finished run left in its folder."""

    @abc.abstractmethod
    def restore_history(self, run_id: str, rows: Iterable[tuple[int, dict[str, float]]]) -> int:
        """Insert per-epoch metrics the store lacks; return how many."""

    @abc.abstractmethod
    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Record (or replace) the metrics of ``step``."""

    @abc.abstractmethod
    def finish(self, run_id: str, status: str, metrics: dict[str, float] | None = None,
               error: str | None = None, diverged_step: int | None = None,
               files: dict[str, Any] | None = None, token: str | None = None) -> None:
        """Record the end of an attempt."""

    @abc.abstractmethod
    def runs(self, lab: str | None = None, status: str | None = None, history: bool = True) -> list[RunRecord]:
        """All runs (optionally of one lab / status), oldest first."""

    @abc.abstractmethod
    def get(self, run_id: str) -> RunRecord:
        """One run with its per-epoch history."""

    @abc.abstractmethod
    def now(self) -> float:
        """The store's clock."""

    @abc.abstractmethod
    def raw_rows(self) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        """Every row as stored (for ``store copy``)."""

    @abc.abstractmethod
    def insert_raw(self, runs: list[dict[str, Any]], epochs: list[tuple[Any, ...]]) -> tuple[int, int]:
        """Add copied rows, refusing conflicting runs; return (added, already there)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def integrity_problems(self) -> list[str]:
        """Damage the database itself reports (``status --check``); a server checks its own pages."""
        return []

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """One-line error unless ``out_dir`` is (or can be made) a writable folder."""
    from sharplab.io import check_writable_dir

    check_writable_dir(out_dir)
