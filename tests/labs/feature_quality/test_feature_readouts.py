"""Feature-quality read-outs: what the probe reads, learning curves in a run, the primary-size rule."""

from __future__ import annotations

import math

import pytest
import torch

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality import FeatureQualityConfig, run
from sharplab.labs.feature_quality.curves_report import MIN_HEADROOM, MIN_RANGE, primary_size
from sharplab.labs.feature_quality.readouts import half_parts
from sharplab.models import SmallCNN
from sharplab.probe import extract_features
from sharplab.probe.curves import curve_key
from sharplab.probe.regions import feature_map
from sharplab.runner.context import RunContext

SMALL_TOY = "n_train=300,n_val=100,n_test=100,n_probe_train=400,n_probe_test=400"


def test_the_probe_reads_the_flattened_conv_map_of_the_paper_network():
    torch.manual_seed(0)
    model = SmallCNN(1, 5, (56, 28))
    x = torch.rand(6, 1, 56, 28)
    z = extract_features(model, x)
    fmap = feature_map(model)(x)
    assert fmap.shape == (6, 128, 7, 4) and z.shape == (6, 3584)
    assert torch.equal(z, fmap.flatten(1))  # the same computation: no pooling between map and probe
    assert model.head.in_features == 3584


def test_a_run_records_learning_curve_points_and_the_full_size_point_is_the_probe(tmp_path):
    cfg = FeatureQualityConfig(dataset="toy", arm="sgd", epochs=1, model="mlp", data_options=SMALL_TOY,
                               probe_sizes="20,60,100000", probe_repeats=2, check_batch=0)
    out = run(cfg, RunContext(tmp_path, seed=1, quiet=True))
    for feat in ("easy", "hard"):
        assert {curve_key(feat, 20), curve_key(feat, 60), curve_key(feat, 400)} <= set(out)
        # a size above probe-train fits the whole split once, with the probe's own seed: the probe itself
        assert out[curve_key(feat, 400)] == out[f"probe_error_{feat}"]
    assert out[curve_key("hard", 20)] > out[curve_key("hard", 400)]


def test_bad_probe_sizes_fail_when_the_study_is_loaded():
    with pytest.raises(ConfigError, match="probe_sizes"):
        FeatureQualityConfig(probe_sizes="100,10")


def test_half_parts_follow_the_dominoes_layout():
    class D:
        meta = {"easy_rows": (0, 28)}
        input_shape = (1, 56, 28)

    assert half_parts(D()) == {"easy": (0, 28), "hard": (28, 56)}
    D.meta = {}
    assert half_parts(D()) is None


def _rec(arm, seed, curve):
    return {"arm": arm, "seed": seed, "probe_error_hard": curve[-1],
            **{curve_key("hard", n): v for n, v in zip((32, 320, 3200), curve)}}


def test_primary_size_uses_floor_ceiling_and_sgd_only():
    floor = (0.60, 0.40, 0.20)
    ceiling = (0.40, 0.30, 0.18)   # floor - ceiling: 20, 10, 2 points
    sgd = (0.50, 0.33, 0.19)       # sgd - ceiling: 10, 3, 1 points
    recs = [_rec(a, s, c) for s in range(3) for a, c in (("untrained", floor), ("hard-only", ceiling), ("sgd", sgd))]
    n_star, rows = primary_size(recs)
    assert n_star == 320  # 3200 fails both parts of the rule
    assert [r["qualifies"] for r in rows] == ["yes", "yes", "no"]
    # a SAM arm far better at 3200 does not move the choice: the rule never reads it
    recs += [_rec("sam rho=0.1", s, (0.1, 0.1, 0.01)) for s in range(3)]
    assert primary_size(recs)[0] == 320
    # SGD already at the ceiling everywhere: no primary size, hence no verdict
    flat = [_rec(a, s, c) for s in range(3) for a, c in (("untrained", floor), ("hard-only", ceiling),
                                                          ("sgd", ceiling))]
    assert primary_size(flat)[0] is None
    assert math.isclose(MIN_RANGE, 0.05) and math.isclose(MIN_HEADROOM, 0.02)


def test_report_adds_curves_and_the_paired_table_at_the_primary_size(tmp_path):
    from sharplab.runner.config import RunSpec
    from sharplab.runner.report import build_report
    from sharplab.runner.store import ResultsStore

    curves = {"untrained": (0.60, 0.40, 0.20), "hard-only": (0.40, 0.30, 0.18), "sgd": (0.50, 0.33, 0.19)}
    sam = {0: (0.45, 0.31, 0.19), 1: (0.46, 0.30, 0.19), 2: (0.44, 0.32, 0.19)}
    with ResultsStore(tmp_path) as store:
        for seed in range(3):
            for arm, curve in [*curves.items(), ("sam rho=0.1", sam[seed])]:
                spec = RunSpec("feature-quality", {"dataset": "toy", "arm": arm}, seed, 1, "s")
                store.add_runs([spec])
                store.claim(spec.run_id)
                metrics = {k: v for k, v in _rec(arm, seed, curve).items() if k not in ("arm", "seed")}
                store.finish(spec.run_id, "done", metrics={**metrics, "test_error": 0.01})
    builder = build_report(tmp_path)
    tables = {b.title: b for b in builder.blocks if b.kind == "table"}
    at = next(t for title, t in tables.items() if "primary size n*=320" in title)
    row = {r[0]: dict(zip(at.columns, r)) for r in at.rows}["sam rho=0.1"]
    # d_s = sgd - sam at n=320: 0.02, 0.03, 0.01 -> mean +2.00 points
    assert row["SGD − X hard (pts)"] == "+2.00"
    assert any(b.kind == "figure" and "learning curves" in b.title for b in builder.blocks)


