"""Issue 23 items 1, 2, 6, 7 and issue 22's connection faults: a run is finished only by its holder
(``reset --force`` and a heartbeat takeover fence the old holder, checked with real second processes),
checkpoints carry a checksum checked at load, read paths never write, and a bad store URL stops a command
in one line before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runner_testlib import write_study

from sharplab.cli import main as cli
from sharplab.runner.ckpt_integrity import digest_path, load_checkpoint, previous_path, save_checkpoint
from sharplab.runner.store import open_store

HERE = Path(__file__).resolve().parent
ONE_RUN = """
    lab = "runner-steps"
    name = "one"
    [config]
    steps = {steps}
    pause = {pause}
    x = 0.3
"""


def _driver(*args: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, str(HERE / "cluster_driver.py"), *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_args(study: Path, out: Path) -> list[str]:
    return ["run", str(study), "--out", str(out), "--threads", "1", "--quiet"]


def _wait_for_step(out: Path, step: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "results.sqlite").exists():
            try:
                with open_store(out, readonly=True) as store:
                    running = [r for r in store.runs(history=False)
                               if r.status == "running" and (r.last_step or 0) >= step]
                if running:
                    return running[0].run_id
            except Exception:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no run reached step {step} in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(metrics, history)`` of an uninterrupted run of ONE_RUN with 12 steps."""
    root = tmp_path_factory.mktemp("ref")
    study = write_study(root / "one.toml", ONE_RUN.format(steps=12, pause=0.0))
    p = _driver(*_run_args(study, root / "out"))
    assert p.wait(timeout=120) == 0, p.stderr.read()
    with open_store(root / "out", readonly=True) as store:
        (rec,) = store.runs()
    return rec.metrics, rec.history


def test_reset_force_stops_the_live_holder_which_writes_nothing_more(tmp_path, reference, capsys):
    study = write_study(tmp_path / "one.toml", ONE_RUN.format(steps=12, pause=0.3))
    out = tmp_path / "out"
    holder = _driver(*_run_args(study, out))
    run_id = _wait_for_step(out, 3)
    assert cli(["reset", str(out), run_id, "--force"]) == 0
    assert "running -> pending" in capsys.readouterr().out
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 2 and "no longer holds it" in err and "reset" in err, err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        err.strip().splitlines()[-1]], err
    with open_store(out, readonly=True) as store:
        rec = store.get(run_id)
    assert rec.status == "pending" and rec.history == {} and rec.metrics == {}
    assert not (out / "runs" / run_id / "history.jsonl").exists()
    assert not (out / "runs" / run_id / "checkpoint.pt").exists()
    p = _driver(*_run_args(study, out))
    assert p.wait(timeout=120) == 0, p.stderr.read()
    with open_store(out, readonly=True) as store:
        rec = store.get(run_id)
    assert rec.status == "done" and (rec.metrics, rec.history) == reference
    assert (out / "runs" / run_id / "finished_by").read_text().count("\n") == 1


def test_a_stopped_holder_taken_over_stops_at_its_next_write(tmp_path, reference):
    study = write_study(tmp_path / "one.toml", ONE_RUN.format(steps=12, pause=0.1))
    out = tmp_path / "out"
    first = _driver(*_run_args(study, out))
    run_id = _wait_for_step(out, 2)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _driver(*_run_args(study, out), SHARPLAB_HEARTBEAT_TIMEOUT="1.5", SHARPLAB_HOST="second-host")
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 2 and "no longer holds it" in err and "second-host" in err, err
    with open_store(out, readonly=True) as store:
        rec = store.get(run_id)
    assert rec.status == "done" and rec.attempts == 2 and (rec.metrics, rec.history) == reference
    assert (out / "runs" / run_id / "finished_by").read_text().split() == ["second-host"]


def test_checkpoint_checksums_fall_back_to_the_last_good_state(tmp_path):
    path = tmp_path / "checkpoint.pt"
    messages: list[str] = []
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert digest_path(path).exists() and previous_path(path).exists()
    assert load_checkpoint(path, messages.append) == {"step": 2} and messages == []
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit
    path.write_bytes(bytes(data))
    assert load_checkpoint(path, messages.append) == {"step": 1}
    assert str(path) in messages[0] and "damaged" in messages[0] and "previous checkpoint" in messages[1]
    assert path.with_name("checkpoint.pt.bad").exists() and not path.exists()
    prev = previous_path(path)
    prev.write_bytes(prev.read_bytes()[:-3] + b"xyz")
    assert load_checkpoint(path, messages.append) is None  # nothing good left: the run starts over
    legacy = tmp_path / "legacy" / "checkpoint.pt"
    legacy.parent.mkdir()
    save_checkpoint(legacy, {"step": 5})
    digest_path(legacy).unlink()  # written before checksums existed
    assert load_checkpoint(legacy, messages.append) == {"step": 5}


