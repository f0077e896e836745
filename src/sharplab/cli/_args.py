"""Argument types shared by the commands: numbers (fractions allowed), comma lists, choices."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any


def number(text: str) -> float:
    """A float, or a fraction ``a/b`` evaluated exactly to the nearest double (e.g. ``5/30``)."""
    text = text.strip()
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.1, 1e-3 or 5/30)") from None


def numbers(text: str) -> list[float]:
    """A comma list of distinct finite numbers."""
    return finite_numbers(text)


def ints(text: str) -> list[int]:
    """A comma list of distinct integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a value; list each value once")
    return values


def choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma list)")
        return names

    return parse


# --- validated scalar types: every command takes its options through these, so a bad value stops in
# argparse with one line (exit 2) before anything is computed or written ----------------------------------
MAX_SEED = 2**63 - 1


def int_in(low: int | None = None, high: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An integer in ``[low, high]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]" if low is not None else f"<= {high}"
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be {bounds}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(low: float | None = None, high: float | None = None, strict_low: bool = False,
             what: str = "a number") -> Callable[[str], float]:
    """A finite number (fractions allowed) in ``[low, high]``, or ``(low, high]`` when ``strict_low``."""

    def parse(text: str) -> float:
        value = number(text)
        if value != value or abs(value) == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be finite")
        if low is not None and (value < low or (strict_low and value == low)):
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be {'>' if strict_low else '>='} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be <= {high:g}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_in(1)
seed = int_in(0, MAX_SEED, "a seed")
finite = float_in()
positive = float_in(0.0, strict_low=True)
nonneg = float_in(0.0)

# --- documented upper bounds of size-like options (docs/limits.md): past them a command would only exhaust
# memory or run for days, so they are refused before any work -------------------------------------------
#: examples or dimensions of a generated problem (``diag-net --n/--d``, ``relu-1d --width``, batch sizes)
MAX_SIZE = 100_000
#: test examples of a generated problem (``diag-net --n-test``)
MAX_TEST = 1_000_000
#: steps, iterations and epochs of one run
MAX_STEPS = 100_000_000
MAX_EPOCHS = 100_000
#: recorded points of a curve (``diag-net --log-curves``, ``--record-every``)
MAX_POINTS = 100_000
#: training seeds of one command (``feature-probe --seeds``, ``mechanisms --seeds``)
MAX_SEEDS = 1_000
#: a learning rate; past it every update overflows float32 (``RuntimeError`` in torch) or diverges
MAX_LR = 1e6
#: a network timeout in seconds (one day); ``1e308`` overflows the socket's time_t
MAX_TIMEOUT = 86_400.0

size = int_in(1, MAX_SIZE, "the size")
test_size = int_in(1, MAX_TEST, "the number of test examples")
steps = int_in(1, MAX_STEPS, "the number of steps")
nonneg_steps = int_in(0, MAX_STEPS, "the number of steps")
epochs = int_in(0, MAX_EPOCHS, "the number of epochs")
points = int_in(0, MAX_POINTS, "the number of points")
seed_count = int_in(1, MAX_SEEDS, "the number of seeds")
lr = float_in(0.0, MAX_LR, strict_low=True, what="a learning rate")
timeout = float_in(0.0, MAX_TIMEOUT, strict_low=True, what="the timeout in seconds")


def threads(text: str) -> int:
    """Torch threads: 1 to 4 x the CPUs of this machine (more only oversubscribes; 100000 crashes OpenMP)."""
    import os

    return int_in(1, 4 * (os.cpu_count() or 1), "the thread count")(text)


THREADS_HELP = ("torch threads per process (default: this machine's cores divided by the processes run at once, "
                "i.e. by --jobs; pass 1 on a machine other jobs load: docs/runner.md#threads)")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """The one ``--threads`` option of every command that trains (default None: :func:`resolve_threads`)."""
    parser.add_argument("--threads", type=threads, default=None, metavar="N", help=THREADS_HELP)


def resolve_threads(requested: int | None, processes: int = 1) -> int:
    """``--threads`` as given, else ``cores // processes`` (at least 1): the one default of every command."""
    import os

    return requested or max(1, (os.cpu_count() or 1) // max(1, processes))


SEEDS_HELP = "the seeds to run, a comma list (e.g. 0,1,4)"
SEEDS_COUNT_HELP = "shorthand for --seed 0,1,...,N-1"


class _SeedCount(argparse.Action):
    """``--seeds N`` stores ``[0, ..., N-1]`` where ``--seed`` stores its list: one destination, one meaning."""

    shows_default = False  # the default belongs to --seed, which shares the destination

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, list(range(values)))


