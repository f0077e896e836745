"""``sharplab mechanisms``: SAM's importance weighting and learning-rate scaling, and their ablation.

.. code-block:: text

    sharplab mechanisms --dataset toy --seeds 3 --out runs/mech          # table + PNG figures
    sharplab mechanisms --dataset fmnist-mnist --variant lsam --json      # one JSON object per line
    sharplab mechanisms --study three-feature --seeds 3                   # easy / medium / hard toy
    sharplab mechanisms --dataset toy --m 16                              # m-sharpness: 16-example micro-batches

Unset options take the per-data-set defaults of :data:`DATASET_DEFAULTS`, then those of
:class:`~sharplab.labs.feature_quality.mechanisms.MechanismsConfig`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from sharplab.cli._args import (
    MAX_SIZE,
    add_seeds,
    add_threads,
    epochs,
    existing_dir,
    float_in,
    int_in,
    lr,
    nonneg,
    out_dir,
    resolve_threads,
    size,
    steps,
    text,
    typed,
)
from sharplab.cli._args import (
    seed as seed_type,
)
from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.experiment import parse_value

# Per data set: the hyperparameters the study uses unless given on the command line.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": {"rho": 0.3, "lr": 0.05, "epochs": 10, "batch_size": 64, "record_every": 10},
    "fmnist-mnist": {"rho": 0.1, "lr": 0.05, "epochs": 3, "batch_size": 128, "record_every": 25,
                     "weight_batch": 512},
}
DEFAULT_OUT = "runs/mechanisms"
THREE_FEATURE_OUT = "runs/three-feature"  #: --study three-feature's default output folder
STUDY = "mechanisms"  #: the study name its runs are recorded under
_OPTIONS = ("variant", "phantom", "ablation", "rho", "lr", "momentum", "weight_decay", "epochs", "batch_size",
            "record_every", "weight_batch", "root", "data_seed", "m")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mechanisms",
        help="SAM's two mechanisms (importance weighting, learning-rate scaling) along training + ablation",
        description="Record importance weights (Lorenz curves, Gini) and v_hard/v_easy at the real and the "
        "phantom parameter along SGD and SAM training, and train IW-only / LR-only to see how much of SAM's "
        "hard-feature gain each mechanism recovers (Springer et al., ICLR 2024).",
    )
    p.add_argument("--study", choices=["mechanisms", "three-feature"], default="mechanisms",
                   help="mechanisms (default) or the three-feature toy: SGD vs SAM probed on easy/medium/hard")
    p.add_argument("--dataset", default="toy", help="two-feature data set (default toy; see sharplab data list)")
    p.add_argument("--variant", choices=["sam", "lsam"], help="SAM variant whose phantom is studied")
    p.add_argument("--phantom", choices=["batch", "per-example"],
                   help="importance weights at the batch phantom (SAM) or each example's own (1-SAM)")
    p.add_argument("--ablation", help="comma list of iw-only,lr-only ('' for none)")
    p.add_argument("--rho", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float, dest="weight_decay")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--m", type=int, help="m-sharpness: micro-batch size, a divisor of the batch size; each "
                   "micro-batch ascends on its own gradient (sam_grad(m=)); default: the whole batch")
    p.add_argument("--record-every", type=int, dest="record_every", help="steps between recordings")
    p.add_argument("--weight-batch", type=int, dest="weight_batch", help="examples for importance weights")
    p.add_argument("--root", help="data root (default: $SHARPLAB_DATA, then offline sources)")
    p.add_argument("--data-seed", type=int, dest="data_seed")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, repeatable (e.g. --data-option hard_dims=16)")
    add_seeds(p, [0, 1, 2])
    p.add_argument("--out", type=Path,
                   help="output folder: the runs' store (re-running resumes), PNG figures, mechanisms_<dataset>.json "
                   f"(default {DEFAULT_OUT}; three-feature: {THREE_FEATURE_OUT}, three_feature.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object per (optimizer, seed)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handler, needs_labs=True)
    typed(p, dataset=text, ablation=text, rho=nonneg, lr=lr, momentum=float_in(0.0, 0.999),
          weight_decay=nonneg, epochs=epochs, batch_size=size, m=size, record_every=steps,
          weight_batch=int_in(2, MAX_SIZE, what="--weight-batch"), root=existing_dir, data_seed=seed_type,
          data_option=text, out=lambda t: Path(out_dir(t)))


def data_options(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-option {item!r} is not KEY=VALUE; write e.g. --data-option hard_dims=16")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_config(args: argparse.Namespace):
    """The study's config from the command line, per-data-set defaults and the dataclass defaults."""
    from sharplab.labs.feature_quality.mechanisms import MechanismsConfig

    values: dict[str, Any] = {"dataset": args.dataset, **DATASET_DEFAULTS.get(args.dataset, {})}
    values.update({k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None})
    values["data_options"] = data_options(args.data_option)
    known = {f.name for f in fields(MechanismsConfig)}
    return MechanismsConfig(**{k: v for k, v in values.items() if k in known})


