"""Argument types shared by the commands: numbers (fractions allowed), comma lists, choices."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from fractions import Fraction


def number(text: str) -> float:
    """A float, or a fraction ``a/b`` evaluated exactly to the nearest double (e.g. ``5/30``)."""
    text = text.strip()
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.1, 1e-3 or 5/30)") from None


def numbers(text: str) -> list[float]:
    values = [number(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer")
    return values


def choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip().lower() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma list)")
        return names

    return parse
