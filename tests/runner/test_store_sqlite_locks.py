"""A second store opened beside a live one (the heartbeat's, every few seconds) must not drop the live
connection's POSIX locks: closing any descriptor of the database file would, and then another process
takes the file as unused, checkpoints and deletes the WAL under the live connection (a corrupt store under
``--jobs 2``, seen in the demo). The live connection's WAL must survive another process closing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from sharplab.runner.store.sqlite import SQLiteStore

OTHER = ("import sys; from sharplab.runner.store.sqlite import SQLiteStore; s = SQLiteStore(sys.argv[1]); "
         "s.db.execute('INSERT INTO t VALUES (2)'); s.close()")


def test_a_second_store_in_this_process_keeps_the_live_ones_locks(tmp_path):
    live = SQLiteStore(tmp_path)
    live.db.execute("CREATE TABLE t (x INTEGER)")
    live.db.execute("INSERT INTO t VALUES (1)")
    for _ in range(3):  # a heartbeat's opens
        SQLiteStore(tmp_path).close()
        SQLiteStore(tmp_path, readonly=True).close()
    subprocess.run([sys.executable, "-c", OTHER, str(tmp_path)], check=True, timeout=60)
    # another process closing must not think it was the last connection: the WAL stays for the live one
    assert (tmp_path / "results.sqlite-wal").exists()
    live.db.execute("INSERT INTO t VALUES (3)")
    live.close()
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert sorted(r[0] for r in db.execute("SELECT x FROM t")) == [1, 2, 3]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_file_that_is_not_a_database_is_refused_in_one_line_and_left_alone(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"not a database, but someone's notes\n" * 4)
    before = path.read_bytes()
    for readonly in (False, True):
        try:
            SQLiteStore(tmp_path, readonly=readonly)
        except Exception as exc:  # noqa: BLE001 - the type is checked below
            assert type(exc).__name__ == "StoreError" and "not a SQLite results store" in str(exc)
            assert "\n" not in str(exc)
        else:
            raise AssertionError("a non-database file was opened as a store")
    assert path.read_bytes() == before
