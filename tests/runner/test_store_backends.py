"""One test suite for both results-store backends (SQLite, and PostgreSQL on a server the test starts;
the PostgreSQL half is skipped with the reason where the server binaries or psycopg2 are missing)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharplab.runner.config import RunSpec
from sharplab.runner.store import ClaimLost, StoreError, open_store

HERE = Path(__file__).resolve().parent


def _spec(seed: int = 0, x: float = 0.5) -> RunSpec:
    return RunSpec("runner-toy", {"x": x}, seed, 1, "s")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """``open(**kw)`` opens the same store again (a new connection, as another process would)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    out = tmp_path / "out"

    def open_(**kw):
        return open_store(out, url, **kw)

    open_.url, open_.out, open_.kind = url, out, request.param
    return open_


def test_rows_claims_history_and_finish(backend):
    spec = _spec()
    with backend() as store:
        assert store.add_runs([spec, _spec(1)]) == 2
        assert store.add_runs([spec]) == 0
        assert store.get(spec.run_id).status == "pending"
        assert store.claim(spec.run_id) == "claimed"
        rec = store.get(spec.run_id)
        assert (rec.status, rec.pid, rec.attempts) == ("running", os.getpid(), 1)
        assert rec.token == store.token(spec.run_id) and rec.token
        store.log_epoch(spec.run_id, 1, {"loss": 2.0, "acc": float("nan")})
        store.log_epoch(spec.run_id, 1, {"loss": 1.5})
        store.log_epoch(spec.run_id, 2, {"loss": 1.0})
        store.finish(spec.run_id, "done", {"loss": 1.0, "inf": float("inf")})
        rec = store.get(spec.run_id)
        assert rec.status == "done" and rec.metrics["loss"] == 1.0 and math.isnan(rec.metrics["inf"])
        assert rec.last_step == 2 and rec.history[1]["loss"] == 1.5 and math.isnan(rec.history[1]["acc"])
        assert store.claim(spec.run_id) == "finished"
        assert [r.run_id for r in store.runs(status="pending")] == [_spec(1).run_id]
        assert [r.run_id for r in store.runs()] == [spec.run_id, _spec(1).run_id]  # insertion order
        with pytest.raises(ValueError):
            store.finish(spec.run_id, "weird")


def test_reset_force_fences_the_holder(backend):
    spec = _spec()
    with backend() as holder, backend() as admin:
        holder.add_runs([spec])
        assert holder.claim(spec.run_id) == "claimed"
        holder.log_epoch(spec.run_id, 1, {"loss": 1.0})
        with pytest.raises(StoreError, match="pass --force"):
            admin.reset(spec.run_id)
        assert admin.reset(spec.run_id, force=True) == "running"
        for write in (lambda: holder.log_epoch(spec.run_id, 2, {"loss": 0.5}),
                      lambda: holder.beat(spec.run_id),
                      lambda: holder.check_held(spec.run_id),
                      lambda: holder.finish(spec.run_id, "done", {"loss": 0.5})):
            with pytest.raises(ClaimLost, match="no longer holds it.*reset"):
                write()
        rec = admin.get(spec.run_id)
        assert rec.status == "pending" and rec.history == {} and rec.metrics == {} and rec.token is None


def test_takeover_after_heartbeat_timeout_stops_the_old_holder(backend, monkeypatch):
    spec = _spec()
    a = backend()
    a.add_runs([spec])
    assert a.claim(spec.run_id) == "claimed"
    monkeypatch.setenv("SHARPLAB_HOST", "other-host")
    with backend() as b:
        if b.shared:  # another host's fresh heartbeat holds the run on a shared store ...
            assert b.claim(spec.run_id) == "busy"
            assert b.get(spec.run_id).takeover_reason() is None
            monkeypatch.setenv("SHARPLAB_HEARTBEAT_TIMEOUT", "0.3")
            import time

            time.sleep(0.5)  # ... until it is older than the timeout
            assert "no heartbeat" in b.get(spec.run_id).takeover_reason()
        else:  # one machine's store: another host identity is a restarted container
            assert "claimed on host" in b.get(spec.run_id).takeover_reason()
        assert b.claim(spec.run_id) == "claimed"
        assert b.get(spec.run_id).host == "other-host"
    with pytest.raises(ClaimLost, match="taken over by pid .* on other-host"):
        a.log_epoch(spec.run_id, 1, {"loss": 1.0})
    with pytest.raises(ClaimLost):
        a.finish(spec.run_id, "done", {"loss": 1.0})
    a.close()
    with backend() as c:
        assert c.get(spec.run_id).status == "running" and c.get(spec.run_id).history == {}


_CLAIMER = """
import json, sys
from sharplab.runner.store import open_store
out, url, ids = sys.argv[1], sys.argv[2] or None, sys.argv[3].split(",")
with open_store(out, url) as store:
    print(json.dumps([i for i in ids if store.claim(i) == "claimed"]))
"""


def test_concurrent_claims_from_four_hosts_claim_each_run_once(backend):
    specs = [_spec(seed) for seed in range(20)]
    with backend() as store:
        store.add_runs(specs)
    ids = ",".join(s.run_id for s in specs)
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(backend.out), backend.url or "", ids],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "SHARPLAB_HOST": f"h{i}"})
             for i in range(4)]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    flat = [i for c in claimed for i in c]
    if backend().shared:  # every run claimed by exactly one host
        assert sorted(flat) == sorted(s.run_id for s in specs)
    else:  # SQLite: a row of another host identity counts as a restarted container, so later claims take it
        assert set(flat) == {s.run_id for s in specs}
    with backend() as store:
        assert all(r.status == "running" and r.attempts == flat.count(r.run_id) for r in store.runs())


def test_readonly_open_writes_nothing(backend):
    with pytest.raises(StoreError, match="no results"):
        backend(readonly=True)
    spec = _spec()
    with backend() as store:
        store.add_runs([spec])
    if backend.kind == "sqlite":
        db = backend.out / "results.sqlite"
        before = hashlib.sha256(db.read_bytes()).hexdigest()
    with backend(readonly=True) as ro:
        assert [r.run_id for r in ro.runs()] == [spec.run_id]
        with pytest.raises(StoreError, match="read-only"):
            ro.claim(spec.run_id)
    if backend.kind == "sqlite":
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # (WAL readers may add -shm/-wal files)
    with backend() as store:
        assert store.get(spec.run_id).status == "pending"


def test_failing_transaction_leaves_no_partial_row(backend):
    spec = _spec()
    with backend() as store:
        store.add_runs([spec])

        def work(tx):
            tx.execute("UPDATE runs SET status = 'done', metrics = ? WHERE run_id = ?", ('{"a": 1}', spec.run_id))
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            store._run(work)
        rec = store.get(spec.run_id)
        assert rec.status == "pending" and rec.metrics == {}
