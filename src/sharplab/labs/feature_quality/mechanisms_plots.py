"""Tables and figures of the mechanisms study, shared by ``sharplab mechanisms`` and the runner's report.

Aggregation works on the flat per-seed metrics of :func:`~.mechanisms.summary_metrics` (keys
``<metric>_<optimizer>``), so finished runner records and in-process results are treated alike. Means and
sample standard deviations are over seeds; an ablation's recovered share is computed from the
seed-averaged hard-feature probe errors, ``(err_sgd - err_x) / (err_sgd - err_sam)``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharplab.errors import SharplabError
from sharplab.labs.feature_quality.importance import gini, lorenz_curve
from sharplab.labs.feature_quality.mechanisms import ABLATIONS, MIN_GAIN, MechanismsResult, recovered_fraction

METRICS: tuple[str, ...] = (
    "probe_error_easy", "probe_error_hard", "test_error", "gini_real", "gini_phantom",
    "gini_real_mean", "gini_phantom_mean", "ratio_real_mean", "ratio_phantom_mean",
)  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (std NaN for one value, both NaN for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return m, sd


def summary_rows(per_seed: Sequence[dict[str, float]], optimizers: Sequence[str], variant: str
                 ) -> list[dict[str, Any]]:
    """One row per optimizer: ``{metric: (mean, std)}`` over seeds plus ``recovered`` for ablations."""
    if not per_seed:
        raise SharplabError("no results to summarise; run at least one seed")
    rows = []
    for opt in optimizers:
        key = opt.replace("-", "_")
        row: dict[str, Any] = {"optimizer": opt, "seeds": len(per_seed)}
        for metric in METRICS:
            row[metric] = mean_std([m.get(f"{metric}_{key}", math.nan) for m in per_seed])
        rows.append(row)
    hard = {r["optimizer"]: r["probe_error_hard"][0] for r in rows}
    for row in rows:
        opt = row["optimizer"]
        ok = opt in ABLATIONS and "sgd" in hard and variant in hard
        row["recovered"] = recovered_fraction(hard["sgd"], hard[variant], hard[opt]) if ok else math.nan
    return rows


def recovered_note(rows: Sequence[dict[str, Any]], variant: str) -> str:
    """Why the recovered-share column is empty, when it is: SAM's hard-probe gain over SGD below
    :data:`MIN_GAIN`, or no ablation run; '' when some share is shown."""
    if any(math.isfinite(r.get("recovered", math.nan)) for r in rows):
        return ""
    hard = {r["optimizer"]: r["probe_error_hard"][0] for r in rows}
    if not any(r["optimizer"] in ABLATIONS for r in rows):
        return ""
    if "sgd" not in hard or variant not in hard:
        return "recovered share: not shown (the table has no SGD or no SAM row to compare with)"
    gain = 100 * (hard["sgd"] - hard[variant])
    return (f"recovered share: not shown, SAM's hard-probe gain over SGD is {gain:+.2f} pts, below the "
            f"{100 * MIN_GAIN:.1f}-pt floor under which a share of it would be a ratio of noise")


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 3) -> str:
    m, s = ms
    if not math.isfinite(m):
        return "-"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if math.isfinite(s) else "")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Printable rows: errors in %, Gini and v_hard/v_easy as numbers, recovered share in %."""
    out = []
    for r in rows:
        out.append({
            "optimizer": r["optimizer"],
            "hard probe err %": _fmt(r["probe_error_hard"], 100, 2),
            "easy probe err %": _fmt(r["probe_error_easy"], 100, 2),
            "test err %": _fmt(r["test_error"], 100, 2),
            "Gini w (final)": _fmt(r["gini_real"]),
            "Gini w+eps (final)": _fmt(r["gini_phantom"]),
            "v_h/v_e w (mean)": _fmt(r["ratio_real_mean"]),
            "v_h/v_e w+eps (mean)": _fmt(r["ratio_phantom_mean"]),
            "recovered % of SAM's hard gain": "-" if not math.isfinite(r["recovered"])
            else f"{100 * r['recovered']:.0f}",
        })  # fmt: skip
    return out


