"""Optuna sweeps: [sweep] validation, and two worker processes sharing one SQLite study."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from runner_testlib import write_study

from sharplab.cli import main
from sharplab.errors import ConfigError
from sharplab.runner.config import parse_study
from sharplab.runner.store import ResultsStore
from sharplab.runner.sweep import parse_sweep, run_sweep


def _toy(sweep):
    return parse_study({"lab": "runner-toy", "name": "sw", "config": {"steps": 2}, "sweep": sweep})


def test_sweep_space_follows_the_config_types():
    spec = parse_sweep(_toy({"metric": "loss", "space": {
        "x": {"low": 0.0, "high": 1.0}, "steps": {"low": 1, "high": 4}, "mode": ["ok"]}}))
    assert [(p.name, p.kind) for p in spec.space] == [("x", "float"), ("steps", "int"), ("mode", "categorical")]
    assert spec.direction == "minimize" and spec.seeds == (0,)


@pytest.mark.parametrize("sweep, words", [
    ({}, "no [sweep] table"),
    ({"metric": "loss"}, "[sweep.space] is missing"),
    ({"metric": "loss", "space": {"y": [1]}}, "[sweep.space] y: unknown config key"),
    ({"metric": "loss", "space": {"x": {"low": 0.0, "high": 2.0}}}, "[sweep.space] x.high = 2.0 is out of range"),
    ({"metric": "loss", "space": {"x": {"low": 0.5, "high": 0.1}}}, "need low < high"),
    ({"metric": "loss", "space": {"mode": {"low": 0, "high": 1}}}, "give a list of choices"),
    ({"metric": "loss", "space": {"mode": ["ok", "slow"]}}, "mode = 'slow' is not allowed"),
    ({"metric": "loss", "direction": "down", "space": {"x": [0.1]}}, "direction = 'down'"),
    ({"metric": "loss", "trials": 3, "space": {"x": [0.1]}}, "[sweep] unknown key 'trials'"),
])
def test_bad_sweep_tables(sweep, words):
    with pytest.raises(ConfigError) as err:
        parse_sweep(_toy(sweep))
    assert words in str(err.value)


def test_in_process_sweep_finds_the_minimum_and_reuses_runs(tmp_path):
    study = _toy({"metric": "loss", "space": {"x": [0.1, 0.3, 0.9]}})
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    ostudy = run_sweep(study, tmp_path / "out", 6, storage, sampler_seed=0)
    assert ostudy.best_params == {"x": 0.3} and ostudy.best_value == pytest.approx(0.5)  # (x-.3)^2 + 1/2
    with ResultsStore(tmp_path / "out") as store:
        runs = store.runs()
    assert len(runs) <= 3 and all(r.attempts == 1 for r in runs)  # repeated configs reuse the stored run


def test_sweep_summary_and_report_section(tmp_path):
    """The sweep writes sweeps/<study>.json; the report shows the best configuration, every trial and the
    history, with the values Optuna holds."""
    import json

    from sharplab.runner.report import build_report

    study = _toy({"metric": "loss", "space": {"x": [0.1, 0.3, 0.9]}})
    ostudy = run_sweep(study, tmp_path / "out", 4, f"sqlite:///{tmp_path / 'o.db'}", sampler_seed=0)
    summary = json.loads((tmp_path / "out" / "sweeps" / "sw.json").read_text())
    assert summary["best"] == {"number": ostudy.best_trial.number, "value": ostudy.best_value,
                               "params": ostudy.best_params}
    assert [t["value"] for t in summary["trials"]] == [t.value for t in ostudy.trials]
    md = build_report(tmp_path / "out").to_markdown()
    assert "## Sweep: sw" in md and "Sweep sw: trials" in md and "Sweep sw: optimisation history" in md
    assert f"loss = {ostudy.best_value:.4g}, x = 0.3" in md


SWEEP = """
    lab = "digits"
    name = "shared"
    [config]
    optimizer = "sam"
    epochs = 1
    width = 8
    depth = 1
    train_size = 256
    [sweep]
    metric = "test_error"
    seeds = [0]
    [sweep.space]
    lr = { low = 0.01, high = 0.5, log = true }
    rho = { low = 0.0, high = 0.2 }
"""


def test_two_workers_share_one_study(tmp_path, capsys):
    import optuna

    path = write_study(tmp_path / "sweep.toml", SWEEP)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [sys.executable, "-m", "sharplab", "sweep", str(path), "--trials", "6", "--storage", storage,
           "--out", str(tmp_path / "out")]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 6 <= len(complete) <= 7  # each worker may finish the trial it was in
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert {t.user_attrs["worker"].split(":")[1] for t in complete} == {str(w.pid) for w in workers}
    with ResultsStore(tmp_path / "out") as store:
        for t in complete:
            (run_id,) = t.user_attrs["run_ids"]
            rec = store.get(run_id)
            assert rec.status == "done" and rec.metrics["test_error"] == t.value
            assert (rec.config["lr"], rec.config["rho"]) == (t.params["lr"], t.params["rho"])

    # the same command again: the study already holds 6 completed trials, nothing new runs
    assert main(cmd[3:]) == 0
    assert f"{len(complete)} completed trials" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == len(study.trials)


def test_sweep_section_shows_an_error_objective_in_percent(tmp_path):
    import json

    from sharplab.runner.report import ReportBuilder, add_sweep_sections

    (tmp_path / "sweeps").mkdir()
    trials = [{"number": 0, "state": "COMPLETE", "value": 0.25, "params": {"lr": 0.1}},
              {"number": 1, "state": "COMPLETE", "value": 0.1111, "params": {"lr": 0.2}}]
    (tmp_path / "sweeps" / "s.json").write_text(json.dumps({
        "study": "s", "metric": "val_error", "direction": "minimize", "seeds": [0], "trials": trials,
        "best": {"number": 1, "value": 0.1111, "params": {"lr": 0.2}}}))
    builder = ReportBuilder("t")
    add_sweep_sections(builder, tmp_path)
    md = builder.to_markdown()
    assert "val_error (%) = 11.11, lr = 0.2" in md
    assert "| val_error (%) |" in md and "| 25 |" in md
