"""`sharplab run/status/report/export/labs` end to end on the in-process toy lab."""

from __future__ import annotations

import csv
import io
import json

import pytest

from sharplab.cli import main
from sharplab.runner.store import ResultsStore


def test_run_records_every_run_and_continues_past_failures(toy_study, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(toy_study), "--out", str(out), "--quiet"]) == 0
    with ResultsStore(out) as store:
        runs = store.runs()
    assert len(runs) == 6
    by = {(r.config["x"], r.seed): r for r in runs}
    for (x, seed), r in by.items():
        expected = (x - 0.3) ** 2 + 0.01 * seed + 1 / 4
        if x == 1.0:
            assert (r.status, r.diverged_step) == ("diverged", 4) and "non-finite" in r.error
        else:
            assert r.status == "done" and r.metrics["loss"] == pytest.approx(expected)
            assert sorted(r.history) == [1, 2, 3, 4]
            assert r.history[1]["loss"] == pytest.approx((x - 0.3) ** 2 + 0.01 * seed + 1.0)
        record = json.loads((out / "runs" / r.run_id / "run.json").read_text())
        assert record["config"] == r.config and record["seed"] == seed
        assert {"sharplab", "torch", "machine", "git", "python"} <= set(record["environment"])
        assert "step 1: loss=" in (out / "runs" / r.run_id / "run.log").read_text()
    assert "4 done" in capsys.readouterr().out

    # a second run has nothing left to do: no attempt is repeated
    assert main(["run", str(toy_study), "--out", str(out), "--quiet"]) == 0
    with ResultsStore(out) as store:
        assert all(r.attempts == 1 for r in store.runs())


def test_failed_runs_are_recorded_and_retried(tmp_path, capsys):
    study = tmp_path / "boom.toml"
    study.write_text('lab = "runner-toy"\n[grid]\nmode = ["ok", "boom"]\n')
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 1  # some run failed
    with ResultsStore(out) as store:
        failed = store.runs(status="failed")
    assert len(failed) == 1 and failed[0].error == "RuntimeError: toy lab exploded"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 1
    with ResultsStore(out) as store:
        assert {r.config["mode"]: r.attempts for r in store.runs()} == {"ok": 1, "boom": 2}
    main(["status", str(out)])
    text = capsys.readouterr().out
    assert "RuntimeError: toy lab exploded" in text and "1 done, 1 failed" in text


def test_status_export_and_report(toy_study, tmp_path, capsys):
    out = tmp_path / "out"
    main(["run", str(toy_study), "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "4 done, 2 diverged" in status and "step 4" in status

    assert main(["export", str(out), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    with ResultsStore(out) as store:
        runs = {r.run_id: r for r in store.runs()}
    assert len(rows) == 6
    for row in rows:
        r = runs[row["run_id"]]
        assert row["status"] == r.status and float(row["x"]) == r.config["x"] and int(row["seed"]) == r.seed
        assert row["widths"] == "[4, 4]"
        if r.status == "done":
            assert float(row["loss"]) == pytest.approx(r.metrics["loss"])  # "loss" is a metric column
        else:
            assert row["loss"] == "" and row["diverged_step"] == "4"

    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "toy section: 6 runs" in md and "Runs that did not finish" in md
    assert "| x | loss | loss 95% CI |" in md  # generic table groups by the varying key x


def test_labs_and_user_errors(tmp_path, capsys):
    assert main(["labs"]) == 0
    listing = capsys.readouterr().out
    assert "digits" in listing and "runner-toy" in listing
    assert main(["labs", "digits"]) == 0
    assert 'rho = 0.05  (float >= 0.0)' in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: no results in")


def test_tensorboard_flag_without_the_package(toy_study, tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    assert main(["run", str(toy_study), "--out", str(tmp_path / "o"), "--tensorboard", "--quiet"]) == 2
    assert "pip install 'sharplab[tensorboard]'" in capsys.readouterr().err


def test_tensorboard_scalars_are_written_per_step(toy_study, tmp_path, monkeypatch):
    """With a stand-in for torch.utils.tensorboard: every logged metric becomes a scalar at its step."""
    import sys
    import types

    calls: list[tuple] = []

    class Writer:
        def __init__(self, logdir):
            calls.append(("open", logdir))

        def add_scalar(self, name, value, step):
            calls.append((name, value, step))

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    toy_study.write_text('lab = "runner-toy"\n[config]\nsteps = 2\nx = 0.5\n')
    assert main(["run", str(toy_study), "--out", str(tmp_path / "o"), "--tensorboard", "--quiet"]) == 0
    assert calls[0][0] == "open" and calls[0][1].endswith("tensorboard") and calls[-1] == ("close",)
    expected = [("loss", (0.5 - 0.3) ** 2 + 1.0 / (t + 1), t + 1) for t in range(2)]
    assert [c for c in calls if c[0] == "loss"] == [pytest.approx(e) for e in expected]
    assert [c[2] for c in calls if c[0] == "x_seen"] == [1, 2]
