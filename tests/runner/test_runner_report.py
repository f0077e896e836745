"""Report builder (Markdown + self-contained HTML) and seed aggregation."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure

from sharplab.cli import main
from sharplab.runner.aggregate import group_runs, metric_table, summarize, varying_keys
from sharplab.runner.report import ReportBuilder

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Checks nesting (every opened tag closed in order) and collects <img> sources and text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.doctype and checker.stack == []
    return checker


def _run(cfg, seed, metrics, history=None, status="done", nproc=1):
    return SimpleNamespace(config=cfg, seed=seed, metrics=metrics, history=history or {}, status=status,
                           nproc=nproc)


def test_summary_matches_the_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci95 == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975, 2} = 4.3027 (tables)
    rng = np.random.default_rng(0)
    v = rng.normal(size=8)
    assert summarize(v).ci95 == pytest.approx(2.364624251592785 * v.std(ddof=1) / math.sqrt(8))  # t_{.975,7}
    one = summarize([5.0, float("nan")])
    assert one.n == 1 and math.isnan(one.ci95) and one.fmt() == "5"


def test_grouping_uses_only_what_varies():
    runs = [_run({"rho": r, "lr": 0.1, "opt": o}, s, {"err": 10 * r + s + (o == "sgd")})
            for r in (0.0, 0.1) for o in ("sam", "sgd") for s in (0, 1, 2)]
    assert varying_keys(runs) == ["rho", "opt"]
    groups = group_runs(runs)
    assert list(groups) == [(0.0, "sam"), (0.0, "sgd"), (0.1, "sam"), (0.1, "sgd")]
    table = metric_table(runs, ["err"])
    assert table["columns"] == ["rho", "opt", "err", "err 95% CI", "seeds"]
    row = table["rows"][3]  # rho 0.1, sgd: values 2, 3, 4
    assert row["err"] == "3 ± 1" and row["seeds"] == 3
    assert row["err 95% CI"] == f"± {4.302652729911275 / math.sqrt(3):.2g}"


def test_builder_writes_valid_html_with_embedded_pngs(tmp_path):
    b = ReportBuilder("A <report> & more")
    b.add_heading("Section")
    b.add_text("first paragraph\n\nsecond <b>not bold</b>")
    b.add_table("dict rows", [{"a": 1, "b": 0.123456789}, {"a": 2, "c": float("nan")}])
    b.add_table("seq rows", [[1, "x|y"]], columns=["n", "s"])
    for k in range(2):
        fig = Figure()
        fig.add_subplot().plot([0, 1], [k, 1])
        b.add_figure(f"figure {k}", fig)
    paths = b.write(tmp_path)
    html_text = paths["html"].read_text()
    checker = check_html(html_text)
    assert len(checker.images) == 2
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = "".join(checker.text)
    assert "A <report> & more" in text and "second <b>not bold</b>" in text  # escaped, shown literally
    assert "0.1235" in text and "–" in text
    md = paths["markdown"].read_text()
    pngs = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(pngs) == 2 and all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "| 1 | x\\|y |" in md and "| a | b | c |" in md
    with pytest.raises(ValueError):
        b.add_table("bad", [[1, 2]])


def test_report_command_on_a_study(toy_study, tmp_path, capsys):
    out = tmp_path / "out"
    main(["run", str(toy_study), "--out", str(out), "--quiet"])
    assert main(["report", str(out), "--title", "Toy study"]) == 0
    assert "report.html" in capsys.readouterr().out
    checker = check_html((out / "report.html").read_text())
    text = " ".join(checker.text)
    assert "Toy study" in text and "6 runs: 4 done, 2 diverged" in text and "toy section: 6 runs" in text


def test_single_seed_tables_leave_out_the_ci():
    runs = [_run({"rho": r}, 0, {"err": r}) for r in (0.0, 0.1)]
    table = metric_table(runs, ["err"])
    assert table["columns"] == ["rho", "err", "seeds"] and table["rows"][1]["err"] == "0.1"


def test_plots_show_the_group_means():
    from sharplab.runner.aggregate import plot_history, plot_metric_vs

    runs = [_run({"rho": r, "opt": o}, s, {"err": r + s + (o == "sgd")}, {1: {"err": 2.0 * s}, 2: {"err": s}})
            for r in (0.0, 0.1) for o in ("sam", "sgd") for s in (0, 1)]
    ax = plot_metric_vs(runs, "err", x="rho").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["opt=sam", "opt=sgd"]
    for container, offset in zip(ax.containers, (0.0, 1.0)):
        line = container.lines[0]
        assert list(line.get_xdata()) == [0.0, 0.1]
        assert list(line.get_ydata()) == pytest.approx([0.5 + offset, 0.6 + offset])  # mean over seeds 0, 1
    hist = plot_history(runs, "err").axes[0]
    assert [list(line.get_ydata()) for line in hist.lines] == [[1.0, 0.5]] * 4


def test_params_make_table_and_list_values_hashable():
    from types import SimpleNamespace

    from sharplab.runner.aggregate import params, varying_keys

    runs = [SimpleNamespace(config={"opts": {"a": 1, "b": [1, 2]}, "seed": s}, nproc=1) for s in (0, 1)]
    assert params(runs[0])["opts"] == (("a", 1), ("b", (1, 2)))
    assert varying_keys(runs) == []


def test_plots_show_error_rates_in_percent_as_the_tables():
    from sharplab.runner.aggregate import plot_history, plot_metric_vs

    runs = [_run({"rho": r}, s, {"test_error": 0.1 + r}, {1: {"test_error": 0.2}}) for r in (0.0, 0.1) for s in (0, 1)]
    ax = plot_metric_vs(runs, "test_error", x="rho").axes[0]
    assert ax.get_ylabel() == "test_error (%)"
    assert list(ax.containers[0].lines[0].get_ydata()) == pytest.approx([10.0, 20.0])
    hist = plot_history(runs, "test_error").axes[0]
    assert hist.get_ylabel() == "test_error (%)" and list(hist.lines[0].get_ydata()) == pytest.approx([20.0])
