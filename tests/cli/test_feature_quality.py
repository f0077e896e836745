"""``sharplab feature-probe`` through the runner: runs in the store, resume, report, old flags, selection."""

from __future__ import annotations

import json
import math

import torch

from sharplab.cli import build_parser, main
from sharplab.runner.store import open_store

TINY = {"n_train": 512, "n_val": 100, "n_test": 100, "n_probe_train": 200, "n_probe_test": 200}
#: SGD at two lrs, SAM at two lrs x two rhos, the untrained floor: 7 configurations x 2 seeds; after 3 epochs
#: some configurations have a seed still at chance, so the selection has something to exclude
ARGS = ["feature-probe", "--dataset", "toy", "--optimizer", "sgd,sam", "--lr", "0.05,0.2", "--rho", "0.1,0.4",
        "--seeds", "2", "--epochs", "3", "--threads", "1", "--quiet",
        *[a for k, v in TINY.items() for a in ("--data-option", f"{k}={v}")]]


def _by_hand(records: list, lrs: list[float], rhos: list[float]) -> tuple[float, float]:
    """The one-standard-error rule written out: per (lr, rho) the mean validation error over seeds; no
    configuration with a run at chance; the largest rho within one binomial s.e. of the best, then the
    lower mean validation loss, then the smaller lr."""
    mean = {}
    for lr in lrs:
        for rho in rhos:
            rs = [r for r in records if r.config["lr"] == lr and r.config["rho"] == rho]
            assert len(rs) == 2
            if all(r.status == "done" and r.metrics["val_error"] <= 0.25 for r in rs):  # 2 classes: chance/2
                mean[(lr, rho)] = (sum(r.metrics["val_error"] for r in rs) / 2,
                                   sum(r.metrics["val_loss"] for r in rs) / 2)
    assert 0 < len(mean) < len(lrs) * len(rhos)  # the rule has a configuration to exclude
    best = min(e for e, _ in mean.values())
    se = math.sqrt(best * (1 - best) / TINY["n_val"])
    tied = [k for k, (e, _) in mean.items() if e <= best + se + 1e-12]
    return min(tied, key=lambda k: (-k[1], mean[k][1], k[0]))


def test_runs_land_in_the_store_a_rerun_resumes_and_the_report_has_the_section(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "fp"
    try:
        assert main([*ARGS, "--out", str(out)]) == 0
        first = capsys.readouterr()
        assert main([*ARGS, "--out", str(out), "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert main([*ARGS, "--out", str(out)]) == 0
        second = capsys.readouterr()
    finally:
        torch.set_num_threads(threads)
    with open_store(out, create=False) as store:
        runs = store.runs()
    assert len(runs) == 2 * 7 and {r.lab for r in runs} == {"feature-quality"}
    assert all(r.status == "done" and r.attempts == 1 for r in runs)  # trained once, read back twice
    assert "(14 new;" in first.err and "(0 new;" in second.err
    assert second.out == first.out and "hard-feature probe error" in first.out  # the same table, seconds too

    sam = [r for r in runs if r.config["optimizer"] == "sam"]
    lr, rho = _by_hand(sam, [0.05, 0.2], [0.1, 0.4])
    shown = [r for r in rows if r["optimizer"] == "sam"]
    assert {(r["lr"], r["rho"]) for r in shown} == {(lr, rho)} and all(r["selected"] for r in shown)
    saved = json.loads((out / "results.json").read_text())["rows"]
    assert len(saved) == 14 and [(r["lr"], r["rho"]) for r in saved if r["optimizer"] == "sam" and r["selected"]] \
        == [(lr, rho)] * 2
    assert (out / "table.txt").read_text() == first.out

    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    assert "## Lab: feature-quality" in md and "## feature-quality: study feature-probe, dataset toy" in md
    assert f"| feature-probe | toy | sam | 4 | {lr:g} | {rho:g} |" in md  # the command's selection, in the report


def test_every_flag_of_the_command_still_parses(tmp_path):
    args = build_parser().parse_args([
        "feature-probe", "--dataset", "toy-hetero", "--optimizer", "sgd,sam,lsam,iw-only,lr-only",
        "--rho", "0.05,0.1", "--m", "0,16", "--sam-start-epoch", "1", "--lr", "0.05,5/30", "--epochs", "3",
        "--batch-size", "64", "--momentum", "0.5", "--weight-decay", "0", "--model", "pathway", "--seeds", "2",
        "--data-seed", "1", "--root", str(tmp_path), "--data-option", "hard_dims=8", "--data-option",
        "margin_hard=0.1", "--threads", "1", "--json", "--out", str(tmp_path / "o"), "--quiet",
    ])  # fmt: skip
    assert (args.dataset, args.optimizer, args.rho, args.m, args.sam_start_epoch) == (
        "toy-hetero", ["sgd", "sam", "lsam", "iw-only", "lr-only"], [0.05, 0.1], [0, 16], 1)
    assert (args.lr, args.epochs, args.batch_size, args.momentum, args.weight_decay, args.model) == (
        [0.05, 5 / 30], 3, 64, 0.5, 0.0, "pathway")
    assert (args.seed, args.data_seed, args.root, args.data_option) == (
        [0, 1], 1, str(tmp_path), [("hard_dims", 8), ("margin_hard", 0.1)])
    assert (args.threads, args.json, args.out, args.quiet) == (1, True, str(tmp_path / "o"), True)
    assert build_parser().parse_args(["feature-probe", "--seed", "0,4"]).seed == [0, 4]
    assert build_parser().parse_args(["feature-probe"]).out is None  # runs/feature-probe, said in --help
