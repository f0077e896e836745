"""``python two_process_driver.py STUDY OUT READY_DIR NAME``: one of several ``run_study`` processes on one
output folder (used by test_runner_two_processes.py, which imports it for the lab and is the other one).

Registers the lab ``runner-slow`` (each run sleeps ``seconds``, appends this process's pid to the run's
``executed_by`` file and returns it as the metric ``pid``), announces itself in READY_DIR and starts once
every process named in READY_DIR/expected has announced itself, so that the processes really overlap.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sharplab.runner.config import load_study
from sharplab.runner.execute import run_study  # imports torch: before announcing readiness
from sharplab.runner.labs import LABS, Lab, register_lab
from sharplab.runner.single_run import RunOptions


@dataclass(frozen=True)
class SlowConfig:
    x: int = field(default=0, metadata={"min": 0})
    seconds: float = field(default=0.3, metadata={"min": 0.0})


def slow_run(cfg: SlowConfig, ctx) -> dict[str, float]:
    with ctx.artifact("executed_by").open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(cfg.seconds)
    return {"pid": float(os.getpid())}


if "runner-slow" not in LABS:
    register_lab(Lab("runner-slow", SlowConfig, slow_run, None, "runner test lab: sleeps"))


def main() -> int:
    study, out, ready, name = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (ready / name).write_text(str(os.getpid()))
    expected = (ready / "expected").read_text().split()
    deadline = time.time() + 60
    while not all((ready / n).exists() for n in expected) and time.time() < deadline:
        time.sleep(0.01)
    counts = run_study(load_study(study), out, options=RunOptions(quiet=True, threads=1))
    print(dict(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
