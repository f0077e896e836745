"""The ``sharplab`` command. Each sub-command lives in its own module under ``sharplab.cli``.

A module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its parser(s) and sets
``func=handler`` with ``handler(args) -> int``; a command that looks labs up by name (through the runner)
also sets ``needs_labs=True`` and :func:`main` registers the bundled labs first (the runner imports no
lab: the CLI, the top layer, does). User errors (:class:`~sharplab.errors.SharplabError`)
print one line ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sharplab import __version__
from sharplab.errors import Diverged, SharplabError

COMMAND_MODULES: tuple[str, ...] = (
    "sharplab.cli.demo",
    "sharplab.cli.runner",  # run, status, report, export, sweep, labs
    "sharplab.cli.data",  # data info, data download
    "sharplab.cli.implicit_bias",  # diag-net, relu-1d, convergence
    "sharplab.cli.feature_quality",  # feature-probe
    "sharplab.cli.mechanisms",  # mechanisms
    "sharplab.cli.deep_net",  # deep-net STUDY
    "sharplab.cli.optim",  # optim list
)


def build_parser() -> argparse.ArgumentParser:
    from sharplab.cli._args import OneLineParser

    parser = OneLineParser(
        prog="sharplab",
        description="Sharpness-Aware Minimization: optimizers and labs that show what SAM does.",
    )
    parser.add_argument("--version", action="version", version=f"sharplab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad argument (one line on stderr, see OneLineParser), --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "needs_labs", False):
            from sharplab.labs import load_all

            load_all()
        return int(args.func(args) or 0)
    except (SharplabError, Diverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
