"""Runner lab ``mechanisms``: :func:`~sharplab.labs.feature_quality.mechanisms.run_mechanisms` for one seed.

Kept apart from :mod:`.mechanisms` (the computation) and :mod:`.mechanisms_plots` (figures, report), which
imports :mod:`.mechanisms`: this module depends on both, so neither imports the other's dependents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sharplab.io import atomic_write_json
from sharplab.labs.feature_quality.mechanisms import MechanismsConfig, run_mechanisms, trace_history
from sharplab.labs.feature_quality.mechanisms_plots import report, write_figures
from sharplab.runner.context import RunContext
from sharplab.runner.labs import Lab, register_lab


def run(cfg: MechanismsConfig, ctx: RunContext) -> dict[str, float]:
    """Runner entry: the study for ``ctx.seed``; traces go to the metrics history, figures to the run dir."""
    result = run_mechanisms(cfg, ctx.seed, ctx)
    for step, metrics in trace_history(result).items():
        ctx.log_metrics(step, metrics)
    atomic_write_json(ctx.artifact("mechanisms.json"), result.to_json())
    write_figures([result], ctx.run_dir)
    return {k: v for k, v in result.metrics.items() if math.isfinite(v)}


def _report(runs: Sequence[Any], builder: Any) -> None:
    report(runs, builder)


register_lab(Lab("mechanisms", MechanismsConfig, run, report=_report,
                 description="SAM's importance weighting and learning-rate scaling along training; ablation"))
