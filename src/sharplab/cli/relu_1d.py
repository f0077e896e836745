"""``sharplab relu-1d``: GD vs SAM on a 1-100-1 ReLU network fitting twelve points, and the kinks of each fit.

Each ``(configuration, seed)`` is one run of the runner's ``relu-1d`` lab in ``--out``. ``--then-gd``
continues every finished SAM/USAM run with GD: a second study of runs with ``then_gd = true``, whose results
are the continuations'. Figures are drawn from each run's ``weights.npz``.
"""

from __future__ import annotations

import argparse
import sys
from itertools import product
from pathlib import Path
from typing import Any

from sharplab.cli.lab_runs import emit, note_diverged, run_configs, shown_config, write_results

LAB = "relu-1d"
HIDDEN = ("then_gd",)  # the continuation's row shows the GD config it trained with


def _configs(args: argparse.Namespace) -> list[Any]:
    """The flags' configurations: the protocol's defaults, overridden by every option given."""
    from dataclasses import fields

    from sharplab.labs.implicit_bias.relu1d import LEGACY, Relu1dConfig

    base = {f.name: f.default for f in fields(Relu1dConfig)}
    if args.protocol[0] == "legacy":
        base.update(LEGACY)
    given = {"lr": args.lr, "rho": args.rho, "steps": args.steps, "tol": args.tol, "init": args.init,
             "loss": args.loss, "lr_decay": args.lr_decay, "output_bias": args.output_bias}
    common = {k: (given[k] if given[k] is not None else base[k])
              for k in ("steps", "tol", "init", "loss", "lr_decay", "output_bias")}
    common["init"], common["loss"], common["lr_decay"] = (
        v[0] if isinstance(v, list) else v for v in (common["init"], common["loss"], common["lr_decay"]))
    cfgs: dict[Any, None] = {}
    for method, rho, lr in product(args.method, given["rho"] or [base["rho"]], given["lr"] or [base["lr"]]):
        cfgs.setdefault(Relu1dConfig(method=method, rho=0.0 if method == "gd" else rho, lr=lr, width=args.width,
                                     slope_tol=args.slope_tol, **common), None)
    return list(cfgs)


def handle(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sharplab.labs.implicit_bias.relu1d import gd_continuation

    cfgs = _configs(args)
    out = Path(args.out or "runs/relu-1d")
    first = [(c, s) for c in cfgs for s in args.seed]
    runs = run_configs(LAB, "relu-1d", first, out, args)
    rows = [(c, s, runs.get(c, s), label(c)) for c, s in first]
    code = runs.exit_code()
    if args.then_gd:  # a diverged network has nothing to continue from
        todo = [(replace(c, then_gd=True), s) for c, s, run, _ in rows if c.method != "gd" and run.status == "done"]
        if todo:
            more = run_configs(LAB, "relu-1d-then-gd", todo, out, args)
            rows += [(gd_continuation(c), s, more.get(c, s), f"{label(c)} -> GD") for c, s in todo]
            code = max(code, more.exit_code())
    records = [record(c, s, run, name) for c, s, run, name in rows]
    note_diverged("relu-1d", records)
    emit(records, args, ["run", "lr", "seed", "steps_run", "train_loss", "fits", "kinks", "pieces", "status"],
         [run.status for _, _, run, _ in rows])
    if args.out:
        write_results(out, records)
        _figures(out, args.seed, [(c, s, run, name) for c, s, run, name in rows if run.status == "done"])
        print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return code


def label(cfg: Any) -> str:
    """``GD`` or ``SAM rho=0.3``: the name of a run in the table and the figures."""
    return "GD" if cfg.method == "gd" else f"{cfg.method.upper()} rho={cfg.rho:g}"


def record(cfg: Any, seed: int, run: Any, name: str) -> dict[str, Any]:
    """The printed record of a run (a diverged one: its step, NaN losses, no kinks)."""
    m = run.metrics
    nan = float("nan")
    if run.status == "done":
        result = {"steps_run": int(m["steps_run"]), "train_loss": m["train_loss"],
                  "stop_loss": nan if m.get("stop_loss") is None else m["stop_loss"], "fits": bool(m["fits"]),
                  "diverged": False, "kinks": int(m["kinks"]), "pieces": int(m["pieces"])}
    else:
        result = {"steps_run": run.diverged_step or 0, "train_loss": nan, "stop_loss": nan, "fits": False,
                  "diverged": run.status == "diverged", "kinks": -1, "pieces": 0}
    return {**shown_config(cfg, HIDDEN), "seed": seed, **result, "run": name}


def _result(cfg: Any, seed: int, run: Any) -> Any:
    """A finished run as a :class:`Relu1dResult` with its network (from ``weights.npz``)."""
    import numpy as np
    import torch

    from sharplab.labs.implicit_bias.lab import WEIGHTS
    from sharplab.labs.implicit_bias.relu1d import Relu1dResult, make_network

    net = make_network(cfg.width, seed, cfg.init, cfg.output_bias)
    with np.load(Path(run.run_dir) / WEIGHTS) as w:
        net.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    steps = np.array(sorted(run.history))
    losses = np.array([run.history[s].get("train_loss", np.nan) for s in steps])
    m = run.metrics
    stop = m.get("stop_loss")
    return Relu1dResult(cfg, seed, net, int(m["steps_run"]), m["train_loss"], int(m["kinks"]), steps, losses,
                        float("nan") if stop is None else stop)


def _figures(out: Path, seeds: list[int], kept: list[tuple[Any, int, Any, str]]) -> None:
    """``relu_fits.png`` (every seed) and ``relu_fits_seed<k>.png`` (one each)."""
    from sharplab.labs.implicit_bias import plots
    from sharplab.labs.implicit_bias.relu1d import X_POINTS, Y_POINTS

    results = [_result(c, s, run) for c, s, run, _ in kept]
    if results:
        plots.save(plots.relu_fits_over_seeds(results, X_POINTS, Y_POINTS, [name for *_, name in kept]),
                   out / "relu_fits.png")
    for seed in seeds:
        mine = [r for r in results if r.seed == seed]
        if mine:
            plots.save(plots.relu_fits(mine, X_POINTS, Y_POINTS), out / f"relu_fits_seed{seed}.png")