def _check(args: argparse.Namespace) -> None:
    for name in ("rho", "lr", "weight_decay"):
        v = getattr(args, name)
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    for name in ("epochs", "batch_size", "record_every", "weight_batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def handler(args: argparse.Namespace) -> int:
    import os

    import torch

    _check(args)
    if args.quiet:
        os.environ["CI"] = os.environ.get("CI") or "1"  # quiets the training loop's progress bars
    torch.set_num_threads(resolve_threads(args.threads))
    if args.study == "three-feature":
        return _three_feature(args)
    return _mechanisms(args)


def mechanisms_study(args: argparse.Namespace):
    """The study of the runner lab ``mechanisms``: the command's config (:func:`build_config`), one run per seed."""
    from dataclasses import asdict

    from sharplab.runner.config import parse_study

    cfg = build_config(args)
    return cfg, parse_study({"lab": "mechanisms", "name": STUDY, "config": asdict(cfg),
                             "grid": {"seed": list(args.seed)}})


def _mechanisms(args: argparse.Namespace) -> int:
    from sharplab.cli.deep_net import failed_runs
    from sharplab.labs.feature_quality.mechanisms import ABLATIONS, MechanismsResult, load_data
    from sharplab.labs.feature_quality.mechanisms_plots import (
        format_table,
        recovered_note,
        summary_rows,
        table_rows,
        write_figures,
    )
    from sharplab.runner.execute import plan_study, run_study
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import open_store

    cfg, study = mechanisms_study(args)
    load_data(cfg)  # a data set that cannot be loaded stops here with one line; the runs reuse the load
    out = args.out if args.out is not None else Path(DEFAULT_OUT)
    threads = resolve_threads(args.threads)
    new = len(plan_study(study, out))  # the runs this command trains; the others are in the store already
    counts = run_study(study, out, options=RunOptions(quiet=args.quiet, threads=threads))
    with open_store(out, create=False) as store:
        by_id = {r.run_id: r for r in store.runs(history=False)}
    done = [by_id[s.run_id] for s in study.runs() if by_id[s.run_id].status == "done"]
    results = [MechanismsResult.from_json(json.loads((r.run_dir / "mechanisms.json").read_text())) for r in done]
    if not results:
        return failed_runs(counts, len(args.seed), out)
    seconds = sum(float(r.seconds) for r in done)
    if args.json:
        for res in results:
            for opt in res.runs:
                key = opt.replace("-", "_")
                rec = {"dataset": cfg.dataset, "optimizer": opt, "seed": res.seed,
                       "rho": 0.0 if opt == "sgd" else cfg.rho, "m": 0 if opt == "sgd" else cfg.m,
                       "variant": cfg.variant, "phantom": cfg.phantom}
                rec.update({k[: -len(key) - 1]: _clean(v) for k, v in res.metrics.items() if k.endswith(f"_{key}")})
                if opt in ABLATIONS:
                    rec["recovered"] = _clean(res.metrics.get(f"recovered_{key}"))
                print(json.dumps(rec, sort_keys=True), flush=True)
    rows = summary_rows([r.metrics for r in results], list(results[0].runs), cfg.variant)
    table = format_table(table_rows(rows))
    stream = sys.stderr if args.json else sys.stdout
    print(f"mechanisms on {cfg.dataset}: {cfg.variant}, rho={cfg.rho}, "
          + (f"m={cfg.m} (each micro-batch's phantom), " if cfg.m else f"{cfg.phantom} phantom, ") +
          f"{len(results)} seed(s), {seconds:.1f} s", file=stream)
    print(table, file=stream)
    if note := recovered_note(rows, cfg.variant):
        print(note, file=stream)
    from sharplab.io import atomic_write_json, atomic_write_text

    paths = write_figures(results, out)
    atomic_write_json(out / f"mechanisms_{cfg.dataset}.json",
                      {"seconds": seconds, "runs": [r.to_json() for r in results]})
    atomic_write_text(out / f"mechanisms_{cfg.dataset}.txt", table + "\n")
    for path in paths:  # on the table's stream when --out was given, as the command always did
        print(f"wrote {path}", file=stream if args.out is not None else sys.stderr)
    print(f"{len(results)} runs in {out} ({new} new; `sharplab report {out}`)", file=sys.stderr)
    return failed_runs(counts, len(args.seed), out)


def _three_feature(args: argparse.Namespace) -> int:
    """SGD and SAM per seed on the three-feature toy, as a study of the runner lab ``three-feature`` into
    ``--out`` (default ``runs/three-feature``; a re-run finds the runs finished and trains nothing)."""
    from dataclasses import replace

    from sharplab.cli.deep_net import failed_runs
    from sharplab.labs.feature_quality.mechanisms_plots import format_table, mean_std
    from sharplab.labs.feature_quality.three_feature import FEATURES3, ThreeFeatureConfig
    from sharplab.runner.config import configs_study, run_spec
    from sharplab.runner.execute import plan_study, run_study
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import open_store

    changes = {k: getattr(args, k) for k in ("rho", "lr", "momentum", "weight_decay", "epochs", "batch_size", "m")
               if getattr(args, k) is not None}
    base = ThreeFeatureConfig(**changes, data_options=data_options(args.data_option))
    if base.m and base.batch_size % base.m:
        raise ConfigError(f"--m {base.m} must be a divisor of the batch size {base.batch_size} (--batch-size)")
    runs = [(replace(base, optimizer=opt, rho=0.0 if opt == "sgd" else base.rho), seed)
            for seed in args.seed for opt in ("sgd", "sam")]
    study = configs_study("three-feature", "mechanisms-three-feature", runs)
    out = args.out if args.out is not None else Path(THREE_FEATURE_OUT)
    new = len(plan_study(study, out))
    counts = run_study(study, out, options=RunOptions(quiet=args.quiet, threads=resolve_threads(args.threads)))
    with open_store(out, create=False) as store:
        by_id = {r.run_id: r for r in store.runs(history=False)}
    records = [(cfg, seed, by_id[run_spec("three-feature", cfg, seed).run_id]) for cfg, seed in runs]
    rows = [{"dataset": "toy3", "optimizer": cfg.optimizer, "seed": seed, "rho": cfg.rho, **rec.metrics}
            for cfg, seed, rec in records if rec.status == "done"]
    seconds = sum(float(rec.seconds) for _, _, rec in records if rec.status == "done")
    if args.json:
        for row in rows:
            print(json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=True))
    table = []
    for opt in ("sgd", "sam"):
        rs = [r for r in rows if r["optimizer"] == opt]
        line = {"optimizer": opt if opt == "sgd" else f"sam rho={base.rho:g}"}
        for f in (*FEATURES3, "test"):
            key = "test_error" if f == "test" else f"probe_error_{f}"
            m, s = mean_std([r[key] for r in rs])
            line[f"{f} err %"] = f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if math.isfinite(s) else "")
        line["v_h/v_e"] = "{:.3f}".format(mean_std([r["v_ratio"] for r in rs])[0])
        table.append(line)
    stream = sys.stderr if args.json else sys.stdout
    print(f"three-feature toy: SGD vs SAM, {len(args.seed)} seed(s), {seconds:.1f} s", file=stream)
    print(format_table(table), file=stream)
    from sharplab.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "three_feature.json", {"seconds": seconds, "rows": rows})
    atomic_write_text(out / "three_feature.txt", format_table(table) + "\n")
    _three_feature_figure(rows, out / "three_feature.png")
    print(f"{len(runs)} runs in {out} ({new} new; `sharplab report {out}`)", file=sys.stderr)
    return failed_runs(counts, len(runs), out)


def _three_feature_figure(rows: list[dict[str, Any]], path: Path) -> None:
    import io

    from sharplab.io import atomic_write_bytes
    from sharplab.labs.feature_quality.mechanisms_plots import mean_std
    from sharplab.labs.feature_quality.three_feature import FEATURES3
    from sharplab.runner.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for j, opt in enumerate(("sgd", "sam")):
        stats = [mean_std([r[f"probe_error_{f}"] for r in rows if r["optimizer"] == opt]) for f in FEATURES3]
        ax.bar([i + (j - 0.5) * 0.38 for i in range(3)], [100 * m for m, _ in stats], 0.38,
               yerr=[100 * s if math.isfinite(s) else 0 for _, s in stats], capsize=3, label=opt)
    ax.set_xticks(range(3), list(FEATURES3))
    ax.set_ylabel("probe error on decorrelated probe-test (%)")
    ax.set_title("three-feature toy: SGD vs SAM", fontsize=10)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
