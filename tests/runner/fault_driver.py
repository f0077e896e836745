"""Run ``sharplab ARGS`` and SIGKILL itself at a chosen moment (used by test_runner_fault_injection.py).

``python fault_driver.py save N ARGS...``: die half-way through the N-th ``torch.save`` (a checkpoint write).
``python fault_driver.py metrics N ARGS...``: die at the N-th ``RunContext.log_metrics`` (inside training).
``python fault_driver.py none 0 ARGS...``: no kill.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from sharplab.runner.context import RunContext


def main() -> int:
    mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls = {"n": 0}

    def tick() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    if mode == "save":
        real = torch.save

        def save(obj, f, *a, **kw):
            if tick() and hasattr(f, "write"):
                buf = io.BytesIO()
                real(obj, buf, *a, **kw)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, f, *a, **kw)

        torch.save = save
    elif mode == "metrics":
        real_log = RunContext.log_metrics

        def log_metrics(self, step, metrics):
            if tick():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_log(self, step, metrics)

        RunContext.log_metrics = log_metrics
    from sharplab.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
