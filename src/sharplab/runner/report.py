"""Reports: a builder labs add tables, figures and text to, written as Markdown + self-contained HTML.

``sharplab report DIR`` reads the results store, writes a summary of run statuses, then for every lab
present a generic table of final metrics aggregated over seeds followed by the lab's own ``report(runs,
builder)`` section. Output: ``DIR/report.md``, ``DIR/report.html`` (figures embedded as base64 PNG data
URIs, no external files needed) and ``DIR/figures/*.png``; each written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharplab.io import atomic_write_bytes, atomic_write_text

_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee}figure{margin:1rem 0 2rem}figcaption{font-weight:600}
pre{background:#f6f6f6;padding:.5rem}"""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, so that figures render without a display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@dataclass
class _Block:
    kind: str  # "heading" | "text" | "table" | "figure"
    title: str = ""
    text: str = ""
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    png: bytes = b""
    name: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "figure"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class ReportBuilder:
    """Collects report content in order; :meth:`write` renders it.

    Example::

        b = ReportBuilder("my study")
        b.add_table("errors", rows=[{"rho": 0.0, "error": 0.1}])
        b.add_figure("error vs rho", fig)      # a matplotlib Figure; rendered to PNG at once
        b.write("runs/my-study")
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[_Block] = []

    def add_heading(self, title: str) -> None:
        self.blocks.append(_Block("heading", title=title))

    def add_text(self, text: str) -> None:
        """A paragraph (plain text; HTML-escaped in the HTML page)."""
        self.blocks.append(_Block("text", text=text))

    def add_table(self, title: str, rows: Sequence[Mapping[str, Any] | Sequence[Any]],
                  columns: Sequence[str] | None = None) -> None:
        """A table from dict rows (columns default to the keys in order) or sequence rows plus ``columns``."""
        if columns is None:
            columns = []
            for row in rows:
                if not isinstance(row, Mapping):
                    raise ValueError("add_table: sequence rows need columns=[...]")
                columns += [k for k in row if k not in columns]
        cells = [[row.get(c, "") for c in columns] if isinstance(row, Mapping) else list(row) for row in rows]
        self.blocks.append(_Block("table", title=title, columns=list(columns), rows=cells))

    def add_figure(self, title: str, figure: Any, dpi: int = 110) -> None:
        """A matplotlib figure, rendered to PNG now (and closed if it belongs to pyplot)."""
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=dpi)
        import sys

        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(figure)
        n = sum(b.kind == "figure" for b in self.blocks) + 1
        name = f"fig{n:02d}-{_slug(title)}.png"
        self.blocks.append(_Block("figure", title=title, png=buf.getvalue(), name=name))

    # --- rendering ---------------------------------------------------------------------------------
    def to_markdown(self, figure_dir: str = "figures") -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "heading":
                out += [f"## {b.title}", ""]
            elif b.kind == "text":
                out += [b.text, ""]
            elif b.kind == "table":
                out += [f"**{b.title}**", "", "| " + " | ".join(map(str, b.columns)) + " |",
                        "|" + "---|" * len(b.columns)]
                out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in b.rows]
                out.append("")
            else:
                out += [f"**{b.title}**", "", f"![{b.title}]({figure_dir}/{b.name})", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
               f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "heading":
                out.append(f"<h2>{e(b.title)}</h2>")
            elif b.kind == "text":
                out += [f"<p>{e(p)}</p>" for p in b.text.split("\n\n") if p.strip()]
            elif b.kind == "table":
                out += [f"<h3>{e(b.title)}</h3>", "<table>", "<thead><tr>"
                        + "".join(f"<th>{e(str(c))}</th>" for c in b.columns) + "</tr></thead>", "<tbody>"]
                out += ["<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in row) + "</tr>" for row in b.rows]
                out += ["</tbody>", "</table>"]
            else:
                data = base64.b64encode(b.png).decode("ascii")
                out += ["<figure>", f"<figcaption>{e(b.title)}</figcaption>",
                        f'<img alt="{e(b.title)}" src="data:image/png;base64,{data}">', "</figure>"]
        out += ["</body>", "</html>", ""]
        return "\n".join(out)

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``; return the paths."""
        out_dir = Path(out_dir)
        paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
        for b in self.blocks:
            if b.kind == "figure":
                atomic_write_bytes(out_dir / "figures" / b.name, b.png)
        atomic_write_text(paths["markdown"], self.to_markdown())
        atomic_write_text(paths["html"], self.to_html())
        return paths


