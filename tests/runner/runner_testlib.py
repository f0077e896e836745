"""A tiny in-process lab for runner tests, plus helpers to write study files and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sharplab.errors import Diverged
from sharplab.runner.labs import LABS, Lab, register_lab

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ToyConfig:
    x: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    steps: int = field(default=3, metadata={"min": 1})
    mode: str = field(default="ok", metadata={"choices": ["ok", "boom"]})
    flag: bool = False
    widths: tuple[int, ...] = (4, 4)


def toy_run(cfg: ToyConfig, ctx) -> dict[str, float]:
    """loss_t = (x - 0.3)^2 + 0.01 * seed + 1 / (t + 1); diverges when x == 1 (at step = steps)."""
    if cfg.mode == "boom":
        raise RuntimeError("toy lab exploded\nsecond line")
    loss = 0.0
    for t in range(cfg.steps):
        loss = (cfg.x - 0.3) ** 2 + 0.01 * ctx.seed + 1.0 / (t + 1)
        ctx.log_metrics(t + 1, {"loss": loss, "x_seen": cfg.x})
    if cfg.x == 1.0:
        raise Diverged(cfg.steps)
    return {"loss": loss, "width_sum": float(sum(cfg.widths))}


def toy_report(runs, builder) -> None:
    from sharplab.runner.report import add_metric_table

    builder.add_text(f"toy section: {len(runs)} runs")
    add_metric_table(builder, "runner-toy", runs)


if "runner-toy" not in LABS:
    register_lab(Lab("runner-toy", ToyConfig, toy_run, toy_report, "runner test lab"))


def write_study(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def sharplab_cli(*args: str, cwd: Path | None = None, timeout: float = 240,
                 check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m sharplab ...`` in a child process (quiet, 1 thread)."""
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "sharplab", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"sharplab {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture
def toy_study(tmp_path: Path) -> Path:
    return write_study(tmp_path / "toy.toml", """
        lab = "runner-toy"
        name = "toy"
        [config]
        steps = 4
        [grid]
        x = [0.1, 0.5, 1.0]
        seed = [0, 1]
    """)
