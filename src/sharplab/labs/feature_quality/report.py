"""Tables and figures of the feature-probe experiment, shared by the CLI and the runner's report.

Everything here works on plain *records*: dicts with ``dataset``, ``optimizer``, ``rho``, ``lr``, ``seed``
and the metrics (``probe_error_easy``, ``probe_error_hard``, ``test_error``, ...). Means and standard
deviations are over seeds (sample std, ddof = 1); the "gain" of a row is the untrained network's mean
probe error minus the row's, i.e. what training added to the representation.

A diverged run (``status = "diverged"``, or the CLI's ``diverged: true``) has no probe errors: it is left
out of the means, a cell whose runs all diverged reads "diverged", and a "diverged" column (row in the
text table) counts such runs whenever there is one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sharplab.labs.feature_quality.protocol import is_diverged

FEATURE_ROWS: tuple[tuple[str, str], ...] = (
    ("probe_error_easy", "easy-feature probe error"),
    ("probe_error_hard", "hard-feature probe error"),
    ("test_error", "test error (in-distribution)"),
    ("worst_group_error", "worst-group test error"),
)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def fmt(mean: float, std: float, pct: bool = True) -> str:
    if not math.isfinite(mean):
        return "-"
    k = 100.0 if pct else 1.0
    return f"{k * mean:.2f}" + (f" ± {k * std:.2f}" if math.isfinite(std) else "")


def cell(rs: Sequence[dict[str, Any]], metric: str) -> str:
    """``mean ± std`` of ``metric`` over ``rs`` in %; "diverged" when every run diverged, "-" when none has it."""
    m, s, n = mean_std(r.get(metric, math.nan) for r in rs)
    if not n and rs and all(is_diverged(r) for r in rs):
        return "diverged"
    return fmt(m, s)


def diverged_count(rs: Sequence[dict[str, Any]]) -> str:
    """``"1 of 3"`` diverged runs, or ``""``."""
    n = sum(is_diverged(r) for r in rs)
    return f"{n} of {len(rs)}" if n else ""


def group(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float, float], list[dict[str, Any]]]:
    """Records grouped by (dataset, optimizer, rho, lr), in order of first appearance."""
    out: dict[tuple[str, str, float, float], list[dict[str, Any]]] = {}
    for r in records:
        key = (str(r["dataset"]), str(r["optimizer"]), float(r.get("rho", 0.0)), float(r.get("lr", 0.0)))
        out.setdefault(key, []).append(r)
    return out


def summary_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, optimizer, rho, lr): probe and test errors in %, mean ± std over seeds,
    and the hard/easy probe-error gain over the untrained network of the same data set."""
    groups = group(records)
    base: dict[str, dict[str, float]] = {}
    for (ds, opt, _, _), rs in groups.items():
        if opt == "untrained":
            base[ds] = {
                m: mean_std(r.get(m, math.nan) for r in rs)[0] for m in ("probe_error_easy", "probe_error_hard")
            }
    rows = []
    any_diverged = any(is_diverged(r) for r in records)
    for (ds, opt, rho, lr), rs in groups.items():
        plain = opt in ("sgd", "untrained")
        row: dict[str, Any] = {
            "dataset": ds, "optimizer": opt, "rho": "-" if plain else rho,
            "lr": "-" if opt == "untrained" else lr, "seeds": len(rs),
        }  # fmt: skip
        for metric, _ in FEATURE_ROWS:
            n = mean_std(r.get(metric, math.nan) for r in rs)[2]
            if n or metric != "worst_group_error":
                row[f"{metric} (%)"] = cell(rs, metric)
        for feat in ("easy", "hard"):
            m = mean_std(r.get(f"probe_error_{feat}", math.nan) for r in rs)[0]
            b = base.get(ds, {}).get(f"probe_error_{feat}", math.nan)
            gain = fmt(b - m, math.nan)
            if gain == "-" and cell(rs, f"probe_error_{feat}") == "diverged":
                gain = "diverged"
            row[f"{feat} gain vs untrained (pts)"] = "-" if opt == "untrained" else gain
        if any_diverged:
            row["diverged"] = diverged_count(rs)
        rows.append(row)
    return rows


