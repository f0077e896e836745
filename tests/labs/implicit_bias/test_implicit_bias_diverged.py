"""Diverging configurations in the implicit-bias command grids: marked 'diverged' (table status, JSON
``diverged: true``), left out of the figures, and the finished configurations kept and reported."""

from __future__ import annotations

import json
import math

from sharplab.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _table(text: str) -> list[dict[str, str]]:
    head, *rows = [line.split() for line in text.splitlines() if line.strip()]
    return [dict(zip(head, row)) for row in rows]


def test_diag_net_nan_rows_are_marked_diverged(tmp_path, capsys) -> None:
    out = tmp_path / "dn"
    # lr 100 overflows to NaN within a few updates; lr 0.1 converges (closed-form stability: lr < 2 / L)
    assert main(["diag-net", "--method", "gd,1sam", "--rho", "0,0.1", "--lr", "0.1,100", "--alpha", "0.1",
                 "--iters", "200", "--quiet", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    rows = _table(cap.out)
    assert len(rows) == 6
    assert {r["lr"]: r["status"] for r in rows} == {"0.1": "ok", "100": "diverged"}
    assert "3 of 6 runs diverged" in cap.err
    recs = json.loads((out / "results.json").read_text())
    assert [r["diverged"] for r in recs] == [not math.isfinite(r["train_loss"]) for r in recs]
    assert sum(r["diverged"] for r in recs) == 3
    assert (out / "test_error_vs_rho.png").read_bytes().startswith(PNG)


def test_relu_1d_diverged_network_is_marked_and_others_kept(tmp_path, capsys) -> None:
    out = tmp_path / "relu"
    assert main(["relu-1d", "--method", "gd,sam", "--lr", "5e-5,1000", "--steps", "30", "--width", "8",
                 "--seed", "0", "--then-gd", "--quiet", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    rows = _table(cap.out.replace("SAM rho=0.3 -> GD", "SAM->GD").replace("SAM rho=0.3", "SAM"))
    # the diverged SAM network is not continued by GD; the finished ones are all reported
    assert [(r["run"], r["lr"], r["status"]) for r in rows] == [
        ("GD", "5e-05", "ok"), ("GD", "1000", "diverged"), ("SAM", "5e-05", "ok"), ("SAM", "1000", "diverged"),
        ("SAM->GD", "5e-05", "ok")]
    assert "2 of 5 runs diverged" in cap.err
    recs = json.loads((out / "results.json").read_text())
    assert [r["diverged"] for r in recs] == [False, True, False, True, False]
    assert all(math.isfinite(r["train_loss"]) for r in recs if not r["diverged"])
    assert (out / "relu_fits.png").read_bytes().startswith(PNG)


def test_convergence_table_marks_the_diverged_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no --out: the store goes to the default runs/convergence
    assert main(["convergence", "--method", "sgd", "--lr", "0.2,1e6", "--lr-schedule", "constant",
                 "--steps", "60", "--quiet"]) == 0
    assert (tmp_path / "runs" / "convergence" / "results.sqlite").is_file()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[1].split()[-1] == "ok" and lines[2].split()[-1] == "diverged"
    assert lines[2].split()[:2] == ["sgd", "lr:constant"]  # the diverged row names its configuration
