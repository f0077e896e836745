"""Report section of the ``deep-net`` lab (``sharplab report``): tables and figures by what the runs hold."""

from __future__ import annotations

from typing import Any

from sharplab.labs.deep_net.studies import group_settings, label

#: final metrics compared per seed in the paired table: (key, column name, factor to the shown unit)
PAIRED = (("test_error", "test error", 100.0), ("early_stopped_test_error", "early-stopped test error", 100.0),
          ("train_error", "training error", 100.0), ("m_sharpness", "m-sharpness", 1.0))

FINAL = ["test_error", "early_stopped_test_error", "train_error", "train_loss", "m_sharpness", "hessian_top",
         "hessian_trace", "train_error_noisy", "train_error_clean", "grad_norm"]


def paired_differences(runs: list[Any]) -> list[dict[str, Any]]:
    """Per pair of settings (A, B) with at least two seeds in common: the per-seed difference A - B of each
    final metric of :data:`PAIRED`, its mean and 95 % t interval (mean +- t_{0.975, k-1} sd / sqrt(k)).

    Pairs: ERM against every other setting, and any two non-ERM settings at the same rho, A the earlier in
    :func:`~sharplab.labs.deep_net.studies.setting_order`. A positive test-error difference
    means B has the lower error. Pairing by seed removes what the two runs of a seed share (data split,
    initialisation, test images)."""
    from sharplab.runner.aggregate import summarize

    settings = {key: {r.seed: r for r in rs} for key, rs in group_settings(runs).items()}
    keys = list(settings)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            ca, cb = (next(iter(settings[k].values())).config for k in (a, b))
            is_erm = ca["method"] == "erm" and not ca.get("then_method")
            if not is_erm and ca["rho"] != cb["rho"]:
                continue
            seeds = sorted(set(settings[a]) & set(settings[b]))
            if len(seeds) < 2:
                continue
            row: dict[str, Any] = {"A - B": f"{label(ca)} - {label(cb)} (rho {cb['rho']:g})", "seeds": len(seeds)}
            for key, name, factor in PAIRED:
                s = summarize(factor * (settings[a][k].metrics[key] - settings[b][k].metrics[key]) for k in seeds
                              if key in settings[a][k].metrics and key in settings[b][k].metrics)
                if s.n < 2:
                    continue
                unit = " (pts)" if factor == 100.0 else ""
                row[f"{name} A - B{unit}"] = f"{s.mean:+.2f}"
                row[f"{name} 95% CI"] = f"[{s.mean - s.ci95:+.2f}, {s.mean + s.ci95:+.2f}]"
            rows.append(row)
    return rows


def plot_settings(runs: list[Any], metric: str = "test_error", ylabel: str = "test error (%)") -> Any:
    """``metric`` per setting (ERM, n-SAM, 128-SAM, ...): every seed as a dot, the mean with its 95 % t
    interval as a bar, in %, in the summary's order."""
    from matplotlib.figure import Figure

    from sharplab.runner.aggregate import summarize

    groups = list(group_settings(runs).values())
    fig = Figure(figsize=(max(4.5, 1.1 * len(groups) + 1.5), 3.4))
    ax = fig.add_subplot()
    for i, group in enumerate(groups):
        vals = [100 * r.metrics[metric] for r in group if metric in r.metrics]
        ax.plot([i] * len(vals), vals, "o", color="tab:grey", ms=3, alpha=0.7)
        s = summarize(vals)
        ax.errorbar([i], [s.mean], yerr=[0 if s.n < 2 else s.ci95], fmt="s", color="tab:red", capsize=4, ms=5)
    configs = [g[0].config for g in groups]
    names = [label(c) + ("" if c["method"] == "erm" else f"\nrho {c['rho']:g}") for c in configs]
    ax.set_xticks(range(len(groups)), names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def report(runs: list[Any], builder: Any) -> None:
    from sharplab.runner.aggregate import plot_history, plot_metric_vs
    from sharplab.runner.report import add_metric_table

    done = [r for r in runs if r.status == "done" and r.metrics]
    if not done:
        return
    present = [m for m in FINAL if any(m in r.metrics for r in done)]
    add_metric_table(builder, "deep-net", done, present)
    pairs = paired_differences(done)
    if pairs:
        builder.add_table("deep-net: paired differences A - B over seeds (mean, 95% t interval; errors in "
                          "percentage points, positive = B has the lower error / sharpness)", pairs)
    if len(group_settings(done)) > 1:
        builder.add_figure("deep-net: final test error per setting (dots = seeds, red = mean with 95% t interval)",
                           plot_settings(done))
        noisy = any(r.config.get("label_noise") for r in done)
        if noisy and any("early_stopped_test_error" in r.metrics for r in done):
            builder.add_figure("deep-net: best test error per setting (early-stopped on the noisy validation "
                               "labels; dots = seeds, red = mean with 95% t interval)",
                               plot_settings(done, "early_stopped_test_error", "early-stopped test error (%)"))
    rhos = {r.config.get("rho") for r in done if r.config["method"] != "erm"}
    if len(rhos) > 1:
        builder.add_figure("deep-net: test error vs rho (mean, 95% CI over seeds)",
                           plot_metric_vs(done, "test_error", x="rho"))
    with_hist = [r for r in done if getattr(r, "history", None)]
    if with_hist:
        builder.add_figure("deep-net: test error per epoch", plot_history(with_hist, "test_error"))
        if any("train_error_noisy" in h for r in with_hist for h in r.history.values()):
            builder.add_figure("deep-net: training error on the noisy examples (w.r.t. noisy labels)",
                               plot_history(with_hist, "train_error_noisy"))
            builder.add_figure("deep-net: training error on the clean examples",
                               plot_history(with_hist, "train_error_clean"))
        if any("grad_norm" in h for r in with_hist for h in r.history.values()):
            builder.add_figure("deep-net: full-batch gradient norm per epoch", plot_history(with_hist, "grad_norm"))
            builder.add_figure("deep-net: full-batch training loss per epoch",
                               plot_history(with_hist, "full_train_loss"))
    builder.add_text("Errors in %. n-SAM takes its ascent direction from the previous batch (the official "
                     "`--sam_use_prev_batch`); m-SAM perturbs each micro-batch of m on its own "
                     "(`sharplab.optim.sam_grad(m=)`). Sharpness: m-sharpness of the official eval_sharpness.py "
                     "(20 steps of 0.1 rho), top Hessian eigenvalue (Lanczos), Hutchinson trace; eval mode.")