def format_table(rows: Sequence[dict[str, str]]) -> str:
    """Plain-text table with aligned columns."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line([r[c] for c in cols]) for r in rows)])


# --- figures -------------------------------------------------------------------------------------------
def figure_lorenz(result: MechanismsResult, optimizers: Sequence[str] = ("sgd", "sam", "lsam")):
    """Lorenz curves of the importance weights at ``w`` and ``w~`` at the final checkpoints."""
    cfg = result.config
    snaps = {o: (r.snapshot.real, r.snapshot.phantom) for o, r in result.runs.items()}
    return lorenz_figure(snaps, f"importance weights, {cfg.dataset}, rho={cfg.rho}, {cfg.phantom} phantom, "
                                f"seed {result.seed}", optimizers)


def lorenz_figure(snapshots: dict[str, tuple[Any, Any]], title: str,
                  optimizers: Sequence[str] = ("sgd", "sam", "lsam")):
    """One panel per optimizer: Lorenz curves of its importance weights ``(at w, at w~)``."""
    import torch

    plt = _pyplot()
    opts = [o for o in optimizers if o in snapshots]
    fig, axes = plt.subplots(1, len(opts), figsize=(4.3 * len(opts), 4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="uniform")
        for name, w, style in (("at w", snapshots[opt][0], "-"), ("at w+eps (phantom)", snapshots[opt][1], "--")):
            w = torch.as_tensor(w, dtype=torch.float64)
            x, y = lorenz_curve(w)
            ax.plot(x.numpy(), y.numpy(), style, label=f"{name}, Gini {gini(w):.3f}")
        ax.set_title(f"{opt.upper()} checkpoint", fontsize=10)
        ax.set_xlabel("share of examples (sorted by weight)")
        ax.set_ylabel("share of importance weight")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_history(history: dict[int, dict[str, float]], quantity: str, ylabel: str, title: str):
    """``<quantity>_real_<opt>`` (solid) and ``<quantity>_phantom_<opt>`` (dashed) over steps; None if absent."""
    plt = _pyplot()
    steps = sorted(history)
    opts = sorted({k[len(quantity) + 6:] for s in steps for k in history[s] if k.startswith(f"{quantity}_real_")})
    if not opts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, opt in enumerate(opts):
        for where, style in (("real", "-"), ("phantom", "--")):
            pts = [(s, history[s][f"{quantity}_{where}_{opt}"]) for s in steps
                   if f"{quantity}_{where}_{opt}" in history[s]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}",
                    label=f"{opt.replace('_', '-')} at {'w' if where == 'real' else 'w+eps'}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def figure_ablation(rows: Sequence[dict[str, Any]], title: str = ""):
    """Probe error per feature per optimizer, mean ± std over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    for j, feat in enumerate(("easy", "hard")):
        means = [100 * r[f"probe_error_{feat}"][0] for r in rows]
        stds = [100 * r[f"probe_error_{feat}"][1] if math.isfinite(r[f"probe_error_{feat}"][1]) else 0.0
                for r in rows]
        ax.bar([i + (j - 0.5) * width for i in range(len(rows))], means, width, yerr=stds, capsize=3,
               label=feat)
    ax.set_xticks(range(len(rows)), [r["optimizer"] for r in rows])
    ax.set_ylabel("probe error on decorrelated probe-test (%)")
    ax.set_title(title or "ablation: which mechanism recovers SAM's hard-feature gain", fontsize=10)
    ax.legend(title="feature")
    fig.tight_layout()
    return fig


