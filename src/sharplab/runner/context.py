"""The object a lab's ``run`` function receives: where to write, the seed, checkpoints, metrics, progress.

A lab never touches the results store or the file layout directly; it calls these methods. The runner
(``sharplab run``) builds a context whose ``on_metrics`` writes to the SQLite store; CLI commands and
notebooks can build a plain one with ``RunContext(run_dir, seed=0)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sharplab.runner.ckpt_integrity import load_checkpoint, save_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"
#: per-step metrics, one JSON line per ``log_metrics`` call, so that a lost or emptied store can be refilled
HISTORY_NAME = "history.jsonl"


def read_history(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """The ``(step, metrics)`` lines of a run folder's history file (a torn last line is skipped)."""
    import json

    path = Path(run_dir) / HISTORY_NAME
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows.append((int(row["step"]), {k: float(v) for k, v in row["metrics"].items()}))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return rows


@dataclass
class RunContext:
    """Per-run services for a lab.

    Attributes:
        run_dir: folder owned by this run (created if missing); checkpoints and artifacts go here.
        seed: the run's seed; the lab seeds every generator it uses from it.
        device: where to train (``"cpu"`` unless the config asks for another device).
        quiet: suppress progress bars (also when the ``CI`` environment variable is set).
        on_metrics: callback ``(step, metrics)`` receiving per-epoch/per-eval metrics (the store's writer).
        rank, world_size: this process's place in a ``torchrun`` launch (0 and 1 when not distributed);
            the runner has initialised ``torch.distributed`` when ``world_size > 1``. Only rank 0
            writes checkpoints.
        history_file: also append every ``log_metrics`` call to ``run_dir/history.jsonl`` (the runner
            does, so that the per-step history survives a lost results store).
    """

    run_dir: Path
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet: bool = False
    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("sharplab.run"))
    rank: int = 0
    world_size: int = 1
    history_file: bool = False
    #: called before each checkpoint write: raises if this process no longer holds the run (the runner's
    #: claim check), so that a fenced process never overwrites the new holder's files
    guard: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(self.device)
        self.quiet = self.quiet or bool(os.environ.get("CI"))
        self.history: list[tuple[int, dict[str, float]]] = []

    @property
    def is_main(self) -> bool:
        """True on the process that records results (rank 0)."""
        return self.rank == 0

    # --- metrics -----------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record metrics at ``step`` (an epoch or iteration index chosen by the lab)."""
        clean = {k: float(v) for k, v in metrics.items()}
        self.history.append((step, clean))
        if self.on_metrics is not None:  # first: the store checks this process still holds the run
            self.on_metrics(step, clean)
        if self.history_file and self.is_main:
            import json

            with (self.run_dir / HISTORY_NAME).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": int(step), "metrics": {k: _json_float(v) for k, v in clean.items()}})
                        + "\n")
        self.logger.info("step %d: %s", step, " ".join(f"{k}={v:.6g}" for k, v in clean.items()))

    # --- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (temp file + rename) with its checksum (:mod:`~sharplab.runner.ckpt_integrity`).
        Tensors, numbers, strings, lists, dicts only.

        Only rank 0 writes; other ranks return at once (their state is identical under DDP)."""
        if not self.is_main:
            return
        if self.guard is not None:
            self.guard()
        save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint written by this run that matches its checksum, or None. Loaded with
        ``weights_only=True``. A damaged checkpoint is reported (naming it) and skipped: the run resumes
        from the previous good one, or starts over."""
        def report(msg: str) -> None:
            import sys

            self.logger.warning(msg)
            print(msg, file=sys.stderr)

        return load_checkpoint(self.checkpoint_path, report)

    # --- artifacts and progress --------------------------------------------------------------------
    def artifact(self, name: str) -> Path:
        """Path of a file this run writes (figures, arrays), inside ``run_dir``."""
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = ""):
        """A progress bar on a terminal, a plain line every few percent otherwise (off when quiet)."""
        from sharplab.progress import progress

        return progress(iterable, total=total, desc=desc, disable=self.quiet, leave=False)


def _json_float(v: float) -> float | str:
    return v if v == v and abs(v) != float("inf") else str(v)
