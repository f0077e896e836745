"""``sharplab diag-net``: diagonal linear networks over a grid of methods, radii, step sizes and init scales.

Each ``(configuration, seed)`` is one run of the runner's ``diag-net`` lab in ``--out``; the table and
``--json`` lines are read back from the store. With ``--then`` and an ``--out`` given, the two pure runs of
each switched configuration are also run (for the switching figure), and with ``--interpolate`` the
first-phase solutions at ``--switch-at`` (for the interpolation, from each run's ``weights.npz``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sharplab.cli.lab_runs import LabRuns, emit, note_diverged, run_configs, shown_config, write_results
from sharplab.errors import ConfigError

LAB = "diag-net"
METRICS = ("test_error", "train_loss", "l1_norm", "dist_theta")
#: config fields that only choose what the runner logs; never printed
RECORDING = ("record_every", "log_curves")


def handle(args: argparse.Namespace) -> int:
    from sharplab.labs.implicit_bias.diag_net import DiagNetConfig, expand_grid

    then = args.then[0] if args.then else "none"
    if args.then and len(args.then) > 1:
        raise ConfigError("--then takes one method; run the command once per target method")
    if args.log_curves < 0:
        raise ConfigError(f"--log-curves must be >= 0, got {args.log_curves}")
    common = dict(m=args.m, iters=args.iters, switch_at=args.switch_at, then=then, n=args.n, d=args.d,
                  r=args.r, n_test=args.n_test, record_every=args.record_every, log_curves=args.log_curves)
    if "m-sam" not in args.method:
        common["m"] = 1
    cfgs = expand_grid(args.method, args.rho, args.lr, args.alpha, **common)
    switching = then != "none"
    extra: list[DiagNetConfig] = []
    if switching and args.out:  # the two pure runs, for the switching figure only
        for cfg in cfgs:
            for meth in (cfg.method, then):
                base = replace(cfg, method=meth, switch_at=0, then="none")
                if not base.uses_rho:
                    base = replace(base, rho=0.0)
                if base not in cfgs and base not in extra:
                    extra.append(base)
    if args.interpolate and not (switching and args.out):
        raise ConfigError("--interpolate needs --then METHOD --switch-at T and --out DIR")
    halves: list[DiagNetConfig] = []
    if args.interpolate:  # the first-phase solutions at the switch point (t = 1 of the interpolation)
        halves = [replace(c, then="none", switch_at=0, iters=c.switch_at, record_every=0, log_curves=0)
                  for c in cfgs]
        halves = [h if h.uses_rho else replace(h, rho=0.0) for h in halves]
    seeds = list(args.seed)
    out = Path(args.out or "runs/diag-net")
    runs = run_configs(LAB, "diag-net", [(c, s) for c in cfgs + extra + halves for s in seeds], out, args)
    main = [(c, s) for c in cfgs for s in seeds]
    records = [record(c, s, runs.get(c, s)) for c, s in main]
    note_diverged("diag-net", records)
    columns = ["method", "rho", "lr", "alpha", "seed", "test_error", "train_loss", "l1_norm", "status"]
    if switching:
        columns[1:1] = ["then", "switch_at"]
    emit(records, args, columns, [runs.get(c, s).status for c, s in main])
    if args.out:
        write_results(out, records)
        _figures(out, args, records, runs, [(c, s) for c in cfgs + extra for s in seeds])
        if halves:
            _interpolation(out, runs, main, [(h, s) for h in halves for s in seeds])
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return runs.exit_code()


def record(cfg: Any, seed: int, run: Any) -> dict[str, Any]:
    """The printed record of a run: config fields, seed, final metrics (NaN where the run has none) and
    ``diverged``."""
    metrics = {k: run.metrics.get(k) for k in METRICS}
    return {**shown_config(cfg, RECORDING), "seed": seed,
            **{k: float("nan") if v is None else v for k, v in metrics.items()},
            "diverged": run.status == "diverged"}


def label(cfg: Any, seed: Any = False) -> str:
    """A curve's legend: method (and switch), rho, alpha, lr, and the seed where several are drawn."""
    name = cfg.method if cfg.then == "none" else f"{cfg.method} -> {cfg.then} @ {cfg.switch_at}"
    text = f"{name}, rho={cfg.rho:g}, alpha={cfg.alpha:g}, lr={cfg.lr:.3g}"
    return text + (f", seed {seed}" if seed is not False else "")


