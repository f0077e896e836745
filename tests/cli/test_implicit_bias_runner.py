"""``sharplab diag-net``, ``relu-1d`` and ``convergence`` run through the runner: every run lands in the
store under ``--out``, a second identical command runs nothing and prints the same table, ``sharplab
report`` on the folder has the lab's section, and the commands' old flags still parse."""

from __future__ import annotations

import json

import pytest

from sharplab.cli import build_parser, main
from sharplab.runner.store import open_store

COMMANDS = {
    "diag-net": (["--method", "gd,1sam", "--rho", "0.05,0.1", "--alpha", "0.1", "--iters", "200", "--seed", "0,1"],
                 6, "Diagonal network"),  # gd ignores rho: (gd + 1sam x 2 rhos) x 2 seeds
    "relu-1d": (["--method", "gd,sam", "--rho", "0.2,0.3", "--steps", "300", "--width", "8", "--seed", "0,1"],
                6, "1-D ReLU network: kinks inside the data range"),
    "convergence": (["--method", "sgd,sam", "--rho", "0.3,0.5", "--steps", "100", "--seed", "0,1"],
                    8, "Convergence: ||grad f|| over iterations"),
}


def _invoke(capsys, argv: list[str]) -> tuple[str, str]:
    assert main(argv) == 0
    cap = capsys.readouterr()
    return cap.out, cap.err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_runs_land_in_the_store_resume_and_report(command, tmp_path, capsys) -> None:
    flags, n_runs, section = COMMANDS[command]
    out = tmp_path / "out"
    argv = [command, *flags, "--out", str(out), "--quiet", "--threads", "1"]
    first, err = _invoke(capsys, argv)
    assert f"{n_runs} runs in {out} ({n_runs} new, 0 finished earlier)" in err
    with open_store(out, create=False) as store:
        runs = store.runs()
    assert len(runs) == n_runs and {r.lab for r in runs} == {command} and all(r.status == "done" for r in runs)
    assert {r.threads for r in runs} == {1}
    table = [line.split() for line in first.splitlines()]
    assert len(table) == 1 + n_runs and table[0][-1] == "status" and {row[-1] for row in table[1:]} == {"ok"}
    # the printed numbers are the stored ones
    shown = json.loads((out / "results.json").read_text())
    stored = sorted(m for r in runs for k, m in r.metrics.items() if k in ("test_error", "train_loss",
                                                                          "final_grad_norm"))
    printed = sorted(v for rec in shown for k, v in rec.items() if k in ("test_error", "train_loss",
                                                                         "final_grad_norm"))
    assert printed == stored
    finished = {r.run_id: r.finished for r in runs}

    again, err = _invoke(capsys, argv)
    assert again == first
    assert f"({0} new, {n_runs} finished earlier)" in err
    with open_store(out, create=False) as store:
        assert {r.run_id: r.finished for r in store.runs()} == finished  # nothing ran again

    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert f"Lab: {command}" in text and section in text


def test_json_lines_resume_identically_and_without_out_use_the_default_folder(tmp_path, monkeypatch,
                                                                                 capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["convergence", "--method", "sam", "--steps", "50", "--seed", "0,1", "--json", "--quiet"]
    first, _ = _invoke(capsys, argv)
    again, _ = _invoke(capsys, argv)
    assert first == again and [json.loads(line)["seed"] for line in first.splitlines()] == [0, 1]
    assert (tmp_path / "runs" / "convergence" / "results.sqlite").is_file()
    assert not (tmp_path / "runs" / "convergence" / "results.json").exists()  # figures only for a given --out


def test_diag_net_switched_runs_resume_with_their_figures(tmp_path, capsys) -> None:
    out = tmp_path / "sw"
    argv = ["diag-net", "--method", "gd", "--then", "1sam", "--switch-at", "40", "--rho", "0.1", "--alpha", "0.1",
            "--iters", "100",
            "--interpolate", "--log-curves", "10", "--record-every", "20", "--out", str(out), "--quiet"]
    first, err = _invoke(capsys, argv)
    # the switched run, its two pure runs and the first phase at the switch point
    assert "4 runs in" in err and "(4 new" in err
    again, err = _invoke(capsys, argv)
    assert again == first and "(0 new, 4 finished earlier)" in err
    with open_store(out, create=False) as store:
        (switched,) = [r for r in store.runs() if r.config.get("then") == "1sam"]
    # --record-every 20 and the 10 log-spaced points are what the run logged
    assert {0, 20, 40, 60, 80, 100} <= set(switched.history) and len(switched.history) > 6
    for name in ("switching_test_error.png", "interpolation.png", "curves_test.png", "interpolation.json"):
        assert (out / name).is_file()


def test_relu_then_gd_is_a_second_study_of_continuations(tmp_path, capsys) -> None:
    out = tmp_path / "relu"
    argv = ["relu-1d", "--method", "gd,sam", "--steps", "200", "--width", "8", "--seed", "0", "--then-gd",
            "--out", str(out), "--quiet"]
    first, _ = _invoke(capsys, argv)
    assert [line.split()[0] for line in first.splitlines()[1:]] == ["GD", "SAM", "SAM"]
    assert "-> GD" in first.splitlines()[-1]
    with open_store(out, create=False) as store:
        runs = store.runs()
    assert sorted(r.study for r in runs) == ["relu-1d", "relu-1d", "relu-1d-then-gd"]
    again, err = _invoke(capsys, argv)
    assert again == first and err.count("0 new") == 2


OLD_FLAGS = {
    "diag-net": ["--method", "gd,sgd,nsam,1sam,m-sam", "--rho", "0,0.1", "--lr", "5/30", "--alpha", "0.01,0.1",
                 "--m", "2", "--iters", "10", "--switch-at", "5", "--then", "gd", "--n", "20", "--d", "30", "--r", "3",
                 "--n-test", "100", "--record-every", "2", "--log-curves", "5", "--interpolate", "--seeds", "2",
                 "--json", "--out", "x", "--quiet"],
    "relu-1d": ["--protocol", "legacy", "--method", "gd,sam,usam", "--rho", "0.1", "--lr", "1e-3", "--steps", "10",
                "--width", "8", "--tol", "1e-6", "--slope-tol", "0.2", "--init", "normal", "--loss", "mean",
                "--lr-decay", "linear", "--output-bias", "--then-gd", "--seed", "0,3", "--json", "--out", "x",
                "--quiet"],
    "convergence": ["--method", "sgd,sam,usam", "--rho", "0.5", "--lr", "0.2", "--lr-schedule", "constant,inv",
                    "--rho-schedule", "inv-sqrt", "--decay-steps", "10", "--steps", "10", "--batch-size", "2",
                    "--seed", "1", "--json", "--out", "x", "--quiet"],
}


@pytest.mark.parametrize("command", list(OLD_FLAGS))
def test_old_flags_still_parse(command) -> None:
    args = build_parser().parse_args([command, *OLD_FLAGS[command], "--threads", "1"])
    assert args.out == "x" and args.json and args.quiet and args.threads == 1
    assert callable(args.func) and args.needs_labs
