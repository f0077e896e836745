"""``sharplab feature-probe``: SGD vs SAM variants, linear-probe error of the easy and the hard feature."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sharplab.cli._args import (
    add_seeds,
    add_threads,
    epochs,
    existing_dir,
    float_in,
    ints,
    lrs,
    nonneg,
    nonneg_ints,
    nonneg_numbers,
    numbers,
    out_dir,
    resolve_threads,
    size,
    text,
    typed,
)
from sharplab.cli._args import (
    seed as seed_type,
)
from sharplab.errors import ConfigError

DEFAULT_OUT = "runs/feature-probe"


def _names(text: str) -> list[str]:
    return [v.strip().lower() for v in text.split(",") if v.strip()]


def _option(text: str) -> tuple[str, Any]:
    from sharplab.labs.feature_quality.experiment import parse_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. hard_dims=16)")
    return key.strip(), parse_value(value)


def register(sub: argparse._SubParsersAction) -> None:
    from sharplab.labs.feature_quality.experiment import DATASETS

    p = sub.add_parser(
        "feature-probe",
        help="train SGD/SAM/LSAM/IW-only/LR-only and linearly probe the easy and the hard feature",
        description="Train each optimizer (lr and rho chosen on validation error), probe both features on "
        "the decorrelated probe splits, and print a feature x optimizer table with the untrained baseline.",
    )
    p.add_argument("--dataset", default="toy", choices=DATASETS)
    p.add_argument("--optimizer", type=_names, default=["sgd", "sam"], help="comma list: sgd,sam,lsam,iw-only,lr-only")
    p.add_argument("--rho", type=numbers, default=[0.05, 0.1, 0.2], help="rho grid (default 0.05,0.1,0.2)")
    p.add_argument("--m", type=ints, default=[0], metavar="M[,M...]",
                   help="m-sharpness micro-batch sizes for the SAM variants (0 = whole batch; e.g. 0,1,16); "
                   "m > 0 rows are named 'sam m=16'")
    p.add_argument("--sam-start-epoch", type=int, default=0, dest="sam_start_epoch",
                   help="plain SGD epochs before the SAM variant is switched on (default 0)")
    p.add_argument("--lr", type=numbers, default=[0.05], help="comma list: the learning-rate grid (default 0.05)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--model", default="auto", help="auto | pathway | small-cnn | small-cnn-gap | mlp | preact-resnet18")
    add_seeds(p, [0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data split (fixed over seeds)")
    p.add_argument("--root", default=None, help="data root (default: $SHARPLAB_DATA, then offline sources)")
    p.add_argument(
        "--data-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
        help="data-set loader option, repeatable (e.g. --data-option hard_dims=16)",
    )  # fmt: skip
    add_threads(p)
    p.add_argument("--json", action="store_true", help="one JSON object per (dataset, optimizer, seed)")
    p.add_argument("--out", default=None, help=f"output folder: the runs' store (re-running resumes), results.json, "
                   f"table.txt and PNG figures (default {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also when CI is set)")
    p.set_defaults(func=handle, needs_labs=True)
    typed(p, rho=nonneg_numbers, lr=lrs, m=nonneg_ints, sam_start_epoch=epochs, epochs=epochs,
          batch_size=size, momentum=float_in(0.0, 0.999), weight_decay=nonneg, model=text,
          data_seed=seed_type, root=existing_dir, out=out_dir)


def _data_options(options: list[tuple[str, Any]]) -> str:
    """``--data-option`` pairs as the lab's ``data_options`` string (``"k=v,k=v"``, read back by
    :func:`~sharplab.labs.feature_quality.experiment.parse_options`)."""
    for key, value in options:
        if "," in str(value) or "=" in str(value):
            raise ConfigError(f"--data-option {key}={value}: a value may not contain ',' or '='")
    return ",".join(f"{key}={value}" for key, value in dict(options).items())


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sharplab.cli.deep_net import failed_runs
    from sharplab.io import atomic_write_json, atomic_write_text
    from sharplab.labs.feature_quality.experiment import load_data, parse_options
    from sharplab.labs.feature_quality.probe_study import probe_result, probe_study
    from sharplab.labs.feature_quality.report import format_table, write_figures
    from sharplab.runner.execute import plan_study, run_study
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import open_store

    if any(m < 0 or m > args.batch_size for m in args.m):
        raise ConfigError(f"--m {args.m} must be between 0 and --batch-size {args.batch_size}")
    if args.sam_start_epoch < 0:
        raise ConfigError(f"--sam-start-epoch {args.sam_start_epoch} must be >= 0")
    config = {
        "dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size, "momentum": args.momentum,
        "weight_decay": args.weight_decay, "model": args.model, "sam_start_epoch": args.sam_start_epoch,
        "data_seed": args.data_seed, "root": args.root or "", "data_options": _data_options(args.data_option),
    }  # fmt: skip
    study = probe_study(config, args.optimizer, seeds=list(args.seed), lrs=args.lr, rhos=args.rho, ms=args.m)
    # a data set that cannot be loaded stops here with one line; the runs (in this process) reuse the load
    load_data(args.dataset, root=args.root, data_seed=args.data_seed, options=parse_options(config["data_options"]))
    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    out = Path(args.out or DEFAULT_OUT)
    quiet = args.quiet or bool(os.environ.get("CI"))
    new = len(plan_study(study, out))  # the runs this command trains; the others are in the store already
    counts = run_study(study, out, options=RunOptions(quiet=quiet, threads=threads))
    with open_store(out, create=False) as store:
        result = probe_result(study, store.runs())
    chosen = result.chosen()
    title = (
        f"feature-probe on {result.dataset}: {len(args.seed)} seed(s), {args.epochs} epochs, errors in % "
        f"(mean ± std over seeds); lr/rho chosen on validation error; {result.seconds:.1f} s"
    )
    table = format_table(chosen, title)
    if result.unlearned:
        table += ("\nno configuration learned (every one had a run near chance or diverged), nothing selected: "
                  + ", ".join(result.unlearned))
    if args.json:
        for rec in chosen:
            print(json.dumps(rec, sort_keys=True))
    else:
        print(table)
    atomic_write_json(out / "results.json", {"dataset": result.dataset, "seconds": result.seconds,
                                             "args": {k: v for k, v in vars(args).items() if k != "func"},
                                             "rows": result.rows})  # fmt: skip
    atomic_write_text(out / "table.txt", table + "\n")
    paths = write_figures(result.rows, out, result.dataset)
    print(f"{len(result.rows)} runs in {out} ({new} new; `sharplab report {out}`); wrote {out / 'results.json'}, "
          f"{out / 'table.txt'}" + "".join(f", {p}" for p in paths), file=sys.stderr)
    return failed_runs(counts, len(study.runs()), out)
