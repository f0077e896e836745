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
nonneg_int = int_in(0)
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: sharplab CMD: ...; see --help``), exit code 2."""

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
