"""``sharplab convergence``: SGD, SAM and USAM with stochastic gradients on a smooth non-convex toy problem.

Without ``--method`` / ``--lr-schedule`` / ``--rho-schedule``: the paper's comparison
(:func:`~sharplab.labs.implicit_bias.convergence.default_study`) for each base rho and lr. Each
``(configuration, seed)`` is one run of the runner's ``convergence`` lab in ``--out``; ``convergence.png``
averages each configuration's logged ``||grad f||`` over its seeds.
"""

from __future__ import annotations

import argparse
import sys
from itertools import product
from pathlib import Path
from typing import Any

from sharplab.cli.lab_runs import emit, run_configs, shown_config, write_results

LAB = "convergence"


def _configs(args: argparse.Namespace) -> list[Any]:
    from sharplab.labs.implicit_bias.convergence import ConvergenceConfig, default_study

    common = dict(steps=args.steps, batch_size=args.batch_size, decay_steps=args.decay_steps)
    if args.method is None and args.lr_schedule is None and args.rho_schedule is None:
        cfgs = [c for rho, lr in product(args.rho, args.lr) for c in default_study(lr=lr, rho=rho, **common)]
    else:
        grid = product(args.method or ["sgd", "sam", "usam"], args.rho, args.lr,
                       args.lr_schedule or ["inv"], args.rho_schedule or ["constant"])
        cfgs = [ConvergenceConfig(method=m, rho=rho, lr=lr, lr_schedule=ls, rho_schedule=rs, **common)
                for m, rho, lr, ls, rs in grid]
    return list(dict.fromkeys(cfgs))


def handle(args: argparse.Namespace) -> int:
    cfgs = _configs(args)
    out = Path(args.out or "runs/convergence")
    pairs = [(c, s) for s in args.seed for c in cfgs]  # seed by seed, as the table lists them
    runs = run_configs(LAB, "convergence", pairs, out, args)
    records = [record(c, s, runs.get(c, s)) for c, s in pairs]
    for rec, (c, s) in zip(records, pairs):
        if rec["diverged"]:
            print(f"{c.label} seed {s}: diverged ({runs.get(c, s).error})", file=sys.stderr)
    emit(records, args, ["label", "seed", "final_grad_norm", "min_grad_norm", "final_loss", "status"],
         [runs.get(c, s).status for c, s in pairs])
    if args.out:
        write_results(out, records)
        _figure(out, cfgs, args.seed, runs)
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return runs.exit_code()


def record(cfg: Any, seed: int, run: Any) -> dict[str, Any]:
    """The printed record of a run; a diverged one names its configuration and the step it diverged at."""
    if run.status == "diverged":
        return {**shown_config(cfg), "label": cfg.label, "seed": seed, "diverged": True,
                "diverged_at": run.diverged_step}
    m = run.metrics
    nan = float("nan")
    return {**shown_config(cfg), "seed": seed, "final_grad_norm": m.get("final_grad_norm", nan),
            "min_grad_norm": m.get("min_grad_norm", nan), "final_loss": m.get("final_loss", nan),
            "label": cfg.label, "diverged": False}


def _figure(out: Path, cfgs: list[Any], seeds: list[int], runs: Any) -> None:
    """``convergence.png``: ``||grad f(w_t)||`` of each configuration, the mean over its finished seeds."""
    import numpy as np

    from sharplab.labs.implicit_bias import plots

    lines = []
    for cfg in cfgs:
        done = [runs.get(cfg, s) for s in seeds if runs.get(cfg, s).status == "done"]
        if not done:
            continue
        steps = np.array(sorted(done[0].history))
        norms = [[r.history[t]["grad_norm"] for t in steps] for r in done]
        lines.append((cfg.label, steps, np.mean(norms, axis=0)))
    plots.save(plots.curves_vs_iterations(lines, "||grad f(w_t)||", logx=True, smooth=10), out / "convergence.png")
