"""One run in this process: claim it in the store, record ``run.json``, train the lab, finish.

A run is claimed in the store (status ``running``, pid, host, a claim token) before it starts and finished
in one transaction; the holder's every write checks the token, so a run reset (``--force``) or taken over
meanwhile stops its old holder at the next write (:class:`~sharplab.runner.store.ClaimLost`). The store is
``DIR/results.sqlite`` or, for many machines, a PostgreSQL database (``RunOptions.store``, ``--store URL``).
Under ``torchrun`` every rank runs :func:`execute_run`; rank 0 claims and records, the others only train.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sharplab.errors import Diverged, SharplabError
from sharplab.io import atomic_write_json
from sharplab.runner.config import RunSpec
from sharplab.runner.context import CHECKPOINT_NAME, RunContext, read_history
from sharplab.runner.env import environment
from sharplab.runner.labs import get_lab
from sharplab.runner.run_folder import remove_temp_files, run_dir_of, run_files
from sharplab.runner.store import FINISHED, ClaimLost, Heartbeat, RunRecord, Store, open_store, pid_alive


@dataclass(frozen=True)
class RunOptions:
    """How runs execute (not part of a run's identity)."""

    quiet: bool = False
    tensorboard: bool = False
    threads: int | None = None  # torch threads per process; None = leave as is
    watch_pid: int | None = None  # once this process (the parent `sharplab run`) is gone: ParentWatch
    store: str | None = None  # results store URL (None: $SHARPLAB_STORE, else DIR/results.sqlite)


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
        watch = ParentWatch(options.watch_pid, logger) if store is not None else None
        on_metrics = _metrics_sink(store, run_id, writer, watch)
        guard = (lambda: store.check_held(run_id)) if store is not None else None
        ctx = RunContext(run_dir, seed=spec.seed, device=device,
                         quiet=options.quiet or not main, on_metrics=on_metrics, logger=logger, rank=rank,
                         world_size=world_size, history_file=main, guard=guard,
                         after_checkpoint=watch.after_checkpoint if watch is not None else None)
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


def check_threads(rec: RunRecord, threads: int) -> None:
    """Refuse to resume a run from its checkpoint with another torch thread count than it started with:
    float reductions differ between thread counts, so the result would match neither count."""
    if rec.status in FINISHED or rec.threads in (None, threads) or rec.run_dir is None:
        return
    if (rec.run_dir / CHECKPOINT_NAME).exists():
        raise SharplabError(f"run {rec.run_id} was started with {rec.threads} torch threads and has a checkpoint; "
                            f"resume it with --threads {rec.threads}, or `sharplab reset "
                            f"{rec.run_dir.parent.parent} {rec.run_id}` to start it over")


def _agree(claim: str, device: torch.device) -> str:
    """Rank 0's claim outcome, broadcast to every rank."""
    import torch.distributed as dist

    outcomes = ("claimed", "finished", "busy")
    flag = torch.tensor([outcomes.index(claim)], device=device)
    dist.broadcast(flag, 0)
    return outcomes[int(flag.item())]


class ParentWatch:
    """A ``--jobs`` worker's watch on the ``sharplab run`` that started it (``RunOptions.watch_pid``).

    Once that process is gone (killed), the worker stops at the next safe point rather than at once: the
    step being logged is still recorded and the checkpoint the lab writes right after it is kept, then the
    worker exits with code 3 (the run, left ``running`` by a dead process, is resumed by the next ``sharplab
    run`` from that checkpoint, so no finished epoch is lost). A lab that logs again without checkpointing
    in between stops at that second log, before it is recorded."""

    EXIT_CODE = 3

    def __init__(self, pid: int | None, logger: logging.Logger) -> None:
        self.pid, self.logger, self.gone = pid, logger, False

    def before_metrics(self) -> None:
        if not self.pid or pid_alive(self.pid):
            return
        if self.gone:  # a step logged since the parent died, and no checkpoint written after it
            self._stop("before recording another step (no checkpoint was written after the last one)")
        self.gone = True

    def after_checkpoint(self) -> None:
        if self.gone:
            self._stop("after writing the checkpoint of its last recorded step")

    def _stop(self, when: str) -> None:
        self.logger.warning("the `sharplab run` that started this worker (pid %d) is gone; stopped %s", self.pid,
                            when)
        for handler in self.logger.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.EXIT_CODE)


def _metrics_sink(store: Store | None, run_id: str, writer: Any,
                  watch: ParentWatch | None) -> Callable[[int, dict[str, float]], None] | None:
    if store is None:
        return None

    def sink(step: int, metrics: dict[str, float]) -> None:
        if watch is not None:
            watch.before_metrics()
        store.log_epoch(run_id, step, metrics)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)

    return sink
