"""Running configurations: one run in this process, or a whole study in parallel processes.

Layout of an output folder::

    DIR/results.sqlite          the results store (sharplab.runner.store; or a PostgreSQL database: --store URL)
    DIR/studies/<name>.json     each study file run into DIR, as parsed
    DIR/runs/<run_id>/run.json  resolved config, seed, versions, machine, git revision (atomic)
    DIR/runs/<run_id>/run.log   the run's log;  checkpoint.pt, model.pt and other artifacts of the lab

A run is claimed in the store (status ``running``, pid, host, a claim token) before it starts and finished
in one transaction; the holder's every write checks the token, so a run reset (``--force``) or taken over
meanwhile stops its old holder at the next write (:class:`~sharplab.runner.store.ClaimLost`). The store is
``DIR/results.sqlite`` or, for many machines, a PostgreSQL database (``RunOptions.store``, ``--store URL``).
``done`` and ``diverged`` runs are never re-run; ``pending``, ``failed`` and interrupted
(``running`` whose process is gone) runs are started again, and the lab resumes from its checkpoint.

Several ``sharplab run`` processes may share one output folder: each runs the pending runs nobody holds
(a run held by another live process is skipped, not waited for), and only after its last free run waits
for the runs still held by others, taking one over if its holder dies (:meth:`RunRecord.takeover_reason`).

Parallelism: ``jobs=1, nproc=1`` runs everything in this process. Otherwise each run is a child process
(``python -m sharplab.runner.worker``), or ``nproc`` of them under ``torchrun`` (DDP, gloo on CPU), with
``jobs`` runs at a time and ``cpu_count // (jobs * nproc)`` threads each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sharplab.errors import Diverged, SharplabError
from sharplab.io import atomic_write_json
from sharplab.runner.config import RunSpec, Study
from sharplab.runner.context import CHECKPOINT_NAME, RunContext, read_history
from sharplab.runner.env import environment
from sharplab.runner.labs import get_lab
from sharplab.runner.store import (
    FINISHED,
    ClaimLost,
    Heartbeat,
    RunRecord,
    Store,
    heartbeat_timeout,
    open_store,
    pid_alive,
)


@dataclass(frozen=True)
class RunOptions:
    """How runs execute (not part of a run's identity)."""

    quiet: bool = False
    tensorboard: bool = False
    threads: int | None = None  # torch threads per process; None = leave as is
    watch_pid: int | None = None  # stop (exit 3) once this process is gone: a killed parent `sharplab run`
    store: str | None = None  # results store URL (None: $SHARPLAB_STORE, else DIR/results.sqlite)


def run_dir_of(out_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def require_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        msg = "--tensorboard needs the tensorboard package: pip install 'sharplab[tensorboard]'"
        raise SharplabError(msg) from None


def _resolve_device(cfg: Any, local_rank: int) -> torch.device:
    name = str(getattr(cfg, "device", "cpu"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SharplabError("config asks for device = 'cuda' but no CUDA GPU is visible; use cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _run_logger(run_id: str, path: Path) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"sharplab.run.{run_id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def execute_run(out_dir: str | os.PathLike, spec: RunSpec, options: RunOptions = RunOptions(),
                rank: int = 0, world_size: int = 1, local_rank: int = 0) -> str:
    """Run one configuration here; return its final status (or ``"finished"``/``"busy"`` if not run).

    Rank 0 claims the run, records it and writes results; other ranks (under torchrun) only train.
    """
    out_dir = Path(out_dir)
    lab = get_lab(spec.lab)
    cfg = spec.build_config()
    run_id = spec.run_id
    run_dir = run_dir_of(out_dir, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(cfg, local_rank)  # fails here, before the run is claimed
    main = rank == 0
    if options.threads:
        torch.set_num_threads(options.threads)
    store = open_store(out_dir, options.store) if main else None
    handler: logging.Handler | None = None
    writer = None
    try:
        if store is not None:
            check_threads(store.get(run_id), torch.get_num_threads())
        claim = store.claim(run_id, torch.get_num_threads()) if store is not None else "claimed"
        if world_size > 1:  # every rank must agree to start, or the others would wait in collectives forever
            claim = _agree(claim, device)
        if claim != "claimed":
            return claim
        if store is not None:
            remove_temp_files(run_dir)
            store.restore_history(run_id, read_history(run_dir))
            attempt = store.get(run_id).attempts
            atomic_write_json(run_dir / "run.json", {
                "run_id": run_id, "lab": spec.lab, "study": spec.study, "seed": spec.seed,
                "nproc": spec.nproc, "config": spec.config, "attempt": attempt, "environment": environment(),
            })
        log_name = "run.log" if main else f"run.rank{rank}.log"
        logger, handler = _run_logger(run_id, run_dir / log_name)
        logger.info("start %s run %s seed %d (rank %d/%d, %d threads): %s", spec.lab, run_id, spec.seed, rank,
                    world_size, torch.get_num_threads(), spec.config)
        if options.tensorboard and main:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        on_metrics = _metrics_sink(store, run_id, writer, options.watch_pid)
        guard = (lambda: store.check_held(run_id)) if store is not None else None
        ctx = RunContext(run_dir, seed=spec.seed, device=device,
                         quiet=options.quiet or not main, on_metrics=on_metrics, logger=logger, rank=rank,
                         world_size=world_size, history_file=main, guard=guard)
        beat = (Heartbeat(lambda: open_store(out_dir, options.store), run_id, store.token(run_id))
                if store is not None else contextlib.nullcontext())
        try:
            with beat:
                metrics = {k: float(v) for k, v in (lab.run(cfg, ctx) or {}).items()}
        except ClaimLost as exc:
            logger.error("%s", exc)
            raise
        except Diverged as exc:
            logger.warning("diverged: %s", exc)
            if store is not None:
                store.finish(run_id, "diverged", error=str(exc), diverged_step=exc.step, files=run_files(run_dir))
            return "diverged"
        except KeyboardInterrupt:
            if store is not None:
                store.finish(run_id, "failed", error="interrupted by the user (Ctrl-C); re-run to resume")
            raise
        except Exception as exc:
            logger.exception("failed")
            if store is None:
                raise
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            store.finish(run_id, "failed", error=message)
            return "failed"
        if store is not None:
            store.finish(run_id, "done", metrics=metrics, files=run_files(run_dir))
        logger.info("done: %s", metrics)
        return "done"
    finally:
        if writer is not None:
            writer.close()
        if handler is not None:
            logging.getLogger(f"sharplab.run.{run_id}").removeHandler(handler)
            handler.close()
        if store is not None:
            store.close()


#: exit code of a worker whose run was reset or taken over while it ran (:class:`ClaimLost`)
CLAIM_LOST_EXIT = 4

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


def check_threads(rec: RunRecord, threads: int) -> None:
    """Refuse to resume a run from its checkpoint with another torch thread count than it started with:
    float reductions differ between thread counts, so the result would match neither count."""
    if rec.status in FINISHED or rec.threads in (None, threads) or rec.run_dir is None:
        return
    if (rec.run_dir / CHECKPOINT_NAME).exists():
        raise SharplabError(f"run {rec.run_id} was started with {rec.threads} torch threads and has a checkpoint; "
                            f"resume it with --threads {rec.threads}, or `sharplab reset "
                            f"{rec.run_dir.parent.parent} {rec.run_id}` to start it over")


def remove_temp_files(run_dir: Path) -> None:
    """Delete temporary files of atomic writes left by a killed attempt (``.NAME.*.tmp``)."""
    for tmp in run_dir.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


#: files whose content changes after a run finishes (logs) are not part of its manifest
_UNLISTED = (".log",)


def run_files(run_dir: Path) -> dict[str, list[Any]]:
    """``relative path -> [size, SHA-256]`` of the files a run left in its folder (logs and TensorBoard
    excepted), recorded when it finishes and checked by ``sharplab status --check``."""
    out: dict[str, list[Any]] = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.endswith(_UNLISTED) and not rel.startswith("tensorboard/"):
            out[rel] = [p.stat().st_size, file_sha256(p)]
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (bounded memory)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _agree(claim: str, device: torch.device) -> str:
    """Rank 0's claim outcome, broadcast to every rank."""
    import torch.distributed as dist

    outcomes = ("claimed", "finished", "busy")
    flag = torch.tensor([outcomes.index(claim)], device=device)
    dist.broadcast(flag, 0)
    return outcomes[int(flag.item())]


def _metrics_sink(store: Store | None, run_id: str, writer: Any,
                  watch_pid: int | None) -> Callable[[int, dict[str, float]], None] | None:
    if store is None:
        return None

    def sink(step: int, metrics: dict[str, float]) -> None:
        if watch_pid and not pid_alive(watch_pid):  # the `sharplab run` that started us was killed
            os._exit(3)
        store.log_epoch(run_id, step, metrics)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)

    return sink


# --- studies -----------------------------------------------------------------------------------------
def plan_study(study: Study, out_dir: str | os.PathLike, nproc: int = 1, store_url: str | None = None) -> list[str]:
    """``sharplab run --plan``: record the study's runs (pending) in the store and its file under
    ``DIR/studies``, start nothing; return the ids of the runs not finished yet, in study order (for
    launchers that start each run themselves, e.g. ``torchrun`` across nodes)."""
    out_dir = Path(out_dir)
    specs = study.runs(nproc)
    with open_store(out_dir, store_url) as store:
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
    threads = options.threads or max(1, (os.cpu_count() or 1) // (jobs * nproc))
    used = threads if (jobs > 1 or nproc > 1) else (options.threads or torch.get_num_threads())
    with open_store(out_dir, options.store) as store:
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


def verify_run_files(rec: RunRecord) -> list[str]:
    """Problems with a finished run's folder: missing run.json or one that disagrees with the store, and
    recorded files that are missing or changed size or contents (a SHA-256 recorded at finish; stores
    written before checksums existed have sizes only)."""
    import json

    assert rec.run_dir is not None
    problems = []
    meta = rec.run_dir / "run.json"
    if not meta.is_file():
        return [f"{meta} is missing"]
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return [f"{meta} is not valid JSON"]
    for key, want in (("run_id", rec.run_id), ("lab", rec.lab), ("seed", rec.seed), ("config", rec.config)):
        if info.get(key) != want:
            problems.append(f"{meta}: {key} differs from the store")
    for name, entry in (rec.files or {}).items():
        size, digest = (entry[0], entry[1]) if isinstance(entry, list) else (entry, None)
        path = rec.run_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, the store recorded {size}")
        elif digest is not None and file_sha256(path) != digest:
            problems.append(f"{path} has other contents than when the run finished (SHA-256 differs)")
    return problems
