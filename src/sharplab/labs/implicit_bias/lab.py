"""Runner integration: the ``diag-net``, ``relu-1d`` and ``convergence`` labs (``run`` + ``report`` hooks).

``sharplab run`` and the commands ``sharplab diag-net``, ``relu-1d`` and ``convergence`` execute one
configuration per run (the seed comes from the run context); studies and sweeps over rho, alpha, ... are
grids of such runs. The vectorised kernels give a configuration the same numbers alone as inside a grid, so
:func:`~sharplab.labs.implicit_bias.diag_net.run_grid` on a whole grid reproduces the runs exactly.

Each run leaves its final parameters in its folder (``weights.npz``: diag-net ``u``, ``v``; relu-1d the
network's ``w``, ``b``, ``a``, ``c``), from which the commands draw their figures and the interpolation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from sharplab.errors import Diverged
from sharplab.labs.implicit_bias import plots
from sharplab.labs.implicit_bias.convergence import ConvergenceConfig, run_convergence
from sharplab.labs.implicit_bias.diag_net import DiagNetConfig, run_grid
from sharplab.labs.implicit_bias.relu1d import X_POINTS, Y_POINTS, Relu1dConfig, train_relu_1d
from sharplab.runner.labs import Lab, register_lab


def _done(runs: list[Any]) -> list[Any]:
    return [r for r in runs if getattr(r, "status", "done") == "done" and getattr(r, "metrics", None)]


# --- diagonal linear networks ------------------------------------------------------------------------
WEIGHTS = "weights.npz"


def run_diag_net(cfg: DiagNetConfig, ctx: Any) -> dict[str, float]:
    """One configuration; the test/train curve (``cfg.recording``: 100 points by default) goes to
    ``ctx.log_metrics``, the final ``u``, ``v`` to the run's ``weights.npz``."""
    every, at = cfg.recording
    (res,) = run_grid([cfg], [ctx.seed], record_every=every, record_at=at, progress=not ctx.quiet)
    for step, test, train in zip(res.steps, res.test_curve, res.train_curve):
        if not (math.isfinite(test) and math.isfinite(train)):
            raise Diverged(int(step))
        ctx.log_metrics(int(step), {"test_error": test, "train_loss": train})
    if not math.isfinite(res.train_loss):
        raise Diverged(cfg.iters)
    if ctx.is_main:
        np.savez(ctx.artifact(WEIGHTS), u=res.u, v=res.v)
    return {"test_error": res.test_error, "train_loss": res.train_loss, "l1_norm": res.l1_norm,
            "dist_theta": res.dist_theta}


def report_diag_net(runs: list[Any], builder: Any) -> None:
    done = _done(runs)
    if not done:
        return
    from sharplab.runner.report import add_metric_table

    add_metric_table(builder, "diag-net", done, ["test_error", "train_loss", "l1_norm", "dist_theta"],
                     percent=[], log10=("test_error", "train_loss"))  # regression losses spanning decades
    rows = [{**r.config, **r.metrics} for r in done if "test_error" in r.metrics]
    if len({(r["method"], r["rho"]) for r in rows}) > 1:
        builder.add_figure("Diagonal network: test error vs rho", plots.test_error_vs_rho(rows))
        builder.add_figure("Diagonal network: ||beta||_1 vs rho", plots.test_error_vs_rho(rows, "l1_norm"))
    builder.add_text("Test error ||X_test beta - y_test||^2/(2 n_test) after `iters` updates; 1-SAM's "
                     "per-example ascent biases towards sparse beta (Andriushchenko & Flammarion, 2022).")


# --- 1-D ReLU networks -------------------------------------------------------------------------------
def run_relu_1d(cfg: Relu1dConfig, ctx: Any) -> dict[str, float]:
    """One network (``then_gd``: its GD continuation); the loss curve goes to ``ctx.log_metrics``, the
    final parameters to ``weights.npz``, the fit to ``relu_fit.png``."""
    bar = ctx.progress(range(cfg.steps), desc=f"relu-1d {cfg.method}")
    res = train_relu_1d(cfg, ctx.seed, progress=bar)
    for step, loss in zip(res.steps, res.loss_curve):
        ctx.log_metrics(int(step), {"train_loss": float(loss)})
    if getattr(ctx, "is_main", True):
        net = res.net
        np.savez(ctx.artifact(WEIGHTS), **{k: p.detach().numpy() for k, p in net.state_dict().items()})
        plots.save(plots.relu_fits([res], X_POINTS, Y_POINTS), ctx.artifact("relu_fit.png"))
    return {"train_loss": res.train_loss, "kinks": float(res.kinks), "pieces": float(res.pieces),
            "steps_run": float(res.steps_run), "fits": float(res.fits), "stop_loss": res.stop_loss}


def report_relu_1d(runs: list[Any], builder: Any) -> None:
    done = _done(runs)
    if not done:
        return
    builder.add_table("1-D ReLU network: kinks inside the data range", [
        {"method": f"{r.config.get('method')} -> gd" if r.config.get("then_gd") else r.config.get("method"),
         "rho": r.config.get("rho"), "lr": r.config.get("lr"), "seed": r.seed,
         "train_loss": r.metrics.get("train_loss"), "fits": r.metrics.get("fits"), "kinks": r.metrics.get("kinks")}
        for r in done])


# --- convergence -------------------------------------------------------------------------------------
def run_conv(cfg: ConvergenceConfig, ctx: Any) -> dict[str, float]:
    bar = ctx.progress(range(cfg.steps), desc=f"convergence {cfg.label}")
    res = run_convergence(cfg, ctx.seed, progress=bar,
                          on_record=lambda t, loss, g: ctx.log_metrics(t, {"loss": loss, "grad_norm": g}))
    return {"final_grad_norm": res.final_grad_norm, "min_grad_norm": float(res.grad_norm.min()),
            "final_loss": float(res.loss[-1])}


def report_conv(runs: list[Any], builder: Any) -> None:
    done = [r for r in _done(runs) if getattr(r, "history", None)]
    if not done:
        return
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for r in done:
        try:
            label = ConvergenceConfig(**r.config).label
        except (TypeError, ValueError):
            label = r.run_id
        steps = np.array(sorted(r.history))
        curves[label].append((steps, np.array([r.history[s].get("grad_norm", np.nan) for s in steps])))
    lines = []
    for label, runs_ in curves.items():
        n = min(len(s) for s, _ in runs_)
        lines.append((label, runs_[0][0][:n], np.mean([g[:n] for _, g in runs_], axis=0)))
    builder.add_figure("Convergence: ||grad f|| over iterations (mean over seeds)",
                       plots.curves_vs_iterations(lines, "||grad f(w_t)||", logx=True, smooth=10))


register_lab(Lab("diag-net", DiagNetConfig, run_diag_net, report_diag_net,
                 "diagonal linear network beta = u*v: GD/SGD/n-SAM/1-SAM/m-SAM, implicit sparsity"))
register_lab(Lab("relu-1d", Relu1dConfig, run_relu_1d, report_relu_1d,
                 "1-D ReLU network on 12 points (official notebook protocol): GD vs SAM, number of linear pieces"))
register_lab(Lab("convergence", ConvergenceConfig, run_conv, report_conv,
                 "SGD/SAM/USAM with stochastic gradients: constant vs decaying rho and step size"))
