"""A throwaway PostgreSQL server for store tests (Debian's ``postgresql`` binaries, a Unix socket in a
temporary folder, run as 'postgres'/'nobody' when the tests run as root), plus one fresh database per test.

Fixtures: ``pg_server`` (one per test session, or skipped with the reason) and ``pg_url`` (a new database
on it). :meth:`PgServer.restart` restarts the server under running clients (``pg_ctl restart -m fast``).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _as_user() -> list[str] | None:
    """The prefix that runs a command as a non-root account (PostgreSQL refuses root); None: impossible."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--"]
    return None


class PgServer:
    """initdb + pg_ctl start in a temporary folder; ``url(db)``, ``create_db()``, ``restart()``, ``stop()``."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        prefix = _as_user()
        assert prefix is not None
        self.prefix = prefix
        self.root = Path(tempfile.mkdtemp(prefix="sharplab-pgstore-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        if prefix:
            user = pwd.getpwnam(prefix[2])
            for p in (self.root, self.sock):
                os.chown(p, user.pw_uid, user.pw_gid)
        self._names = itertools.count()
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.prefix, *cmd], check=True, capture_output=True, timeout=120)

    @property
    def _opts(self) -> str:
        return f"-c listen_addresses='' -c unix_socket_directories={self.sock} -c fsync=off -p 5432"

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-o", self._opts, "-l", str(self.root / "log"), "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-o", self._opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "restart")

    def url(self, db: str) -> str:
        return f"postgresql://postgres@/{db}?host={self.sock}&port=5432"

    def create_db(self) -> str:
        import psycopg2

        name = f"store{next(self._names)}"
        conn = psycopg2.connect(dbname="postgres", user="postgres", host=str(self.sock), port=5432)
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        return self.url(name)

    def close(self) -> None:
        subprocess.run([*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    pytest.importorskip("psycopg2", reason="psycopg2 not installed (pip install -e '.[test]')")
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if _as_user() is None:
        pytest.skip("running as root without a 'postgres'/'nobody' account or runuser: cannot start PostgreSQL")
    try:
        server = PgServer()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]}")
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.create_db()
