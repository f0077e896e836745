"""``sharplab mechanisms`` through the runner: one run per seed in the store, resume, report, old flags."""

from __future__ import annotations

import json

import torch

from sharplab.cli import build_parser, main
from sharplab.runner.store import open_store

TINY = {"n_train": 256, "n_val": 100, "n_test": 100, "n_probe_train": 200, "n_probe_test": 200}
ARGS = ["mechanisms", "--dataset", "toy", "--epochs", "1", "--seeds", "2", "--ablation", "iw-only",
        "--record-every", "32", "--weight-batch", "32", "--threads", "1", "--quiet",
        *[a for k, v in TINY.items() for a in ("--data-option", f"{k}={v}")]]


def test_runs_land_in_the_store_a_rerun_resumes_and_the_report_has_the_section(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "mech"
    try:
        assert main([*ARGS, "--out", str(out)]) == 0
        first = capsys.readouterr()
        assert main([*ARGS, "--out", str(out)]) == 0
        second = capsys.readouterr()
        assert main([*ARGS, "--out", str(out), "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        torch.set_num_threads(threads)
    with open_store(out, create=False) as store:
        runs = store.runs()
    assert sorted(r.seed for r in runs) == [0, 1] and {r.lab for r in runs} == {"mechanisms"}
    assert all(r.status == "done" and r.attempts == 1 for r in runs)
    assert "(2 new;" in first.err and "(0 new;" in second.err
    assert second.out == first.out and first.out.startswith("mechanisms on toy: sam, rho=0.3, batch phantom, 2 seed(s)")
    assert [line.split()[0] for line in first.out.splitlines()[3:6]] == ["sgd", "sam", "iw-only"]
    # the JSON lines are the runs' own numbers, per (seed, optimizer)
    by_seed = {r.seed: r.metrics for r in runs}
    assert [(r["seed"], r["optimizer"]) for r in lines] == [(s, o) for s in (0, 1) for o in ("sgd", "sam", "iw-only")]
    for r in lines:
        assert r["probe_error_hard"] == by_seed[r["seed"]][f"probe_error_hard_{r['optimizer'].replace('-', '_')}"]
    assert json.loads((out / "mechanisms_toy.json").read_text())["runs"][1]["seed"] == 1
    assert (out / "mechanisms_toy.txt").read_text().splitlines() == first.out.splitlines()[1:6]
    assert (out / "mechanisms_toy_lorenz.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    assert "## Lab: mechanisms" in md and "mechanisms: toy, sam, rho=0.3 (2 seeds)" in md


def test_every_flag_of_the_command_still_parses(tmp_path):
    args = build_parser().parse_args([
        "mechanisms", "--study", "mechanisms", "--dataset", "toy-hetero", "--variant", "lsam", "--phantom",
        "per-example", "--ablation", "iw-only,lr-only", "--rho", "0.2", "--lr", "0.1", "--momentum", "0.5",
        "--weight-decay", "0", "--epochs", "2", "--batch-size", "32", "--m", "16", "--record-every", "5",
        "--weight-batch", "64", "--root", str(tmp_path), "--data-seed", "3", "--data-option", "hard_dims=8",
        "--seeds", "2", "--out", str(tmp_path / "o"), "--json", "--threads", "1", "--quiet",
    ])  # fmt: skip
    assert (args.study, args.dataset, args.variant, args.phantom, args.ablation) == (
        "mechanisms", "toy-hetero", "lsam", "per-example", "iw-only,lr-only")
    assert (args.rho, args.lr, args.momentum, args.weight_decay, args.epochs, args.batch_size, args.m) == (
        0.2, 0.1, 0.5, 0.0, 2, 32, 16)
    assert (args.record_every, args.weight_batch, args.root, args.data_seed, args.data_option, args.seed) == (
        5, 64, str(tmp_path), 3, ["hard_dims=8"], [0, 1])
    assert (args.out, args.json, args.threads, args.quiet) == (tmp_path / "o", True, 1, True)
    assert build_parser().parse_args(["mechanisms", "--study", "three-feature", "--seed", "0,4"]).seed == [0, 4]


def test_three_feature_study_runs_in_the_store_resumes_and_reports(tmp_path, capsys):
    """``--study three-feature``: SGD and SAM per seed as runs of lab ``three-feature``; the JSON lines are
    the stored runs' numbers; a re-run trains nothing and prints the same table; the report has the section."""
    from sharplab.labs.feature_quality.three_feature import ThreeFeatureConfig, run_one

    out = tmp_path / "tf"
    args = ["mechanisms", "--study", "three-feature", "--seed", "0,1", "--epochs", "1", "--threads", "1",
            "--quiet", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
        first = capsys.readouterr()
        assert main([*args, "--json"]) == 0
        second = capsys.readouterr()
        direct = run_one(ThreeFeatureConfig(optimizer="sam", epochs=1), seed=1)  # no runner, no checkpoints
    finally:
        torch.set_num_threads(threads)
    assert "(4 new;" in first.err and "(0 new;" in second.err
    assert second.err.splitlines()[1:4] == first.out.splitlines()[1:4]  # the table, on stderr with --json
    lines = [json.loads(line) for line in second.out.splitlines()]
    assert [(r["seed"], r["optimizer"]) for r in lines] == [(0, "sgd"), (0, "sam"), (1, "sgd"), (1, "sam")]
    assert lines[3]["probe_error_hard"] == direct["probe_error_hard"] and lines[3]["v_ratio"] == direct["v_ratio"]
    with open_store(out, create=False) as store:
        runs = store.runs()
    assert {r.lab for r in runs} == {"three-feature"} and all(r.status == "done" for r in runs)
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    assert "## Lab: three-feature" in (out / "report.md").read_text()
