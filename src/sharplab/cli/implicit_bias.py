"""``sharplab diag-net``, ``sharplab relu-1d``, ``sharplab convergence``: the implicit-bias lab's studies.

Comma lists form grids (``--rho 0,0.05,0.1 --alpha 0.01,0.1``). ``--json`` prints one JSON object per
configuration on stdout; ``--out DIR`` writes ``results.json`` and the PNG figures into ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

from sharplab.cli._args import (
    add_seeds,
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
from sharplab.errors import ConfigError, Diverged


def _common(p: argparse.ArgumentParser) -> None:
    add_seeds(p, [0])
    p.add_argument("--json", action="store_true", help="one JSON object per configuration on stdout")
    p.add_argument("--out", default=None, help="folder for results.json and PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also when CI is set)")


def register(sub: argparse._SubParsersAction) -> None:
    from sharplab.labs.implicit_bias.convergence import CONV_METHODS, SCHEDULES
    from sharplab.labs.implicit_bias.methods import METHODS
    from sharplab.labs.implicit_bias.relu1d import INITS, LOSSES, LR_DECAYS, RELU_METHODS

    p = sub.add_parser("diag-net", help="diagonal linear networks: GD/SGD/n-SAM/1-SAM/m-SAM (vectorised grid)",
                       description="Train beta = u*v on sparse regression (Andriushchenko & Flammarion, 2022); "
                       "every configuration of the grid advances in one float64 batch.")
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
    _common(p)
    p.set_defaults(func=handle_diag_net)
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
    _common(p)
    p.set_defaults(func=handle_relu_1d, seed=[0, 1, 2, 3, 4])
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
    _common(p)
    p.set_defaults(func=handle_convergence)
    typed(p, rho=nonneg_numbers, lr=lrs, decay_steps=positive, steps=steps,
          batch_size=size, out=out_dir)


def _quiet(args: argparse.Namespace) -> bool:
    return bool(args.quiet or os.environ.get("CI"))


def _emit(records: list[dict[str, Any]], args: argparse.Namespace, columns: Sequence[str]) -> None:
    if args.json:
        for rec in records:
            print(json.dumps(rec, default=float), flush=True)
        return
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def cell(rec: dict[str, Any], c: str) -> str:
        if c == "status":  # a diverged run is never shown as a normal result
            return "diverged" if rec.get("diverged") else "ok"
        return fmt(rec.get(c, ""))

    table = [[cell(rec, c) for c in columns] for rec in records]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def _write_results(out: Path, records: list[dict[str, Any]]) -> None:
    from sharplab.io import atomic_write_json

    atomic_write_json(out / "results.json", records)


# --- diag-net --------------------------------------------------------------------------------------
def handle_diag_net(args: argparse.Namespace) -> int:
    import numpy as np

    from sharplab.labs.implicit_bias import plots
    from sharplab.labs.implicit_bias.diag_net import DiagNetConfig, expand_grid, log_steps, run_grid

    then = args.then[0] if args.then else "none"
    if args.then and len(args.then) > 1:
        raise ConfigError("--then takes one method; run the command once per target method")
    common = dict(m=args.m, iters=args.iters, switch_at=args.switch_at, then=then, n=args.n, d=args.d,
                  r=args.r, n_test=args.n_test)
    if "m-sam" not in args.method:
        common["m"] = 1
    cfgs = expand_grid(args.method, args.rho, args.lr, args.alpha, **common)
    switching = then != "none"
    extra: list[DiagNetConfig] = []
    if switching and args.out:  # the two pure runs, for the switching figure only
        for cfg in cfgs:
            for meth in (cfg.method, then):
                base = DiagNetConfig(**{**_asdict(cfg), "method": meth, "switch_at": 0, "then": "none"})
                if not base.uses_rho:
                    base = DiagNetConfig(**{**_asdict(base), "rho": 0.0})
                if base not in cfgs and base not in extra:
                    extra.append(base)
    if args.interpolate and not (switching and args.out):
        raise ConfigError("--interpolate needs --then METHOD --switch-at T and --out DIR")
    halves: list[DiagNetConfig] = []
    if args.interpolate:  # the first-phase solutions at the switch point (t = 1 of the interpolation)
        halves = [DiagNetConfig(**{**_asdict(c), "then": "none", "switch_at": 0, "iters": c.switch_at})
                  for c in cfgs]
        halves = [h if h.uses_rho else DiagNetConfig(**{**_asdict(h), "rho": 0.0}) for h in halves]
    if args.log_curves < 0:
        raise ConfigError(f"--log-curves must be >= 0, got {args.log_curves}")
    every = args.record_every or (max(1, args.iters // 200) if switching and args.out and not args.log_curves
                                  else 0)
    at = log_steps(args.iters, args.log_curves) if args.log_curves else ()
    t0 = time.perf_counter()
    results = run_grid(cfgs + extra, args.seed, record_every=every, record_at=at, progress=not _quiet(args))
    half_results = run_grid(halves, args.seed) if halves else []
    seconds = time.perf_counter() - t0
    print(f"diag-net: {len(cfgs + extra) * len(args.seed)} configurations x {args.iters} updates in "
          f"{seconds:.2f} s (one vectorised float64 batch)", file=sys.stderr)
    main = results[:len(cfgs) * len(args.seed)]
    records = [r.record() for r in main]
    _note_diverged("diag-net", records)
    columns = ["method", "rho", "lr", "alpha", "seed", "test_error", "train_loss", "l1_norm", "status"]
    if switching:
        columns[1:1] = ["then", "switch_at"]
    _emit(records, args, columns)
    if args.out:
        out = Path(args.out)
        _write_results(out, records)
        finite = [r for r in records if not r["diverged"]]  # diverged rows are not plotted as results
        if len({(r["method"], r["rho"]) for r in finite}) > 1:
            plots.save(plots.test_error_vs_rho(finite), out / "test_error_vs_rho.png")
            plots.save(plots.test_error_vs_rho(finite, "l1_norm"), out / "l1_norm_vs_rho.png")
        if switching:
            curves = [(_label(r.config, len(args.seed) > 1 and r.seed), r.steps, r.test_curve)
                      for r in results if np.all(np.isfinite(r.test_curve))]
            for r in results:
                if not np.all(np.isfinite(r.test_curve)):
                    print(f"diag-net: {_label(r.config)} diverged; left out of the figure", file=sys.stderr)
            plots.save(plots.curves_vs_iterations(curves, "test error", vline=args.switch_at,
                                                  logx=bool(args.log_curves)),
                       out / "switching_test_error.png")
        if args.log_curves:
            multi = len(args.seed) > 1 and len(args.seed)
            for key, name in (("test_curve", "test loss"), ("train_curve", "train loss")):
                lines = [(_label(r.config, multi and r.seed), r.steps, getattr(r, key)) for r in results
                         if not r.diverged]
                plots.save(plots.curves_vs_iterations(lines, name, logx=True), out / f"curves_{key[:-6]}.png")
        if half_results:
            from sharplab.labs.implicit_bias.interpolation import interpolate

            rows = []
            for k, (res, half) in enumerate(zip(main, half_results)):
                curve = interpolate(res, half)
                rows.append({"switched": res.record(), "first_phase": half.record(), "t": curve.t.tolist(),
                             "test_error": curve.test_error.tolist(), "train_loss": curve.train_loss.tolist()})
                names = (f"{res.config.method} -> {res.config.then}", f"{half.config.method} @ {half.config.iters}")
                suffix = "" if len(main) == 1 else f"_{k}"
                plots.save(plots.interpolation_curve(curve.t, curve.test_error, curve.train_loss, names),
                           out / f"interpolation{suffix}.png")
            from sharplab.io import atomic_write_json

            atomic_write_json(out / "interpolation.json", rows)
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return 0


def _note_diverged(command: str, records: list[dict[str, Any]]) -> None:
    """One stderr line when some runs diverged (their rows carry ``diverged: true``, status 'diverged')."""
    n = sum(bool(r.get("diverged")) for r in records)
    if n:
        print(f"{command}: {n} of {len(records)} runs diverged (non-finite loss): marked 'diverged', "
              "left out of the figures", file=sys.stderr)


def _asdict(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def _label(cfg: Any, seed: Any = False) -> str:
    name = cfg.method if cfg.then == "none" else f"{cfg.method} -> {cfg.then} @ {cfg.switch_at}"
    text = f"{name}, rho={cfg.rho:g}, alpha={cfg.alpha:g}, lr={cfg.lr:.3g}"
    return text + (f", seed {seed}" if seed is not False else "")


def _run_each(args: argparse.Namespace, cfgs, run, label) -> tuple[list, list[dict]]:
    """``run(cfg, seed, progress=bar)`` for every seed and config: a progress bar per run unless quiet,
    one JSON line per result with ``--json``. Returns the results and their records."""
    results, records = [], []
    for seed in args.seed:
        for cfg in cfgs:
            bar = None
            if not _quiet(args):
                from sharplab.progress import progress as make_progress

                bar = make_progress(range(cfg.steps), desc=f"{label(cfg)} seed {seed}", leave=False)
            try:
                res = run(cfg, seed, progress=bar)
            except Diverged as exc:  # keep the finished runs; record this one as diverged
                print(f"{label(cfg)} seed {seed}: diverged ({exc})", file=sys.stderr)
                records.append({**_asdict(cfg), "label": label(cfg), "seed": seed, "diverged": True,
                                "diverged_at": exc.step})
            else:
                results.append(res)
                records.append({**res.record(), "diverged": False})
            if bar is not None and hasattr(bar, "close"):
                bar.close()
            if args.json:
                print(json.dumps(records[-1]), flush=True)
    return results, records


# --- relu-1d ---------------------------------------------------------------------------------------
def handle_relu_1d(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from sharplab.labs.implicit_bias import plots
    from sharplab.labs.implicit_bias.relu1d import LEGACY, X_POINTS, Y_POINTS, Relu1dConfig, train_relu_batch

    base = {f.name: f.default for f in fields(Relu1dConfig)}
    if args.protocol[0] == "legacy":
        base.update(LEGACY)
    given = {"lr": args.lr, "rho": args.rho, "steps": args.steps, "tol": args.tol, "init": args.init,
             "loss": args.loss, "lr_decay": args.lr_decay, "output_bias": args.output_bias}
    common = {k: (given[k] if given[k] is not None else base[k])
              for k in ("steps", "tol", "init", "loss", "lr_decay", "output_bias")}
    common["init"], common["loss"], common["lr_decay"] = (
        v[0] if isinstance(v, list) else v for v in (common["init"], common["loss"], common["lr_decay"]))
    cfgs: dict[Relu1dConfig, None] = {}
    for method, rho, lr in product(args.method, given["rho"] or [base["rho"]], given["lr"] or [base["lr"]]):
        cfgs.setdefault(Relu1dConfig(method=method, rho=0.0 if method == "gd" else rho, lr=lr, width=args.width,
                                     slope_tol=args.slope_tol, **common), None)
    cfg_list = list(cfgs)
    bar = None
    if not _quiet(args):
        from sharplab.progress import progress as make_progress

        bar = make_progress(total=max(c.steps for c in cfg_list), desc="relu-1d (batch)", leave=False)
    t0 = time.perf_counter()
    results = train_relu_batch(cfg_list, args.seed, progress=bar)
    labels = [_relu_label(r.config) for r in results]
    if args.then_gd:  # a diverged network has nothing to continue from
        first = [r for r in results if r.config.method != "gd" and not r.diverged]
        if first:
            gd_cfgs = [Relu1dConfig(**{**_asdict(r.config), "method": "gd", "rho": 0.0}) for r in first]
            results += _continue_batch(gd_cfgs, first, train_relu_batch)
            labels += [f"{_relu_label(r.config)} -> GD" for r in first]
    if bar is not None:
        bar.close()
    print(f"relu-1d: {len(results)} networks in {time.perf_counter() - t0:.1f} s (vectorised float64 batch)",
          file=sys.stderr)
    records = [{**r.record(), "run": name} for r, name in zip(results, labels)]
    _note_diverged("relu-1d", records)
    _emit(records, args, ["run", "lr", "seed", "steps_run", "train_loss", "fits", "kinks", "pieces", "status"])
    if args.out:
        out = Path(args.out)
        _write_results(out, records)
        kept = [(r, name) for r, name in zip(results, labels) if not r.diverged]
        if kept:
            plots.save(plots.relu_fits_over_seeds([r for r, _ in kept], X_POINTS, Y_POINTS, [n for _, n in kept]),
                       out / "relu_fits.png")
        for seed in args.seed:
            runs = [r for r, _ in kept if r.seed == seed]
            if not runs:
                continue
            fig = plots.relu_fits(runs, X_POINTS, Y_POINTS)
            plots.save(fig, out / f"relu_fits_seed{seed}.png")
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return 0


def _relu_label(cfg: Any) -> str:
    return "GD" if cfg.method == "gd" else f"{cfg.method.upper()} rho={cfg.rho:g}"


def _continue_batch(cfgs: list, first: list, train) -> list:
    """GD continuations of several runs: configs equal up to the seed share one batch."""
    groups: dict[Any, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(c, []).append(i)
    out: list = [None] * len(cfgs)
    for cfg, idx in groups.items():
        for i, res in zip(idx, train([cfg], [first[i].seed for i in idx], start=[first[i].net for i in idx])):
            out[i] = res
    return out


# --- convergence -----------------------------------------------------------------------------------
def handle_convergence(args: argparse.Namespace) -> int:
    import numpy as np

    from sharplab.labs.implicit_bias import plots
    from sharplab.labs.implicit_bias.convergence import ConvergenceConfig, default_study, run_convergence

    common = dict(steps=args.steps, batch_size=args.batch_size, decay_steps=args.decay_steps)
    if args.method is None and args.lr_schedule is None and args.rho_schedule is None:
        cfgs = [c for rho, lr in product(args.rho, args.lr)
                for c in default_study(lr=lr, rho=rho, **common)]
    else:
        grid = product(args.method or ["sgd", "sam", "usam"], args.rho, args.lr,
                       args.lr_schedule or ["inv"], args.rho_schedule or ["constant"])
        cfgs = [ConvergenceConfig(method=m, rho=rho, lr=lr, lr_schedule=ls, rho_schedule=rs, **common)
                for m, rho, lr, ls, rs in grid]
    cfgs = list(dict.fromkeys(cfgs))
    results, records = _run_each(args, cfgs, run_convergence, lambda cfg: cfg.label)
    if not args.json:
        _emit(records, args, ["label", "seed", "final_grad_norm", "min_grad_norm", "final_loss", "status"])
    if args.out:
        out = Path(args.out)
        _write_results(out, records)
        lines = []
        for cfg in cfgs:
            runs = [r for r in results if r.config == cfg]
            if not runs:
                continue
            lines.append((cfg.label, runs[0].steps, np.mean([r.grad_norm for r in runs], axis=0)))
        plots.save(plots.curves_vs_iterations(lines, "||grad f(w_t)||", logx=True, smooth=10), out / "convergence.png")
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return 0
