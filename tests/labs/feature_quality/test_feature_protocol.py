"""The pre-registered protocol's pieces: floor architecture, manipulation check, paired CIs, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharplab.labs.feature_quality import FeatureQualityConfig, run
from sharplab.labs.feature_quality.check import measure
from sharplab.labs.feature_quality.experiment import load_data, probe_trained, run_one
from sharplab.labs.feature_quality.protocol import contrast, paired_ci, paired_rows, select_one_se, verdict
from sharplab.labs.feature_quality.train import TrainConfig, make_model
from sharplab.runner.context import RunContext

SMALL_TOY = {"n_train": 400, "n_val": 100, "n_test": 200, "n_probe_train": 400, "n_probe_test": 400}


def test_untrained_floor_uses_the_trained_rows_architecture(tmp_path):
    data = load_data("toy", options=SMALL_TOY)
    floor = run_one(data, None, seed=3, model_name="mlp")
    mlp = probe_trained(make_model(data, "mlp", seed=3), data, seed=3)
    pathway = probe_trained(make_model(data, "auto", seed=3), data, seed=3)
    assert floor["probe_error_hard"] == mlp["probe_error_hard"]  # the very same computation
    assert "v_hard_over_v_easy" not in floor and "v_hard_over_v_easy" in pathway  # not the 'auto' PathwayNet
    opts = ",".join(f"{k}={v}" for k, v in SMALL_TOY.items())
    out = run(FeatureQualityConfig(dataset="toy", arm="untrained", model="mlp", data_options=opts),
              RunContext(tmp_path, seed=3, quiet=True))
    assert out["probe_error_hard"] == mlp["probe_error_hard"]


def _gini_closed_form(s: np.ndarray) -> float:
    """Gini = sum_ij |s_i - s_j| / (2 n^2 mean(s))."""
    n = len(s)
    return float(np.abs(s[:, None] - s[None, :]).sum() / (2 * n * n * s.mean()))


def _phantom_norms_by_hand(W, b, x, y, rho, chunk):
    """Softmax-CE linear model: per chunk, eps = rho g / ||g|| with g = mean_i (p_i - e_i) [x_i, 1]."""
    out = []
    k = W.shape[0]
    for i in range(0, len(y), chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        e = np.eye(k)[ys]
        z = xs @ W.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gW, gb = (p - e).T @ xs / len(ys), (p - e).mean(0)
        norm = math.sqrt((gW**2).sum() + (gb**2).sum())
        Wt, bt = W + rho * gW / norm, b + rho * gb / norm
        zt = xs @ Wt.T + bt
        pt = np.exp(zt - zt.max(1, keepdims=True))
        pt /= pt.sum(1, keepdims=True)
        out.append(np.linalg.norm(pt - e, axis=1))
    return np.concatenate(out)


@pytest.mark.parametrize("m", [0, 4])
def test_gini_at_the_phantom_matches_a_hand_computation_on_a_linear_model(m):
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    cfg = TrainConfig(optimizer="sam", rho=0.7, batch_size=8, m=m)
    got = measure(model, x, y, cfg, epoch=0)
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    xn, yn = x.numpy(), y.numpy()
    norms = _phantom_norms_by_hand(W, b, xn, yn, 0.7, m or 8)
    real = _phantom_norms_by_hand(W, b, xn, yn, 0.0, 32)
    assert got["gini_phantom"] == pytest.approx(_gini_closed_form(norms), abs=1e-10)
    assert got["gini_w"] == pytest.approx(_gini_closed_form(real), abs=1e-10)
    assert got["gini_phantom"] != pytest.approx(got["gini_w"], abs=1e-3)  # the phantom does move them
    # SGD steps at w, and SAM before its start epoch does too
    assert measure(model, x, y, cfg.replace(optimizer="sgd"), 0)["gini_phantom"] == got["gini_w"]
    assert measure(model, x, y, cfg.replace(sam_start_epoch=2), 1)["gini_phantom"] == got["gini_w"]


def test_paired_ci_matches_the_closed_form_t_interval():
    d = [0.01, 0.02, 0.03, 0.04, 0.05]
    mean, lo, hi, n = paired_ci(d)
    t975_4 = 2.7764451051977987  # Student t, 0.975 quantile, 4 degrees of freedom (tables)
    half = t975_4 * math.sqrt(0.00025) / math.sqrt(5)  # sample variance of d is 2.5e-4
    assert (n, mean) == (5, pytest.approx(0.03, abs=1e-15))
    assert (lo, hi) == (pytest.approx(0.03 - half, abs=1e-12), pytest.approx(0.03 + half, abs=1e-12))
    assert verdict(lo, hi) == "better"
    assert verdict(*paired_ci([0.01, -0.02, 0.015])[1:3]) == "no difference detected"
    assert verdict(*paired_ci([-0.01, -0.02, -0.015])[1:3]) == "worse"
    assert math.isnan(paired_ci([0.1])[1])


def _rec(arm, seed, hard, **kw):
    return {"arm": arm, "seed": seed, "probe_error_hard": hard, "probe_error_easy": 0.1, "test_error": 0.02, **kw}


def test_paired_rows_pair_by_seed_flag_near_chance_and_call_the_mechanism():
    recs = [_rec("sgd", s, 0.20 + 0.01 * s) for s in range(4)]
    recs += [_rec("sam rho=0.5", s, 0.19 + 0.01 * s + 0.001 * (s % 2), gini_w=0.8, gini_phantom=0.7 - 0.01 * s)
             for s in range(4)]
    recs += [_rec("sam rho=2", s, 0.5, near_chance=1.0 if s == 0 else 0.0, gini_w=0.5, gini_phantom=0.5)
             for s in range(4)]
    rows = {r["configuration"]: r for r in paired_rows(recs)}
    sam = rows["sam rho=0.5"]
    assert sam["verdict"] == "X better" and sam["mechanism"] == "on"  # seed-to-seed spread cancels
    assert rows["sam rho=2"]["did not learn"] == "1 run(s)" and rows["sam rho=2"]["mechanism"] == "off"
    # pre-registered: a configuration with a run that did not learn is not interpreted (no "X worse")
    assert rows["sam rho=2"]["verdict"] == "not interpreted (a run did not learn)"
    two = {r["configuration"]: r for r in paired_rows([r for r in recs if r["seed"] < 2])}
    assert two["sam rho=0.5"]["verdict"].startswith("no verdict (2 paired seeds")
    m, lo, hi, n = contrast(recs, "sam rho=2", "sgd")
    assert n == 4 and m == pytest.approx(0.5 - 0.215)


def test_one_se_selection_prefers_the_largest_rho_within_noise_and_skips_runs_that_did_not_learn():
    rows = [{"rho": 0.05, "val_error": 0.010}, {"rho": 0.2, "val_error": 0.012},
            {"rho": 0.5, "val_error": 0.030}, {"rho": 1.0, "val_error": 0.8, "near_chance": True}]
    assert select_one_se(rows, n_val=1000)["rho"] == 0.2  # s.e. of 1 % on 1000 examples is 0.31 points
    assert select_one_se(rows)["rho"] == 0.05  # without n_val: exact ties only
    assert select_one_se(rows[3:]) is None


def test_hetero_toy_makes_sgd_weights_unequal_and_the_phantom_flattens_them():
    from sharplab.labs.feature_quality.check import check_batch
    from sharplab.labs.feature_quality.importance import importance_snapshot
    from sharplab.labs.feature_quality.train import train

    opts = {"n_train": 1000, "n_val": 100, "n_test": 100, "n_probe_train": 100, "n_probe_test": 100}
    plain, hetero = load_data("toy", options=opts), load_data("toy-hetero", options=opts)
    ginis = {}
    for name, data in (("toy", plain), ("toy-hetero", hetero)):
        model = make_model(data, "auto", seed=0)
        train(model, data, TrainConfig(optimizer="sgd", epochs=10, batch_size=64), seed=0)
        x, y = check_batch(data, 256, 0)
        snap = importance_snapshot(model, x, y, rho=1.0, per_example=True)
        ginis[name] = (snap.gini_real, snap.gini_phantom)
    assert ginis["toy"][0] < 0.3  # the plain toy: SGD's weights nearly uniform
    assert ginis["toy-hetero"][0] > 0.6  # heterogeneous margins: concentrated at w ...
    assert ginis["toy-hetero"][1] < 0.5  # ... and spread out at the 1-SAM phantom


def _store_with(out, runs):
    """A results store holding finished feature-quality runs ``(study, config, seed, metrics)``."""
    from sharplab.runner.config import RunSpec
    from sharplab.runner.store import ResultsStore

    with ResultsStore(out) as store:
        for study, config, seed, metrics in runs:
            spec = RunSpec("feature-quality", config, seed, 1, study)
            store.add_runs([spec])
            assert store.claim(spec.run_id) == "claimed"
            store.finish(spec.run_id, "done", metrics=metrics)


def _sections_of(builder):
    """``{heading: [table blocks until the next heading]}`` of a report."""
    out, current = {}, None
    for b in builder.blocks:
        if b.kind == "heading":
            current = out.setdefault(b.title, [])
        elif b.kind == "table" and current is not None:
            current.append({row[0]: dict(zip(b.columns, row)) for row in b.rows})
    return out


def test_report_pairs_within_each_study_and_dataset_never_across(tmp_path):
    from sharplab.runner.report import build_report

    hard = {  # (study, dataset) -> arm -> hard-probe error per seed 0, 1, 2
        ("toy-study", "toy"): {"untrained": [0.40, 0.40, 0.40], "sgd": [0.30, 0.32, 0.34],
                               "sam rho=0.1": [0.25, 0.28, 0.29]},
        ("fm-study", "fmnist-mnist"): {"untrained": [0.26, 0.26, 0.26], "sgd": [0.20, 0.21, 0.22],
                                       "sam rho=0.1": [0.23, 0.25, 0.24]},
    }
    runs = [(study, {"dataset": ds, "arm": arm, "epochs": 5}, seed,
             {"probe_error_hard": v, "probe_error_easy": 0.01, "test_error": 0.02, "val_error": 0.02})
            for (study, ds), arms in hard.items() for arm, vals in arms.items() for seed, v in enumerate(vals)]
    _store_with(tmp_path, runs)
    got = _sections_of(build_report(tmp_path))
    toy = got["feature-quality: study toy-study, dataset toy"][0]
    fm = got["feature-quality: study fm-study, dataset fmnist-mnist"][0]

    t975_2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (tables)
    # toy: d = sgd - sam = (0.05, 0.04, 0.05): mean 0.14/3, sample sd sqrt(1/3) * 0.01
    m, half = 0.14 / 3, t975_2 * math.sqrt(1 / 3) * 0.01 / math.sqrt(3)
    assert toy["sam rho=0.1"]["SGD − X hard (pts)"] == f"{100 * m:+.2f}" == "+4.67"
    assert toy["sam rho=0.1"]["95 % CI"] == f"[{100 * (m - half):+.2f}, {100 * (m + half):+.2f}]"
    assert toy["sam rho=0.1"]["verdict"] == "X better"
    # fmnist: d = (-0.03, -0.04, -0.02): mean -0.03, sample sd 0.01
    m, half = -0.03, t975_2 * 0.01 / math.sqrt(3)
    assert fm["sam rho=0.1"]["SGD − X hard (pts)"] == "-3.00"
    assert fm["sam rho=0.1"]["95 % CI"] == f"[{100 * (m - half):+.2f}, {100 * (m + half):+.2f}]"
    assert fm["sam rho=0.1"]["verdict"] == "X worse"
    # each section's floor and SGD rows are its own (3 seeds each, not 6 pooled or 3 overwritten)
    assert (toy["untrained"]["hard probe err %"], fm["untrained"]["hard probe err %"]) == ("40.00", "26.00")
    assert (toy["sgd"]["hard probe err %"], fm["sgd"]["hard probe err %"]) == ("32.00", "21.00")
    assert toy["sgd"]["seeds"] == fm["sgd"]["seeds"] == 3


def test_sections_split_one_study_on_other_config_and_pooling_is_refused():
    from types import SimpleNamespace

    from sharplab.labs.feature_quality.protocol import by_arm, sections

    def run(study, seed, **cfg):
        return SimpleNamespace(study=study, seed=seed, config={"dataset": "toy", **cfg})

    runs = [run("a", 0, arm="sgd", epochs=5), run("a", 0, arm="sam rho=0.1", epochs=5),
            run("a", 0, arm="sgd", epochs=9), run("b", 0, optimizer="sgd", rho=0.1, epochs=5),
            run("b", 0, optimizer="sam", rho=0.2, epochs=5)]
    got = [(title, len(rs)) for title, rs in sections(runs)]
    assert got == [("study a, dataset toy (epochs=5)", 2), ("study a, dataset toy (epochs=9)", 1),
                   ("study b, dataset toy", 2)]  # without arm, optimizer and rho name the configuration
    with pytest.raises(ValueError, match="section"):
        by_arm([{"arm": "sgd", "seed": 0, "study": "a"}, {"arm": "sgd", "seed": 0, "study": "b"}])


def test_feature_probe_says_diverged_in_the_table_and_keeps_the_status_in_json(monkeypatch, capsys, tmp_path):
    import json

    import sharplab.labs.feature_quality as lab
    from sharplab.cli import main
    from sharplab.errors import Diverged

    def fake_run_one(data, cfg, *, seed, **kw):  # SGD learns, every SAM run diverges at step 3
        if cfg is not None and cfg.optimizer == "sam":
            raise Diverged(3)
        err = 0.3 if cfg is None else 0.2
        return {"val_error": 0.01, "val_loss": 0.1, "test_error": 0.02, "probe_error_easy": 0.05,
                "probe_error_hard": err + 0.01 * seed}

    monkeypatch.setattr(lab, "run_one", fake_run_one)  # the runner lab's training and probing
    args = ["feature-probe", "--dataset", "toy", "--optimizer", "sgd,sam", "--rho", "0.1", "--seeds", "2",
            "--quiet", "--data-option", "n_train=200", "--out", str(tmp_path)]
    assert main(args) == 0
    table = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in table.splitlines()}
    hard = rows["hard-feature probe error (%)"]
    assert hard[-1] == "diverged" and hard[-2] != "diverged"  # columns: untrained, sgd, sam rho=0.1
    assert rows["diverged runs"][2:] == ["0", "0", "2", "of", "2"]  # untrained, sgd: 0; sam: 2 of 2
    assert main([*args, "--json"]) == 0  # read back from the store: nothing runs again
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    sam = [r for r in recs if r["optimizer"] == "sam"]
    assert len(sam) == 2 and all(r["status"] == "diverged" and r["diverged"] is True for r in sam)
    assert all(r["diverged_step"] == 3.0 and "probe_error_hard" not in r for r in sam)
    assert {r["status"] for r in recs if r["optimizer"] != "sam"} == {"done"}
    assert all(r["selected"] is False for r in sam)  # shown, but never selected


def test_report_marks_diverged_runs_and_never_selects_or_pairs_them(tmp_path):
    from sharplab.runner.config import RunSpec
    from sharplab.runner.report import build_report
    from sharplab.runner.store import ResultsStore

    ok = {"probe_error_hard": 0.2, "probe_error_easy": 0.01, "test_error": 0.02, "val_error": 0.02}
    with ResultsStore(tmp_path) as store:
        for study, arms in (("arms", ["sgd", "sam rho=0.1", "sam rho=2"]), ("plain", ["sgd", "sam"])):
            for name in arms:
                for seed in range(3):
                    key = "arm" if study == "arms" else "optimizer"
                    spec = RunSpec("feature-quality", {"dataset": "toy", key: name}, seed, 1, study)
                    store.add_runs([spec])
                    store.claim(spec.run_id)
                    if name in ("sam rho=2", "sam") or (name == "sam rho=0.1" and seed == 0):
                        store.finish(spec.run_id, "diverged", error="loss is nan", diverged_step=4)
                    else:
                        store.finish(spec.run_id, "done", metrics={**ok, "probe_error_hard": 0.2 - 0.01 * seed})
    builder = build_report(tmp_path)
    got = _sections_of(builder)
    arms = got["feature-quality: study arms, dataset toy"]
    paired, selected = arms[0], arms[1]
    assert paired["sam rho=2"]["hard probe err %"] == "diverged" and paired["sam rho=2"]["diverged"] == "3 run(s)"
    assert paired["sam rho=2"]["SGD − X hard (pts)"] == "diverged"
    # one of three seeds diverged: the other two are paired (n = 2, d = 0 each) and the run is counted
    assert paired["sam rho=0.1"]["diverged"] == "1 run(s)" and paired["sam rho=0.1"]["SGD − X hard (pts)"] == "+0.00"
    assert paired["sam rho=0.1"]["hard probe err %"] == "18.50" and paired["sgd"]["diverged"] == ""
    assert "sam" not in {r["optimizer"] for r in selected.values()}  # neither SAM configuration is selectable
    table = next(b for b in builder.blocks if b.kind == "table" and b.title.startswith("study plain"))
    sam_row = dict(zip(table.columns, table.rows[1]))
    assert sam_row["optimizer"] == "sam" and sam_row["probe_error_hard (%)"] == "diverged"
    assert sam_row["diverged"] == "3 of 3" and sam_row["hard gain vs untrained (pts)"] == "diverged"


def test_a_per_arm_lr_is_a_training_setting_not_part_of_the_arms_name():
    from sharplab.labs.feature_quality.curves_report import primary_size
    from sharplab.labs.feature_quality.protocol import arm_label, by_arm

    assert arm_label({"arm": "sam rho=0.1 lr=0.05"}) == "sam rho=0.1"
    assert arm_label({"arm": "sgd lr=0.02"}) == "sgd"
    # the references keep their names, so the primary-size rule finds SGD, floor and ceiling
    recs = [{"arm": a, "seed": s, "curve_error_hard_n100": e}
            for s in (0, 1, 2) for a, e in (("untrained", 0.30), ("hard-only lr=0.02", 0.10), ("sgd lr=0.02", 0.20))]
    n_star, _ = primary_size(recs)
    assert n_star == 100
    # two arms that differ only in lr cannot be paired under one name
    with pytest.raises(ValueError, match="two 'sgd' records"):
        by_arm([{"arm": "sgd lr=0.02", "seed": 0}, {"arm": "sgd lr=0.05", "seed": 0}])