def gini_cell(rs: Sequence[dict[str, Any]]) -> str:
    """Mean final Gini of the importance weights at w and at the step's phantom, ``"0.912 / 0.874"``."""
    w, p = (mean_std(r.get(k, math.nan) for r in rs)[0] for k in ("gini_w", "gini_phantom"))
    return f"{w:.3f} / {p:.3f}" if math.isfinite(w) and math.isfinite(p) else "-"


def flattening_cell(rs: Sequence[dict[str, Any]]) -> str:
    """``mean ± sd`` over seeds of the final ``gini_w - gini_phantom`` (> 0: the phantom flattens)."""
    m, sd, n = mean_std(r.get("gini_w", math.nan) - r.get("gini_phantom", math.nan) for r in rs)
    if not n:
        return "-"
    return f"{m:+.3f}" + (f" ± {sd:.3f}" if math.isfinite(sd) else "")


def format_table(records: Sequence[dict[str, Any]], title: str = "") -> str:
    """Plain-text table, feature x optimizer (mean ± std over seeds, in %)."""
    groups = group(records)
    cols = [f"{opt}" + (f" rho={rho:g}" if opt not in ("sgd", "untrained") else "") for (_, opt, rho, _) in groups]
    lines: list[list[str]] = [
        ["", *cols],
        ["lr", *[f"{lr:g}" if opt != "untrained" else "-" for (_, opt, _, lr) in groups]],
    ]
    lines.append(["seeds", *[str(len(rs)) for rs in groups.values()]])
    for metric, label in FEATURE_ROWS:
        cells = [cell(rs, metric) for rs in groups.values()]
        if metric == "worst_group_error" and all(c in ("-", "diverged") for c in cells):
            continue
        lines.append([label + " (%)", *cells])
    summ = summary_rows(records)
    if any(r["optimizer"] == "untrained" for r in summ):
        lines.append(["hard gain vs untrained (pts)", *[r["hard gain vs untrained (pts)"] for r in summ]])
    if any("gini_w" in r for r in records):
        lines.append(["Gini at w / at phantom (final)", *[gini_cell(rs) for rs in groups.values()]])
        lines.append(["flattening (Gini w − phantom)", *[flattening_cell(rs) for rs in groups.values()]])
    if any(is_diverged(r) for r in records):
        lines.append(["diverged runs", *[diverged_count(rs) or "0" for rs in groups.values()]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    return "\n".join(([title] if title else []) + text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_probe_errors(records: Sequence[dict[str, Any]], title: str = "") -> Any:
    """Grouped bars: probe error of each feature per optimizer (mean ± std over seeds)."""
    plt = _pyplot()
    groups = group(records)
    labels = [opt + (f"\nrho={rho:g}" if opt not in ("sgd", "untrained") else "") for (_, opt, rho, _) in groups]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 1.5), 3.6))
    x = np.arange(len(groups))
    for i, (feat, color) in enumerate((("easy", "tab:blue"), ("hard", "tab:red"))):
        stats = [mean_std(r.get(f"probe_error_{feat}", math.nan) for r in rs) for rs in groups.values()]
        means = [100 * m for m, _, _ in stats]
        errs = [100 * s if math.isfinite(s) else 0.0 for _, s, _ in stats]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=errs, capsize=3, color=color, label=f"{feat} feature")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("probe error on probe-test (%)")
    ax.set_title(title or "linear-probe error per feature", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_rho_sweep(records: Sequence[dict[str, Any]], title: str = "") -> Any | None:
    """Left: hard-feature probe error vs rho per optimizer (SGD as a line); right: in-distribution test
    error (x) vs hard-feature probe error (y), points labelled by rho. None without a rho sweep."""
    plt = _pyplot()
    by_opt: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for (_, opt, rho, _), rs in group(records).items():
        by_opt.setdefault(opt, {}).setdefault(rho, []).extend(rs)
    if not any(len(v) > 1 for o, v in by_opt.items() if o not in ("sgd", "untrained")):
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (opt, per_rho) in enumerate(by_opt.items()):
        if opt == "untrained":
            continue
        rhos = sorted(per_rho)
        stats = [mean_std(r.get("probe_error_hard", math.nan) for r in per_rho[rho]) for rho in rhos]
        ys = [100 * m for m, _, _ in stats]
        xs = [100 * mean_std(r.get("test_error", math.nan) for r in per_rho[rho])[0] for rho in rhos]
        if opt == "sgd":
            ax0.axhline(ys[0], color="k", ls="--", lw=1, label="sgd")
            ax1.plot(xs, ys, "ks", label="sgd")
            continue
        errs = [100 * s if math.isfinite(s) else 0.0 for _, s, _ in stats]
        ax0.errorbar(rhos, ys, yerr=errs, fmt="o-", capsize=3, color=f"C{i}", label=opt)
        ax1.plot(xs, ys, "o-", color=f"C{i}", label=opt)
        for xv, yv, rho in zip(xs, ys, rhos):
            ax1.annotate(f"{rho:g}", (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax0.set_xlabel("rho")
    ax0.set_ylabel("hard-feature probe error (%)")
    ax1.set_xlabel("in-distribution test error (%)")
    ax1.set_ylabel("hard-feature probe error (%)")
    ax0.legend(fontsize=8)
    fig.suptitle(title or "rho sweep (right: labels are rho)", fontsize=10)
    fig.tight_layout()
    return fig


def runs_to_records(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Finished runner records -> plain records (config, seed, study, status, metrics); diverged runs are
    kept (``status = "diverged"``, no metrics) so that the tables say so."""
    out = []
    for r in runs:
        status = getattr(r, "status", "done")
        if status in ("done", "diverged"):
            metrics = r.metrics if status == "done" else {}
            out.append({**r.config, "seed": r.seed, "study": getattr(r, "study", ""), "status": status, **metrics})
    return out


def report(runs: Sequence[Any], builder: Any) -> None:
    """Runner hook: per section (study, data set and the config other than the configuration's name and
    seed, :func:`.protocol.sections`) a heading and its tables and figures; runs of different sections
    are never pooled or paired."""
    from sharplab.labs.feature_quality.protocol import sections

    if not runs_to_records(runs):
        builder.add_text("feature-quality: no finished runs yet.")
        return
    builder.add_text(
        "Linear probes (logistic regression on standardised penultimate features, C chosen on a "
        "validation part of probe_train) scored on the decorrelated probe_test split. Errors in %, mean ± "
        "std over seeds; gain = untrained network's probe error minus the row's. One section per study and "
        "data set (and other config): nothing is pooled or paired across sections."
    )
    from sharplab.labs.feature_quality.lr_selection import lr_choices, selection_rows

    choices = lr_choices(runs_to_records(runs))
    if choices:
        builder.add_table("feature-quality: learning rate per configuration, chosen on the final validation loss "
                          "(ties: the smaller lr; runs that diverged or did not learn never chosen; no probe or "
                          "test number enters)", choices)
    selected = selection_rows(runs_to_records(runs))
    if selected:
        builder.add_table("feature-quality: lr and rho per optimizer of a grid, chosen on the mean validation error "
                          "(one-standard-error rule: the largest rho among ties; runs that diverged or did not "
                          "learn never chosen; no probe or test number enters)", selected)
    for title, section_runs in sections(runs):
        records = runs_to_records(section_runs)
        builder.add_heading(f"feature-quality: {title}")
        if not records:
            builder.add_text(f"{title}: no finished runs yet.")
        elif any(r.get("arm") for r in records):
            _protocol_sections(section_runs, records, builder, title)
        else:
            _summary_sections(records, builder, title)


def _summary_sections(records: list[dict[str, Any]], builder: Any, title: str) -> None:
    """Studies without ``arm``: the probe-error table and the two figures."""
    from sharplab.labs.feature_quality.curves_report import add_readout_sections

    builder.add_table(f"{title}: probe errors per feature", summary_rows(records))
    add_readout_sections(records, builder, title)
    builder.add_figure(f"{title}: probe error per feature and optimizer", plot_probe_errors(records))
    sweep = plot_rho_sweep(records)
    if sweep is not None:
        builder.add_figure(f"{title}: rho sweep, test error vs hard-feature probe error", sweep)


def _protocol_sections(runs: Sequence[Any], records: list[dict[str, Any]], builder: Any, title: str) -> None:
    """The pre-registered protocol's view (studies that name their configurations with ``arm``)."""
    from sharplab.labs.feature_quality import protocol
    from sharplab.labs.feature_quality.curves_report import add_readout_sections

    add_readout_sections(records, builder, title)
    builder.add_table(
        f"{title}: paired differences SGD − X of the hard-probe error with the probe fitted on the whole "
        "probe-train split (points; positive = X has the lower error; 95 % t-interval over seeds), "
        "manipulation check (final Gini at w / at the step's phantom) and runs that did not learn",
        protocol.paired_rows(records))
    lines = []
    for a, b in (("lsam rho=1.0 jtt_epochs=4 jtt_upweight=5", "sgd jtt_epochs=4 jtt_upweight=5"),
                 ("lsam rho=1.0 jtt_epochs=4 jtt_upweight=5", "lsam rho=1.0")):
        m, lo, hi, n = protocol.contrast(records, b, a)
        if n:
            lines.append(f"{b} − {a}: {100 * m:+.2f} pts, 95 % CI [{100 * lo:+.2f}, {100 * hi:+.2f}] ({n} seeds)")
    if lines:
        builder.add_text(f"{title}: combination vs each alone (hard-probe error, paired by seed): "
                         + "; ".join(lines))
    chosen = protocol.selected_rows(records)
    n_val = protocol.validation_size(records)
    rule = (f"one-standard-error rule on the runs' {n_val} validation examples" if n_val is not None
            else "lowest mean validation error, exact ties only (these runs do not record their validation size)")
    heading = (f"{title} (secondary view): validation-selected configuration per optimizer, whole-batch and "
               f"m-sharpness apart ({rule}; largest rho among ties; runs that did not learn never selected)")
    if chosen:
        builder.add_table(heading, chosen)
    else:
        builder.add_text(heading + ": no configuration learned, nothing to select.")
    present = {protocol.arm_label(r) for r in records}
    refs = [f"{name} = {arm}" for name, arm in (("floor", protocol.FLOOR), ("ceiling", protocol.CEILING))
            if arm in present]
    builder.add_figure(f"{title}: hard/easy probe error vs in-distribution test error (every run"
                       + (f"; {', '.join(refs)}" if refs else "") + ")", protocol.plot_tradeoff(
        records, f"{title}: probe error vs test error, every configuration and seed (x = did not learn)"))
    fig = protocol.plot_check(runs, f"{title}: Gini at w (solid) and at the step's phantom (dashed)")
    if fig is not None:
        builder.add_figure(f"{title}: manipulation check along training", fig)
    table = protocol.check_table(runs)
    if table:
        builder.add_table(f"{title}: manipulation check per epoch, flattening Gini(w) − Gini(phantom), mean "
                          "[95 % t-interval] over seeds ('on': interval above zero and mean ≥ "
                          f"{protocol.MIN_FLATTENING:g})", table)


def write_figures(records: Sequence[dict[str, Any]], out_dir: Any, dataset: str) -> list[Any]:
    """Save the figures as PNG under ``out_dir``; return the paths written.

    The bar chart shows the ``selected`` records (and the untrained baseline); the rho sweep all of them.
    """
    from pathlib import Path

    from sharplab.io import atomic_write_bytes

    out = Path(out_dir)
    paths = []
    figs = [("probe_errors", plot_probe_errors(best_only(records), f"{dataset}: probe error per feature")),
            ("rho_sweep", plot_rho_sweep(records, f"{dataset}: rho sweep"))]  # fmt: skip
    plt = _pyplot()
    for name, fig in figs:
        if fig is None:
            continue
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        paths.append(atomic_write_bytes(out / f"{dataset}_{name}.png", buf.getvalue()))
    return paths


def best_only(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records marked ``selected`` (plus the untrained baseline)."""
    return [r for r in records if r.get("selected", True) or r.get("optimizer") == "untrained"]
