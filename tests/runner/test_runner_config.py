"""Study files: validation messages, grid expansion, run identity."""

from __future__ import annotations

import itertools

import pytest
from runner_testlib import ToyConfig, sharplab_cli, write_study

from sharplab.errors import ConfigError, SharplabError
from sharplab.runner.config import config_hash, load_study, parse_study
from sharplab.runner.validation import validate_config


def _study(**tables):
    return {"lab": "runner-toy", "name": "t", **tables}


def test_grid_is_the_cartesian_product_with_seed_fastest():
    doc = _study(config={"steps": 2}, grid={"x": [0.1, 0.2], "mode": ["ok"], "flag": [True, False],
                                             "seed": [3, 4, 5]})
    runs = parse_study(doc).runs()
    expected = [(x, m, f, s) for (x, m, f), s in itertools.product(
        itertools.product([0.1, 0.2], ["ok"], [True, False]), [3, 4, 5])]
    got = [(r.config["x"], r.config["mode"], r.config["flag"], r.seed) for r in runs]
    assert got == expected
    assert all(r.config["steps"] == 2 and r.config["widths"] == [4, 4] for r in runs)
    assert len({r.run_id for r in runs}) == 12


def test_run_id_depends_on_resolved_values_not_spelling():
    a = parse_study(_study(config={"x": 0}, grid={"seed": [0]})).runs()[0]
    b = parse_study(_study(config={"x": 0.0, "steps": 3, "widths": [4, 4]})).runs()[0]  # defaults spelled out
    assert a.run_id == b.run_id
    assert a.run_id == config_hash("runner-toy", b.config, 0)
    assert config_hash("runner-toy", b.config, 1) != a.run_id
    assert config_hash("runner-toy", b.config, 0, nproc=2) != a.run_id


@pytest.mark.parametrize("values, words", [
    ({"xx": 1.0}, ["'xx'", "did you mean 'x'", "allowed keys: x, steps, mode, flag, widths"]),
    ({"x": 1.5}, ["x = 1.5", "out of range", "allowed: float in [0.0, 1.0]"]),
    ({"x": "big"}, ["x = 'big'", "wrong type", "float"]),
    ({"steps": 2.5}, ["steps = 2.5", "wrong type", "int"]),
    ({"steps": True}, ["steps = True", "wrong type"]),
    ({"steps": 0}, ["steps = 0", "out of range", ">= 1"]),
    ({"mode": "fast"}, ["mode = 'fast'", "one of 'ok', 'boom'"]),
    ({"flag": 1}, ["flag = 1", "bool"]),
    ({"widths": [4, "a"]}, ["widths", "list of int"]),
])
def test_bad_values_give_one_line_naming_key_value_and_allowed(values, words):
    with pytest.raises(ConfigError) as err:
        validate_config(ToyConfig, values)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_types_are_coerced_into_the_frozen_config():
    cfg = validate_config(ToyConfig, {"x": 1, "widths": [1, 2, 3]})
    assert cfg.x == 1.0 and isinstance(cfg.x, float) and cfg.widths == (1, 2, 3)


@pytest.mark.parametrize("doc, words", [
    ({"lab": "runner-toy", "grdi": {}}, ["unknown top-level key 'grdi'"]),
    ({"name": "t"}, ["lab = "]),
    ({"lab": "nope"}, ["unknown lab 'nope'", "runner-toy"]),
    (_study(grid={"x": 0.5}), ["[grid] x = 0.5", "non-empty list"]),
    (_study(grid={"x": [0.5, 7.0]}), ["[grid] x = 7.0", "out of range"]),
    (_study(grid={"seed": [0, 0]}), ["repeats a seed"]),
    (_study(grid={"seed": [-1]}), ["seed = -1"]),
    (_study(config=[1]), ["config must be a table"]),
])
def test_bad_study_files(doc, words):
    with pytest.raises(SharplabError) as err:  # ConfigError, or SharplabError for an unknown lab
        parse_study(doc)
    for w in words:
        assert w in str(err.value)


