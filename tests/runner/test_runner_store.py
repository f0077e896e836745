"""The SQLite results store: claims, transactions, concurrent writers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from sharplab.runner.config import RunSpec
from sharplab.runner.store import ResultsStore


def _spec(seed: int = 0, x: float = 0.5) -> RunSpec:
    return RunSpec("runner-toy", {"x": x}, seed, 1, "s")


def test_rows_claims_and_finish(tmp_path):
    spec = _spec()
    with ResultsStore(tmp_path) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.add_runs([spec, _spec(1)]) == 2
        assert store.add_runs([spec]) == 0  # known runs are not duplicated
        assert store.get(spec.run_id).status == "pending"
        assert store.claim(spec.run_id) == "claimed"
        rec = store.get(spec.run_id)
        assert (rec.status, rec.pid, rec.attempts) == ("running", os.getpid(), 1)
        store.log_epoch(spec.run_id, 1, {"loss": 2.0, "acc": float("nan")})
        store.log_epoch(spec.run_id, 1, {"loss": 1.5})  # a resumed run re-logging a step replaces it
        store.log_epoch(spec.run_id, 2, {"loss": 1.0})
        time.sleep(0.01)
        store.finish(spec.run_id, "done", {"loss": 1.0})
        rec = store.get(spec.run_id)
        assert rec.status == "done" and rec.metrics == {"loss": 1.0} and rec.last_step == 2
        assert rec.history[1]["loss"] == 1.5 and rec.history[1]["acc"] != rec.history[1]["acc"]  # NaN kept
        assert rec.seconds > 0 and rec.pid is None
        assert store.claim(spec.run_id) == "finished"
        assert [r.run_id for r in store.runs(status="pending")] == [_spec(1).run_id]
        with pytest.raises(ValueError):
            store.finish(spec.run_id, "weird")


def test_claim_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    spec = _spec()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ResultsStore(tmp_path) as store:
            store.add_runs([spec])
            store.db.execute("UPDATE runs SET status='running', pid=?, host=? WHERE run_id=?",
                             (child.pid, __import__("socket").gethostname(), spec.run_id))
            assert store.claim(spec.run_id) == "busy"
            assert store.get(spec.run_id).display_status == "running"
            child.kill()
            child.wait()
            assert store.get(spec.run_id).display_status == "interrupted"
            assert store.claim(spec.run_id) == "claimed"
            assert store.get(spec.run_id).pid == os.getpid()
    finally:
        child.kill()


def test_a_failing_transaction_leaves_no_partial_row(tmp_path):
    spec = _spec()
    with ResultsStore(tmp_path) as store:
        store.add_runs([spec])
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("UPDATE runs SET status='done', metrics=? WHERE run_id=?", (json.dumps({"a": 1}), spec.run_id))
            raise RuntimeError("crash in the middle")
        rec = store.get(spec.run_id)
        assert rec.status == "pending" and rec.metrics == {}


_WRITER = """
import sys
from sharplab.runner.config import RunSpec
from sharplab.runner.store import ResultsStore
out, seed = sys.argv[1], int(sys.argv[2])
spec = RunSpec("runner-toy", {"x": 0.5}, seed, 1, "s")
with ResultsStore(out) as store:
    store.add_runs([spec])
    store.claim(spec.run_id)
    for step in range(40):
        store.log_epoch(spec.run_id, step, {"loss": float(step), "seed": float(seed)})
    store.finish(spec.run_id, "done", {"loss": 39.0})
"""


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(s)]) for s in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with ResultsStore(tmp_path) as store:
        runs = store.runs()
    assert sorted(r.seed for r in runs) == [0, 1, 2]
    for r in runs:
        assert r.status == "done" and sorted(r.history) == list(range(40))
        assert all(r.history[s] == {"loss": float(s), "seed": float(r.seed)} for s in r.history)
    assert sqlite3.connect(tmp_path / "results.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
