"""Every command, fed bad values: one line on stderr (``error: ...``), exit code 2, nothing written.

To add a case, append a row to :data:`BAD` -- ``(argv, words expected in the message)``. Placeholders:
``{file}`` a regular file, ``{tmp}`` an empty folder, ``{study}`` a valid study file, ``{corrupt}`` a folder
whose results.sqlite is garbage; made only for the cases that name them: ``{garbled}`` / ``{garbled_runs}``
a store with a valid header whose history / runs table page is overwritten (``{garbled_run}``: a run id in
it), ``{studydir}`` / ``{rundir}`` an output folder of ``{study}`` where ``studies/s.json`` / the run's
``run.json`` is a folder, ``{badmetric}`` a sweep study whose metric the lab does not report. A new option
must take a validating type from ``sharplab.cli._args`` (``test_every_option_has_a_validating_type`` fails
otherwise; ``_args.text`` marks free text).

The cases after ``# issue 23, item 8`` are the tracebacks (or silent acceptance) of an audit of main.
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
    # issue 23, item 8: each was a traceback (or was accepted and ran) on main before the fix
    (["data", "download", "mnist", "--root", "/proc/x"], "/proc"),
    (["data", "download", "mnist", "--root", "{tmp}/r", "--base-url", "http://[::1"], "--base-url"),
    (["data", "download", "mnist", "--root", "{tmp}/r", "--timeout", "1e308"], "--timeout"),
    (["diag-net", "--n", "1000000000"], "--n"),
    (["diag-net", "--d", "1000000000"], "--d"),
    (["diag-net", "--n-test", "1000000000"], "--n-test"),
    (["diag-net", "--log-curves", "1000000000"], "--log-curves"),
    (["relu-1d", "--width", "1000000000"], "--width"),
    (["feature-probe", "--seeds", "1000000000"], "--seeds"),
    (["data", "info", "toy", "--set", "hard_dims=10000000"], "limit"),
    (["data", "info", "toy", "--set", "noise_dims=1e11"], "noise_dims"),
    (["data", "info", "toy", "--set", "noise_dims=100000000000"], "noise_dims"),
    *[([cmd, "--lr", "1e308"], "--lr") for cmd in ("diag-net", "relu-1d", "convergence", "feature-probe",
                                                    "mechanisms")],
    (["run", "{study}", "--out", "{studydir}"], "studies/s.json is a folder"),
    (["run", "{study}", "--out", "{studydir}", "--plan"], "studies/s.json is a folder"),
    (["run", "{study}", "--out", "{rundir}"], "run.json is a folder"),
    (["report", "{garbled}"], "results.sqlite"),
    (["reset", "{garbled}", "{garbled_run}", "--force"], "results.sqlite"),
    (["status", "{garbled}", "--check"], "damaged"),  # a readable runs table no longer hides the damage
    (["status", "{garbled_runs}"], "results.sqlite"),
    (["export", "{garbled_runs}"], "results.sqlite"),
    (["report", "{garbled_runs}"], "results.sqlite"),
    (["sweep", "{badmetric}", "--trials", "1", "--out", "{tmp}/sw"], "metric"),
    # issue 23, item 9: a noise level that is not finite was accepted for the toy
    (["data", "info", "toy", "--set", "sigma_noise=nan"], "sigma_noise"),
    (["data", "info", "toy", "--set", "sigma_noise=inf"], "sigma_noise"),
]


STUDY = ('lab = "digits"\nname = "s"\n[config]\nepochs = 1\n[sweep]\nmetric = "{metric}"\n'
         '[sweep.space]\nlr = {{ low = 0.01, high = 0.1 }}\n')


def _stored(folder, garble: str | None = None) -> str:
    """A results store of two finished runs with history in ``folder``; ``garble``: the table whose root page
    is then overwritten (the file keeps its SQLite header, so it opens). Returns a run id."""
    import sqlite3
    from types import SimpleNamespace

    from sharplab.runner.store import ResultsStore

    specs = [SimpleNamespace(run_id=f"run{i}", lab="digits", study="s", seed=i, nproc=1, config={"epochs": 1})
             for i in range(2)]
    with ResultsStore(folder) as store:
        store.add_runs(specs)
        for s in specs:
            store.log_epoch(s.run_id, 1, {"test_error": 0.5})
            store.finish(s.run_id, "done", metrics={"test_error": 0.5}, files={})
    if garble is not None:
        path = folder / "results.sqlite"
        with sqlite3.connect(path) as db:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (garble,)).fetchone()[0]
        db.close()
        assert not path.with_name("results.sqlite-wal").exists()
        data = bytearray(path.read_bytes())
        data[(root - 1) * page_size:root * page_size] = b"\xde\xad\xbe\xef" * (page_size // 4)
        path.write_bytes(bytes(data))
    return specs[0].run_id


class Places(dict):
    """Placeholder -> path; the costlier places are made on first use only."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        file = root / "a-file"
        file.write_text("x")
        study = root / "s.toml"
        study.write_text(STUDY.format(metric="test_error"))
        corrupt = root / "corrupt"
        corrupt.mkdir()
        (corrupt / "results.sqlite").write_bytes(b"garbage " * 200)
        empty = root / "tmp"
        empty.mkdir()
        self.update(file=str(file), study=str(study), corrupt=str(corrupt), tmp=str(empty))

    def __missing__(self, key):
        root = self.root
        if key in ("garbled", "garbled_runs", "garbled_run"):
            for name, table in (("garbled", "epochs"), ("garbled_runs", "runs")):
                (root / name).mkdir()
                self["garbled_run"] = _stored(root / name, table)
                self[name] = str(root / name)
        elif key == "studydir":
            (root / "studydir" / "studies" / "s.json").mkdir(parents=True)
            self[key] = str(root / "studydir")
        elif key == "rundir":
            from sharplab.labs import load_all
            from sharplab.runner.config import load_study

            load_all()
            run_id = load_study(self["study"]).runs()[0].run_id
            (root / "rundir" / "runs" / run_id / "run.json").mkdir(parents=True)
            self[key] = str(root / "rundir")
        elif key == "badmetric":
            (root / "bad.toml").write_text(STUDY.format(metric="no_such_metric"))
            self[key] = str(root / "bad.toml")
        return dict.__getitem__(self, key)


@pytest.fixture
def places(tmp_path):
    return Places(tmp_path)


def _snapshot(root):
    """Every path under ``root`` with its size; not the WAL index SQLite itself makes beside a database that
    any reader opens (``-shm``, and an empty ``-wal``): read-only opens cannot remove them again."""
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if not (p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0)))


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_gives_one_line_exit_2_and_writes_nothing(argv, words, places, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(places["tmp"])  # default output folders (runs/...) would appear here
    args = [a.format_map(places) for a in argv]
    before = _snapshot(tmp_path)  # after the lazily made places
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


@pytest.mark.parametrize("argv", [["data", "info", "toy", "--json"], ["data", "info", "toy"]])
def test_a_closed_stdout_pipe_exits_quietly(argv, tmp_path):
    """``sharplab data info toy --json | head -1``: the reader has gone before the first line is written
    (its end of the pipe is closed before the child starts), so every write fails with EPIPE."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "sharplab", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == 0
