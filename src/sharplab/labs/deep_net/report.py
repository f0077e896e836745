"""Report section of the ``deep-net`` lab (``sharplab report``): tables and figures by what the runs hold."""

from __future__ import annotations

from typing import Any

FINAL = ["test_error", "early_stopped_test_error", "train_error", "train_loss", "m_sharpness", "hessian_top",
         "hessian_trace", "train_error_noisy", "train_error_clean", "grad_norm"]


def report(runs: list[Any], builder: Any) -> None:
    from sharplab.runner.aggregate import plot_history, plot_metric_vs
    from sharplab.runner.report import add_metric_table

    done = [r for r in runs if r.status == "done" and r.metrics]
    if not done:
        return
    present = [m for m in FINAL if any(m in r.metrics for r in done)]
    add_metric_table(builder, "deep-net", done, present)
    rhos = {r.config.get("rho") for r in done}
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
    builder.add_text("Errors are fractions. n-SAM takes its ascent direction from the previous batch (the official "
                     "`--sam_use_prev_batch`); m-SAM perturbs each micro-batch of m on its own "
                     "(`sharplab.optim.sam_grad(m=)`). Sharpness: m-sharpness of the official eval_sharpness.py "
                     "(20 steps of 0.1 rho), top Hessian eigenvalue (Lanczos), Hutchinson trace; eval mode.")
