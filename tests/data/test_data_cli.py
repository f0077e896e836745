"""`sharplab data list|info` and the one-line missing-data error of the CLI."""

from __future__ import annotations

import json
from collections import Counter

from sharplab.cli import main
from sharplab.data import SPLITS, load_two_feature


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    # the data layer's own sets; labs may register more (e.g. feature-quality's toy-hetero) once imported
    assert names == sorted(names) and set(names) >= {"toy", "fmnist-mnist", "cifar-mnist", "celeba", "waterbirds",
                                                     "pacs", "vlcs", "officehome"}


def test_data_info_json_matches_a_loop_count(capsys):
    args = ["data", "info", "toy", "--json", "--seed", "3", "--set", "n_train=300", "--set", "margin_hard=0.5",
            "--set", "n_probe_test=40"]
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["split"] for r in records] == list(SPLITS)
    data = load_two_feature("toy", seed=3, n_train=300, margin_hard=0.5, n_probe_test=40)
    for r in records:
        s = data.splits[r["split"]]
        counts = Counter(f"{a},{b}" for a, b in zip(s.easy.tolist(), s.hard.tolist()))  # plain loop count
        assert set(r) == {"split", "n", "pair_counts"}
        assert r["n"] == len(s) and r["pair_counts"] == dict(counts)
    assert records[0]["n"] == 300 and records[-1]["pair_counts"] == {"0,0": 10, "0,1": 10, "1,0": 10, "1,1": 10}


def test_data_info_text(capsys):
    assert main(["data", "info", "toy", "--set", "n_probe_train=8"]) == 0
    out = capsys.readouterr().out
    assert "toy: input 10" in out and "probe_train  n=8" in out and "(0,1):2" in out


def test_missing_data_and_bad_option_are_one_line_errors(isolated, capsys):
    assert main(["data", "info", "fmnist-mnist", "--root", str(isolated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Fashion-MNIST not found")
    assert "sharplab data download fashion-mnist --root DIR" in err and "dataset-fashion-mnist" in err
    assert main(["data", "info", "toy", "--set", "margin_easy=big"]) == 2
    assert "margin_easy='big'" in capsys.readouterr().err
    assert main(["data", "info", "toy", "--set", "n_train=-1"]) == 2
    assert "n_train=-1 must be > 0" in capsys.readouterr().err
    assert main(["data", "info", "imagenet"]) == 2
    assert "unknown data set 'imagenet'" in capsys.readouterr().err
    assert main(["data", "download", "mnist"]) == 2  # neither --root nor $SHARPLAB_DATA
    assert "no data root: pass --root DIR" in capsys.readouterr().err


def test_data_list_and_info_show_lab_registered_sets_in_a_fresh_process():
    # a fresh interpreter: no lab imported by other tests; `data list` must still show the labs' sets
    import subprocess
    import sys

    code = "import sys; from sharplab.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "data", "list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "toy-hetero" in [line.split()[0] for line in out.stdout.splitlines()]
    info = subprocess.run([sys.executable, "-c", code, "data", "info", "toy-hetero", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert {json.loads(line)["split"] for line in info.stdout.splitlines()} >= {"train", "probe_train"}


def test_data_info_names_the_options_a_lab_trains_the_toy_with(capsys):
    from sharplab.cli import main
    from sharplab.labs.feature_quality import FeatureQualityConfig
    from sharplab.labs.feature_quality.experiment import DATA_DEFAULTS, load_data

    assert main(["data", "info", "toy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("toy: input 10,")  # the loader's own defaults
    assert "lab feature-quality loads toy with hard_dims=16, margin_hard=0.05" in out
    # what the note points to is what the lab loads: same input width as the lab's data
    assert main(["data", "info", "toy", "--set", "hard_dims=16", "--set", "margin_hard=0.05"]) == 0
    shown = capsys.readouterr().out
    lab_data = load_data("toy", options=dict(DATA_DEFAULTS["toy"]))
    assert shown.startswith(f"toy: input {lab_data.input_shape[0]},") and lab_data.input_shape[0] == 25
    assert "see it with" not in shown
    assert FeatureQualityConfig().dataset == "toy"
