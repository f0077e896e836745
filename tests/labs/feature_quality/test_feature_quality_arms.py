"""Arms as TOML data: checked in full at study load, one run id per configuration, older stores still found."""

from __future__ import annotations

import pytest

import sharplab.labs
from sharplab.errors import ConfigError
from sharplab.runner.config import RunSpec, parse_study

sharplab.labs.load_all()

BASE = {"lab": "feature-quality", "config": {"dataset": "toy", "epochs": 1}}
FOLLOW_UP = ["untrained", "hard-only lr=0.02", "sgd lr=0.02", "sam rho=0.05 lr=0.02", "sam rho=0.1 lr=0.05",
             "sam m=8 rho=0.1 lr=0.02", "lsam rho=1.0 lr=0.02", "sam rho=0.3 sam_start_epoch=4",
             "lsam rho=1.0 jtt_epochs=4 jtt_upweight=5"]  # the finished studies' spellings


def study(*arms, config=None, **grid):
    return parse_study({**BASE, "config": {**BASE["config"], **(config or {})}, "grid": {"arm": list(arms), **grid}})


@pytest.mark.parametrize(("arm", "where", "key"), [
    ("sam rho=abc", "arm 'sam rho=abc'", "rho = 'abc' has the wrong type"),
    ("sam rho=-1", "arm 'sam rho=-1'", "rho = -1 is out of range"),
    ("sgd momentum=5", "arm 'sgd momentum=5'", "momentum = 5 is out of range"),
    ("adam rho=0.1", "arm 'adam rho=0.1'", "unknown optimizer 'adam'"),
    ("sam rhoo=0.1", "arm 'sam rhoo=0.1'", "unknown key 'rhoo'"),
    ("sam m=500", "arm 'sam m=500'", "m = 500 is out of range"),
    ({"optimizer": "sam", "rho": "abc"}, 'arm {optimizer = "sam", rho = "abc"}', "rho = 'abc' has the wrong type"),
    ({"optimizer": "sam", "rho": -1}, 'arm {optimizer = "sam", rho = -1}', "rho = -1 is out of range"),
    ({"optimizer": "sgd", "momentum": 5}, 'arm {optimizer = "sgd", momentum = 5}', "momentum = 5 is out of range"),
    ({"optimizer": "adam"}, 'arm {optimizer = "adam"}', "unknown optimizer 'adam'"),
    ({"optimizer": "sam", "dataset": "toy"}, "arm {", "unknown key 'dataset'"),
    ({"rho": 0.1}, "arm {rho = 0.1}", "needs optimizer"),
    ({"optimizer": "gsam", "alpha": 2.0}, "arm {", "alpha must be a finite number in [0, 1]"),
    ({"optimizer": "gsam", "gamma": 0.5}, "arm {", "unknown key 'gamma'"),
    ({"optimizer": "looksam", "k": 0}, "arm {", "k must be an integer >= 1"),
])
def test_a_bad_arm_fails_when_the_study_is_loaded_in_one_line_naming_arm_and_key(arm, where, key):
    with pytest.raises(ConfigError) as err:
        study("sgd", arm)
    message = str(err.value)
    assert message.startswith(f"[grid] {where}") and key in message and "\n" not in message, message


def test_spellings_of_one_configuration_share_one_run_id():
    string = study("sam rho=0.1").runs()[0]
    table = study({"optimizer": "sam", "rho": 0.1}).runs()[0]
    plain = parse_study({**BASE, "config": {**BASE["config"], "optimizer": "sam", "rho": 0.1}}).runs()[0]
    in_grid = parse_study({**BASE, "grid": {"optimizer": ["sam"], "rho": [0.1]}}).runs()[0]
    assert string.run_id == table.run_id == plain.run_id == in_grid.run_id
    gsam = study({"optimizer": "gsam", "rho": 0.05, "alpha": 0.1}).runs()[0]
    gsam_string = study("gsam rho=0.05 alpha=0.1").runs()[0]
    gsam_plain = parse_study({**BASE, "config": {**BASE["config"], "optimizer": "gsam", "rho": 0.05,
                                                 "optimizer_options": {"alpha": 0.1}}}).runs()[0]
    assert gsam.run_id == gsam_string.run_id == gsam_plain.run_id != string.run_id
    assert gsam.config["optimizer_options"] == {"alpha": 0.1} and gsam.config["arm"] == "gsam rho=0.05 alpha=0.1"
    with pytest.raises(ConfigError, match="are one configuration"):
        study("sam rho=0.1", {"optimizer": "sam", "rho": 0.1})


def test_the_stored_config_is_resolved_and_keeps_the_label_of_the_older_spelling():
    from sharplab.labs.feature_quality.protocol import arm_label

    for spec in study(*FOLLOW_UP).runs():
        old = {**BASE["config"], "arm": spec.config["arm"]}  # how the study was stored before: fields at base
        assert arm_label(spec.config) == arm_label(old)
    sam = study("sam m=8 rho=0.1 lr=0.02").runs()[0].config
    assert (sam["optimizer"], sam["rho"], sam["m"], sam["lr"]) == ("sam", 0.1, 8, 0.02)
    assert "optimizer_options" not in study("sgd").runs()[0].config  # a field at its default is not stored


def test_an_older_store_keeps_its_runs_under_their_recorded_ids(tmp_path):
    from sharplab.runner.execute import plan_study
    from sharplab.runner.store import ResultsStore

    st = study(*FOLLOW_UP[:4])
    specs = st.runs()
    with ResultsStore(tmp_path) as store:  # the store as an older sharplab wrote it: unresolved configs
        for s in specs:
            raw = _unresolved(s)
            old = RunSpec(s.lab, raw, s.seed, s.nproc, s.study)
            assert old.run_id == s.legacy_id != s.run_id
            store.add_runs([old])
            store.claim(old.run_id)
            store.finish(old.run_id, "done", {"probe_error_hard": 0.1})
    assert plan_study(st, tmp_path) == []  # nothing to run again
    with ResultsStore(tmp_path) as store:
        assert {r.run_id for r in store.runs()} == {s.legacy_id for s in specs}


def _unresolved(spec: RunSpec) -> dict:
    """The full config an older sharplab stored for this spec: every field at the study's base value."""
    from sharplab.labs.feature_quality import FeatureQualityConfig
    from sharplab.runner.config import config_to_dict

    return config_to_dict(FeatureQualityConfig(**BASE["config"], arm=spec.config["arm"]))


def test_any_family_member_trains_through_the_runner(tmp_path):
    from sharplab.runner.execute import RunOptions, run_study

    small = "n_train=200,n_val=100,n_test=100,n_probe_train=200,n_probe_test=200"
    st = study("sgd", {"optimizer": "gsam", "rho": 0.05, "alpha": 0.1}, {"optimizer": "asam", "rho": 0.5},
               config={"data_options": small, "check_batch": 64})
    counts = run_study(st, tmp_path, options=RunOptions(quiet=True, threads=1))
    assert counts["done"] == 3, counts
