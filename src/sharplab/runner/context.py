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


#: the most bytes of a history file read back (a run logging every step for 10^6 steps writes ~100 MB)
MAX_HISTORY_BYTES = 256 << 20
#: a longer line is not a metrics line (skipped without being held in memory)
MAX_HISTORY_LINE = 1 << 20
_MAX_STEP = 2**63 - 1


def read_history(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """The ``(step, metrics)`` lines of a run folder's history file (a torn last line is skipped).

    Read with bounds: only a regular file is read (a symlink to ``/dev/zero`` or a FIFO is ignored), at
    most :data:`MAX_HISTORY_BYTES` of it (a warning names what was left unread), lines longer than
    :data:`MAX_HISTORY_LINE` and steps that are not integers in [0, 2^63 - 1] (``"step": 1e20``) are
    skipped.
    """
    path = Path(run_dir) / HISTORY_NAME
    try:
        if not path.is_file():
            return []
        with path.open("rb") as f:
            return _parse_history(f, path)
    except OSError as exc:
        logging.getLogger("sharplab.run").warning("history %s not read: %s", path, exc.strerror or exc)
        return []


def _parse_history(f: Any, path: Path) -> list[tuple[int, dict[str, float]]]:
    import json

    rows: list[tuple[int, dict[str, float]]] = []
    read = 0
    while read < MAX_HISTORY_BYTES:
        line = f.readline(min(MAX_HISTORY_LINE + 1, MAX_HISTORY_BYTES - read))
        if not line:
            return rows
        read += len(line)
        if len(line) > MAX_HISTORY_LINE:  # skip the rest of an over-long line, counting what it costs
            while line and not line.endswith(b"\n") and read < MAX_HISTORY_BYTES:
                line = f.readline(min(MAX_HISTORY_LINE, MAX_HISTORY_BYTES - read))
                read += len(line)
            continue
        row = _history_row(line, json)
        if row is not None:
            rows.append(row)
    if f.read(1):
        logging.getLogger("sharplab.run").warning("history %s is longer than %d bytes; the rest was not read",
                                                  path, MAX_HISTORY_BYTES)
    return rows


def _history_row(line: bytes, json: Any) -> tuple[int, dict[str, float]] | None:
    try:
        row = json.loads(line.decode("utf-8", errors="replace"))
        step = row["step"]
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
            return None
        return step, {str(k): float(v) for k, v in row["metrics"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
        return None


def trim_history(run_dir: Path, step: int, names: Iterable[str]) -> None:
    """Cut the history file at the first line that logged ``step`` with these metric ``names`` (and a torn
    last line): called before an attempt's first line.

    An attempt resumed from a checkpoint (or started over) logs again the steps after that checkpoint, the
    first of them first; the lines a killed earlier attempt wrote from there on would otherwise stay as
    duplicates. Lines are matched on step and names, since a lab may log several kinds of lines (per-epoch,
    then a trace from step 0). Nothing is read past :data:`MAX_HISTORY_BYTES`; a file that is not a regular
    file is left alone."""
    import json

    path = Path(run_dir) / HISTORY_NAME
    key = (int(step), sorted(names))
    try:
        if not path.is_file():
            return
        with path.open("r+b") as f:
            offset = 0
            while offset < MAX_HISTORY_BYTES:
                line = f.readline(MAX_HISTORY_LINE + 1)
                if not line:
                    return
                if not line.endswith(b"\n"):
                    if len(line) <= MAX_HISTORY_LINE:  # a torn last line: cut it (the next line would join it)
                        break
                    while line and not line.endswith(b"\n") and offset < MAX_HISTORY_BYTES:  # over-long: skip
                        offset += len(line)
                        line = f.readline(MAX_HISTORY_LINE)
                    offset += len(line)
                    continue
                row = _history_row(line, json)
                if row is not None and (row[0], sorted(row[1])) == key:
                    break
                offset += len(line)
            else:
                return
            f.truncate(offset)
    except OSError as exc:
        logging.getLogger("sharplab.run").warning("history %s not trimmed: %s", path, exc.strerror or exc)


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
    #: called after each checkpoint write (the runner's ``--jobs`` worker stops there once its parent is gone)
    after_checkpoint: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(self.device)
        self.quiet = self.quiet or bool(os.environ.get("CI"))
        self.history: list[tuple[int, dict[str, float]]] = []
        self._history_trimmed = False

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

            if not self._history_trimmed:  # this attempt's first line: drop a lost attempt's lines from here on
                trim_history(self.run_dir, int(step), clean)
                self._history_trimmed = True
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
        if self.after_checkpoint is not None:
            self.after_checkpoint()

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