def _curve(run: Any, metric: str) -> tuple[Any, Any]:
    import numpy as np

    steps = np.array(sorted(run.history))
    return steps, np.array([run.history[s].get(metric, np.nan) for s in steps])


def _figures(out: Path, args: argparse.Namespace, records: list[dict[str, Any]], runs: LabRuns,
             curves: list[tuple[Any, int]]) -> None:
    """The rho figures, the switching figure (``--then``) and the log-spaced curves (``--log-curves``)."""
    from sharplab.labs.implicit_bias import plots

    finite = [r for r in records if not r["diverged"]]  # diverged rows are not plotted as results
    if len({(r["method"], r["rho"]) for r in finite}) > 1:
        plots.save(plots.test_error_vs_rho(finite), out / "test_error_vs_rho.png")
        plots.save(plots.test_error_vs_rho(finite, "l1_norm"), out / "l1_norm_vs_rho.png")
    multi = len(args.seed) > 1
    kept = [(c, s) for c, s in curves if runs.get(c, s).status == "done"]
    for c, s in curves:
        if runs.get(c, s).status != "done":
            print(f"diag-net: {label(c)} {runs.get(c, s).status}; left out of the figure", file=sys.stderr)
    if args.then:
        lines = [(label(c, multi and s), *_curve(runs.get(c, s), "test_error")) for c, s in kept]
        plots.save(plots.curves_vs_iterations(lines, "test error", vline=args.switch_at, logx=bool(args.log_curves)),
                   out / "switching_test_error.png")
    if args.log_curves:
        for metric, name, file in (("test_error", "test loss", "curves_test.png"),
                                   ("train_loss", "train loss", "curves_train.png")):
            lines = [(label(c, multi and s), *_curve(runs.get(c, s), metric)) for c, s in kept]
            plots.save(plots.curves_vs_iterations(lines, name, logx=True), out / file)


def _result(cfg: Any, seed: int, run: Any) -> Any:
    """A finished run as a :class:`DiagNetResult` with its final ``u``, ``v`` (from ``weights.npz``)."""
    import numpy as np

    from sharplab.labs.implicit_bias.diag_net import DiagNetResult
    from sharplab.labs.implicit_bias.lab import WEIGHTS

    with np.load(Path(run.run_dir) / WEIGHTS) as w:
        u, v = w["u"], w["v"]
    m = run.metrics
    return DiagNetResult(cfg, seed, m["test_error"], m["train_loss"], m["l1_norm"], m["dist_theta"], u * v, u, v)


def _interpolation(out: Path, runs: LabRuns, main: list[tuple[Any, int]], halves: list[tuple[Any, int]]) -> None:
    """Losses along (u, v) from each switched run (t = 0) to its first-phase solution (t = 1):
    ``interpolation.json`` and ``interpolation[_k].png``."""
    from sharplab.io import atomic_write_json
    from sharplab.labs.implicit_bias import plots
    from sharplab.labs.implicit_bias.interpolation import interpolate

    rows = []
    for k, ((cfg, seed), (half, _)) in enumerate(zip(main, halves)):
        a, b = runs.get(cfg, seed), runs.get(half, seed)
        if a.status != "done" or b.status != "done":
            print(f"diag-net: {label(cfg)} seed {seed}: no interpolation ({a.status}, first phase {b.status})",
                  file=sys.stderr)
            continue
        curve = interpolate(_result(cfg, seed, a), _result(half, seed, b))
        rows.append({"switched": record(cfg, seed, a), "first_phase": record(half, seed, b), "t": curve.t.tolist(),
                     "test_error": curve.test_error.tolist(), "train_loss": curve.train_loss.tolist()})
        names = (f"{cfg.method} -> {cfg.then}", f"{half.method} @ {half.iters}")
        suffix = "" if len(main) == 1 else f"_{k}"
        plots.save(plots.interpolation_curve(curve.t, curve.test_error, curve.train_loss, names),
                   out / f"interpolation{suffix}.png")
    atomic_write_json(out / "interpolation.json", rows)