def _save(fig: Any, path: Path) -> Path:
    from sharplab.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_figures(results: Sequence[MechanismsResult], out_dir: str | Path) -> list[Path]:
    """Lorenz curves (first seed), Gini and v_hard/v_easy traces (first seed), ablation bars (all seeds)."""
    from sharplab.labs.feature_quality.mechanisms import trace_history

    out = Path(out_dir)
    first = results[0]
    name = first.config.dataset
    hist = trace_history(first)
    figs = [
        ("lorenz", figure_lorenz(first)),
        ("gini", figure_history(hist, "gini", "Gini of importance weights",
                                f"{name}: importance weighting along training (seed {first.seed})")),
        ("ratio", figure_history(hist, "ratio", "v_hard / v_easy",
                                 f"{name}: learning-rate scaling of the pathways (seed {first.seed})")),
    ]
    rows = summary_rows([r.metrics for r in results], list(first.runs), first.config.variant)
    figs.append(("ablation", figure_ablation(rows, f"{name}: probe errors, {len(results)} seed(s)")))
    return [_save(fig, out / f"mechanisms_{name}_{key}.png") for key, fig in figs if fig is not None]


# --- the runner's report section -----------------------------------------------------------------------
def report(runs: Sequence[Any], builder: Any) -> None:
    """Runner hook: the summary table per (dataset, variant, rho), Gini/ratio traces of the first seed."""
    done = [r for r in runs if getattr(r, "status", "done") == "done"]
    if not done:
        builder.add_text("mechanisms: no finished runs yet.")
        return
    from sharplab.labs.feature_quality.protocol import section_key

    # one group per study and config other than the seed: runs that differ in any field (phantom, m, ...)
    # are never pooled as if they were seeds of one configuration
    groups: dict[tuple, list[Any]] = {}
    for r in done:
        groups.setdefault(section_key(getattr(r, "study", ""), {**r.config, "arm": "-"}), []).append(r)
    builder.add_text(
        "SAM's mechanisms (Springer et al., ICLR 2024): Gini of the per-example importance weights at w and at "
        "the phantom w+eps (lower = more uniform), v_hard/v_easy at w and w+eps (PathwayNet only), probe "
        "errors of SGD, SAM and the mechanism-only variants, and the share of SAM's hard-feature gain each "
        "recovers."
    )
    for key, rs in groups.items():
        cfg = rs[0].config
        dataset, variant, rho = cfg.get("dataset", "toy"), cfg.get("variant", "sam"), float(cfg.get("rho", 0.3))
        siblings = [k for k in groups if k != key]
        differ = [f"{k}={v}" for k, v in key[2] if k not in ("dataset", "variant", "rho")
                  and any(dict(o[2]).get(k) != v for o in siblings)]
        extra = f", {', '.join(differ)}" if differ else ""
        per_seed = [r.metrics for r in rs]
        opts = ["sgd", variant, *[a for a in ABLATIONS if any(f"probe_error_hard_{a.replace('-', '_')}" in m
                                                              for m in per_seed)]]
        rows = summary_rows(per_seed, opts, variant)
        seeds = f"{len(rs)} seed" + ("s" if len(rs) != 1 else "")
        builder.add_table(f"mechanisms: {dataset}, {variant}, rho={rho:g}{extra} ({seeds})", table_rows(rows))
        if note := recovered_note(rows, variant):
            builder.add_text(f"mechanisms ({dataset}, rho={rho:g}{extra}): {note}.")
        first = min(rs, key=lambda r: r.seed)
        history = getattr(first, "history", {}) or {}
        for quantity, label in (("gini", "Gini of importance weights"), ("ratio", "v_hard / v_easy")):
            fig = figure_history(history, quantity, label, f"{dataset}, {variant}, rho={rho:g}, seed {first.seed}")
            if fig is not None:
                builder.add_figure(f"mechanisms: {label} along training ({dataset}, rho={rho:g}{extra})", fig)
        run_dir = getattr(first, "run_dir", None)
        if run_dir is not None and (saved := Path(run_dir) / "mechanisms.json").exists():
            weights = json.loads(saved.read_text())["weights"]
            snaps = {o: (w["real"], w["phantom"]) for o, w in weights.items()}
            title = f"importance weights at the final checkpoint, {dataset}, rho={rho:g}, seed {first.seed}"
            builder.add_figure(f"mechanisms: Lorenz curves of the importance weights ({dataset}, rho={rho:g}{extra})",
                               lorenz_figure(snaps, title, ("sgd", variant)))
