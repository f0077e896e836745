"""Every command, fed bad values: one line on stderr (``error: ...``), exit code 2, nothing written.

To add a case, append a row to :data:`BAD` -- ``(argv, words expected in the message)``. Placeholders:
``{file}`` a regular file, ``{tmp}`` an empty folder, ``{study}`` a valid study file, ``{corrupt}`` a folder
whose results.sqlite is garbage. A new option must take a validating type from ``sharplab.cli._args``
(``test_every_option_has_a_validating_type`` fails otherwise; ``_args.text`` marks free text).
"""

from __future__ import annotations

import argparse

import pytest

from sharplab.cli import _args, build_parser, main

OUT_BAD = ["{file}", "{file}/sub", "/proc/sharplab-out"]

BAD: list[tuple[list[str], str]] = [
    *[(["run", "{study}", "--out", o], "--out") for o in OUT_BAD],
    (["run", "{study}", "--threads", "100000"], "--threads"),
    (["run", "{study}", "--threads", "-1"], "--threads"),
    (["run", "{study}", "--jobs", "0"], "--jobs"),
    (["run", "{study}", "--nproc", "x"], "--nproc"),
    (["run", "{tmp}/missing.toml"], "not found"),
    (["sweep", "{study}", "--trials", "0"], "--trials"),
    (["sweep", "{study}", "--trials", "2", "--sampler-seed", str(2**63)], "--sampler-seed"),
    (["sweep", "{study}", "--trials", "2", "--sampler-seed", "-1"], "--sampler-seed"),
    (["sweep", "{study}", "--trials", "2", "--storage", "redis://host/db"], "--storage"),
    (["sweep", "{study}", "--trials", "2", "--storage", "sqlite:///{file}/x.db"], "--storage"),
    (["sweep", "{study}", "--trials", "2", "--out", "{file}"], "--out"),
    (["status", "{corrupt}"], "results.sqlite"),
    (["export", "{corrupt}"], "results.sqlite"),
    (["report", "{corrupt}"], "results.sqlite"),
    (["run", "{study}", "--out", "{corrupt}"], "results.sqlite"),
    (["status", "{tmp}"], "no results"),
    (["reset", "{corrupt}", "abc"], "results.sqlite"),
    (["data", "download", "mnist", "--root", "{tmp}/r", "--timeout", "-1"], "--timeout"),
    (["data", "download", "mnist", "--root", "{tmp}/r", "--timeout", "nan"], "--timeout"),
    (["data", "download", "mnist", "--root", "{tmp}/r", "--base-url", "not a url"], "--base-url"),
    (["data", "download", "mnist", "--root", "{file}"], "is a file"),
    (["data", "info", "toy", "--seed", "-1"], "--seed"),
    (["data", "info", "toy", "--root", "{file}"], "--root"),
    (["data", "info", "toy", "--set", "n_train=1e11"], "n_train"),
    (["data", "info", "toy", "--set", "n_train=abc"], "n_train"),
    (["demo", "--threads", "-1", "--out", "{tmp}/demo"], "--threads"),
    *[(["demo", "--out", o], "--out") for o in OUT_BAD],
    (["diag-net", "--seed", "-1"], "--seed"),
    (["diag-net", "--seed", str(2**63)], "--seed"),
    (["diag-net", "--seed", "0,0"], "repeats"),
    (["diag-net", "--rho", "inf"], "--rho"),
    (["diag-net", "--lr", "0"], "--lr"),
    (["diag-net", "--m", "0"], "--m"),
    *[(["diag-net", "--out", o], "--out") for o in OUT_BAD],
    (["relu-1d", "--width", "0"], "--width"),
    (["relu-1d", "--steps", "-1"], "--steps"),
    (["relu-1d", "--tol", "nan"], "--tol"),
    (["relu-1d", "--rho", "0.1,0.1"], "repeats"),
    *[(["relu-1d", "--out", o], "--out") for o in OUT_BAD],
    (["convergence", "--batch-size", "0"], "--batch-size"),
    (["convergence", "--decay-steps", "0"], "--decay-steps"),
    (["convergence", "--lr", "abc"], "--lr"),
    *[(["convergence", "--out", o], "--out") for o in OUT_BAD],
    (["feature-probe", "--data-seed", "-1"], "--data-seed"),
    (["feature-probe", "--data-option", "n_train=abc"], "n_train"),
    (["feature-probe", "--threads", "100000"], "--threads"),
    (["feature-probe", "--epochs", "-1"], "--epochs"),
    (["feature-probe", "--rho", "nan"], "--rho"),
    *[(["feature-probe", "--out", o], "--out") for o in OUT_BAD],
    (["mechanisms", "--weight-batch", "1"], "--weight-batch"),
    (["mechanisms", "--data-seed", "-1"], "--data-seed"),
    (["mechanisms", "--threads", "0"], "--threads"),
    (["mechanisms", "--m", "0"], "--m"),
    (["mechanisms", "--m", "-4"], "--m"),
    (["mechanisms", "--m", "7"], "--m"),  # does not divide the toy's batch of 64
    (["mechanisms", "--m", "16", "--batch-size", "24"], "--batch-size"),
    (["mechanisms", "--study", "three-feature", "--m", "7"], "--m"),
    *[(["mechanisms", "--out", o], "--out") for o in OUT_BAD],
    (["deep-net", "--seed", "-1"], "--seed"),
    (["deep-net", "m-sharpness", "--jobs", "0"], "--jobs"),
    (["deep-net", "m-sharpness", "--threads", "100000"], "--threads"),
    *[(["deep-net", "--out", o], "--out") for o in OUT_BAD],
]


@pytest.fixture
def places(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    study = tmp_path / "s.toml"
    study.write_text('lab = "digits"\nname = "s"\n[config]\nepochs = 1\n[sweep]\nmetric = "test_error"\n'
                     '[sweep.space]\nlr = { low = 0.01, high = 0.1 }\n')
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.sqlite").write_bytes(b"garbage " * 200)
    empty = tmp_path / "tmp"
    empty.mkdir()
    return {"file": str(file), "study": str(study), "corrupt": str(corrupt), "tmp": str(empty)}


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_gives_one_line_exit_2_and_writes_nothing(argv, words, places, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(places["tmp"])  # default output folders (runs/...) would appear here
    before = _snapshot(tmp_path)
    args = [a.format(**places) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before


def _commands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}".strip())
    yield prefix, parser


VALIDATORS = {name for name, obj in vars(_args).items() if callable(obj)}


def test_every_option_has_a_validating_type():
    """An option taking a value must use a type from sharplab.cli._args (or fixed choices)."""
    untyped = []
    for cmd, parser in _commands(build_parser()):
        for a in parser._actions:
            if not isinstance(a, (argparse._StoreAction, argparse._AppendAction)) or a.choices is not None:
                continue
            module = getattr(a.type, "__module__", "")
            if not (module.startswith("sharplab.cli") and a.type is not None):
                untyped.append(f"sharplab {cmd}: {a.dest} ({getattr(a.type, '__name__', a.type)})")
    assert not untyped, "give these options a type from sharplab.cli._args:\n" + "\n".join(untyped)
    assert "out_dir" in VALIDATORS
