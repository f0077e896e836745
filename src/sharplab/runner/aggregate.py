"""Aggregation over seeds for reports: grouping, mean ± std and 95% CI, and standard plots.

For values ``v_1..v_n`` of one configuration over ``n`` seeds: mean ``m``, sample standard deviation
``s`` (ddof = 1) and the half-width of the Student-t 95% confidence interval of the mean,
``t_{0.975, n-1} * s / sqrt(n)`` (undefined for ``n = 1``).

Runs are grouped by the configuration keys whose values differ among the runs (``seed`` never counts;
``nproc`` counts when it varies), so a table lists exactly what the study varied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci95: float

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.std:.2g}"


def t_critical(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value (scipy when available, else a normal approximation)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return 1.959964 * (1 + 1 / (4 * df))


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample std and 95% CI half-width of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    if n == 1:
        return Summary(1, float(v[0]), math.nan, math.nan)
    std = float(v.std(ddof=1))
    return Summary(n, float(v.mean()), std, t_critical(n - 1) * std / math.sqrt(n))


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def params(run: Any) -> dict[str, Any]:
    """The run's configuration plus ``nproc`` (lists and tables made hashable)."""
    out = {k: _hashable(v) for k, v in run.config.items()}
    out["nproc"] = getattr(run, "nproc", 1)
    return out


def varying_keys(runs: Sequence[Any], exclude: Sequence[str] = ("seed",)) -> list[str]:
    """Configuration keys (in config order) that take more than one value among ``runs``."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in params(run) if k not in keys]
    return [k for k in keys if k not in exclude and len({params(r).get(k) for r in runs}) > 1]


def group_runs(runs: Sequence[Any], by: Sequence[str] | None = None) -> dict[tuple, list[Any]]:
    """``{(value of each key in by): [runs]}``, insertion-ordered; ``by`` defaults to the varying keys."""
    by = varying_keys(runs) if by is None else list(by)
    groups: dict[tuple, list[Any]] = {}
    for run in runs:
        p = params(run)
        groups.setdefault(tuple(p.get(k) for k in by), []).append(run)
    return groups


def is_error(metric: str) -> bool:
    """Error rates are stored as fractions and shown in % (one unit in every report): ``*_error``, ``*_err``
    and the parts of the training error (``train_error_noisy``, ``train_error_clean``, ...)."""
    return metric.endswith(("_error", "_err")) or metric.startswith("train_error_") or metric == "error"


def metric_table(runs: Sequence[Any], metrics: Sequence[str],
                 by: Sequence[str] | None = None, percent: Sequence[str] | None = None,
                 log10: Sequence[str] = ()) -> dict[str, Any]:
    """Rows ``{key..., metric: "mean ± std", metric 95% CI: "± h", seeds}`` for ``ReportBuilder.add_table``
    (the CI columns are left out when no group has two seeds). Error rates in % (``percent``: the metrics
    shown x100 as ``"<metric> (%)"``; default: those :func:`is_error` names); ``log10``: quantities that
    span decades, summarised on the log scale (``"log10 <metric>"``: mean ± std of log10 over seeds)."""
    percent = [m for m in metrics if is_error(m)] if percent is None else list(percent)
    by = varying_keys(runs) if by is None else list(by)
    groups = group_runs(runs, by)
    with_ci = any(len(g) > 1 for g in groups.values())
    rows = []
    names = {m: f"log10 {m}" if m in log10 else f"{m} (%)" if m in percent else m for m in metrics}

    def value(m: str, r: Any) -> float:
        v = r.metrics.get(m)
        if v is None:
            return math.nan
        if m in log10:
            return math.log10(v) if v > 0 else math.nan
        return 100.0 * v if m in percent else float(v)

    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(by, key))
        for m in metrics:
            s = summarize(value(m, r) for r in group)
            row[names[m]] = s.fmt()
            row[f"{names[m]} 95% CI"] = "–" if math.isnan(s.ci95) else f"± {s.ci95:.2g}"
        row["seeds"] = len(group)
        rows.append(row)
    per_metric = (lambda m: (names[m], f"{names[m]} 95% CI")) if with_ci else (lambda m: (names[m],))
    columns = [*by, *[c for m in metrics for c in per_metric(m)], "seeds"]
    return {"rows": rows, "columns": columns}


def _axes() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    return fig, fig.add_subplot()


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, legend: bool) -> Any:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _label(keys: Sequence[str], values: tuple) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, values)) or "all runs"


def _unit(metric: str) -> tuple[float, str]:
    """(factor, axis label): error rates in %, as in the tables (:func:`is_error`)."""
    return (100.0, f"{metric} (%)") if is_error(metric) else (1.0, metric)


def plot_metric_vs(runs: Sequence[Any], metric: str, x: str, by: Sequence[str] | None = None):
    """A figure of ``metric`` (mean, 95% CI error bars; error rates in %) against config key ``x``, one
    line per group of the other varying keys."""
    factor, ylabel = _unit(metric)
    by = [k for k in (varying_keys(runs) if by is None else by) if k != x]
    fig, ax = _axes()
    for key, group in group_runs(runs, by).items():
        xs = sorted({params(r).get(x) for r in group}, key=lambda v: (v is None, v))
        stats = [summarize(factor * r.metrics.get(metric, math.nan) for r in group if params(r).get(x) == v)
                 for v in xs]
        means = np.array([s.mean for s in stats])
        half = np.array([0 if math.isnan(s.ci95) else s.ci95 for s in stats])
        low, high = means - half, means + half
        if factor == 100.0:  # an error rate's interval stops at 0 and 100 %
            low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
        ax.errorbar(xs, means, yerr=[means - low, high - means], marker="o", capsize=3, label=_label(by, key))
    return _finish(fig, ax, x, ylabel, legend=bool(by))


def plot_history(runs: Sequence[Any], metric: str, by: Sequence[str] | None = None):
    """Per-epoch ``metric`` (mean over seeds, shaded 95% CI; error rates in %), one line per group."""
    factor, ylabel = _unit(metric)
    by = varying_keys(runs) if by is None else list(by)
    fig, ax = _axes()
    for key, group in group_runs(runs, by).items():
        steps = sorted({s for r in group for s in r.history if metric in r.history[s]})
        stats = [summarize(factor * r.history.get(s, {}).get(metric, math.nan) for r in group) for s in steps]
        mean = np.array([s.mean for s in stats])
        half = np.array([0 if math.isnan(s.ci95) else s.ci95 for s in stats])
        (line,) = ax.plot(steps, mean, label=_label(by, key))
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2, color=line.get_color())
    return _finish(fig, ax, "epoch", ylabel, legend=bool(by))
