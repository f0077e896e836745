"""--jobs (one process per run) and --nproc (torchrun, DDP on gloo) against in-process runs."""

from __future__ import annotations

import pytest
import torch
from runner_testlib import sharplab_cli, write_study

from sharplab.cli import main
from sharplab.runner.config import load_study
from sharplab.runner.store import ResultsStore

STUDY = """
    lab = "digits"
    name = "ddp"
    [config]
    optimizer = "sam"
    rho = 0.1
    width = 16
    depth = 1
    train_size = 256
    batch_size = 64
    epochs = 2
    dtype = "float64"
    [grid]
    sync_ascent = [true, false]
"""


def _weights(out, run_id):
    return torch.load(out / "runs" / run_id / "model.pt", weights_only=True)


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_jobs_and_nproc_match_single_process_where_they_should(tmp_path):
    study_path = write_study(tmp_path / "ddp.toml", STUDY)
    single = tmp_path / "single"
    assert main(["run", str(study_path), "--out", str(single), "--threads", "1", "--quiet"]) == 0
    sync, local = (s.run_id for s in load_study(study_path).runs())

    # --jobs 2: each run in its own process, same results bit for bit
    jobs = tmp_path / "jobs"
    sharplab_cli("run", str(study_path), "--out", str(jobs), "--jobs", "2", "--threads", "1", check=True)
    for run_id in (sync, local):
        a, b = _weights(single, run_id), _weights(jobs, run_id)
        assert all(torch.equal(a[k], b[k]) for k in a)

    # --nproc 2: torchrun, 2 gloo ranks, each with half of every global batch of 64
    ddp = tmp_path / "ddp"
    sharplab_cli("run", str(study_path), "--out", str(ddp), "--nproc", "2", "--jobs", "2", check=True)
    ddp_runs = load_study(study_path).runs(nproc=2)
    with ResultsStore(ddp) as store:
        recs = {r.config["sync_ascent"]: r for r in store.runs()}
    assert all(r.status == "done" and r.nproc == 2 for r in recs.values())
    assert {recs[True].run_id, recs[False].run_id} == {s.run_id for s in ddp_runs}
    assert (ddp / "runs" / recs[True].run_id / "run.rank1.log").exists()

    # synchronised ascent: the same algorithm as one process with the global batch (float64 tolerance)
    assert _max_diff(_weights(single, sync), _weights(ddp, recs[True].run_id)) < 1e-10
    # local ascent: each rank perturbs with its own 32 examples = m-sharpness with m = 32, a different path
    assert _max_diff(_weights(single, local), _weights(ddp, recs[False].run_id)) > 1e-6
    with ResultsStore(single) as store:
        single_metrics = store.get(sync).metrics
    assert recs[True].metrics["test_error"] == pytest.approx(single_metrics["test_error"])
