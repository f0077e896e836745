"""The runner under faults and bad input: stale rows, reset, --check, lost stores, interrupts, names, seeds."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from runner_testlib import write_study

from sharplab.cli import main
from sharplab.errors import ConfigError, SharplabError
from sharplab.io import atomic_torch_save
from sharplab.runner.config import load_study, parse_study
from sharplab.runner.context import RunContext
from sharplab.runner.execute import run_study
from sharplab.runner.single_run import RunOptions
from sharplab.runner.store import ResultsStore
from sharplab.runner.sweep import fail_dead_trials, parse_sweep, run_sweep

DIGITS = """
    lab = "digits"
    name = "dig"
    [config]
    width = 16
    depth = 1
    train_size = 128
    batch_size = 64
    epochs = 2
    dtype = "float64"
"""


def _one_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1


# --- names, seeds, duplicates, non-finite values, encodings ------------------------------------------
@pytest.mark.parametrize("name", ["../../../victim", "/tmp/abs", "a/b", ".hidden", "", "x" * 101, 3])
def test_study_names_that_would_be_paths_are_refused(name):
    with pytest.raises(ConfigError, match="name = .* is not allowed"):
        parse_study({"lab": "runner-toy", "name": name})


def test_traversal_name_writes_nothing_outside_out(tmp_path, capsys):
    victim = tmp_path / "victim.json"
    victim.write_text("keep")
    study = write_study(tmp_path / "s.toml", 'lab = "runner-toy"\nname = "../../victim"\n')
    assert main(["run", str(study), "--out", str(tmp_path / "out" / "x"), "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) and victim.read_text() == "keep"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid, words", [
    ("seed = [18446744073709551615]", "seeds are integers in"), ("seed = [-1]", "seeds are integers in"),
    ("x = [0.1, 0.1]", "repeats a value"), ("seed = [0, 0]", "repeats a seed"),
])
def test_bad_grids(grid, words):
    import tomllib

    doc = tomllib.loads(f'lab = "runner-toy"\n[grid]\n{grid}\n')
    with pytest.raises(ConfigError, match=words):
        parse_study(doc)


def test_infinite_values_are_refused():
    with pytest.raises(ConfigError, match="is not finite"):
        parse_study({"lab": "digits", "config": {"lr": float("inf")}})


def test_sweep_seed_duplicates_bounds_and_steps():
    base = {"lab": "runner-toy", "name": "sw"}
    for sweep, words in (({"metric": "loss", "seeds": [0, 0], "space": {"x": [0.1]}}, "repeats a seed"),
                         ({"metric": "loss", "space": {"x": {"low": 0.0, "high": float("inf")}}}, "x.high"),
                         ({"metric": "loss", "space": {"x": {"low": 0.0, "high": 1.0, "step": "a"}}}, "step"),
                         ({"metric": "loss", "space": {"x": {"low": 0.0, "high": 1.0, "step": 0}}}, "step")):
        with pytest.raises(ConfigError, match=words):
            parse_sweep(parse_study({**base, "sweep": sweep}))


def test_non_utf8_study(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_bytes(b'lab = "runner-toy"\nname = "caf\xe9"\n')
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "not UTF-8" in err


# --- stale rows ------------------------------------------------------------------------------------
def _set_running(store, run_id, **cols):
    sets = ", ".join(f"{k} = ?" for k in cols)
    store.db.execute(f"UPDATE runs SET status = 'running', {sets} WHERE run_id = ?", (*cols.values(), run_id))


def test_stale_policy_pid_reuse_heartbeat_and_host(tmp_path, monkeypatch, toy_study):
    spec = load_study(toy_study).runs()[0]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        with ResultsStore(tmp_path) as store:
            store.add_runs([spec])
            live = {"pid": child.pid, "host": host, "heartbeat": time.time()}
            from sharplab.runner.store import process_start

            _set_running(store, spec.run_id, **live, pid_start=process_start(child.pid))
            assert store.claim(spec.run_id) == "busy"  # a live holder with a fresh heartbeat
            _set_running(store, spec.run_id, **live, pid_start="1")  # the pid now belongs to another process
            assert "another process" in store.get(spec.run_id).takeover_reason()
            assert store.claim(spec.run_id) == "claimed"
            _set_running(store, spec.run_id, pid=child.pid, host=host, heartbeat=time.time() - 1000, pid_start=None)
            assert "no heartbeat for" in store.get(spec.run_id).takeover_reason()
            _set_running(store, spec.run_id, **{**live, "host": "another-container"}, pid_start=None)
            assert "claimed on host" in store.get(spec.run_id).takeover_reason()
            assert store.claim(spec.run_id) == "claimed"
    finally:
        child.kill()
        child.wait()


def test_status_says_why_a_run_is_blocked_and_reset_frees_it(tmp_path, toy_study, capsys):
    out = tmp_path / "o"
    spec = load_study(toy_study).runs()[0]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ResultsStore(out) as store:
            store.add_runs([spec])
            _set_running(store, spec.run_id, pid=child.pid, host=socket.gethostname(), heartbeat=time.time())
        assert main(["status", str(out)]) == 0
        assert f"held by pid {child.pid}" in capsys.readouterr().out
        assert main(["reset", str(out), spec.run_id]) == 2
        assert "--force" in capsys.readouterr().err
        assert main(["reset", str(out), spec.run_id, "--force"]) == 0
        with ResultsStore(out) as store:
            assert store.get(spec.run_id).status == "pending"
    finally:
        child.kill()
        child.wait()


# --- files, lost stores, corrupt files ------------------------------------------------------------
def test_status_check_finds_missing_and_changed_files(tmp_path, capsys):
    study = write_study(tmp_path / "d.toml", DIGITS)
    out = tmp_path / "o"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert main(["status", str(out), "--check"]) == 0
    run_dir = next((out / "runs").iterdir())
    (run_dir / "model.pt").unlink()
    (run_dir / "run.json").write_text((run_dir / "run.json").read_text().replace('"seed": 0', '"seed": 5'))
    capsys.readouterr()
    assert main(["status", str(out), "--check"]) == 1
    text = capsys.readouterr().out
    assert "model.pt is missing" in text and "seed differs" in text


def test_an_emptied_store_gets_its_history_back(tmp_path):
    study = load_study(write_study(tmp_path / "d.toml", DIGITS))
    out = tmp_path / "o"
    run_study(study, out, options=RunOptions(quiet=True, threads=1))
    with ResultsStore(out) as store:
        before = store.runs()[0]
    (out / "results.sqlite").unlink()
    for extra in ("results.sqlite-wal", "results.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    run_study(study, out, options=RunOptions(quiet=True, threads=1))
    with ResultsStore(out) as store:
        after = store.runs()[0]
    assert after.status == "done" and sorted(after.history) == sorted(before.history)
    for step, row in before.history.items():
        assert after.history[step] == pytest.approx(row, rel=1e-12)


@pytest.mark.parametrize("command", [["status"], ["export"], ["report"]])
def test_corrupt_store_is_one_line(tmp_path, capsys, command):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database" * 100)
    assert main([*command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "results.sqlite" in err


def test_corrupt_checkpoint_names_the_file(tmp_path):
    ctx = RunContext(tmp_path, seed=0)
    ctx.checkpoint_path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(SharplabError, match=r"checkpoint .*checkpoint.pt cannot be read .*delete it"):
        ctx.load_checkpoint()


def test_ctrl_c_inside_torch_save_is_deferred_until_the_file_is_whole(tmp_path, monkeypatch):
    real = torch.save

    def save_with_interrupt(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the write
        real(obj, f)

    monkeypatch.setattr(torch, "save", save_with_interrupt)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(path, {"w": torch.arange(10.0)})
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(10.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_left_over_temp_files_are_removed_and_threads_recorded(tmp_path):
    study = load_study(write_study(tmp_path / "d.toml", DIGITS))
    out = tmp_path / "o"
    run_dir = out / "runs" / study.runs()[0].run_id
    run_dir.mkdir(parents=True)
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    threads = torch.get_num_threads()
    try:
        run_study(study, out, options=RunOptions(quiet=True, threads=1))
    finally:
        torch.set_num_threads(threads)
    assert not list(run_dir.glob(".*.tmp"))
    import json

    assert json.loads((run_dir / "run.json").read_text())["environment"]["machine"]["torch_threads"] == 1
    with ResultsStore(out) as store:
        assert store.get(study.runs()[0].run_id).threads == 1


def test_resume_with_another_thread_count_is_refused(tmp_path, capsys):
    study_path = write_study(tmp_path / "d.toml", DIGITS)
    out = tmp_path / "o"
    spec = load_study(study_path).runs()[0]
    with ResultsStore(out) as store:
        store.add_runs([spec])
        store.db.execute("UPDATE runs SET status = 'failed', threads = 2 WHERE run_id = ?", (spec.run_id,))
    run_dir = out / "runs" / spec.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert main(["run", str(study_path), "--out", str(out), "--threads", "1", "--quiet"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: run") and "--threads 2" in last and "sharplab reset" in last


# --- sweeps ----------------------------------------------------------------------------------------
def test_sweep_restart_with_a_fixed_seed_does_not_repeat_and_fails_dead_trials(tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = parse_study({"lab": "runner-toy", "name": "sw", "config": {"steps": 1},
                         "sweep": {"metric": "loss", "space": {"x": {"low": 0.0, "high": 1.0}}}})
    out, storage = tmp_path / "o", f"sqlite:///{tmp_path / 'o' / 'optuna.db'}"
    run_sweep(study, out, 3, storage, sampler_seed=7, options=RunOptions(quiet=True))
    # a worker killed mid-trial: a RUNNING trial whose process is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ostudy = optuna.load_study(study_name="sw", storage=storage)
    trial = ostudy.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    ostudy = run_sweep(study, out, 6, storage, sampler_seed=7, options=RunOptions(quiet=True))
    complete = ostudy.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6 and len({t.params["x"] for t in complete}) == 6
    assert not ostudy.get_trials(states=(TrialState.RUNNING,))
    assert ostudy.trials[trial.number].state == TrialState.FAIL
    assert fail_dead_trials(ostudy) == []


def test_a_dead_trial_failed_by_another_worker_between_read_and_write_is_skipped(tmp_path):
    """Two live workers both see the killed worker's RUNNING trial; the slower one's FAIL write then finds
    it finished (Optuna raises UpdateFinishedTrialError) and must carry on, not crash."""
    import optuna
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ostudy = optuna.create_study(study_name="race", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = ostudy.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    real_write = ostudy._storage.set_trial_state_values

    def other_worker_first(trial_id, state, values=None):
        real_write(trial_id, state, values)  # the other worker wins the race ...
        return real_write(trial_id, state, values)  # ... so this write finds the trial finished and raises

    ostudy._storage.set_trial_state_values = other_worker_first
    assert fail_dead_trials(ostudy) == []
    assert ostudy.trials[trial.number].state == TrialState.FAIL


def test_bad_storage_urls(tmp_path, capsys):
    study = write_study(tmp_path / "s.toml", 'lab = "runner-toy"\n[sweep]\nmetric = "loss"\n[sweep.space]\n'
                        'x = [0.1]\n')
    (tmp_path / "file").write_text("x")
    for url in ("redis://x", "nonsense", f"sqlite:///{tmp_path}/file/db.sqlite", f"sqlite:///{tmp_path}"):
        assert main(["sweep", str(study), "--trials", "1", "--storage", url, "--out", str(tmp_path / "o")]) == 2
        assert _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_sqlite_store_survives_an_unrelated_sqlite_error_type(tmp_path):
    """The store's message path: a truncated database is reported, not raised as sqlite3.DatabaseError."""
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SharplabError, match="not a readable results store"):
        ResultsStore(tmp_path)