def test_a_flipped_checkpoint_is_reported_and_the_run_resumes_from_its_last_good_state(tmp_path, reference):
    study = write_study(tmp_path / "one.toml", ONE_RUN.format(steps=12, pause=0.3))
    out = tmp_path / "out"
    p = _driver(*_run_args(study, out))
    run_id = _wait_for_step(out, 3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    with open_store(out, readonly=True) as store:
        assert store.get(run_id).status == "running"  # killed mid-run
    ckpt = out / "runs" / run_id / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    p = _driver(*_run_args(study, out))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert f"checkpoint {ckpt} is damaged" in err
    with open_store(out, readonly=True) as store:
        rec = store.get(run_id)
    assert rec.status == "done" and (rec.metrics, rec.history) == reference


def test_unreachable_server_or_bad_credentials_one_line_nothing_started(tmp_path, pg_server, toy_study, capsys):
    cases = {"unreachable": f"postgresql://postgres@/x?host={tmp_path}/nosock&port=5432",
             "credentials": pg_server.url("postgres").replace("postgres@", "nosuchrole@")}
    for name, url in cases.items():
        out = tmp_path / name
        for cmd in (["run", str(toy_study), "--out", str(out), "--store", url], ["status", str(out), "--store", url],
                    ["export", str(out), "--store", url], ["reset", str(out), "r1", "--store", url]):
            assert cli(cmd) == 2, (name, cmd)
            captured = capsys.readouterr()
            assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
            assert "cannot be opened" in captured.err and ("nosock" in captured.err or "nosuchrole" in captured.err)
        assert not out.exists()


def test_read_paths_write_nothing(tmp_path, toy_study, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    for cmd in (["status", str(out)], ["export", str(out)]):
        assert cli(cmd) == 2
        assert "no results" in capsys.readouterr().err
    assert (out / "results.sqlite").read_bytes() == b""  # no schema written into an empty file
    real = out / "real"
    assert cli(["run", str(toy_study), "--out", str(real), "--quiet"]) == 0
    with open_store(real) as store:  # a checkpointed WAL: the file holds every row
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (real / "results.sqlite").read_bytes()
    capsys.readouterr()
    for cmd in (["status", str(real)], ["export", str(real), "--json"]):
        assert cli(cmd) == 0
    assert (real / "results.sqlite").read_bytes() == before
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1])["lab"] == "runner-toy"


def test_sweep_refuses_an_existing_non_database_sqlite_file(tmp_path, capsys):
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes, not a database\n")
    study = write_study(tmp_path / "sw.toml", """
        lab = "runner-toy"
        name = "sw"
        [sweep]
        metric = "loss"
        [sweep.space]
        x = { low = 0.0, high = 0.9 }
    """)
    assert cli(["sweep", str(study), "--trials", "1", "--storage", f"sqlite:///{victim}"]) == 2
    assert "not a SQLite database" in capsys.readouterr().err
    assert victim.read_text() == "my notes, not a database\n"


def test_plan_records_runs_and_starts_nothing(tmp_path, toy_study, capsys):
    out = tmp_path / "out"
    assert cli(["run", str(toy_study), "--out", str(out), "--plan"]) == 0
    ids = capsys.readouterr().out.split()
    with open_store(out, readonly=True) as store:
        runs = store.runs()
    assert len(ids) == 6 and [r.run_id for r in runs] == ids and all(r.status == "pending" for r in runs)
    assert not (out / "runs").exists() and (out / "studies" / "toy.json").exists()


def test_status_check_finds_changed_contents_of_the_same_size(tmp_path, toy_study, capsys):
    out = tmp_path / "out"
    assert cli(["run", str(toy_study), "--out", str(out), "--quiet"]) == 0
    assert cli(["status", str(out), "--check"]) == 0
    history = next((out / "runs").glob("*/history.jsonl"))
    text = history.read_text()
    history.write_text(text.replace("0.", "9.", 1))  # same size, other contents
    capsys.readouterr()
    assert cli(["status", str(out), "--check"]) == 1
    assert f"{history} has other contents" in capsys.readouterr().out


def test_a_full_disk_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    import errno

    import sharplab.io
    from sharplab.errors import SharplabError

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sharplab.io, "atomic_write_bytes", full)
    with pytest.raises(SharplabError, match="No space left on device.*previous checkpoint is kept"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path, print) == {"step": 1}


@pytest.fixture
def read_only_view(tmp_path):
    """``(source folder, the same folder mounted read-only)``; skipped where bind mounts are not allowed."""
    src, view = tmp_path / "src", tmp_path / "view"
    src.mkdir()
    view.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (as non-root, chmod would do, but root ignores it)")
    ok = subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("bind mounts are not allowed here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("read-only remount is not allowed here")
        yield src, view
    finally:
        if subprocess.run(["umount", str(view)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)
            raise AssertionError(f"{view} was busy at the end: a store connection was left open")


def test_status_export_report_work_in_a_read_only_folder(read_only_view, toy_study, capsys):
    src, view = read_only_view
    assert cli(["run", str(toy_study), "--out", str(src / "out"), "--quiet"]) == 0
    with pytest.raises(OSError):
        (view / "out" / "probe").write_text("x")
    capsys.readouterr()
    assert cli(["status", str(view / "out")]) == 0
    assert "4 done, 2 diverged" in capsys.readouterr().out
    assert cli(["export", str(view / "out"), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert cli(["status", str(view / "out"), "--check"]) == 0


def test_a_full_store_says_so_and_nothing_is_lost(tmp_path):
    from sharplab.runner.config import RunSpec
    from sharplab.runner.store import StoreError

    first = RunSpec("runner-toy", {"x": 0.5}, 0, 1, "s")
    with open_store(tmp_path) as store:
        store.add_runs([first])
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
        big = [RunSpec("runner-toy", {"x": 0.5, "pad": "x" * 5000}, s, 1, "s") for s in range(1, 50)]
        with pytest.raises(StoreError, match="full.*not damaged and nothing was lost"):
            store.add_runs(big)
        assert [r.run_id for r in store.runs()] == [first.run_id]  # the failed transaction left nothing
