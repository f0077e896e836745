"""The ``sharplab`` command. Each sub-command lives in its own module under ``sharplab.cli``.

A module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its parser(s) and sets
``func=handler`` with ``handler(args) -> int``; a command that looks labs up by name (through the runner)
also sets ``needs_labs=True`` and :func:`main` registers the bundled labs first (the runner imports no
lab: the CLI, the top layer, does). User errors (:class:`~sharplab.errors.SharplabError`)
print one line ``error: ...`` and exit with code 2; so does an operating-system error that no command
turned into a message of its own (a full disk, a permission, a folder where a file should be): one line
naming the error and the path. A closed output pipe (``sharplab ... | head -1``) ends the command quietly.
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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except (SharplabError, Diverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`| head -1`): stop quietly
        _silence_stdout()
        return 0
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what it is and the path(s) it concerns."""
    what = exc.strerror or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f" ({' -> '.join(paths)})" if paths else ""
    return f"{what}{where}; the command stopped there".replace("\n", " ")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout is not a real file (a test)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
