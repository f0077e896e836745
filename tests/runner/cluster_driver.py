"""``python cluster_driver.py ARGS...``: ``sharplab ARGS`` with the test lab ``runner-steps`` registered
(used by test_store_cluster.py for worker processes on one study from several host identities).

``runner-steps``: ``steps`` steps of ``pause`` seconds; each logs a deterministic loss and saves a
checkpoint, a resumed run continues from its checkpoint; at the end the run appends this process's host
identity to its ``finished_by`` file (so a test sees which host finished it, and that only one did).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from sharplab.runner.labs import LABS, Lab, register_lab
from sharplab.runner.store import host_identity


@dataclass(frozen=True)
class StepsConfig:
    x: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    steps: int = field(default=4, metadata={"min": 1})
    pause: float = field(default=0.1, metadata={"min": 0.0})


def steps_run(cfg: StepsConfig, ctx) -> dict[str, float]:
    state = ctx.load_checkpoint()
    start, loss = (int(state["step"]), float(state["loss"])) if state else (0, 1.0)
    for t in range(start + 1, cfg.steps + 1):
        time.sleep(cfg.pause)
        loss = loss * (0.5 + 0.4 * cfg.x) + 0.01 * ctx.seed
        ctx.log_metrics(t, {"loss": loss, "xt": cfg.x * t})
        ctx.save_checkpoint({"step": t, "loss": loss})
    with ctx.artifact("finished_by").open("a", encoding="utf-8") as f:
        f.write(host_identity() + "\n")
    return {"loss": loss, "steps": float(cfg.steps)}


if "runner-steps" not in LABS:
    register_lab(Lab("runner-steps", StepsConfig, steps_run, None, "runner test lab: steps with checkpoints"))


if __name__ == "__main__":
    from sharplab.cli import main

    sys.exit(main(sys.argv[1:]))
