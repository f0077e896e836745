"""The mechanisms study on the toy: recorder, ablation arithmetic, resume, runner lab, report hook, CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sharplab.errors import SharplabError
from sharplab.labs.feature_quality import mechanisms as mech
from sharplab.labs.feature_quality.experiment import load_data
from sharplab.labs.feature_quality.mechanisms import (
    MechanismsConfig,
    Recorder,
    recovered_fraction,
    run_mechanisms,
    trace_history,
)
from sharplab.labs.feature_quality.train import make_model, train
from sharplab.runner.context import RunContext

SMALL = {"epochs": 2, "record_every": 8, "weight_batch": 256}
TINY_TOY = {"n_train": 512, "n_val": 100, "n_test": 200, "n_probe_train": 400, "n_probe_test": 400}


@pytest.fixture()
def one_thread():
    """Tiny models run several times faster on one thread on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_result():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run_mechanisms(MechanismsConfig(ablation="lr-only", **SMALL), seed=0)
    finally:
        torch.set_num_threads(before)


def test_recovered_fraction_hand_values() -> None:
    assert recovered_fraction(0.10, 0.04, 0.07) == pytest.approx(0.5)
    assert recovered_fraction(0.10, 0.04, 0.04) == pytest.approx(1.0)
    assert recovered_fraction(0.10, 0.04, 0.12) == pytest.approx(-1 / 3)
    assert math.isnan(recovered_fraction(0.05, 0.05, 0.01))  # SAM gained nothing: nothing to share
    assert math.isnan(recovered_fraction(0.05, 0.07, 0.01))
    assert math.isnan(recovered_fraction(0.0245, 0.0240, 0.0250))  # a 0.05-point "gain": no share (not -100 %)
    assert recovered_fraction(0.031, 0.025, 0.025) == pytest.approx(1.0)  # over half a point: reported


def test_config_validation() -> None:
    with pytest.raises(SharplabError, match="SAM variant"):
        MechanismsConfig(variant="adam")
    with pytest.raises(SharplabError, match="ablation"):
        MechanismsConfig(ablation="iw-only,foo")
    assert MechanismsConfig(ablation="").optimizers == ["sgd", "sam"]
    assert MechanismsConfig(variant="lsam").optimizers == ["sgd", "lsam", "iw-only", "lr-only"]
    with pytest.raises(SharplabError, match="divisor of batch_size=64"):
        MechanismsConfig(m=7)
    with pytest.raises(SharplabError, match="1-SAM"):
        MechanismsConfig(m=16, phantom="per-example")
    assert MechanismsConfig(m=16).train_config("sam").m == 16 and MechanismsConfig().train_config("sam").m == 0


def _spy_sam_grad(monkeypatch):
    """Record ``(mechanism, m)`` of every ``sam_grad`` call the training loop's SAM optimizer makes."""
    from sharplab.optim import _steps

    real, seen = _steps.sam_grad, []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("mechanism", "full"), kwargs.get("m")))
        return real(*args, **kwargs)

    monkeypatch.setattr(_steps, "sam_grad", spy)
    return seen


def test_m_reaches_sam_grad_and_is_recorded(monkeypatch, one_thread) -> None:
    seen = _spy_sam_grad(monkeypatch)
    cfg = MechanismsConfig(ablation="iw-only", epochs=1, record_every=16, weight_batch=64, m=16,
                           data_options=TINY_TOY)
    res = run_mechanisms(cfg, seed=0)
    steps = 512 // 64  # per optimizer; SGD never calls sam_grad
    assert seen == [("full", 16)] * steps + [("iw_only", 16)] * steps
    assert res.to_json()["config"]["m"] == 16


def test_recorder_with_m_weights_each_micro_batch_at_its_own_phantom() -> None:
    """With m, the phantom Gini is the manipulation check's per-micro-batch one (hand-checked on a linear
    model in test_feature_protocol), not the whole batch's."""
    from sharplab.labs.feature_quality.check import measure
    from sharplab.labs.feature_quality.train import TrainConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    got = Recorder(x, y, 0.7, None, 1, m=4).measure(model, 0, 1)
    want = measure(model, x, y, TrainConfig(optimizer="sam", rho=0.7, batch_size=8, m=4), 0)
    assert got["gini_phantom"] == pytest.approx(want["gini_phantom"], abs=1e-12)
    assert got["gini_real"] == pytest.approx(want["gini_w"], abs=1e-12)
    whole = Recorder(x, y, 0.7, None, 1).measure(model, 0, 1)
    assert abs(whole["gini_phantom"] - got["gini_phantom"]) > 1e-3