def add_metric_table(builder: ReportBuilder, lab_name: str, runs: list, metrics: list[str] | None = None,
                     percent: list[str] | None = None, log10: tuple[str, ...] = ()) -> None:
    """A table of final metrics (all, or ``metrics``) of the finished ``runs``, grouped by the config keys
    that vary, with mean ± std and the 95% CI over seeds; error rates in %, ``log10`` metrics on the log
    scale (see :func:`~sharplab.runner.aggregate.metric_table`). Labs call it from their report section."""
    from sharplab.runner.aggregate import metric_table

    done = [r for r in runs if r.status == "done"]
    if done:
        metrics = metrics or list(dict.fromkeys(k for r in done for k in r.metrics))
        table = metric_table(done, metrics, percent=percent, log10=log10)
        builder.add_table(f"{lab_name}: final metrics over seeds (mean ± std, 95% CI)", **table)


def add_sweep_sections(builder: ReportBuilder, out_dir: str | os.PathLike) -> None:
    """Per sweep that wrote ``sweeps/<study>.json`` into the folder: the best configuration, every trial,
    the optimisation history (value per trial and the best so far) and the parameter importances."""
    import json

    for path in sorted((Path(out_dir) / "sweeps").glob("*.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            builder.add_text(f"Sweep summary {path.name} could not be read; re-run `sharplab sweep` to rewrite it.")
            continue
        name, metric, direction = summary["study"], summary["metric"], summary["direction"]
        from sharplab.runner.aggregate import is_error

        factor, unit = (100.0, " (%)") if is_error(metric) else (1.0, "")
        builder.add_heading(f"Sweep: {name}")
        done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
        best = summary.get("best")
        builder.add_text(f"Objective: {direction} `{metric}` (mean over seeds {summary['seeds']}); "
                         f"{len(done)} of {len(summary['trials'])} trials completed. "
                         + ("No trial completed." if best is None else
                            f"Best: trial {best['number']}, {metric}{unit} = {factor * best['value']:.4g}, "
                            + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                        for k, v in best["params"].items()) + "."))
        params = list(dict.fromkeys(k for t in summary["trials"] for k in t["params"]))
        rows = [{"trial": t["number"], "state": t["state"].lower(),
                 metric + unit: "" if t["value"] is None else f"{factor * t['value']:.4g}",
                 **{k: (f"{t['params'][k]:.4g}" if isinstance(t["params"].get(k), float) else t["params"].get(k, ""))
                    for k in params}} for t in summary["trials"]]
        builder.add_table(f"Sweep {name}: trials", rows, columns=["trial", "state", metric + unit, *params])
        if summary.get("importances"):
            builder.add_table(f"Sweep {name}: parameter importance (Optuna fANOVA)",
                              [{"parameter": k, "importance": f"{v:.3f}"} for k, v in summary["importances"].items()])
        if done:
            builder.add_figure(f"Sweep {name}: optimisation history",
                               _history_figure(done, metric, direction, factor, unit))


def _history_figure(done: list[dict[str, Any]], metric: str, direction: str, factor: float = 1.0,
                    unit: str = "") -> Any:
    from matplotlib.figure import Figure

    xs = [t["number"] for t in done]
    ys = [factor * t["value"] for t in done]
    pick = min if direction == "minimize" else max
    running = [pick(ys[: i + 1]) for i in range(len(ys))]
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(xs, ys, "o", ms=4, label="trial")
    ax.step(xs, running, where="post", color="k", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric + unit)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def build_report(out_dir: str | os.PathLike, title: str | None = None, store_url: str | None = None) -> ReportBuilder:
    """The standard report of an output folder: status summary, then per lab its registered section
    (or, for a lab without one, a generic table of every final metric). ``sharplab export`` has all
    numbers of every run."""
    from sharplab.runner.labs import get_lab
    from sharplab.runner.store import open_store, status_line

    with open_store(out_dir, store_url, readonly=True, wait=False) as store:
        runs = store.runs()
    builder = ReportBuilder(title or f"sharplab report: {Path(out_dir).resolve().name}")
    builder.add_text(f"{len(runs)} runs: {status_line(r.display_status for r in runs)}"
                     f". Generated {time.strftime('%Y-%m-%d %H:%M')} from {Path(out_dir).resolve()}.")
    troubled = [r for r in runs if r.status in ("failed", "diverged")]
    if troubled:
        builder.add_table("Runs that did not finish", [
            {"run": r.run_id, "lab": r.lab, "seed": r.seed, "status": r.status,
             "step": "" if r.diverged_step is None else r.diverged_step, "error": r.error or ""}
            for r in troubled])
    add_sweep_sections(builder, out_dir)
    for lab_name in dict.fromkeys(r.lab for r in runs):
        lab_runs = [r for r in runs if r.lab == lab_name]
        builder.add_heading(f"Lab: {lab_name}")
        lab = get_lab(lab_name)
        if lab.report is not None:
            lab.report(lab_runs, builder)
        else:
            add_metric_table(builder, lab_name, lab_runs)
    return builder
