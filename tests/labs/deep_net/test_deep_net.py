"""The deep-net lab end to end on scikit-learn's digits through the runner, and the CLI."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from sharplab.cli import main
from sharplab.labs import load_all
from sharplab.labs.deep_net.config import DeepNetConfig
from sharplab.labs.deep_net.train import Phases, load_data
from sharplab.labs.training import take_step

TINY = {"dataset": "digits", "width": 4, "n_train": 128, "n_test": 64, "batch_size": 32, "epochs": 2,
        "lr": 0.05}


def test_runner_study_with_label_noise_and_resume(tmp_path):
    from sharplab.runner.config import parse_study
    from sharplab.runner.execute import run_study
    from sharplab.runner.store import ResultsStore

    load_all()
    from sharplab.labs.deep_net.studies import analyse

    study = parse_study({"lab": "deep-net", "name": "t", "config": {**TINY, "label_noise": 0.5,
                                                                    "sharpness_n": 64, "sharpness_m": 32},
                         "grid": {"method": ["erm", "nsam", "m-sam"], "m": [0], "rho": [0.05]}})
    assert sum(run_study(study, tmp_path).values()) == 3
    with ResultsStore(tmp_path, create=False) as store:
        runs = store.runs()
    assert {r.status for r in runs} == {"done"}
    for r in runs:
        assert len(r.history) == 2
        m = r.metrics
        for key in ("test_error", "train_error_noisy", "train_error_clean", "early_stopped_test_error"):
            assert key in m and m[key] == m[key], key
        assert (tmp_path / "runs" / r.run_id / "final.pt").exists()
    counts = run_study(study, tmp_path)  # all finished: nothing re-runs
    assert counts == {"done": 3}
    # study 2: sharpness of a finished run's saved weights, cached in sharpness.json
    sharp = analyse("sharpness", tmp_path, runs[:1])
    (row,) = sharp.values()
    assert row["m_sharpness"] > 0 and row["hessian_top"] > 0 and row["hessian_trace"] == row["hessian_trace"]
    assert json.loads((tmp_path / "sharpness.json").read_text()) == sharp


def test_label_noise_in_the_data_matches_the_mask():
    cfg = DeepNetConfig(**{**TINY, "label_noise": 0.6})
    data, noisy, mask = load_data(cfg, seed=0)
    assert int(mask.sum()) == int(0.6 * 128)
    assert bool((noisy[mask] != data.y_train[mask]).all()) and bool((noisy[~mask] == data.y_train[~mask]).all())


def _applied_gradient(model, method, batches, m=0):
    """The gradient the lab's step for ``method`` applied on the last of ``batches`` (lr 1, no momentum or
    weight decay: g = w_before - w_after); the earlier batches are stepped on first with the same optimizer."""
    cfg = DeepNetConfig(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=8, m=m, method=method, rho=0.1)
    opt = Phases(cfg, model, seed=0).get(method, 0.1)
    for i, (x, y) in enumerate(batches[:-1]):
        take_step(model, opt, x, y, step=i)
    before = [p.detach().clone() for p in model.parameters()]
    take_step(model, opt, *batches[-1], step=len(batches) - 1)
    return [b - p.detach() for b, p in zip(before, model.parameters())]


def test_nsam_uses_the_previous_batch_for_the_ascent():
    """n-SAM's gradient = grad L_B(w + rho g'/||g'||) with g' from the previous batch (hand-computed)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x1, y1 = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    x2, y2 = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    opt = Phases(DeepNetConfig(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=8, method="nsam"), model,
                 seed=0).get("nsam", 0.1)
    opt.previous_batch = (x1, y1)  # as after a step on (x1, y1)
    before = [p.detach().clone() for p in model.parameters()]
    g_prev = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x1), y1), list(model.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_prev))
    w_eps = {n: (p.detach() + 0.1 * g / norm).requires_grad_() for (n, p), g in zip(model.named_parameters(), g_prev)}
    loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, w_eps, (x2,)), y2)
    want = torch.autograd.grad(loss, list(w_eps.values()))
    take_step(model, opt, x2, y2, step=1)
    got = [b - p.detach() for b, p in zip(before, model.parameters())]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_config_checks():
    with pytest.raises(ValueError, match="divide"):
        DeepNetConfig(batch_size=64, m=5)
    with pytest.raises(ValueError, match="switch_epoch"):
        DeepNetConfig(epochs=5, then_method="m-sam", switch_epoch=5)
    cfg = DeepNetConfig(epochs=10, method="erm", then_method="m-sam", switch_epoch=6, rho=0.2)
    assert cfg.method_at(5) == ("erm", 0.2) and cfg.method_at(6) == ("m-sam", 0.2)
    assert [cfg.lr_at(t) for t in (0, 5, 7.5)] == [0.1, pytest.approx(0.01), pytest.approx(0.001)]


