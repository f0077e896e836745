"""Issue 23, item 9: the files the runner creates get the user's umask; an empty store file is not written to."""

from __future__ import annotations

import os
import stat

import pytest
from runner_testlib import write_study

from sharplab.cli import main


@pytest.fixture
def umask():
    """Set the process umask for one test (and forget the file mode cached for it)."""
    import sharplab.io

    clear = getattr(getattr(sharplab.io, "file_mode", None), "cache_clear", lambda: None)
    before = os.umask(0o022)
    os.umask(before)

    def set_mask(mask: int) -> None:
        os.umask(mask)
        clear()

    yield set_mask
    os.umask(before)
    clear()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_reports_run_files_and_checkpoints_get_the_users_umask(tmp_path, capsys, umask, mask, mode):
    from sharplab.runner.context import RunContext

    umask(mask)
    study = write_study(tmp_path / "s.toml", 'lab = "runner-toy"\nname = "t"\n[grid]\nseed = [0]\n')
    out = tmp_path / "o"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    ctx = RunContext(tmp_path / "ck")
    ctx.save_checkpoint({"step": 1})
    ctx.save_checkpoint({"step": 2})  # the first one becomes the previous checkpoint
    files = [out / "report.md", out / "report.html", out / "studies" / "t.json", *out.glob("runs/*/run.json"),
             *out.glob("runs/*/history.jsonl"), *sorted((tmp_path / "ck").iterdir())]
    modes = {f.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert modes == {k: oct(mode) for k in modes}
    assert len(files) == 9, files  # with both checkpoints' checksums


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_an_empty_store_file_is_not_written_to(tmp_path, capsys, command):
    """A 0-byte results.sqlite (a store whose creation was cut off) is reported in one line and stays 0 bytes:
    a read command does not turn it into a schema."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    assert main([command, str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "no results" in captured.err and captured.out == ""
    assert [(p.name, p.stat().st_size) for p in out.iterdir()] == [("results.sqlite", 0)]


# --- a killed `sharplab run --jobs 2`: its workers checkpoint, then stop; the resume has no duplicate lines --
HERE = __import__("pathlib").Path(__file__).resolve().parent
STEPS, PAUSE = 6, 0.4  # a pause far longer than a store read: the kill lands inside a step


def _gone(pid: int) -> bool:
    """No such process, or a zombie (an orphaned worker waits there for a reaper that may never come)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _history_steps(run_dir):
    import json

    return [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _expected_losses(x: float, seed: int) -> list[float]:
    loss, out = 1.0, []
    for _ in range(STEPS):
        loss = loss * (0.5 + 0.4 * x) + 0.01 * seed
        out.append(loss)
    return out


def test_workers_of_a_killed_parent_checkpoint_their_last_step_and_resume_without_duplicates(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import torch

    from sharplab.runner.store import open_store

    study = write_study(tmp_path / "s.toml", f"""
        lab = "runner-steps"
        name = "k"
        [config]
        steps = {STEPS}
        pause = {PAUSE}
        [grid]
        x = [0.1, 0.2]
    """)
    out, log = tmp_path / "o", tmp_path / "log"
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    env.pop("SHARPLAB_STORE", None)
    driver = "import sys, cluster_driver; from sharplab.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", driver, "run", str(study), "--out", str(out), "--threads", "1", "--quiet"]
    t0 = time.monotonic()
    parent = subprocess.Popen([*cmd, "--jobs", "2"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open_store(out, readonly=True) as store:
                recs = store.runs(history=False)
        except Exception:  # not created yet
            recs = []
        if len(recs) == 2 and all(r.status == "running" and (r.last_step or 0) >= 2 for r in recs):
            seen = {r.run_id: r.last_step for r in recs}
            workers = [r.pid for r in recs]
            os.kill(parent.pid, signal.SIGKILL)  # the parent only; its two workers are mid-run
            break
        time.sleep(0.02)
    assert seen, log.read_text()[-3000:]
    assert parent.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in workers), "the workers did not stop after their parent was killed"

    with open_store(out, readonly=True) as store:
        recs = {r.run_id: r for r in store.runs()}
    for run_id, before in seen.items():
        run_dir = out / "runs" / run_id
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert recs[run_id].status == "running" and recs[run_id].last_step < STEPS
        # the step in progress when the parent died was finished, recorded and checkpointed before the exit
        assert ckpt["step"] > before, f"checkpoint at step {ckpt['step']}, step {before} was recorded before the kill"
        assert recs[run_id].last_step == ckpt["step"] == max(recs[run_id].history)
        assert _history_steps(run_dir) == list(range(1, ckpt["step"] + 1))
        assert "is gone; stopped after writing the checkpoint" in (run_dir / "run.log").read_text()

    t1 = time.monotonic()
    resume = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # in one process
    assert resume.returncode == 0, resume.stdout + resume.stderr
    with open_store(out, readonly=True) as store:
        recs = {r.run_id: r for r in store.runs()}
    for run_id, rec in recs.items():
        assert rec.status == "done" and rec.attempts == 2
        assert _history_steps(out / "runs" / run_id) == list(range(1, STEPS + 1))  # no step twice
        want = _expected_losses(rec.config["x"], rec.seed)
        assert [rec.history[t]["loss"] for t in range(1, STEPS + 1)] == want
    print(f"killed run {t1 - t0:.1f} s, resume {time.monotonic() - t1:.1f} s")


def test_a_resumed_attempt_replaces_the_lines_a_killed_attempt_logged_after_its_checkpoint(tmp_path):
    """An attempt killed between logging step 3 and checkpointing it (kill -9 of the worker itself) left a
    line for step 3 and a torn one; the resumed attempt logs step 3 again: the file holds each step once."""
    import json

    from sharplab.runner.context import RunContext

    def lines(*rows):
        return "".join(json.dumps({"step": s, "metrics": m}) + "\n" for s, m in rows)

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    history = run_dir / "history.jsonl"
    history.write_text(lines((1, {"loss": 1.0}), (2, {"loss": 0.5}), (3, {"loss": 0.25})) + '{"step": 4, "met')
    ctx = RunContext(run_dir, history_file=True)
    ctx.log_metrics(3, {"loss": 0.25})
    ctx.log_metrics(4, {"loss": 0.125})
    assert _history_steps(run_dir) == [1, 2, 3, 4]

    # a lab that logs two kinds of lines (per epoch, then a trace from step 0): only the trace is redone
    history.write_text(lines((1, {"loss": 1.0}), (2, {"loss": 0.5}), (0, {"w": 0.0}), (10, {"w": 0.1})))
    ctx = RunContext(run_dir, history_file=True)
    ctx.log_metrics(0, {"w": 0.0})
    ctx.log_metrics(10, {"w": 0.1})
    assert _history_steps(run_dir) == [1, 2, 0, 10]