def test_cli_rejects_bad_config_before_training(tmp_path):
    study = write_study(tmp_path / "bad.toml", """
        lab = "digits"
        [config]
        epochs = 2
        [grid]
        rho = [0.05, -0.1]
    """)
    out = sharplab_cli("run", str(study), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: [grid] rho = -0.1 is out of range; allowed: float >= 0.0"]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
    bad_toml = write_study(tmp_path / "broken.toml", "lab = digits\n")
    out = sharplab_cli("run", str(bad_toml))
    assert out.returncode == 2 and out.stderr.startswith("error: study file is not valid TOML")
    assert "Traceback" not in out.stderr


def test_load_study_reads_the_file(tmp_path):
    path = write_study(tmp_path / "named.toml", """
        lab = "runner-toy"
        [config]
        seed = 7
    """)
    study = load_study(path)
    assert study.name == "named" and study.seeds == (7,)
    with pytest.raises(ValueError, match="not found"):
        load_study(tmp_path / "missing.toml")


def test_grid_tables_are_the_union_of_their_products_each_with_its_seeds(tmp_path):
    """``[[grid]]`` blocks: each table's own product and seeds, table after table (issue 20: a plain baseline
    beside sweeps of different radii)."""
    doc = _study(config={"steps": 2, "seed": 9}, grid=[{"mode": ["ok"], "seed": [0, 1]},
                                                        {"x": [0.1, 0.2], "flag": [True]},
                                                        {"x": [0.5], "seed": [2]}])
    got = [(r.config["mode"], r.config["x"], r.config["flag"], r.seed) for r in parse_study(doc).runs()]
    assert got == [("ok", 0.5, False, 0), ("ok", 0.5, False, 1),  # the config's seed 9 is the default
                   ("ok", 0.1, True, 9), ("ok", 0.2, True, 9), ("ok", 0.5, False, 2)]
    path = write_study(tmp_path / "arms.toml", "lab = 'runner-toy'\nname = 't'\n[[grid]]\nx = [0.1]\nseed = [0, 1]\n"
                                 "[[grid]]\nx = [0.3]\n")
    assert [(r.config["x"], r.seed) for r in load_study(path).runs()] == [(0.1, 0), (0.1, 1), (0.3, 0)]
    one = parse_study(_study(grid=[{"x": [0.1, 0.2]}])).runs()  # a single [[grid]] is a [grid]
    assert [r.run_id for r in one] == [r.run_id for r in parse_study(_study(grid={"x": [0.1, 0.2]})).runs()]


@pytest.mark.parametrize("grid, words", [
    ([{"x": [0.1]}, {"x": [0.1, 0.2]}], "two [[grid]] tables define the same run"),
    ([{"x": [0.1]}, {"x": [-1.0]}], "[grid] x = -1.0 is out of range"),
    ([{"x": [0.1]}, {"seed": [1, 1]}], "[[grid]] 2 seed = [1, 1] repeats a seed"),
    ([{"x": [0.1]}, "x"], "list of tables ([[grid]] blocks)"),
    ([], "list of tables ([[grid]] blocks)"),
])
def test_bad_grid_tables(grid, words):
    with pytest.raises(ConfigError) as err:
        parse_study(_study(grid=grid))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_grid_tables_count_against_the_run_limit_together():
    doc = _study(grid=[{"x": [0.1, 0.2], "seed": [0, 1]}, {"x": [0.3, 0.4]}], max_runs=5)
    with pytest.raises(ConfigError, match=r"the \[\[grid\]\] tables define 6 runs or more, more than the limit of 5"):
        parse_study(doc)
    assert len(parse_study({**doc, "max_runs": 6}).runs()) == 6


# --- the grid cap (issue 23, item 4) ---------------------------------------------------------------------
def _grid_file(tmp_path, seeds: int, max_runs=None):
    """A valid runner-toy grid of 10 x 10 x 2 x 2 x 10 = 4,000 configurations times ``seeds`` seeds."""
    head = f"max_runs = {max_runs}\n" if max_runs is not None else ""
    return write_study(tmp_path / "big.toml", head + f"""
        lab = "runner-toy"
        name = "big"
        [grid]
        x = {[i / 10 for i in range(10)]}
        steps = {list(range(1, 11))}
        mode = ["ok", "boom"]
        flag = [true, false]
        widths = {[[w, w] for w in range(1, 11)]}
        seed = {list(range(seeds))}
    """.replace("\n        ", "\n"))


def test_a_ten_million_run_grid_is_refused_at_once_naming_max_runs(tmp_path, capsys):
    import time

    from sharplab.cli import main

    study = _grid_file(tmp_path, seeds=2500)  # 4,000 x 2,500 = 10^7 runs
    t0 = time.monotonic()
    code = main(["run", str(study), "--out", str(tmp_path / "o"), "--plan"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "10000000 runs" in err and "max_runs" in err and "10000" in err
    assert elapsed < 1.0, f"refused after {elapsed:.2f} s"  # counted, not expanded
    assert not (tmp_path / "o").exists()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="max_runs"):
        load_study(study)
    assert time.monotonic() - t0 < 1.0


def test_max_runs_raises_the_limit(tmp_path):
    from sharplab.runner.config import MAX_RUNS

    assert len(load_study(_grid_file(tmp_path, seeds=2)).runs()) == 8000 <= MAX_RUNS
    with pytest.raises(ConfigError, match="more than the limit of 7999; .*max_runs = 8000"):
        load_study(_grid_file(tmp_path, seeds=2, max_runs=7999))
    with pytest.raises(ConfigError, match="max_runs"):
        load_study(_grid_file(tmp_path, seeds=3))  # 12,000 > the default 10,000
    assert len(load_study(_grid_file(tmp_path, seeds=3, max_runs=12000)).runs()) == 12000


@pytest.mark.parametrize("value", ["0", "-1", '"many"', "1.5", "true", "[10]"])
def test_a_bad_max_runs_is_one_line(tmp_path, capsys, value):
    from sharplab.cli import main

    study = write_study(tmp_path / "s.toml", f'max_runs = {value}\nlab = "runner-toy"\nname = "s"\n'
                                             "[grid]\nx = [0.1, 0.2]\n")
    assert main(["run", str(study), "--out", str(tmp_path / "o"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "max_runs" in err, err
    assert not (tmp_path / "o").exists()
