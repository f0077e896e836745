"""Commands whose runs or trials failed exit non-zero and say how many (issue 23, item 3)."""

from __future__ import annotations

import re

import pytest
from runner_testlib import write_study

from sharplab.cli import main


def _sweep(tmp_path, mode: str):
    return write_study(tmp_path / "sw.toml", f"""
        lab = "runner-toy"
        name = "sw"
        [config]
        steps = 2
        mode = "{mode}"
        [sweep]
        metric = "loss"
        [sweep.space]
        x = {{ low = 0.0, high = 0.9 }}
    """)


def test_sweep_whose_every_trial_fails_exits_1_with_the_count(tmp_path, capsys):
    code = main(["sweep", str(_sweep(tmp_path, "boom")), "--trials", "2", "--out", str(tmp_path / "o"),
                 "--sampler-seed", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: all 2 trials of this sweep failed" in err


def test_sweep_whose_trials_complete_exits_0(tmp_path, capsys):
    code = main(["sweep", str(_sweep(tmp_path, "ok")), "--trials", "2", "--out", str(tmp_path / "o"),
                 "--sampler-seed", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_run_with_some_failed_runs_exits_1_with_the_count(tmp_path, capsys):
    study = write_study(tmp_path / "s.toml", """
        lab = "runner-toy"
        name = "s"
        [grid]
        mode = ["ok", "boom"]
    """)
    assert main(["run", str(study), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "1 runs failed" in capsys.readouterr().err


def test_deep_net_whose_runs_all_fail_exits_1_with_the_count(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SHARPLAB_DATA", raising=False)
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main(["deep-net", "m-sharpness", "--dataset", "cifar10", "--root", str(empty), "--seed", "0",
                 "--m", "4", "--epochs", "1", "--out", str(tmp_path / "dn"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(r"error: all \d+ runs failed", err), err
    assert (tmp_path / "dn" / "report.md").exists()  # the report is still written


@pytest.mark.parametrize("device", ["cuda"])
def test_deep_net_on_a_missing_device_writes_nothing(tmp_path, capsys, device):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    assert main(["deep-net", "m-sharpness", "--device", device, "--out", str(tmp_path / "dn")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "dn").exists()
