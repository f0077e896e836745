"""Runner commands: ``run``, ``status``, ``reset``, ``report``, ``export``, ``store copy``, ``sweep``, ``labs``."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from sharplab.cli._args import add_threads, out_dir, positive_int, seed, text, typed
from sharplab.errors import SharplabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run every configuration of a study file (resumes unfinished runs)")
    p.add_argument("study", help="study file (.toml): lab, [config], [grid]")
    p.add_argument("--out", default=None, help="output folder (default: runs/<study name>)")
    p.add_argument("--jobs", type=int, default=1, help="configurations run at once, one process each")
    p.add_argument("--nproc", type=int, default=1, help="processes per run under torchrun (DDP; gloo on CPU)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (also when CI is set)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars per run")
    p.add_argument("--plan", action="store_true",
                   help="only record the runs in the store and print the ids of those not finished (start nothing)")
    _store_option(p)
    p.set_defaults(func=cmd_run, needs_labs=True)
    typed(p, study=text, out=out_dir, jobs=positive_int, nproc=positive_int)

    p = sub.add_parser("status", help="table of the runs in an output folder (--check: verify their files)")
    p.add_argument("out", type=text, help="output folder of `sharplab run`")
    p.add_argument("--check", action="store_true",
                   help="verify that every finished run's files exist and match the store (exit 1 if not)")
    _store_option(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reset", help="make runs pending again (their checkpoint and history are deleted)")
    p.add_argument("out", type=text, help="output folder of `sharplab run`")
    p.add_argument("run_ids", nargs="+", type=text, metavar="RUN", help="run id(s) from `sharplab status`")
    p.add_argument("--force", action="store_true",
                   help="also reset a finished run, or one held by a live process (which stops at its next write)")
    _store_option(p)
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("report", help="write report.md, report.html and figures for an output folder")
    p.add_argument("out", help="output folder of `sharplab run`")
    p.add_argument("--title", default=None)
    _store_option(p)
    p.set_defaults(func=cmd_report, needs_labs=True)
    typed(p, out=text, title=text)

    p = sub.add_parser("export", help="one row per run (config, status, final metrics) to stdout")
    p.add_argument("out", help="output folder of `sharplab run`")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV (default)")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="JSON lines")
    _store_option(p)
    p.set_defaults(func=cmd_export, format="csv")
    typed(p, out=text)

    p = sub.add_parser("store", help="results-store tools: `store copy SRC DST` (SQLite <-> PostgreSQL)")
    store_sub = p.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    c = store_sub.add_parser("copy", help="copy every run and its history from one store into another")
    c.add_argument("src", type=text, help="an output folder (its results.sqlite), sqlite:///FILE or postgresql://...")
    c.add_argument("dst", type=text, help="the same kinds; refused if it holds any of the runs with other contents")
    c.set_defaults(func=cmd_store_copy)

    p = sub.add_parser("sweep", help="Optuna hyperparameter search over the study's [sweep] space")
    p.add_argument("study", help="study file with a [sweep] table")
    p.add_argument("--trials", type=int, required=True, help="completed trials the study should reach")
    p.add_argument("--storage", default=None,
                   help="Optuna RDB URL (default sqlite:///<out>/optuna.db); postgresql://... for many hosts")
    p.add_argument("--out", default=None, help="output folder for the runs (default: runs/sweep-<name>)")
    p.add_argument("--study-name", default=None, help="Optuna study name (default: the study file's name)")
    p.add_argument("--sampler-seed", type=int, default=None, help="TPE sampler seed (default: random)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep, needs_labs=True)
    typed(p, study=text, trials=positive_int, storage=storage_url, out=out_dir, study_name=text,
          sampler_seed=seed)

    p = sub.add_parser("labs", help="list registered labs, or the config fields of one")
    p.add_argument("name", nargs="?", help="a lab name: show its config fields, defaults and allowed values")
    p.set_defaults(func=cmd_labs, needs_labs=True)
    typed(p, name=text)


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=store_url, default=None, metavar="URL",
                   help="results store: postgresql://user@host/db for many machines, sqlite:///FILE; "
                        "default $SHARPLAB_STORE, else DIR/results.sqlite")


def store_url(value: str) -> str:
    """A results-store URL of a known scheme."""
    from sharplab.runner.store import check_store_url

    try:
        return check_store_url(value)
    except SharplabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_store(out: str | Path, url: str | None):
    """The store of ``out``, opened read-only (status, export, report never write)."""
    from sharplab.runner.store import open_store

    return open_store(out, url, readonly=True, wait=False)


def storage_url(value: str) -> str:
    """An Optuna storage URL of a known scheme with a usable SQLite path."""
    from sharplab.runner.sweep import check_storage_url

    try:
        check_storage_url(value)
    except SharplabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _quiet(args: argparse.Namespace) -> bool:
    import os

    return bool(args.quiet or os.environ.get("CI"))


def cmd_run(args: argparse.Namespace) -> int:
    from sharplab.runner.config import load_study
    from sharplab.runner.execute import check_output_paths, run_study
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import open_store, resolve_store, status_line

    study = load_study(args.study)
    out = Path(args.out or Path("runs") / study.name)
    url = resolve_store(args.store)
    check_output_paths(study, out, study.runs(args.nproc))
    # a corrupt store, bad credentials or an unreachable server stop here, before anything is printed or run
    if url is not None:
        open_store(out, url, wait=False).close()
    elif (out / "results.sqlite").exists():
        open_store(out, create=False).close()
    if args.plan:
        from sharplab.runner.execute import plan_study

        todo = plan_study(study, out, args.nproc, url)
        print(f"study {study.name!r}: {len(study.runs(args.nproc))} runs recorded in {out}, {len(todo)} not finished",
              file=sys.stderr)
        for run_id in todo:
            print(run_id)
        return 0
    from sharplab.runner.devices import check_devices

    check_devices(study.runs(args.nproc))
    options = RunOptions(quiet=_quiet(args), tensorboard=args.tensorboard, threads=args.threads, store=url)
    n = len(study.runs(args.nproc))
    print(f"study {study.name!r}: lab {study.lab}, {n} runs -> {out}", file=sys.stderr)
    counts = run_study(study, out, jobs=args.jobs, nproc=args.nproc, options=options)
    summary = status_line(counts.elements())
    print(f"{summary}. Next: sharplab status {out}; sharplab report {out}")
    if counts.get("failed"):
        print(f"{counts['failed']} runs failed: see `sharplab status {out}` and runs/<id>/run.log",
              file=sys.stderr)
        return 1
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def cmd_status(args: argparse.Namespace) -> int:
    from sharplab.runner.aggregate import params, varying_keys
    from sharplab.runner.store import StoreError, status_line

    with _read_store(args.out, args.store) as store:
        damage = store.integrity_problems() if args.check else []
        if damage:  # a garbled page can hide behind readable run rows (the history table, an index)
            raise StoreError(f"{store.location} is damaged ({'; '.join(damage)[:200]}); move it away and re-run "
                             "the study (finished runs resume from their folders' checkpoints)")
        runs = store.runs(history=False)
    if not runs:
        print(f"no runs in {args.out}")
        return 0
    if args.check:
        return _check(args.out, runs)
    keys = varying_keys(runs)
    metric_names = list(dict.fromkeys(k for r in runs for k in r.metrics))[:3]
    header = ["run", "lab", "status", *keys, "seed", "step", *metric_names, "time", "note"]
    rows = []
    for r in runs:
        p = params(r)
        note = r.error or ""
        if r.status == "diverged":
            note = f"step {r.diverged_step}: {note}"
        elif r.status == "running":
            reason = r.takeover_reason()
            note = (f"{reason}: the next `sharplab run` takes it over" if reason
                    else f"{r.blocked_by()}; `sharplab reset {args.out} {r.run_id} --force` frees it")
        rows.append([r.run_id, r.lab, r.display_status, *[_fmt(p.get(k)) for k in keys], str(r.seed),
                     _fmt(r.last_step), *[_fmt(r.metrics.get(m)) for m in metric_names],
                     f"{r.seconds:.0f}s", note[:110]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    print("\n" + status_line(r.display_status for r in runs))
    return 0


def _check(out: str, runs: list) -> int:
    """``status --check``: every finished run's folder, run.json and recorded files exist and match."""
    from sharplab.runner.run_folder import verify_run_files

    problems = [(r.run_id, p) for r in runs if r.status in ("done", "diverged") for p in verify_run_files(r)]
    for run_id, problem in problems:
        print(f"{run_id}: {problem}")
    n = sum(r.status in ("done", "diverged") for r in runs)
    if problems:
        bad = len({run_id for run_id, _ in problems})
        print(f"\n{bad} of {n} finished runs have problems; `sharplab reset {out} RUN --force` reruns one",
              file=sys.stderr)
        return 1
    print(f"all {n} finished runs have their files in place")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from sharplab.runner.execute import reset_run

    for run_id in dict.fromkeys(args.run_ids):
        before = reset_run(args.out, run_id, force=args.force, store_url=args.store)
        print(f"{run_id}: {before} -> pending (checkpoint and history deleted)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sharplab.runner.report import build_report

    paths = build_report(args.out, args.title, store_url=args.store).write(args.out)
    print(f"report: {paths['html']}\n        {paths['markdown']}")
    return 0


def export_rows(out: str | Path, store_url: str | None = None) -> tuple[list[str], list[dict[str, object]]]:
    """Columns and rows of ``sharplab export``: identity, config keys, status, timing, final metrics."""
    with _read_store(out, store_url) as store:
        runs = store.runs(history=False)
    fixed = ["run_id", "lab", "study", "seed", "nproc", "threads", "status", "seconds", "diverged_step", "error"]
    config_keys = list(dict.fromkeys(k for r in runs for k in r.config if k not in fixed))
    taken = set(fixed) | set(config_keys)
    metric_keys = list(dict.fromkeys(k for r in runs for k in r.metrics))
    metric_cols = {m: (f"final_{m}" if m in taken else m) for m in metric_keys}
    rows = []
    for r in runs:
        row: dict[str, object] = {"run_id": r.run_id, "lab": r.lab, "study": r.study, "seed": r.seed,
                                  "nproc": r.nproc, "threads": r.threads, "status": r.status,
                                  "seconds": round(r.seconds, 3), "diverged_step": r.diverged_step, "error": r.error}
        row.update({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.config.items()})
        row.update({metric_cols[m]: v for m, v in r.metrics.items()})
        rows.append(row)
    return [*fixed[:7], *config_keys, *metric_cols.values(), *fixed[7:]], rows


def cmd_export(args: argparse.Namespace) -> int:
    columns, rows = export_rows(args.out, args.store)
    if args.format == "json":
        for row in rows:
            print(json.dumps({c: row.get(c) for c in columns}, default=str))
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    try:
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        sys.stdout.flush()
    except BrokenPipeError:  # `sharplab export DIR | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_store_copy(args: argparse.Namespace) -> int:
    from sharplab.runner.store.copy import copy_store

    added, kept = copy_store(args.src, args.dst)
    print(f"copied {added} runs from {args.src} to {args.dst}" + (f" ({kept} were there already)" if kept else ""))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sharplab.runner.config import RunSpec, load_study
    from sharplab.runner.devices import check_devices
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.sweep import run_sweep

    study = load_study(args.study)
    check_devices([RunSpec(study.lab, study.base)])
    out = Path(args.out or Path("runs") / f"sweep-{study.name}")
    storage = args.storage or f"sqlite:///{out / 'optuna.db'}"
    ostudy = run_sweep(study, out, args.trials, storage, args.study_name, args.sampler_seed,
                       RunOptions(quiet=_quiet(args), threads=args.threads))
    from optuna.trial import TrialState

    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    print(f"study {ostudy.study_name!r}: {len(complete)} completed trials in {storage}")
    if complete:
        best = ostudy.best_trial
        print(f"best value {best.value:.6g} (trial {best.number}): {json.dumps(best.params)}")
    print(f"runs: {out}; next: sharplab report {out}")
    failed, tried = failed_trials(ostudy)
    if failed or not complete:
        which = f"all {tried}" if failed == tried else f"{failed} of {tried}"
        what = f"{which} trials of this sweep failed" if failed else "no trial completed"
        print(f"error: {what}: see `sharplab status {out}` and {out}/runs/<id>/run.log", file=sys.stderr)
        return 1
    return 0


def failed_trials(ostudy: object) -> tuple[int, int]:
    """(failed, started) trials of this process in ``ostudy``: failed = Optuna FAIL, or pruned because a
    run failed (a diverged run is a result, not a failure)."""
    import os
    import socket

    from optuna.trial import TrialState

    here = f"{socket.gethostname()}:{os.getpid()}"
    mine = [t for t in ostudy.get_trials(deepcopy=False) if t.user_attrs.get("worker") == here]  # type: ignore[attr-defined]
    failed = [t for t in mine if t.state == TrialState.FAIL
              or (t.state == TrialState.PRUNED and "failed" in t.user_attrs.get("statuses", []))]
    return len(failed), len(mine)


def cmd_labs(args: argparse.Namespace) -> int:
    from sharplab.labs import load_all
    from sharplab.runner.labs import LABS, get_lab

    load_all()
    if args.name is None:
        width = max((len(n) for n in LABS.names()), default=0)
        for name in LABS.names():
            print(f"{name.ljust(width)}  {LABS.get(name).description}")
        return 0
    import dataclasses

    from sharplab.runner.validation import allowed, config_fields

    lab = get_lab(args.name)
    print(f"{lab.name}: {lab.description}\n")
    for name, (typ, f) in config_fields(lab.config_cls).items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f"  {name} = {json.dumps(default, default=str)}  ({allowed(typ, f.metadata)})"
        print(f"{text}  {f.metadata.get('help', '')}")
    return 0
