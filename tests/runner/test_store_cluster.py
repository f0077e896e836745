"""Issue 22's must-show cases on a real PostgreSQL server (skipped with the reason where it cannot run):
three worker processes with different host identities share a 24-run study, one is SIGKILLed inside a
run and another host takes it over after the (shortened) heartbeat timeout; a server restart under two
running workers; ``store copy`` SQLite -> PostgreSQL -> SQLite. Every result and history must equal a
single-process SQLite run of the same study (all fields but timings and who ran it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runner_testlib import write_study

from sharplab.runner.store import open_store

HERE = Path(__file__).resolve().parent
STUDY = """
    lab = "runner-steps"
    name = "cluster"
    [config]
    steps = 4
    pause = 0.08
    [grid]
    x = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
    seed = [0, 1]
"""
COMPARED = ("run_id", "lab", "study", "seed", "nproc", "config", "status", "metrics", "error", "diverged_step",
            "last_step", "history")


def _env(host: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "SHARPLAB_HEARTBEAT_TIMEOUT": "3", **extra}
    env.pop("SHARPLAB_STORE", None)
    if host:
        env["SHARPLAB_HOST"] = host
    env.update(extra)
    return env


def _worker(study: Path, out: Path, log: Path, host: str | None, *store: str, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "cluster_driver.py"), "run", str(study), "--out", str(out), "--threads", "1",
           "--quiet", *store]
    return subprocess.Popen(cmd, env=_env(host, **env), stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _rows(out: Path, url: str | None) -> dict[str, dict]:
    with open_store(out, url, readonly=True) as store:
        return {r.run_id: {k: getattr(r, k) for k in COMPARED} for r in store.runs()}


def _records(out: Path, url: str | None):
    with open_store(out, url, readonly=True) as store:
        return {r.run_id: r for r in store.runs()}


@pytest.fixture(scope="module")
def reference(pg_server, tmp_path_factory):
    """The study run by one process on SQLite; started at once, waited for by ``reference()``. (Asks for
    ``pg_server`` only so that it is not started where the PostgreSQL tests that use it are skipped.)"""
    root = tmp_path_factory.mktemp("reference")
    study = write_study(root / "cluster.toml", STUDY)
    proc = _worker(study, root / "out", root / "log", None)

    def result() -> dict[str, dict]:
        assert proc.wait(timeout=120) == 0, (root / "log").read_text()[-3000:]
        return _rows(root / "out", None)

    result.out = root / "out"
    return result


def _wait_all(procs: list[subprocess.Popen], log: Path) -> None:
    for p in procs:
        assert p.wait(timeout=120) == 0, log.read_text()[-4000:]


def test_three_hosts_one_killed_mid_run_another_takes_over(pg_url, tmp_path, reference):
    study = write_study(tmp_path / "cluster.toml", STUDY)
    out, log = tmp_path / "out", tmp_path / "workers.log"
    a = _worker(study, out, log, "host-a", "--store", pg_url)
    b = _worker(study, out, log, "host-b", "--store", pg_url)
    c = _worker(study, out, log, "host-c", SHARPLAB_STORE=pg_url)  # the URL from the environment
    victim = None
    deadline = time.monotonic() + 90
    while victim is None and time.monotonic() < deadline:
        try:
            held = [r for r in _records(out, pg_url).values()
                    if r.status == "running" and r.host == "host-a" and (r.last_step or 0) >= 1]
        except Exception:  # the workers have not created the tables yet
            held = []
        if held:
            os.kill(a.pid, signal.SIGKILL)
            victim = held[0].run_id
        time.sleep(0.05)
    assert victim is not None, log.read_text()[-3000:]
    assert a.wait(timeout=30) == -signal.SIGKILL
    _wait_all([b, c], log)

    records = _records(out, pg_url)
    assert len(records) == 24 and all(r.status == "done" for r in records.values())
    assert records[victim].attempts == 2 and records[victim].host in ("host-b", "host-c")
    assert all(r.attempts == 1 for k, r in records.items() if k != victim)
    finished_by = {k: (out / "runs" / k / "finished_by").read_text().split() for k in records}
    assert all(len(v) == 1 for v in finished_by.values()), finished_by  # every run finished exactly once
    assert finished_by[victim] != ["host-a"]
    assert {h for v in finished_by.values() for h in v} >= {"host-b", "host-c"}
    assert _rows(out, pg_url) == reference()


def test_server_restart_mid_study_workers_wait_and_continue(pg_server, pg_url, tmp_path, reference):
    study = write_study(tmp_path / "cluster.toml", STUDY)
    out, log = tmp_path / "out", tmp_path / "workers.log"
    procs = [_worker(study, out, log, f"host-{i}", "--store", pg_url) for i in range(2)]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            done = sum(r.status == "done" for r in _records(out, pg_url).values())
        except Exception:
            done = 0
        if done >= 4:
            break
        time.sleep(0.1)
    assert done >= 4, log.read_text()[-3000:]
    pg_server.stop()
    time.sleep(1.5)  # the workers hit a missing server, not only a restart
    pg_server.start()
    _wait_all(procs, log)
    assert "retrying" in log.read_text()
    records = _records(out, pg_url)
    assert len(records) == 24 and all(r.status == "done" and r.attempts == 1 for r in records.values())
    assert all(len((out / "runs" / k / "finished_by").read_text().split()) == 1 for k in records)
    assert _rows(out, pg_url) == reference()


def test_store_copy_round_trip_and_conflicts(pg_url, tmp_path, reference, capsys):
    from sharplab.cli import main as cli

    ref_rows = reference()
    src, back = reference.out, tmp_path / "back"
    assert cli(["store", "copy", str(src), pg_url]) == 0
    assert "copied 24 runs" in capsys.readouterr().out
    assert _rows(src, None) == _rows(src, pg_url)
    assert cli(["store", "copy", pg_url, str(back)]) == 0
    dump = lambda p: sqlite3.connect(p).execute("SELECT * FROM runs ORDER BY rowid").fetchall()  # noqa: E731
    epochs = lambda p: sqlite3.connect(p).execute("SELECT * FROM epochs ORDER BY 1, 2, 3").fetchall()  # noqa: E731
    assert dump(back / "results.sqlite") == dump(src / "results.sqlite")  # every row, every column identical
    assert epochs(back / "results.sqlite") == epochs(src / "results.sqlite")
    assert _rows(back, None) == ref_rows
    capsys.readouterr()
    assert cli(["store", "copy", str(src), pg_url]) == 0  # the same rows again: nothing to do, not a conflict
    assert "copied 0 runs" in capsys.readouterr().out
    run_id = next(iter(ref_rows))
    with open_store(back) as store:  # the destination's copy of one run now differs
        store.reset(run_id, force=True)
    assert cli(["store", "copy", str(src), str(back)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "other contents" in err and run_id in err, err
    assert _records(back, None)[run_id].status == "pending"  # nothing copied
    assert cli(["store", "copy", str(src), str(src)]) == 2


DIGITS = """
    lab = "digits"
    name = "pgjobs"
    [config]
    width = 8
    depth = 1
    train_size = 128
    batch_size = 32
    epochs = 1
    [grid]
    lr = [0.1]
"""


def test_jobs_worker_processes_use_the_postgresql_store(pg_url, tmp_path):
    from runner_testlib import sharplab_cli

    from sharplab.cli import main as cli

    study = write_study(tmp_path / "pgjobs.toml", DIGITS)
    r = sharplab_cli("run", str(study), "--out", str(tmp_path / "pg"), "--store", pg_url, "--jobs", "2",
                     "--threads", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "pg" / "results.sqlite").exists()  # the workers wrote to PostgreSQL only
    assert cli(["run", str(study), "--out", str(tmp_path / "lite"), "--threads", "1", "--quiet"]) == 0
    pg, lite = _rows(tmp_path / "pg", pg_url), _rows(tmp_path / "lite", None)
    assert len(pg) == 1 and all(r["status"] == "done" for r in pg.values())
    assert pg == lite
