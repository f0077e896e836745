"""Figures of the implicit-bias lab (matplotlib, Agg backend; each function returns a Figure)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


METHOD_LABELS = {"gd": "GD", "sgd": "SGD", "nsam": "n-SAM", "1sam": "1-SAM", "m-sam": "m-SAM",
                 "iw1sam": "1-SAM (IW only)"}


def test_error_vs_rho(rows: Iterable[Mapping[str, Any]], metric: str = "test_error"):
    """One panel per alpha: ``metric`` vs rho per method (GD/SGD as horizontal lines). A metric spanning
    more than a factor 10 is drawn on a log axis and averaged over seeds geometrically (its log-scale
    mean, as the report's ``log10`` table); otherwise linear axis and arithmetic mean.

    ``rows`` hold ``method``, ``rho``, ``alpha``, ``metric`` (e.g. :meth:`DiagNetResult.record` dicts).
    """
    plt = _plt()
    data: dict[float, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        label = METHOD_LABELS.get(r["method"], r["method"])
        if r.get("method") == "m-sam":
            label = f"{r.get('m')}-SAM"
        if r.get("then", "none") not in ("none", None):
            label += f" -> {METHOD_LABELS.get(r['then'], r['then'])} @ {r.get('switch_at')}"
        data[float(r["alpha"])][label][float(r["rho"])].append(float(r[metric]))
    alphas = sorted(data)
    fig, axes = plt.subplots(1, max(1, len(alphas)), figsize=(4.2 * max(1, len(alphas)), 3.6), squeeze=False)
    values = [v for curves in data.values() for curve in curves.values() for vs in curve.values() for v in vs]
    # a quantity spanning decades is shown, and averaged over seeds, on the log scale (geometric mean)
    log = bool(values) and min(values) > 0 and max(values) / min(values) > 10
    for ax, alpha in zip(axes[0], alphas):
        rhos_all = sorted({rho for curves in data[alpha].values() for rho in curves})
        for label, curve in sorted(data[alpha].items()):
            xs = sorted(curve)
            ys = [float(np.exp(np.mean(np.log(curve[x])))) if log else float(np.mean(curve[x])) for x in xs]
            if len(xs) == 1 and len(rhos_all) > 1:
                ax.axhline(ys[0], ls="--", lw=1.2, label=label, color="k" if label == "GD" else None)
            else:
                ax.plot(xs, ys, marker="o", ms=3, label=label)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("rho")
        ax.set_title(f"alpha = {alpha:g}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " ") + (" (geometric mean over seeds)" if log else " (mean over seeds)"))
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_vs_iterations(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], ylabel: str,
                         vline: float | None = None, logx: bool = False, smooth: int = 1):
    """Lines ``(label, steps, values)`` on a log y axis; an optional vertical line (the switch point).

    ``logx`` plots against ``steps + 1`` on a log axis; ``smooth > 1`` draws the geometric moving average
    over that many records (the raw curve stays as a faint line).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, steps, values in curves:
        x = np.asarray(steps, dtype=float) + (1.0 if logx else 0.0)
        y = np.asarray(values, dtype=float)
        if smooth > 1 and len(y) > smooth:
            (raw,) = ax.plot(x, y, lw=0.6, alpha=0.25)
            kernel = np.ones(smooth) / smooth
            ys = np.exp(np.convolve(np.log(np.maximum(y, 1e-300)), kernel, mode="valid"))
            ax.plot(x[smooth - 1:], ys, lw=1.6, label=label, color=raw.get_color())
        else:
            ax.plot(x, y, lw=1.3, label=label)
    if vline is not None:
        ax.axvline(vline, color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("iteration + 1" if logx else "iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def relu_fits(results: Sequence[Any], x_data: np.ndarray, y_data: np.ndarray):
    """The learned functions of :class:`~.relu1d.Relu1dResult` objects over the data, kinks marked."""
    from sharplab.labs.implicit_bias.relu1d import kinks

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lo, hi = x_data.min(), x_data.max()
    grid = np.linspace(lo - 0.3, hi + 0.3, 1200)
    for res in results:
        cfg = res.config
        label = "GD" if cfg.method == "gd" else f"{cfg.method.upper()} rho={cfg.rho:g}"
        (line,) = ax.plot(grid, res.predict(grid), lw=1.5,
                          label=f"{label}: {res.kinks} kinks, loss {res.train_loss:.1e}")
        pos, _ = kinks(res.net)
        pos = pos[(pos >= lo) & (pos <= hi)]
        ax.plot(pos, res.predict(pos), "|", color=line.get_color(), ms=8, alpha=0.6)
    ax.scatter(x_data, y_data, color="k", zorder=5, s=18, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def relu_fits_over_seeds(results: Sequence[Any], x_data: np.ndarray, y_data: np.ndarray,
                         labels: Sequence[str] | None = None):
    """One panel per seed with every run's fit (kinks marked), and a last panel of kink counts per seed.

    ``results``: :class:`~.relu1d.Relu1dResult` objects; ``labels``: one legend name per result
    (default ``GD`` / ``SAM rho=...``). The legend gives kinks and final training loss.
    """
    from sharplab.labs.implicit_bias.relu1d import kinks

    plt = _plt()
    names = list(labels) if labels is not None else [
        "GD" if r.config.method == "gd" else f"{r.config.method.upper()} rho={r.config.rho:g}" for r in results]
    seeds = sorted({r.seed for r in results})
    order = list(dict.fromkeys(names))
    colors = {name: f"C{i}" for i, name in enumerate(order)}
    fig, axes = plt.subplots(1, len(seeds) + 1, figsize=(3.3 * (len(seeds) + 1), 3.4), squeeze=False)
    lo, hi = x_data.min(), x_data.max()
    grid = np.linspace(lo - 0.1, hi + 0.1, 1200)
    for ax, seed in zip(axes[0], seeds):
        for res, name in zip(results, names):
            if res.seed != seed:
                continue
            ax.plot(grid, res.predict(grid), lw=1.3, color=colors[name],
                    label=f"{name}: {res.kinks} kinks, L={res.train_loss:.0e}")
            pos, _ = kinks(res.net)
            pos = pos[(pos >= lo) & (pos <= hi)]
            ax.plot(pos, res.predict(pos), "|", color=colors[name], ms=7, alpha=0.6)
        ax.scatter(x_data, y_data, color="k", zorder=5, s=14)
        ax.set_title(f"seed {seed}", fontsize=9)
        ax.legend(fontsize=6, loc="lower center")
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    for k, name in enumerate(order):
        pts = [(r.seed, r.kinks) for r, nm in zip(results, names) if nm == name]
        ax.plot([p[0] + 0.08 * (k - (len(order) - 1) / 2) for p in pts], [p[1] for p in pts], "o",
                color=colors[name], label=f"{name} (mean {np.mean([p[1] for p in pts]):.1f})")
    ax.set_xticks(seeds)
    ax.set_xlabel("seed")
    ax.set_ylabel("kinks inside the data range")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def interpolation_curve(t: np.ndarray, test: np.ndarray, train: np.ndarray, names: tuple[str, str]):
    """Test and train loss along ``(1 - t) w_a + t w_b``; ``t = 0`` is ``names[0]``, ``t = 1`` ``names[1]``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, test, lw=1.8, color="C0", label="test loss")
    ax.plot(t, train, lw=1.8, ls="--", color="C0", label="train loss")
    for value, marker, name in ((0.0, "*", names[0]), (1.0, "o", names[1])):
        hit = np.flatnonzero(t == value)
        if hit.size:
            ax.plot(value, test[hit[0]], marker, ms=10, color="C3", label=f"test loss of {name}")
    ax.set_yscale("log")
    ax.set_xlabel(f"t: (1 - t) [{names[0]}] + t [{names[1]}]  (u, v interpolated)")
    ax.set_ylabel("squared loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Any, path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    import io

    from sharplab.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    _plt().close(fig)