def add_seeds(parser: argparse.ArgumentParser, default: list[int] | None, default_help: str | None = None) -> None:
    """The one seed convention of every command that trains over seeds: ``--seed 0,1,4`` (the list) or
    ``--seeds N`` (the first N seeds); both set ``args.seed``, a list (``default`` when neither is given)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=seeds, default=default, metavar="LIST",
                       help=SEEDS_HELP + (f" (default: {default_help})" if default_help else ""))
    group.add_argument("--seeds", dest="seed", type=seed_count, action=_SeedCount, metavar="N",
                       help=SEEDS_COUNT_HELP, default=argparse.SUPPRESS)


def seeds(text: str) -> list[int]:
    """A comma list of distinct seeds in [0, 2^63 - 1]."""
    values = [seed(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one seed")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed; list each seed once")
    return values


def finite_numbers(text: str, low: float | None = None, strict_low: bool = False,
                   high: float | None = None, what: str = "a number") -> list[float]:
    """A comma list of distinct finite numbers (``>= low`` / ``> low``, ``<= high``)."""
    check = float_in(low, high, strict_low=strict_low, what=what)
    values = [check(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a value; list each value once")
    return values


def nonneg_numbers(text: str) -> list[float]:
    return finite_numbers(text, 0.0)


def positive_numbers(text: str) -> list[float]:
    return finite_numbers(text, 0.0, strict_low=True)


def lrs(text: str) -> list[float]:
    """A comma list of distinct learning rates in (0, :data:`MAX_LR`]."""
    return finite_numbers(text, 0.0, strict_low=True, high=MAX_LR, what="a learning rate")


def out_dir(text: str) -> str:
    """An output folder that exists or can be created, and is writable (checked before any work)."""
    from sharplab.errors import SharplabError
    from sharplab.io import check_writable_dir

    try:
        check_writable_dir(text)
    except SharplabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def existing_dir(text: str) -> str:
    """A folder that must exist (e.g. a data root)."""
    from pathlib import Path

    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


def format_default(value: Any) -> str:
    """How ``--help`` writes a default: a list as the comma list the option takes, a number as typed."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def shown_default(action: argparse.Action, undocumented: bool = False) -> str | None:
    """The default ``--help`` appends to an option, or None when there is none to show (no value, a flag,
    a positional, or a help text that already says how its default is chosen); ``undocumented`` also
    gives it for an option with no help text."""
    default = action.default
    if not getattr(action, "shows_default", True):
        return None
    if action.help is None and undocumented:
        action = copy_with_help(action, "")
    if (not action.option_strings or action.help in (None, argparse.SUPPRESS) or default is None
            or default is argparse.SUPPRESS or isinstance(default, bool) or default == []
            or "default" in action.help):
        return None
    return format_default(default)


def copy_with_help(action: argparse.Action, help_text: str) -> argparse.Action:
    import copy

    action = copy.copy(action)
    action.help = help_text
    return action


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option from the parser's real default, so help cannot drift from
    the code; options whose help explains a computed default say so themselves (tested)."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = None if action.help else shown_default(action, undocumented=True)
        if shown is not None:
            action = copy_with_help(action, f"(default: {shown})")
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.help and action.help.startswith("(default: "):
            return action.help.replace("%", "%%")
        text = action.help or ""
        shown = shown_default(action)
        return text if shown is None else f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: sharplab CMD: ...; see --help``), exit code 2, and every
    option's default in ``--help`` (:class:`DefaultsFormatter`); subcommand parsers inherit both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        import sys

        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def text(value: str) -> str:
    """Free text (a name, a path checked by the command itself): marks an option as deliberately unchecked
    here; ``tests/cli/test_bad_inputs.py`` requires every option to have a type from this module."""
    return value


def typed(parser: argparse.ArgumentParser, **types: Callable[[str], Any]) -> argparse.ArgumentParser:
    """Give the options of ``parser`` (by ``dest``) their validating types, in one place per command."""
    actions = {a.dest: a for a in parser._actions}
    for dest, typ in types.items():
        if dest not in actions:
            raise KeyError(f"{parser.prog}: no option with dest {dest!r}")
        actions[dest].type = typ
    return parser


def nonneg_ints(value: str) -> list[int]:
    """A comma list of distinct integers >= 0."""
    values = ints(value)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{value!r}: every value must be >= 0")
    return values
