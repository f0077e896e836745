"""The implicit-bias commands (comma grids, --json lines, --out figures, one-line errors) and the labs
through the runner (`sharplab run` + `sharplab report`)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from sharplab.cli import main
from sharplab.labs.implicit_bias import DiagNetConfig, run_grid
from sharplab.labs.implicit_bias.lab import run_diag_net
from sharplab.runner.context import RunContext

PNG = b"\x89PNG\r\n\x1a\n"
REQUIRED = ("method", "rho", "lr", "alpha", "seed", "iters", "test_error", "train_loss", "l1_norm")


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_diag_net_grid_json_and_figures(tmp_path, capsys) -> None:
    out = tmp_path / "dn"
    rc = main(["diag-net", "--method", "gd,1sam", "--rho", "0,0.1", "--lr", "5/30", "--alpha", "0.05,0.1",
               "--iters", "300", "--seed", "0,1", "--json", "--out", str(out), "--quiet"])
    assert rc == 0
    recs = _lines(capsys.readouterr().out)
    # gd ignores rho (collapsed): (1 + 2) methods x rhos, 2 alphas, 2 seeds
    assert len(recs) == 3 * 2 * 2
    for rec in recs:
        assert all(k in rec for k in REQUIRED)
        assert rec["lr"] == 5 / 30 and rec["iters"] == 300
    ref = run_grid([DiagNetConfig(method="1sam", rho=0.1, lr=5 / 30, alpha=0.1, iters=300)], [1])[0]
    (mine,) = [r for r in recs if (r["method"], r["rho"], r["alpha"], r["seed"]) == ("1sam", 0.1, 0.1, 1)]
    # each run is one configuration; the kernel gives it the same numbers in any batch, bit for bit
    assert mine["test_error"] == ref.test_error and mine["l1_norm"] == ref.l1_norm
    assert json.loads((out / "results.json").read_text()) == recs
    for name in ("test_error_vs_rho.png", "l1_norm_vs_rho.png"):
        assert (out / name).read_bytes().startswith(PNG)


def test_diag_net_switching_figure_and_errors(tmp_path, capsys) -> None:
    out = tmp_path / "sw"
    assert main(["diag-net", "--method", "gd", "--then", "1sam", "--switch-at", "50", "--rho", "0.1",
                 "--alpha", "0.1", "--iters", "200", "--json", "--out", str(out), "--quiet", "--interpolate",
                 "--log-curves", "20"]) == 0
    (rec,) = _lines(capsys.readouterr().out)
    assert (rec["switch_at"], rec["then"]) == (50, "1sam")
    for name in ("switching_test_error.png", "interpolation.png", "curves_test.png", "curves_train.png"):
        assert (out / name).read_bytes().startswith(PNG)
    (row,) = json.loads((out / "interpolation.json").read_text())
    t, test = np.array(row["t"]), np.array(row["test_error"])
    # t = 0 is the switched run, t = 1 the GD solution at the switch point (50 updates)
    assert row["first_phase"]["iters"] == 50 and row["first_phase"]["method"] == "gd"
    assert test[t == 0][0] == pytest.approx(rec["test_error"], rel=1e-12)
    assert test[t == 1][0] == pytest.approx(row["first_phase"]["test_error"], rel=1e-12)
    assert main(["diag-net", "--interpolate", "--quiet"]) == 2  # needs --then and --out
    capsys.readouterr()
    assert main(["diag-net", "--method", "m-sam", "--m", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "divide" in err
    assert main(["diag-net", "--method", "adam"]) == 2  # argparse errors: one line, exit status 2
    assert capsys.readouterr().err.count("\n") == 1


def test_relu_and_convergence_commands(tmp_path, capsys) -> None:
    out = tmp_path / "relu"
    assert main(["relu-1d", "--method", "gd,sam", "--rho", "0.1", "--steps", "20", "--width", "8", "--json",
                 "--seed", "0,1", "--then-gd", "--out", str(out), "--quiet"]) == 0
    recs = _lines(capsys.readouterr().out)
    assert [(r["run"], r["seed"]) for r in recs] == [("GD", 0), ("GD", 1), ("SAM rho=0.1", 0), ("SAM rho=0.1", 1),
                                                   ("SAM rho=0.1 -> GD", 0), ("SAM rho=0.1 -> GD", 1)]
    assert all({"rho", "lr", "seed", "train_loss", "fits", "kinks", "pieces", "init"} <= set(r) for r in recs)
    assert recs[0]["init"] == "blanc" and recs[0]["lr"] == 5e-5 and recs[2]["lr_decay"] == "notebook"
    assert (out / "relu_fits_seed0.png").read_bytes().startswith(PNG)
    assert (out / "relu_fits.png").read_bytes().startswith(PNG)
    assert main(["relu-1d", "--protocol", "legacy", "--method", "sam", "--steps", "5", "--width", "4", "--seed", "0",
                 "--json", "--quiet", "--out", str(tmp_path / "legacy")]) == 0
    (rec,) = _lines(capsys.readouterr().out)
    assert (rec["init"], rec["loss"], rec["lr"], rec["rho"], rec["output_bias"]) == ("normal", "mean", 6e-3, 0.1, True)
    out = tmp_path / "conv"
    assert main(["convergence", "--method", "sam,usam", "--rho-schedule", "constant,inv", "--steps", "30",
                 "--json", "--out", str(out), "--quiet"]) == 0
    recs = _lines(capsys.readouterr().out)
    assert len(recs) == 4 and all("final_grad_norm" in r for r in recs)
    assert (out / "convergence.png").read_bytes().startswith(PNG)
    # a diverging configuration is recorded as such; the finished ones are kept and plotted
    out = tmp_path / "conv-div"
    assert main(["convergence", "--method", "sgd", "--lr", "0.2,1e6", "--lr-schedule", "constant", "--steps", "100",
                 "--json", "--out", str(out), "--quiet"]) == 0
    ok, bad = _lines(capsys.readouterr().out)
    assert (ok["diverged"], bad["diverged"], bad["lr"]) == (False, True, 1e6) and bad["diverged_at"] < 100
    assert len(json.loads((out / "results.json").read_text())) == 2
    assert (out / "convergence.png").read_bytes().startswith(PNG)


def test_lab_run_logs_curve_and_matches_grid(tmp_path) -> None:
    cfg = DiagNetConfig(method="1sam", rho=0.1, alpha=0.1, iters=400)
    ctx = RunContext(tmp_path / "run", seed=2, quiet=True)
    metrics = run_diag_net(cfg, ctx)
    ref = run_grid([cfg], [2])[0]
    assert metrics["test_error"] == ref.test_error and metrics["l1_norm"] == ref.l1_norm
    steps = [s for s, _ in ctx.history]
    assert steps[0] == 0 and steps[-1] == 400 and len(steps) == 101
    assert ctx.history[-1][1]["test_error"] == pytest.approx(ref.test_error)


def test_runner_study_and_report(tmp_path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent("""
        lab = "diag-net"
        name = "ib-test"
        [config]
        iters = 300
        alpha = 0.1
        [grid]
        method = ["nsam", "1sam"]
        rho = [0.0, 0.1]
        seed = [0]
    """))
    out = tmp_path / "runs"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Diagonal network: test error vs rho" in text
    figs = list((out / "figures").glob("*.png"))
    assert figs and all(f.read_bytes().startswith(PNG) for f in figs)
    ref = run_grid([DiagNetConfig(method="1sam", rho=0.1, alpha=0.1, iters=300)], [0])[0]
    import math

    # the metrics table shows the run's test error on the log scale (a regression loss spanning decades)
    assert "log10 test_error" in text and f"{math.log10(ref.test_error):.4g}" in text


def test_report_hooks_add_tables_and_figures() -> None:
    from types import SimpleNamespace

    from sharplab.labs.implicit_bias.lab import report_conv, report_diag_net, report_relu_1d
    from sharplab.runner.report import ReportBuilder

    def run(config, metrics, history=None, seed=0, status="done"):
        return SimpleNamespace(config=config, metrics=metrics, history=history or {}, seed=seed,
                               status=status, run_id=f"r{seed}")

    b = ReportBuilder("t")
    diag = [run({"method": m, "rho": r, "alpha": 0.1, "m": 1, "then": "none"},
                {"test_error": 0.1 + r, "l1_norm": 1.5, "train_loss": 0.0})
            for m, r in (("nsam", 0.0), ("1sam", 0.1))]
    report_diag_net(diag + [run({}, {}, status="failed")], b)
    relu = [run({"method": "gd", "rho": 0.0, "lr": 0.006}, {"train_loss": 1e-7, "kinks": 23.0, "fits": 1.0})]
    report_relu_1d(relu, b)
    hist = {t: {"grad_norm": 1.0 / (t + 1), "loss": 0.0} for t in range(0, 100, 10)}
    conv = [run({"method": "sam", "rho_schedule": s}, {"final_grad_norm": 0.1}, hist, seed=k)
            for s in ("constant", "inv") for k in (0, 1)]
    report_conv(conv, b)
    kinds = [blk.kind for blk in b.blocks]
    assert kinds.count("figure") == 3 and kinds.count("table") == 2  # diag-net metrics table + ReLU kinks
    diag_table, table = [blk for blk in b.blocks if blk.kind == "table"]
    assert len(diag_table.rows) == 2  # one row per (method, rho)
    assert table.rows == [["gd", 0.0, 0.006, 0, 1e-7, 1.0, 23.0]]
    report_conv([], b)  # nothing finished: nothing added, no error
    assert len(b.blocks) == len(kinds)
