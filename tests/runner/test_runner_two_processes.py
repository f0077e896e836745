"""Two ``sharplab run`` processes on one output folder share the work: each skips runs the other holds and
runs the next pending one, waiting for held runs only at the end (a second process adds parallelism)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import two_process_driver  # noqa: F401  (registers the lab runner-slow here too)
from runner_testlib import write_study

from sharplab.runner.config import load_study
from sharplab.runner.execute import run_study
from sharplab.runner.single_run import RunOptions
from sharplab.runner.store import ResultsStore

HERE = Path(__file__).resolve().parent
RUNS = 6


def test_two_processes_on_one_out_dir_split_the_runs_and_never_run_one_twice(tmp_path):
    study = write_study(tmp_path / "slow.toml", f"""
        lab = "runner-slow"
        name = "slow"
        [config]
        seconds = 0.2
        [grid]
        x = {list(range(RUNS))}
    """)
    out, ready = tmp_path / "out", tmp_path / "ready"
    ready.mkdir()
    (ready / "expected").write_text("here child")
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(HERE / "two_process_driver.py"), str(study), str(out),
                              str(ready), "child"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # this process is the other worker (it has torch imported already: one interpreter start less)
        deadline = time.time() + 60
        while not (ready / "child").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        (ready / "here").write_text(str(os.getpid()))
        run_study(load_study(study), out, options=RunOptions(quiet=True, threads=1))
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    pids = {os.getpid(), child.pid}
    with ResultsStore(out) as store:
        runs = store.runs()
    assert len(runs) == RUNS and all(r.status == "done" for r in runs)  # the union is complete
    assert all(r.attempts == 1 for r in runs)  # claimed once each
    by = {}
    for r in runs:  # executed once each: one line in the run's own execution log, by the recorded process
        lines = (r.run_dir / "executed_by").read_text().split()
        assert lines == [str(int(r.metrics["pid"]))]
        by.setdefault(int(r.metrics["pid"]), set()).add(r.run_id)
    assert set(by) == pids  # both processes executed runs (each set non-empty) ...
    assert sum(len(v) for v in by.values()) == RUNS  # ... and together every run exactly once
