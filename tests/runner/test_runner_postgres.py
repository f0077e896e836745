"""A sweep from two worker processes against a real PostgreSQL server (Debian's ``postgresql`` package,
started here on a Unix socket in a temporary folder): one worker is killed with SIGKILL inside a trial, a
worker is started again, and the study must reach its trial budget with every configuration done once, no
trial left RUNNING, and a trial's value equal to a fresh ``sharplab run`` of its configuration (same
computation, 1 thread, so compared exactly). Skipped only where the PostgreSQL server binaries or the
``psycopg2`` driver are not installed (``.ci/run`` installs ``postgresql`` when it can)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from runner_testlib import write_study

from sharplab.runner.store import ResultsStore

HERE = Path(__file__).resolve().parent
SWEEP = """
    lab = "digits"
    name = "pgsweep"
    [config]
    width = 8
    depth = 1
    train_size = 128
    batch_size = 32
    epochs = 6
    [sweep]
    metric = "test_error"
    [sweep.space]
    lr = { low = 0.01, high = 0.3 }
"""
BUDGET = 4


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as the 'postgres' (or 'nobody') account then."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--"]
    pytest.skip("running as root without a 'postgres'/'nobody' account or runuser: cannot start PostgreSQL")


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 not installed (pip install -e '.[test]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    prefix = _as_user()
    root = Path(tempfile.mkdtemp(prefix="sharplab-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if prefix:
        user = pwd.getpwnam(prefix[2])
        for p in (root, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-c listen_addresses='' -c unix_socket_directories={sock} -c fsync=off -p 5432"
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text()[-2000:] if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]} {log}")
    try:
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", user="postgres", host=str(sock), port=5432)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE sharplab")
        conn.close()
        yield f"postgresql+psycopg2://postgres@/sharplab?host={sock}&port=5432"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "fault_driver.py"), "none", "0", *args], env=_env(),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _trials(url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name="pgsweep", storage=url).trials
    except KeyError:  # the workers have not created the study yet
        return []


def test_two_workers_on_postgresql_one_killed_mid_trial(postgres_url, tmp_path):
    from optuna.trial import TrialState

    study = str(write_study(tmp_path / "pgsweep.toml", SWEEP))
    out, log = tmp_path / "sw", tmp_path / "workers.log"
    args = ["sweep", study, "--trials", str(BUDGET), "--out", str(out), "--storage", postgres_url,
            "--sampler-seed", "5", "--quiet"]
    a, b = _worker(args, log), _worker(args, log)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:  # kill a while it is inside a RUNNING trial
        running = [t for t in _trials(postgres_url) if t.state == TrialState.RUNNING]
        if any(t.user_attrs.get("worker", "").endswith(f":{a.pid}") for t in running):
            time.sleep(0.5)  # well into the trial's training
            if any(t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{a.pid}")
                   for t in _trials(postgres_url)):
                os.kill(a.pid, signal.SIGKILL)
                victim = a
        else:
            time.sleep(0.1)
    assert victim is not None, log.read_text()[-3000:]
    assert a.wait(timeout=30) == -signal.SIGKILL
    c = _worker(args, log)
    assert b.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert c.wait(timeout=180) == 0, log.read_text()[-3000:]

    trials = _trials(postgres_url)
    states = [t.state for t in trials]
    # the budget is met; two workers that finish in the same instant may each start one more trial (the
    # documented race of docs/runner.md), so the two live workers can overshoot by one
    n_complete = states.count(TrialState.COMPLETE)
    assert BUDGET <= n_complete <= BUDGET + 1, states
    assert TrialState.RUNNING not in states
    assert TrialState.FAIL in states  # the killed worker's trial, failed by the restarted worker
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.params["lr"] for t in complete}) == n_complete  # no configuration done twice
    recorded = {t.user_attrs["run_ids"][0]: t.value for t in complete}
    assert len(recorded) == n_complete
    with ResultsStore(out) as store:
        runs = {r.run_id: r for r in store.runs()}
    assert all(runs[run_id].status == "done" for run_id in recorded)
    # a trial's value equals a fresh run of the same configuration in another folder
    run_id, value = next(iter(recorded.items()))
    cfg = runs[run_id].config
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
                      for k, v in cfg.items() if not isinstance(v, list))
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(f'lab = "digits"\nname = "fresh"\n[config]\n{lines}\n')
    subprocess.run([sys.executable, str(HERE / "fault_driver.py"), "none", "0", "run", str(fresh),
                    "--out", str(tmp_path / "f"), "--threads", "1", "--quiet"],
                   env=_env(), check=True, capture_output=True, timeout=120)
    with ResultsStore(tmp_path / "f") as store:
        (rec,) = store.runs()
    assert rec.run_id == run_id and rec.metrics["test_error"] == value