def test_cli_finetune_with_interpolation(tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["deep-net", "finetune", "--out", str(out), "--epochs", "1", "--epochs-after", "1", "--json",
            "--quiet", "--seed", "0"] + [f"--set={k}={json.dumps(v)}" for k, v in TINY.items() if k != "epochs"]
    assert main(args) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    runs, analysis, summary = lines[:-1], lines[-1]["analysis"], lines[-1]["summary"]
    assert len(runs) == 3 and all(r["status"] == "done" for r in runs)
    assert sorted(r["setting"] for r in summary) == ["32-SAM -> ERM", "ERM", "ERM -> 32-SAM"]
    assert all(r["seeds"] == 1 for r in summary)
    (curve,) = analysis.values()
    assert curve[0]["alpha"] == -1.0 and curve[-1]["alpha"] == 2.0 and len(curve) == 61  # the official grid
    assert (out / "report.md").exists() and any((out / "figures").iterdir())
    assert main(["deep-net", "finetune", "--out", str(out), "--set", "nonsense=1"]) == 2
    assert "use KEY=VALUE" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_check_without_cuda_says_so():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 3
    assert res.stderr.startswith("error: no CUDA device") and "--device cpu --smoke" in res.stderr
    bad = subprocess.run(["bash", str(script), "--device", "tpu"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert bad.returncode == 2 and "use cuda or cpu" in bad.stderr
    bad = subprocess.run(["bash", str(script), "--steps", "3,5"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert bad.returncode == 2 and "steps are 1-4" in bad.stderr


def test_gpu_check_cpu_mode_reaches_the_throughput_step_when_a_data_set_is_missing(tmp_path):
    """No set -e abort: step 3 fails on a data set that is not there, step 4 (throughput) still runs, and the
    exit status (20 + 4) names step 3 alone."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_check.sh"
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "SHARPLAB_DATA": str(tmp_path / "empty"),
           "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(script), "--device", "cpu", "--smoke", "--dataset", "cifar10", "--steps",
                          "3,4"], capture_output=True, text=True, timeout=600, env=env)
    assert "error: step 3/4" in res.stderr and "going on with the next step" in res.stderr
    assert "4/4 throughput" in res.stdout and "4/4 passed" in res.stdout
    assert res.returncode == 24 and "failed steps: 3 (exit 24)" in res.stdout
    figures = json.loads((tmp_path / "out" / "gpu-check" / "throughput.json").read_text())
    assert figures["device"] == "cpu" and figures["sgd"] > 0 and figures["sam"] > 0


@pytest.mark.parametrize("m", [8, 4, 2, 1])  # micro-batches of the batch of 8: <= 2 loop, else auto (vmap)
def test_msam_step_is_the_mean_of_per_micro_batch_sam_gradients(m):
    """m-SAM gradient = (1/k) sum_j grad L_j(w + rho g_j/||g_j||), g_j = grad L_j(w), against a hand loop."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    got = _applied_gradient(model, "m-sam", [(x, y)], m=8 // m)
    with torch.no_grad():
        for p, w in zip(params, start):
            p.copy_(w)
    want = [torch.zeros_like(p) for p in params]
    ce = torch.nn.functional.cross_entropy
    for j in range(m):
        xj, yj = x[j * 8 // m:(j + 1) * 8 // m], y[j * 8 // m:(j + 1) * 8 // m]
        g = torch.autograd.grad(ce(model(xj), yj), params)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        w_eps = {n: p.detach() + 0.1 * t / norm for (n, p), t in zip(model.named_parameters(), g)}
        w_eps = {n: v.requires_grad_() for n, v in w_eps.items()}
        gj = torch.autograd.grad(ce(torch.func.functional_call(model, w_eps, (xj,)), yj), list(w_eps.values()))
        for acc, t in zip(want, gj):
            acc += t / m
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_summary_means_sds_and_paired_differences_to_erm():
    from types import SimpleNamespace

    from sharplab.labs.deep_net.studies import summarise

    def rec(seed, method, err, m=0):
        cfg = {"method": method, "then_method": "", "rho": 0.0 if method == "erm" else 0.01, "m": m,
               "label_noise": 0.0, "batch_size": 64}
        return SimpleNamespace(run_id=f"{method}{seed}", status="done", seed=seed, config=cfg,
                               metrics={"test_error": err})

    rows = summarise([rec(0, "erm", 0.10), rec(1, "erm", 0.14), rec(2, "erm", 0.12),
                      rec(0, "m-sam", 0.08, 8), rec(1, "m-sam", 0.13, 8), rec(2, "m-sam", 0.09, 8)])
    assert [r["setting"] for r in rows] == ["ERM", "8-SAM"]
    erm, sam = rows
    assert erm["test_error"] == pytest.approx(0.12) and erm["test_error_sd"] == pytest.approx(0.02)
    assert "d_test_error" not in erm
    # paired differences -0.02, -0.01, -0.03: mean -0.02, sd 0.01, t_{0.975, 2} = 4.302653
    assert sam["d_test_error"] == pytest.approx(-0.02)
    half = 4.302652729911275 * 0.01 / 3 ** 0.5
    assert sam["d_test_error_ci95"] == pytest.approx([-0.02 - half, -0.02 + half])


def test_training_set_evaluated_every_k_epochs_and_at_the_last(tmp_path):
    from sharplab.labs.deep_net.train import run
    from sharplab.runner.context import RunContext

    cfg = DeepNetConfig(**{**TINY, "epochs": 3, "train_eval_every": 2})
    ctx = RunContext(tmp_path, seed=0, quiet=True)
    final = run(cfg, ctx)
    assert [("train_error" in m) for _, m in ctx.history] == [False, True, True]
    assert all("test_error" in m and "val_error" in m for _, m in ctx.history)
    assert final["train_error"] == ctx.history[-1][1]["train_error"]


def test_sharpness_study_reuses_measures_taken_at_the_end_of_a_run(tmp_path):
    """A run trained with sharpness = true is not measured again (it has no final.pt here: a re-measurement
    would fail), and the summary carries its measures."""
    from types import SimpleNamespace

    from sharplab.labs.deep_net.studies import analyse, summarise

    metrics = {"test_error": 0.1, "m_sharpness": 0.3, "hessian_top": 5.0, "hessian_trace": 40.0}
    r = SimpleNamespace(run_id="abc", status="done", seed=0, metrics=metrics,
                        config={**TINY, "method": "m-sam", "rho": 0.05, "m": 0, "then_method": "",
                                "label_noise": 0.0})
    sharp = analyse("sharpness", tmp_path, [r])
    assert sharp["abc"]["m_sharpness"] == 0.3 and sharp["abc"]["hessian_top"] == 5.0
    (row,) = summarise([r], sharp)
    assert row["setting"] == "32-SAM" and row["hessian_trace"] == 40.0 and row["seeds"] == 1


def test_paired_table_differences_and_t_intervals_by_hand():
    from types import SimpleNamespace

    from sharplab.labs.deep_net.report import paired_differences

    def rec(seed, method, m, err, sharp):
        cfg = {"method": method, "then_method": "", "rho": 0.0 if method == "erm" else 0.1, "m": m,
               "label_noise": 0.0, "batch_size": 128}
        return SimpleNamespace(seed=seed, config=cfg, metrics={"test_error": err, "m_sharpness": sharp})

    erm, sam, small = [0.10, 0.14, 0.12], [0.09, 0.12, 0.12], [0.08, 0.13, 0.10]
    runs = [rec(s, "erm", 0, erm[s], 1.0) for s in range(3)] + [rec(s, "m-sam", 0, sam[s], 0.5) for s in range(3)]
    runs += [rec(s, "m-sam", 16, small[s], 0.25) for s in range(3)]
    rows = {r["A - B"]: r for r in paired_differences(runs)}
    assert set(rows) == {"ERM - 128-SAM (rho 0.1)", "ERM - 16-SAM (rho 0.1)", "128-SAM - 16-SAM (rho 0.1)"}
    d = [100 * (a - b) for a, b in zip(erm, sam)]  # 1, 2, 0 points
    mean, sd = sum(d) / 3, (sum((x - sum(d) / 3) ** 2 for x in d) / 2) ** 0.5
    half = 4.302653 * sd / 3 ** 0.5  # t_{0.975, 2}
    row = rows["ERM - 128-SAM (rho 0.1)"]
    assert row["test error A - B (pts)"] == f"{mean:+.2f}" and row["seeds"] == 3
    assert row["test error 95% CI"] == f"[{mean - half:+.2f}, {mean + half:+.2f}]"
    assert rows["128-SAM - 16-SAM (rho 0.1)"]["m-sharpness A - B"] == "+0.25"


def test_step_cost_benchmark_times_every_method_on_real_batches(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "deep_net_step_cost.py"
    spec = importlib.util.spec_from_file_location("deep_net_step_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--dataset", "digits", "--width", "2", "--batch", "16", "--ms", "0,8", "--steps", "1",
                       "--warmup", "0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["seconds_per_step"]) == {"ERM", "n-SAM", "16-SAM", "8-SAM"}
    assert all(t > 0 for t in result["seconds_per_step"].values())


def test_settings_figure_has_one_column_per_setting_with_every_seed():
    from types import SimpleNamespace

    from sharplab.labs.deep_net.report import plot_settings

    def rec(seed, method, m, err):
        cfg = {"method": method, "then_method": "", "rho": 0.0 if method == "erm" else 0.1, "m": m,
               "label_noise": 0.0, "batch_size": 128}
        return SimpleNamespace(run_id=f"{method}{m}{seed}", status="done", seed=seed, config=cfg,
                               metrics={"test_error": err})

    runs = [rec(s, "erm", 0, 0.1 + 0.01 * s) for s in range(3)] + [rec(s, "m-sam", 16, 0.09) for s in range(3)]
    ax = plot_settings(runs).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ERM", "16-SAM\nrho 0.1"]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted(len(line.get_ydata()) for line in dots) == [3, 3]
    assert sorted(dots[0].get_ydata()) == pytest.approx([10.0, 11.0, 12.0])
