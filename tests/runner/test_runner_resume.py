"""kill -9 in the middle of a study, re-run the same command: only the missing work is done, bit-exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from runner_testlib import write_study

from sharplab.cli import main
from sharplab.runner.checkpoint import capture_rng, restore_rng
from sharplab.runner.config import load_study
from sharplab.runner.store import ResultsStore

STUDY = """
    lab = "digits"
    name = "resume"
    [config]
    optimizer = "sam"
    width = 16
    depth = 1
    train_size = 512
    batch_size = 32
    epochs = 8
    checkpoint_every = 5
    [grid]
    seed = [0, 1]
"""


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_kill_9_then_rerun_finishes_only_what_is_missing(tmp_path):
    study_path = write_study(tmp_path / "resume.toml", STUDY)
    first, second = (s.run_id for s in load_study(study_path).runs())
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sharplab", "run", str(study_path), "--out", str(out), "--threads", "1"]
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "runs" / second / "checkpoint.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # while the second run trains, right after its first checkpoint
    proc.wait()
    with ResultsStore(out) as store:
        before = {r.run_id: r for r in store.runs()}
    assert before[first].status == "done"
    assert before[second].status == "running" and before[second].display_status == "interrupted"
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 8 * 16

    # the same command again
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    with ResultsStore(out) as store:
        after = {r.run_id: r for r in store.runs()}
    assert after[first].attempts == 1 and after[first].finished == before[first].finished  # untouched
    assert after[second].status == "done" and after[second].attempts == 2
    assert sorted(after[second].history) == list(range(1, 9))
    assert "resumed from checkpoint" in (out / "runs" / second / "run.log").read_text()

    # an uninterrupted run of the same configuration ends with the same weights, bit for bit
    ref = tmp_path / "ref"
    assert main(["run", str(study_path), "--out", str(ref), "--threads", "1", "--quiet"]) == 0
    for run_id in (first, second):
        a = torch.load(ref / "runs" / run_id / "model.pt", weights_only=True)
        b = torch.load(out / "runs" / run_id / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with ResultsStore(ref) as store:
        assert store.get(second).metrics == after[second].metrics