def test_recording_does_not_change_training(one_thread) -> None:
    """The phantom is visited and left: a run with the recorder ends bit-for-bit where one without ends."""
    data = load_data("toy")
    cfg = MechanismsConfig(**SMALL)
    x, y = mech.weight_subset(data, 64, 0)
    for opt in ("sgd", "sam"):
        a, b = make_model(data, "auto", 3), make_model(data, "auto", 3)
        rec = Recorder(x, y, 0.3, None, 5)
        train(a, data, cfg.train_config(opt).replace(epochs=1), seed=3, callback=rec)
        train(b, data, cfg.train_config(opt).replace(epochs=1), seed=3)
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), (opt, name)
        steps = [r["step"] for r in rec.trace]
        assert steps[0] == 1 and all(s % 5 == 0 for s in steps[1:])


def test_study_outputs_are_consistent(toy_result) -> None:
    res = toy_result
    assert list(res.runs) == ["sgd", "sam", "lr-only"]
    steps_total = 2 * math.ceil(2000 / 64)
    for opt, run in res.runs.items():
        assert run.snapshot.real.sum().item() == pytest.approx(1.0)
        assert run.snapshot.phantom.sum().item() == pytest.approx(1.0)
        assert len(run.snapshot.real) == 256
        assert run.trace[-1]["step"] == steps_total
        assert all(0 <= r["gini_real"] < 1 and 0 <= r["gini_phantom"] < 1 for r in run.trace)
        assert 0 <= run.metrics["probe_error_hard"] <= 1, opt
    m = res.metrics
    hard = [m["probe_error_hard_sgd"], m["probe_error_hard_sam"], m["probe_error_hard_lr_only"]]
    assert m["recovered_lr_only"] == pytest.approx(recovered_fraction(*hard), nan_ok=True)
    assert "recovered_iw_only" not in m
    hist = trace_history(res)
    assert set(hist[1]) >= {"gini_real_sgd", "gini_phantom_lr_only", "ratio_real_sam", "ratio_phantom_lr_only"}


def test_phantom_raises_the_hard_pathways_relative_weight(toy_result) -> None:
    """Learning-rate scaling (Springer et al. 2024, Sec. 4): along SGD's path, v_hard/v_easy is larger at
    the phantom w + eps than at w, i.e. SAM's Jacobian damps the already-learned easy pathway."""
    trace = toy_result.runs["sgd"].trace
    above = [r["ratio_phantom"] > r["ratio_real"] for r in trace[1:]]
    assert sum(above) >= 0.9 * len(above), trace


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    """One run of the runner lab ``mechanisms`` (SGD and SAM, one epoch on a small toy), shared by the
    runner-lab and the resume test."""
    from sharplab.labs import load_all
    from sharplab.runner.labs import get_lab

    load_all()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lab = get_lab("mechanisms")
        cfg = lab.config_cls(ablation="", epochs=1, record_every=16, weight_batch=64, data_options=TINY_TOY)
        ctx = RunContext(tmp_path_factory.mktemp("mech") / "run", seed=0, quiet=True)
        yield SimpleNamespace(lab=lab, cfg=cfg, ctx=ctx, metrics=lab.run(cfg, ctx))
    finally:
        torch.set_num_threads(before)


def test_resume_reuses_finished_optimizers(lab_run, one_thread, monkeypatch) -> None:
    run_dir = lab_run.ctx.run_dir
    assert (run_dir / "sgd" / "result.json").exists() and (run_dir / "sam" / "result.json").exists()
    first = json.loads((run_dir / "mechanisms.json").read_text())

    def fail(*args, **kwargs):
        raise AssertionError("a finished optimizer was trained again")

    monkeypatch.setattr(mech, "train_and_record", fail)
    again = run_mechanisms(lab_run.cfg, 0, RunContext(run_dir, seed=0, quiet=True))
    assert again.metrics == pytest.approx(first["metrics"], nan_ok=True)
    torch.testing.assert_close(again.runs["sam"].snapshot.phantom,
                               torch.tensor(first["weights"]["sam"]["phantom"], dtype=torch.float64))


