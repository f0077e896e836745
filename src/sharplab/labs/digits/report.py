"""The digits lab's report section: final metrics over seeds, test error against the varied setting, curves."""

from __future__ import annotations

from typing import Any

#: most lines (combinations of the other varying settings) in the test-error-vs-setting figure
MAX_LINES = 6
SWEPT = ("rho", "lr", "weight_decay", "momentum", "batch_size", "epochs")  # x-axis candidates, in this order


def report(runs: list[Any], builder: Any) -> None:
    """Every final metric over seeds (mean ± std, 95% CI), test error against the first numeric setting the
    study varies (rho, else lr, ...; one line per value of the other varying keys; log axis when it spans
    more than a factor 20; no such figure when nothing numeric varies) and learning curves."""
    from sharplab.runner.aggregate import plot_history, plot_metric_vs, varying_keys
    from sharplab.runner.report import add_metric_table

    done = [r for r in runs if r.status == "done"]
    if not done:
        return
    add_metric_table(builder, "digits", done)
    varying = varying_keys(done)
    x = next((k for k in SWEPT if k in varying), None)
    lines = len({tuple(str(r.config.get(k)) for k in varying if k != x) for r in done})
    if x is not None and lines > MAX_LINES:  # a sweep: every trial its own setting, the figure would be noise
        builder.add_text(f"Digits: no test-error-vs-{x} figure: {lines} combinations of the other settings vary "
                         "(a sweep); the sweep section and the table above hold every trial.")
    elif x is not None:
        fig = plot_metric_vs(done, "test_error", x=x)
        values = [float(r.config[x]) for r in done if x in r.config]
        if min(values) > 0 and max(values) / min(values) > 20:
            fig.axes[0].set_xscale("log")
        builder.add_figure(f"Digits: test error vs {x} (runs that finished; mean and 95 % CI over seeds)", fig)
    builder.add_figure("Digits: test error per epoch", plot_history(done, "test_error"))