def test_check_table_per_epoch_marks_on_by_the_preregistered_rule():
    from types import SimpleNamespace

    from sharplab.labs.feature_quality.protocol import check_table, paired_ci

    def run(arm, seed, flat):
        hist = {e + 1: {"gini_w": 0.9, "gini_phantom": 0.9 - f} for e, f in enumerate(flat)}
        return SimpleNamespace(config={"arm": arm}, seed=seed, history=hist)

    runs = [run("sam rho=0.1", s, f) for s, f in enumerate([(0.00, 0.05), (0.01, 0.04), (-0.01, 0.06)])]
    runs += [run("sgd", s, (0.0, 0.0)) for s in range(3)]
    (row,) = check_table(runs)
    m, lo, hi, _ = paired_ci([0.05, 0.04, 0.06])
    assert row["configuration"] == "sam rho=0.1"
    assert row["epoch 2"] == f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] on"
    assert not row["epoch 1"].endswith("on")


def test_lr_pilot_choice_uses_validation_loss_only():
    from sharplab.labs.feature_quality.lr_selection import lr_choices

    def rec(arm, lr, val_loss, **kw):
        return {"study": "p", "arm": arm, "lr": lr, "seed": 100, "val_loss": val_loss,
                "probe_error_hard": 0.9 if lr == 0.05 else 0.1, **kw}  # probe numbers must not matter

    recs = [rec("sgd", 0.02, 0.030), rec("sgd", 0.05, 0.020), rec("sgd", 0.1, 0.020),
            rec("sam rho=0.1", 0.02, 0.050), rec("sam rho=0.1", 0.05, 0.010, near_chance=1.0),
            rec("sam rho=0.1", 0.1, 0.040), rec("lsam rho=1.0", 0.05, 0.01)]
    rows = {r["configuration"]: r for r in lr_choices(recs)}
    assert rows["sgd"]["chosen lr"] == "0.05"  # tie with 0.1: the smaller lr
    assert rows["sam rho=0.1"]["chosen lr"] == "0.1"  # the lowest loss did not learn: never chosen
    assert rows["sam rho=0.1"]["val loss at lr=0.05"] == "not usable"
    assert "lsam rho=1.0" not in rows  # one lr only: nothing to choose


def test_per_arm_curve_figure_has_one_panel_per_arm_with_floor_ceiling_and_sgd():
    from sharplab.labs.feature_quality.curves_report import plot_curves_per_arm

    refs = {"untrained": (0.60, 0.40, 0.20), "hard-only": (0.40, 0.30, 0.18), "sgd": (0.50, 0.33, 0.19)}
    sam = {0: (0.45, 0.31, 0.19), 1: (0.47, 0.30, 0.17)}
    recs = [_rec(a, s, c) for s in range(2) for a, c in refs.items()]
    recs += [_rec("sam rho=0.1", s, sam[s]) for s in range(2)]
    recs += [_rec("lsam rho=1.0", s, (0.7, 0.5, 0.3)) for s in range(2)]
    fig = plot_curves_per_arm(recs, 320)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["sam rho=0.1 (2 seeds)", "lsam rho=1.0 (2 seeds)"]
    ax = panels[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"untrained", "hard-only", "sgd", "sam rho=0.1"} <= set(lines)
    # the panel's curve is the mean over seeds in %, computed by hand
    assert list(lines["sam rho=0.1"].get_xdata()) == [32, 320, 3200]
    assert [round(v, 9) for v in lines["sam rho=0.1"].get_ydata()] == [46.0, 30.5, 18.0]
    assert [round(v, 9) for v in lines["untrained"].get_ydata()] == [60.0, 40.0, 20.0]
    assert any(list(ln.get_xdata()) == [320, 320] for ln in ax.get_lines())  # n* marked


def test_selection_keeps_whole_batch_sam_apart_from_m_sharpness_and_uses_n_val():
    from sharplab.labs.feature_quality.protocol import selected_rows

    def rec(arm, seed, val, n_val=None):
        r = {"arm": arm, "seed": seed, "val_error": val, "probe_error_hard": 0.2, "near_chance": 0.0}
        return r if n_val is None else {**r, "n_val": n_val}

    vals = {"sgd": 0.0070, "sam rho=0.05": 0.0060, "sam rho=0.1": 0.0066, "sam rho=0.2": 0.0090,
            "sam m=8 rho=0.1": 0.0050}
    recs = [rec(a, s, v) for s in range(2) for a, v in vals.items()]
    rows = {r["optimizer"]: r for r in selected_rows(recs)}
    assert set(rows) == {"sgd", "sam", "sam m=8"}  # m-sharpness never competes with whole-batch SAM
    assert rows["sam"]["selected"] == "sam rho=0.05"  # no n_val recorded: exact ties, the best wins
    # with 2,000 validation examples one s.e. at 0.60 % is sqrt(0.006 * 0.994 / 2000) = 0.173 points, so
    # rho 0.1 (0.66 %) ties with the best and, being larger, is chosen; rho 0.2 (0.90 %) is outside
    recs = [rec(a, s, v, 2000.0) for s in range(2) for a, v in vals.items()]
    assert {r["optimizer"]: r for r in selected_rows(recs)}["sam"]["selected"] == "sam rho=0.1"


def test_validation_size_skips_the_untrained_floor_and_refuses_mixed_sizes():
    from sharplab.labs.feature_quality.protocol import validation_size

    trained = [{"arm": "sgd", "n_val": 600.0}, {"arm": "sam rho=0.1", "n_val": 600.0}]
    assert validation_size([{"arm": "untrained"}, *trained]) == 600
    assert validation_size([*trained, {"arm": "sgd lr=0.1", "n_val": 500.0}]) is None
    assert validation_size([{"arm": "untrained"}]) is None