def test_runner_lab_and_report(lab_run) -> None:
    from sharplab.runner.report import ReportBuilder

    lab, cfg, ctx, metrics = lab_run.lab, lab_run.cfg, lab_run.ctx, lab_run.metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"probe_error_hard_sgd", "gini_phantom_sam", "ratio_phantom_mean_sam"} <= set(metrics)
    saved = json.loads((ctx.run_dir / "mechanisms.json").read_text())
    assert saved["metrics"]["probe_error_hard_sam"] == pytest.approx(metrics["probe_error_hard_sam"])
    for name in ("lorenz", "gini", "ratio", "ablation"):
        assert (ctx.run_dir / f"mechanisms_toy_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert ctx.history and "gini_real_sgd" in ctx.history[0][1]

    from dataclasses import asdict

    record = SimpleNamespace(config=asdict(cfg), metrics=metrics, seed=0, status="done",
                             history=dict(ctx.history))
    builder = ReportBuilder("test")
    lab.report([record, SimpleNamespace(**{**vars(record), "seed": 1})], builder)
    kinds = [b.kind for b in builder.blocks]
    assert kinds.count("table") == 1 and kinds.count("figure") == 2
    table = builder.blocks[kinds.index("table")]
    assert [row[0] for row in table.rows] == ["sgd", "sam"]


def test_cli_json_figures_and_errors(tmp_path, capsys, monkeypatch) -> None:
    from sharplab.cli import main

    threads = torch.get_num_threads()  # the command sets its own thread count; restore it for other tests
    try:
        _cli_checks(tmp_path, capsys, main, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _cli_checks(tmp_path, capsys, main, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a command without --out writes to runs/mechanisms

    out = tmp_path / "out"
    tiny = [a for k, v in TINY_TOY.items() for a in ("--data-option", f"{k}={v}")]
    rc = main(["mechanisms", "--dataset", "toy", "--epochs", "1", "--seeds", "1", "--ablation", "iw-only",
               "--record-every", "32", "--weight-batch", "32", "--json", "--out", str(out), "--quiet", *tiny])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["optimizer"] for r in lines] == ["sgd", "sam", "iw-only"]
    for r in lines:
        assert {"dataset", "optimizer", "seed", "rho", "probe_error_easy", "probe_error_hard", "test_error",
                "gini_real", "gini_phantom"} <= set(r)
    assert "recovered" in lines[2]
    assert (out / "mechanisms_toy_lorenz.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "mechanisms_toy.json").read_text())["runs"][0]["seed"] == 0

    seen = _spy_sam_grad(monkeypatch)
    assert main(["mechanisms", "--epochs", "1", "--seeds", "1", "--ablation", "", "--m", "16", "--json",
                 "--record-every", "64", "--weight-batch", "32", "--quiet", "--out", str(tmp_path / "m16"), *tiny]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["optimizer"], r["m"]) for r in rows] == [("sgd", 0), ("sam", 16)]
    assert seen == [("full", 16)] * (TINY_TOY["n_train"] // 64)

    assert main(["mechanisms", "--dataset", "no-such-set", "--seeds", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["mechanisms", "--data-option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["mechanisms", "--seeds", "0"]) == 2


def test_report_never_pools_runs_that_differ_in_a_field_other_than_the_seed(tmp_path) -> None:
    from sharplab.runner.config import RunSpec
    from sharplab.runner.report import build_report
    from sharplab.runner.store import ResultsStore

    with ResultsStore(tmp_path) as store:
        for phantom in ("batch", "per-example"):
            spec = RunSpec("mechanisms", {"dataset": "toy", "phantom": phantom}, 0, 1, "m")
            store.add_runs([spec])
            store.claim(spec.run_id)
            store.finish(spec.run_id, "done", metrics={"probe_error_hard_sgd": 0.1, "probe_error_hard_sam": 0.05})
    titles = [b.title for b in build_report(tmp_path).blocks if b.kind == "table"]
    assert any('phantom="batch" (1 seed)' in t for t in titles)
    assert any('phantom="per-example" (1 seed)' in t for t in titles)
    assert not any("(2 seeds)" in t for t in titles)


def test_recovered_note_explains_an_empty_share_column():
    from sharplab.labs.feature_quality.mechanisms_plots import recovered_note

    rows = [{"optimizer": "sgd", "probe_error_hard": (0.0243, 0.0), "recovered": float("nan")},
            {"optimizer": "sam", "probe_error_hard": (0.0241, 0.0), "recovered": float("nan")},
            {"optimizer": "iw-only", "probe_error_hard": (0.0240, 0.0), "recovered": float("nan")}]
    note = recovered_note(rows, "sam")
    assert "+0.02 pts" in note and "0.5-pt floor" in note
    rows[2]["recovered"] = 0.4
    assert recovered_note(rows, "sam") == ""
