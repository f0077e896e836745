"""``sharplab diag-net``, ``sharplab relu-1d``, ``sharplab convergence``: the implicit-bias lab's studies.

Comma lists form grids (``--rho 0,0.05,0.1 --alpha 0.01,0.1``); every configuration and seed is one run of
the runner's lab of the same name, stored in ``--out`` (default ``runs/<command>``): re-running the command
skips the finished runs and prints the same table, and ``sharplab report DIR`` has the lab's section.
``--json`` prints one JSON object per configuration on stdout; an ``--out DIR`` given on the command line
also gets ``results.json`` and the PNG figures. The handlers live in :mod:`sharplab.cli.diag_net`,
:mod:`sharplab.cli.relu_1d` and :mod:`sharplab.cli.convergence`.
"""

from __future__ import annotations

import argparse

from sharplab.cli._args import (
    add_seeds,
    add_threads,
    choices,
    lrs,
    nonneg_numbers,
    nonneg_steps,
    numbers,
    out_dir,
    points,
    positive,
    positive_numbers,
    size,
    steps,
    test_size,
    typed,
)


def _common(p: argparse.ArgumentParser, command: str) -> None:
    add_seeds(p, [0])
    p.add_argument("--json", action="store_true", help="one JSON object per configuration on stdout")
    p.add_argument("--out", default=None,
                   help=f"output folder: the results store (re-running resumes; runs/{command} if omitted) and, "
                   "when given, results.json and PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also when CI is set)")
    add_threads(p)


def register(sub: argparse._SubParsersAction) -> None:
    from sharplab.cli import convergence, diag_net, relu_1d
    from sharplab.labs.implicit_bias.convergence import CONV_METHODS, SCHEDULES
    from sharplab.labs.implicit_bias.methods import METHODS
    from sharplab.labs.implicit_bias.relu1d import INITS, LOSSES, LR_DECAYS, RELU_METHODS

    p = sub.add_parser("diag-net", help="diagonal linear networks: GD/SGD/n-SAM/1-SAM/m-SAM (through the runner)",
                       description="Train beta = u*v on sparse regression (Andriushchenko & Flammarion, 2022); "
                       "every configuration and seed of the grid is one run of the diag-net lab.")
    methods = sorted(METHODS)
    p.add_argument("--method", type=choices(methods), default=["gd", "nsam", "1sam"],
                   help=f"comma list of {{{','.join(methods)}}} (default gd,nsam,1sam)")
    p.add_argument("--rho", type=numbers, default=[0.0, 0.025, 0.05, 0.1, 0.15, 0.2], help="comma list")
    p.add_argument("--lr", type=numbers, default=[5 / 30], help="comma list of step sizes (5/30 allowed)")
    p.add_argument("--alpha", type=numbers, default=[0.01, 0.05, 0.1], help="comma list of init scales")
    p.add_argument("--m", type=int, default=1, help="micro-batch size of m-sam (divides n)")
    p.add_argument("--iters", type=int, default=10_001, help="number of updates (default 10001)")
    p.add_argument("--switch-at", type=int, default=0, help="switch method after this many updates")
    p.add_argument("--then", type=choices(methods), default=None, help="method after --switch-at")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=30)
    p.add_argument("--r", type=int, default=3, help="support size of theta")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--record-every", type=int, default=0, help="trajectory resolution (0: auto)")
    p.add_argument("--log-curves", type=int, default=0, metavar="N",
                   help="record test/train loss at N log-spaced steps; with --out: curves.png (long runs)")
    p.add_argument("--interpolate", action="store_true",
                   help="with --then and --out: losses along (u, v) from each switched run (t=0) to its "
                   "first-phase solution at --switch-at (t=1), t in [-1, 2] (interpolation.png)")
    _common(p, "diag-net")
    p.set_defaults(func=diag_net.handle, needs_labs=True)
    typed(p, rho=nonneg_numbers, lr=lrs, alpha=positive_numbers, m=size, iters=steps,
          switch_at=nonneg_steps, n=size, d=size, r=size, n_test=test_size,
          record_every=points, log_curves=points, out=out_dir)

    p = sub.add_parser("relu-1d", help="1-D ReLU network on 12 points: GD vs SAM, kinks of the fit",
                       description="Full-batch GD vs SAM on a 1-100-1 ReLU network; reports the number of kinks. The "
                       "official protocol trains each run for up to 10^6 steps: the default (GD and SAM, seeds "
                       "0-4) takes about 5 min CPU, longer on a loaded machine (docs/implicit_bias.md); pass "
                       "--steps 20000 --seed 0 for a look in seconds.")
    p.add_argument("--protocol", type=choices(["official", "legacy"]), default=["official"],
                   help="defaults of the options below: official = the study's notebook (lr 5e-5, rho 0.3, "
                   "10^6 steps, tol 1e-5, Blanc init, 1/2-sum loss, no output bias, SAM lr decay); legacy = "
                   "the earlier N(0,1)/mean-loss parameterisation")
    p.add_argument("--method", type=choices(RELU_METHODS), default=["gd", "sam"], help="comma list")
    p.add_argument("--rho", type=numbers, default=None, help="comma list (ignored by gd)")
    p.add_argument("--lr", type=numbers, default=None, help="comma list of step sizes")
    p.add_argument("--steps", type=int, default=None, help="most steps T (also the lr decay horizon)")
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--tol", type=float, default=None, help="stop when the step's loss is below")
    p.add_argument("--slope-tol", type=float, default=0.1, help="smallest slope change counted as a kink")
    p.add_argument("--init", type=choices(INITS), default=None, help="blanc or normal")
    p.add_argument("--loss", type=choices(LOSSES), default=None, help="half-sum or mean")
    p.add_argument("--lr-decay", type=choices(LR_DECAYS), default=None,
                   help="notebook (SAM only), linear (every method) or none")
    p.add_argument("--output-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="train an output bias")
    p.add_argument("--then-gd", action="store_true",
                   help="continue every SAM/USAM run with GD (same lr, steps, tol) until it fits: "
                   "are the fewer kinks kept once the data are interpolated?")
    _common(p, "relu-1d")
    p.set_defaults(func=relu_1d.handle, needs_labs=True, seed=[0, 1, 2, 3, 4])
    typed(p, rho=nonneg_numbers, lr=lrs, steps=steps, width=size, tol=positive,
          slope_tol=positive, out=out_dir)

    p = sub.add_parser("convergence", help="SGD/SAM/USAM with stochastic gradients: does ||grad f|| -> 0?",
                       description="Without --method/--lr-schedule/--rho-schedule: the default comparison "
                       "(SGD constant/decaying step, SAM and USAM with constant/decaying rho).")
    sched = SCHEDULES.names()
    p.add_argument("--method", type=choices(sorted(CONV_METHODS)), default=None, help="comma list")
    p.add_argument("--rho", type=numbers, default=[0.5], help="comma list of base radii")
    p.add_argument("--lr", type=numbers, default=[0.2], help="comma list of base step sizes")
    p.add_argument("--lr-schedule", type=choices(sched), default=None, help=f"comma list of {sched}")
    p.add_argument("--rho-schedule", type=choices(sched), default=None, help=f"comma list of {sched}")
    p.add_argument("--decay-steps", type=float, default=10.0, help="decay time scale t0: S(t / t0)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=1)
    _common(p, "convergence")
    p.set_defaults(func=convergence.handle, needs_labs=True)
    typed(p, rho=nonneg_numbers, lr=lrs, decay_steps=positive, steps=steps,
          batch_size=size, out=out_dir)
