"""kill -9 at random moments (inside checkpoint writes, inside training, inside sweep trials), resume, and
compare everything except timings with an uninterrupted run (digits lab, 1 thread: the same computation, so
weights and metrics are compared exactly)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from runner_testlib import write_study

from sharplab.runner.store import ResultsStore

HERE = Path(__file__).resolve().parent
STUDY = """
    lab = "digits"
    name = "faults"
    [config]
    optimizer = "sam"
    width = 16
    depth = 1
    train_size = 256
    batch_size = 32
    epochs = 3
    checkpoint_every = 3
    [grid]
    seed = [0, 1]
"""
SWEEP = """
    lab = "digits"
    name = "fsweep"
    [config]
    width = 8
    depth = 1
    train_size = 128
    batch_size = 64
    epochs = 2
    [sweep]
    metric = "test_error"
    [sweep.space]
    lr = { low = 0.01, high = 0.3 }
"""


def _drive(mode: str, n: int, *args: str) -> int:
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(HERE / "fault_driver.py"), mode, str(n), *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=240).returncode


def _state(out: Path) -> dict:
    with ResultsStore(out) as store:
        runs = store.runs()
    return {r.run_id: (r.status, r.metrics, r.history, r.seed, r.config) for r in runs}


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    study = str(write_study(tmp_path / "faults.toml", STUDY))
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _drive("none", 0, "run", study, "--out", str(ref), "--threads", "1", "--quiet") == 0
    rng = random.Random(1234)
    kills = [("save", rng.randint(1, 3)), ("metrics", rng.randint(2, 6)), ("save", rng.randint(1, 4))]
    codes = [_drive(mode, n, "run", study, "--out", str(out), "--threads", "1", "--quiet") for mode, n in kills]
    assert -9 in codes  # at least one kill hit before the study finished
    assert _drive("none", 0, "run", study, "--out", str(out), "--threads", "1", "--quiet") == 0
    assert _state(out) == _state(ref)
    for run_dir in (out / "runs").iterdir():
        assert not list(run_dir.glob(".*.tmp"))
        a = torch.load(run_dir / "model.pt", weights_only=True)
        b = torch.load(ref / "runs" / run_dir.name / "model.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_inside_a_sweep_trial_then_restart(tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = str(write_study(tmp_path / "fsweep.toml", SWEEP))
    out = tmp_path / "sw"
    args = ["sweep", study, "--trials", "3", "--out", str(out), "--sampler-seed", "3", "--quiet"]
    assert _drive("metrics", 3, *args) == -9  # inside the second trial's training
    assert _drive("none", 0, *args) == 0
    ostudy = optuna.load_study(study_name="fsweep", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state for t in ostudy.trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    assert states.count(TrialState.FAIL) == 1
    complete = [t for t in ostudy.trials if t.state == TrialState.COMPLETE]
    assert len({t.params["lr"] for t in complete}) == 3  # the restart did not repeat a configuration
    with ResultsStore(out) as store:
        runs = {r.run_id: r for r in store.runs()}
        recorded = {t.user_attrs["run_ids"][0]: t.value for t in complete}
    assert all(runs[run_id].status == "done" for run_id in recorded)
    # the killed trial's run is not left held: it shows as interrupted and the next claim takes it over
    assert all(r.status == "done" or r.stale for r in runs.values())
    # a trial's result equals a fresh run of the same configuration
    run_id, value = next(iter(recorded.items()))
    with ResultsStore(out) as store:
        cfg = store.get(run_id).config
    fresh = tmp_path / "fresh.toml"
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
                      for k, v in cfg.items() if not isinstance(v, list))
    fresh.write_text(f'lab = "digits"\nname = "fresh"\n[config]\n{lines}\n')
    assert _drive("none", 0, "run", str(fresh), "--out", str(tmp_path / "f"), "--threads", "1", "--quiet") == 0
    with ResultsStore(tmp_path / "f") as store:
        (rec,) = store.runs()
    assert rec.run_id == run_id and rec.metrics["test_error"] == value
