"""Running a study: every run not finished yet, in this process or in child processes, and resetting a run.

One run is :func:`sharplab.runner.single_run.execute_run`; the folder it writes is described in
:mod:`sharplab.runner.run_folder`. ``done`` and ``diverged`` runs are never re-run; ``pending``, ``failed``
and interrupted (``running`` whose process is gone) runs are started again, and the lab resumes from its
checkpoint.

Several ``sharplab run`` processes may share one output folder: each runs the pending runs nobody holds
(a run held by another live process is skipped, not waited for), and only after its last free run waits
for the runs still held by others, taking one over if its holder dies (:meth:`RunRecord.takeover_reason`).

Parallelism: ``jobs=1, nproc=1`` runs everything in this process. Otherwise each run is a child process
(``python -m sharplab.runner.worker``), or ``nproc`` of them under ``torchrun`` (DDP, gloo on CPU), with
``jobs`` runs at a time and ``cpu_count // (jobs * nproc)`` threads each.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch

from sharplab.errors import SharplabError
from sharplab.io import atomic_write_json
from sharplab.runner.config import RunSpec, Study, adopt_recorded
from sharplab.runner.context import CHECKPOINT_NAME
from sharplab.runner.labs import get_lab
from sharplab.runner.run_folder import run_dir_of
from sharplab.runner.single_run import CLAIM_LOST_EXIT, RunOptions, check_threads, execute_run, require_tensorboard
from sharplab.runner.store import (
    FINISHED,
    ClaimLost,
    heartbeat_timeout,
    open_store,
)

#: more torch threads than this per process is refused (oversubscription; 100000 crashes OpenMP)
MAX_THREADS_PER_CPU = 4


def check_parallelism(jobs: int, nproc: int, threads: int | None) -> None:
    """One-line errors for ``--jobs``, ``--nproc`` and ``--threads`` outside what this machine can run."""
    cpus = os.cpu_count() or 1
    limit = MAX_THREADS_PER_CPU * cpus
    for name, value in (("--jobs", jobs), ("--nproc", nproc), ("--threads", threads)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise SharplabError(f"{name} {value} must be an integer in [1, {limit}] ({cpus} CPUs here)")


# --- studies -----------------------------------------------------------------------------------------
#: the files the runner itself writes in a run's folder (the lab's own artifacts are not known in advance)
RUN_FILE_NAMES = ("run.json", "run.log", "worker.log", "history.jsonl", CHECKPOINT_NAME, f"{CHECKPOINT_NAME}.sha256")


def check_output_paths(study: Study, out_dir: str | os.PathLike, specs: list[RunSpec]) -> None:
    """One line before anything is printed or started when a folder stands where the study writes a file
    (``studies/<name>.json``, a run's ``run.json``, ...) or a file where a run's folder belongs."""
    out_dir = Path(out_dir)
    slots = [out_dir / "studies" / f"{study.name}.json"]
    runs = out_dir / "runs"
    if runs.is_dir():
        ids = {s.run_id for s in specs}
        with os.scandir(runs) as entries:
            for entry in entries:
                if entry.name not in ids:
                    continue
                if not entry.is_dir():
                    raise SharplabError(f"{entry.path} is a file where the folder of run {entry.name} belongs; "
                                        "move it away and run the command again")
                slots += [Path(entry.path) / name for name in RUN_FILE_NAMES]
    for path in slots:
        if path.is_dir():
            raise SharplabError(f"{path} is a folder where a file belongs; move it away and run the command again")


def plan_study(study: Study, out_dir: str | os.PathLike, nproc: int = 1, store_url: str | None = None) -> list[str]:
    """``sharplab run --plan``: record the study's runs (pending) in the store and its file under
    ``DIR/studies``, start nothing; return the ids of the runs not finished yet, in study order (for
    launchers that start each run themselves, e.g. ``torchrun`` across nodes)."""
    out_dir = Path(out_dir)
    specs = study.runs(nproc)
    check_output_paths(study, out_dir, specs)
    with open_store(out_dir, store_url) as store:
        specs = adopt_recorded(specs, {r.run_id: r for r in store.runs(history=False)})
        store.add_runs(specs)
        status = {r.run_id: r.status for r in store.runs(history=False)}
    atomic_write_json(out_dir / "studies" / f"{study.name}.json",
                      {**asdict(study), "run_ids": [s.run_id for s in specs], "nproc": nproc})
    return [s.run_id for s in specs if status[s.run_id] not in FINISHED]


def run_study(study: Study, out_dir: str | os.PathLike, jobs: int = 1, nproc: int = 1,
              options: RunOptions = RunOptions()) -> Counter:
    """Run every configuration of ``study`` not finished yet in ``out_dir``; return a status count."""
    from sharplab.progress import progress

    check_parallelism(jobs, nproc, options.threads)
    if options.tensorboard:
        require_tensorboard()
    out_dir = Path(out_dir)
    specs = study.runs(nproc)
    check_output_paths(study, out_dir, specs)
    threads = options.threads or max(1, (os.cpu_count() or 1) // (jobs * nproc))
    used = threads if (jobs > 1 or nproc > 1) else (options.threads or torch.get_num_threads())
    with open_store(out_dir, options.store) as store:
        specs = adopt_recorded(specs, {r.run_id: r for r in store.runs(history=False)})
        store.add_runs(specs)
        records = {r.run_id: r for r in store.runs(history=False)}
        status = {run_id: r.status for run_id, r in records.items()}
    for s in specs:  # before anything starts: a resume must use the thread count the run started with
        check_threads(records[s.run_id], used)
    atomic_write_json(out_dir / "studies" / f"{study.name}.json",
                      {**asdict(study), "run_ids": [s.run_id for s in specs], "nproc": nproc})
    todo = [s for s in specs if status[s.run_id] not in FINISHED]
    counts: Counter = Counter(status[s.run_id] for s in specs if status[s.run_id] in FINISHED)
    quiet = options.quiet or bool(os.environ.get("CI"))
    bar = progress(total=len(specs), initial=len(specs) - len(todo), desc=f"study {study.name}", disable=quiet)
    if jobs == 1 and nproc == 1:
        run_one = in_process_runner(out_dir, options)
    else:
        run_one = _in_child(out_dir, nproc, RunOptions(True, options.tensorboard, threads, os.getpid(),
                                                       options.store))
    url = options.store


    def record(status: str) -> None:
        counts[status] += 1
        bar.update(1)
        bar.set_postfix(dict(counts))

    held: list[RunSpec] = []  # held by another live process when we got to them: waited for at the end

    def first_pass(spec: RunSpec, result: str) -> None:
        if result == "busy":
            held.append(spec)
        else:
            record(result)

    try:
        if jobs == 1:  # in the main thread, so that Ctrl-C stops the run at once
            for spec in todo:
                first_pass(spec, _attempt(out_dir, spec, run_one, url))
            for spec in held:
                record(run_until_claimed(out_dir, spec, run_one, url))
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                first = {pool.submit(_attempt, out_dir, spec, run_one, url): spec for spec in todo}
                for fut in as_completed(first):
                    first_pass(first[fut], fut.result())
                order = {s.run_id: i for i, s in enumerate(todo)}
                held.sort(key=lambda s: order[s.run_id])
                futures = [pool.submit(run_until_claimed, out_dir, spec, run_one, url) for spec in held]
                for fut in as_completed(futures):
                    record(fut.result())
    finally:
        bar.close()
    return counts


def _attempt(out_dir: Path, spec: RunSpec, run_one: Callable[[RunSpec], str], store_url: str | None = None) -> str:
    """One try at ``spec``: its final status, or ``"busy"`` when another live process holds it."""
    result = run_one(spec)
    if result == "finished":
        with open_store(out_dir, store_url) as store:
            result = store.get(spec.run_id).status
    return result


def run_until_claimed(out_dir: Path, spec: RunSpec, run_one: Callable[[RunSpec], str],
                   store_url: str | None = None) -> str:
    """Run ``spec``; if another live process holds it, wait for that process and take over if needed."""
    told = False
    while True:
        result = _attempt(out_dir, spec, run_one, store_url)
        if result != "busy":
            return result
        if not told:
            with open_store(out_dir, store_url) as store:
                rec = store.get(spec.run_id)
            print(f"run {spec.run_id} is {rec.blocked_by()}; waiting. It is taken over once that process is "
                  f"gone or {heartbeat_timeout():.0f} s without a heartbeat (or: sharplab reset {out_dir} "
                  f"{spec.run_id} --force)", file=sys.stderr)
            told = True
        time.sleep(1.0)


def in_process_runner(out_dir: Path, options: RunOptions) -> Callable[[RunSpec], str]:
    """``run_one(spec)`` running a spec in this process (torch's thread count restored after each run)."""

    def run_one(spec: RunSpec) -> str:
        threads = torch.get_num_threads()
        try:
            return execute_run(out_dir, spec, options)
        finally:
            torch.set_num_threads(threads)

    return run_one


def _in_child(out_dir: Path, nproc: int, options: RunOptions) -> Callable[[RunSpec], str]:
    def run_one(spec: RunSpec) -> str:
        with open_store(out_dir, options.store) as store:
            rec = store.get(spec.run_id)
        if rec.status in FINISHED:
            return "finished"
        if rec.status == "running" and not rec.stale and rec.pid is not None:
            return "busy"
        run_dir = run_dir_of(out_dir, spec.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = worker_command(out_dir, spec.run_id, nproc, options, get_lab(spec.lab).module)
        env = {**os.environ, "OMP_NUM_THREADS": str(options.threads or 1)}
        if options.store:  # in the environment, not the command line: a URL may hold a password
            env["SHARPLAB_STORE"] = options.store
        with open(run_dir / "worker.log", "ab") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc == CLAIM_LOST_EXIT:
            raise ClaimLost(f"run {spec.run_id}: its worker stopped, the run was reset or taken over by another "
                            f"process meanwhile; see {run_dir}/worker.log")
        with open_store(out_dir, options.store) as store:
            rec = store.get(spec.run_id)
            if rec.status in ("done", "diverged", "failed"):
                return rec.status
            if rec.status == "running" and not rec.stale:
                return "busy"  # another process took it over meanwhile
            if rec.status == "pending":
                return "busy"  # reset meanwhile: the next attempt starts it again
            store.finish(spec.run_id, "failed", token=rec.token,
                         error=f"worker exited with code {rc}; see {run_dir}/worker.log")
        return "failed"

    return run_one


def worker_command(out_dir: Path, run_id: str, nproc: int, options: RunOptions,
                   lab_module: str = "") -> list[str]:
    """``python -m sharplab.runner.worker ...``, under ``torch.distributed.run`` when ``nproc > 1``."""
    args = ["-m", "sharplab.runner.worker", str(out_dir), run_id]
    if lab_module:
        args += ["--lab-module", lab_module]
    if options.quiet:
        args.append("--quiet")
    if options.tensorboard:
        args.append("--tensorboard")
    if options.threads:
        args += ["--threads", str(options.threads)]
    if options.watch_pid:
        args += ["--watch-pid", str(options.watch_pid)]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def reset_run(out_dir: str | os.PathLike, run_id: str, force: bool = False, store_url: str | None = None) -> str:
    """``sharplab reset``: the run becomes ``pending`` and starts over (checkpoint, history deleted).

    A process still holding the run (``--force``) is fenced: its claim token is cleared in the store, so
    its next write (history, checkpoint, heartbeat, finish) stops it with :class:`ClaimLost`."""
    from sharplab.runner.ckpt_integrity import digest_path, previous_path
    from sharplab.runner.context import HISTORY_NAME

    with open_store(out_dir, store_url, create=False, wait=False) as store:
        before = store.reset(run_id, force=force)
    run_dir = run_dir_of(out_dir, run_id)
    ckpt = run_dir / CHECKPOINT_NAME
    for path in (ckpt, digest_path(ckpt), previous_path(ckpt), digest_path(previous_path(ckpt)),
                 run_dir / HISTORY_NAME):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return before
