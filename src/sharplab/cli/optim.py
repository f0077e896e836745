"""``sharplab optim list [--json]``: the SAM family's registry (names, aliases, paper defaults, passes, paths).

The same data as :func:`sharplab.optim.available`; ``--json`` prints one object per variant and line.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("optim", help="the SAM optimizer family: list its members")
    sub = p.add_subparsers(dest="optim_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    ls = sub.add_parser("list", help="every SAM variant with its aliases, defaults, passes and paper")
    ls.add_argument("--json", action="store_true", help="one JSON object per variant")
    ls.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from sharplab.optim import available

    for v in available():
        if args.json:
            print(json.dumps(v, default=str))
            continue
        defaults = ", ".join(f"{k}={val!r}" for k, val in v["defaults"].items())
        aliases = f" (also {', '.join(v['aliases'])})" if v["aliases"] else ""
        print(f"{v['name']:<8} {defaults}{aliases}\n         {v['summary']}; passes {v['passes']}; {v['paper']}")
    return 0
