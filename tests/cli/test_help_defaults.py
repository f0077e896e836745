"""Every ``--help`` default is the parser's real default (issue 21): the formatter writes it from the
action itself, and a default a help text spells out by hand must agree with the code."""

from __future__ import annotations

import argparse
import re

import pytest

from sharplab.cli import build_parser
from sharplab.cli._args import format_default, shown_default


def _parsers(parser: argparse.ArgumentParser, path: str = "sharplab"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


PARSERS = dict(_parsers(build_parser()))
HAND = re.compile(r"\(default:? (?P<value>[^;)]+)[;)]")


def _options():
    for path, parser in PARSERS.items():
        for action in parser._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                yield pytest.param(path, action, id=f"{path} {action.option_strings[-1]}")


@pytest.mark.parametrize(("path", "action"), list(_options()))
def test_help_shows_the_real_default(path, action):
    text = PARSERS[path].format_help()
    shown = shown_default(action, undocumented=True)
    if shown is not None:  # appended by the formatter: it must be in the help, next to the option
        flat = " ".join(text.split())
        assert f"(default: {shown})" in flat, f"{path} {action.option_strings}: default {shown} not shown"
    hand = HAND.search(action.help or "")
    if hand and action.default is not None and not isinstance(action.default, bool):
        # a default written by hand must be the code's, not a stale copy
        assert hand["value"].strip() == format_default(action.default), (
            f"{path} {action.option_strings[-1]}: help says default {hand['value']!r}, "
            f"the parser's default is {format_default(action.default)!r}")


def test_the_formatter_writes_defaults_of_lists_and_numbers():
    p = argparse.ArgumentParser(formatter_class=__import__("sharplab.cli._args", fromlist=["x"]).DefaultsFormatter)
    p.add_argument("--seed", default=[0, 1, 2], help="comma list of seeds")
    p.add_argument("--lr", default=0.05, help="step size")
    p.add_argument("--width", default=100)
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--out", default=None, help="folder")
    flat = " ".join(p.format_help().split())
    assert "comma list of seeds (default: 0,1,2)" in flat
    assert "step size (default: 0.05)" in flat
    assert "--width WIDTH (default: 100)" in flat
    assert "a flag (default" not in flat and "folder (default" not in flat


def test_relu_1d_help_gives_its_seeds_and_warns_of_the_step_budget():
    flat = " ".join(PARSERS["sharplab relu-1d"].format_help().split())
    assert "(default: 0,1,2,3,4)" in flat
    assert "10^6 steps" in flat


def test_one_threads_option_everywhere():
    from sharplab.cli._args import THREADS_HELP, resolve_threads

    found = {path: a for path, p in PARSERS.items() for a in p._actions if "--threads" in a.option_strings}
    assert {"sharplab run", "sharplab sweep", "sharplab demo", "sharplab deep-net", "sharplab feature-probe",
            "sharplab mechanisms", "sharplab diag-net", "sharplab relu-1d", "sharplab convergence"} <= set(found)
    for path, action in found.items():
        assert action.default is None and action.help == THREADS_HELP, path
    import os

    cores = os.cpu_count() or 1
    assert resolve_threads(None, 1) == cores and resolve_threads(None, 2 * cores) == 1
    assert resolve_threads(3, 2) == 3


def test_one_seed_convention_everywhere():
    from sharplab.cli._args import SEEDS_COUNT_HELP, SEEDS_HELP

    training = ("feature-probe", "mechanisms", "diag-net", "relu-1d", "convergence", "deep-net")
    for name in training:
        parser = PARSERS[f"sharplab {name}"]
        by_flag = {s: a for a in parser._actions for s in a.option_strings}
        assert by_flag["--seed"].help.startswith(SEEDS_HELP) and by_flag["--seeds"].help == SEEDS_COUNT_HELP
        assert by_flag["--seed"].dest == by_flag["--seeds"].dest == "seed"
        # --seeds N is --seed 0,...,N-1; both give a list
        pos = ["m-sharpness"] if name == "deep-net" else []
        assert (parser.parse_args([*pos, "--seeds", "3"]).seed == [0, 1, 2]
                == parser.parse_args([*pos, "--seed", "0,1,2"]).seed)
    assert PARSERS["sharplab relu-1d"].parse_args([]).seed == [0, 1, 2, 3, 4]
    assert PARSERS["sharplab feature-probe"].parse_args([]).seed == [0, 1, 2]
