"""``sharplab deep-net STUDY``: the deep-network studies of *Towards Understanding SAM* through the runner.

STUDY is one of ``m-sharpness``, ``sharpness``, ``finetune``, ``label-noise``, ``convergence`` (see
:mod:`sharplab.labs.deep_net.studies`). The runs go into ``--out`` (SQLite store, one folder per run,
checkpoints: re-running resumes and skips finished runs); the report (``report.md``, ``report.html``,
``figures/``) is written there too. ``--json`` prints one JSON object per run on stdout. ``--set KEY=VALUE``
overrides any field of the lab's config (``sharplab labs`` lists the lab; e.g. ``--set dataset=fashion-mnist``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sharplab.cli._args import (
    MAX_EPOCHS,
    add_seeds,
    add_threads,
    epochs,
    existing_dir,
    int_in,
    ints,
    nonneg_numbers,
    numbers,
    out_dir,
    positive_int,
    text,
    typed,
)
from sharplab.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from sharplab.labs.deep_net.studies import STUDIES

    p = sub.add_parser("deep-net", help="deep-network studies: m-sharpness, sharpness, fine-tuning, label noise, "
                       "convergence (PreAct ResNet, through the runner)",
                       description="Quick CPU defaults: digits, PreAct ResNet-18 of width 8, batch 64. These are "
                       "smoke tests: 450 test images cannot resolve the study's effects; the CPU stand-ins "
                       "that can are examples/standins/*.toml (docs/deep_net_standins.md). GPU versions with the "
                       "study's settings: examples/deep_net_*.toml (sharplab run).")
    p.add_argument("study", choices=STUDIES, help="which study")
    p.add_argument("--out", default=None, help="output folder (default runs/deep-net-STUDY)")
    p.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    add_seeds(p, None, "the quick study's, 0,1 or 0,1,2; see docs/deep_net.md")
    p.add_argument("--rho", type=numbers, default=None, help="comma list of radii (study default if omitted)")
    p.add_argument("--m", type=ints, default=None, help="comma list of micro-batch sizes (m-sharpness)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (finetune: E, the ERM / SAM phase)")
    p.add_argument("--epochs-after", type=int, default=5, help="finetune: E' epochs after the switch")
    p.add_argument("--dataset", default=None, help="digits, fashion-mnist, cifar10, cifar100")
    p.add_argument("--root", default=None, help="data root (else $SHARPLAB_DATA / offline folders)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, one process each (default 1; --jobs 2 on 2 cores: see docs/deep_net.md)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handle, needs_labs=True)
    typed(p, out=out_dir, rho=nonneg_numbers, epochs=epochs, epochs_after=int_in(1, MAX_EPOCHS),
          dataset=text, root=existing_dir, set=text, jobs=positive_int)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from sharplab.labs.deep_net.config import DeepNetConfig
    from sharplab.runner.validation import config_fields

    base: dict[str, Any] = {}
    for key, opt in (("epochs", args.epochs), ("dataset", args.dataset), ("root", args.root),
                     ("device", args.device)):
        if opt is not None:
            base[key] = opt
    fields = config_fields(DeepNetConfig)
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ConfigError(f"--set {item!r}: use KEY=VALUE with KEY one of: {', '.join(fields)}")
        try:
            base[key] = json.loads(value)
        except json.JSONDecodeError:
            base[key] = value
    return base


def handle(args: argparse.Namespace) -> int:
    from sharplab.labs.deep_net.studies import QUICK_SEEDS, add_sections, analyse, grids, summarise
    from sharplab.runner.config import parse_study
    from sharplab.runner.execute import run_study
    from sharplab.runner.report import build_report
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import open_store

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs} must be >= 1")
    if args.epochs_after < 1:
        raise ConfigError(f"--epochs-after {args.epochs_after} must be >= 1")
    out = Path(args.out or f"runs/deep-net-{args.study}")
    specs = grids(args.study, _overrides(args), args.rho, args.m, args.epochs_after)
    studies = [parse_study({"lab": "deep-net", "name": name, "config": base,
                            "grid": {**grid, "seed": list(args.seed or QUICK_SEEDS[args.study])}})
               for name, base, grid in specs]
    from sharplab.runner.devices import check_devices

    ids = set()
    for st in studies:  # every configuration is validated before the first run starts
        ids.update(s.run_id for s in st.runs())
        check_devices(st.runs())
    from collections import Counter

    counts: Counter = Counter()
    for st in studies:
        counts += run_study(st, out, jobs=args.jobs, options=RunOptions(quiet=args.quiet, threads=args.threads))
    with open_store(out, create=False) as store:
        records = [r for r in store.runs() if r.run_id in ids]
    analysis = analyse(args.study, out, records)
    summary = summarise(records, analysis if args.study == "sharpness" else None)
    builder = build_report(out, title=f"sharplab deep-net {args.study}")
    add_sections(args.study, analysis, builder, summary)
    paths = builder.write(out)
    if args.json:
        for r in records:
            print(json.dumps({"run_id": r.run_id, "seed": r.seed, "status": r.status, "config": r.config,
                              "metrics": r.metrics}, default=str))
        print(json.dumps({"study": args.study, "summary": summary, "analysis": analysis}, default=str))
    else:
        print(f"{len(records)} runs in {out}; report: {paths.get('markdown')}", file=sys.stderr)
    return failed_runs(counts, len(ids), out)


def failed_runs(counts: Any, total: int, out: Path) -> int:
    """Exit code of a study: 1 (with the count on stderr) when any run failed, else 0."""
    failed = counts.get("failed", 0)
    if not failed:
        return 0
    which = f"all {total}" if failed == total else f"{failed} of {total}"
    print(f"error: {which} runs failed: see `sharplab status {out}` and {out}/runs/<id>/run.log", file=sys.stderr)
    return 1
