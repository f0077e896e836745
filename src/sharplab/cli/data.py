"""``sharplab data {list,info,download}``: the data sets on the command line.

* ``sharplab data list``: the registered data sets, two-feature (:mod:`sharplab.data.core`) and image
  classification (:mod:`sharplab.data.image_classification`), with a one-line summary each.
* ``sharplab data info NAME [--root DIR] [--seed S] [--set KEY=VALUE ...] [--json]``: per split the number
  of examples and, for a two-feature set, the count of each (easy, hard) pair; ``--json`` prints one object
  per split and line, ``{"split": ..., "n": ..., "pair_counts": {"easy,hard": count}}``. For an image set
  (``cifar10``, ``cifar100``, ``fashion-mnist``, ``digits``; no ``--set``) the splits are ``train``,
  ``val`` (seeded by ``--seed``, as a run with that seed splits them) and ``test``, each with its shape
  and examples per class: ``{"split": ..., "n": ..., "shape": [N, C, H, W], "class_counts": [...]}``.
* ``sharplab data download NAME --root DIR [--base-url URL]``: see :mod:`sharplab.data.download`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

from sharplab.cli._args import existing_dir, text, timeout, typed
from sharplab.cli._args import seed as seed_type
from sharplab.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="list, inspect and download the data sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    ls = sub.add_parser("list", help="list the registered data sets")
    ls.set_defaults(func=cmd_list, needs_labs=True)  # labs register data sets too (e.g. toy-hetero)

    info = sub.add_parser("info", help="split sizes and (easy, hard) pair counts or image shapes of a data set")
    info.add_argument("name", help="data set name (see 'sharplab data list')")
    info.add_argument("--root", default=None, help="data root (else $SHARPLAB_DATA, then offline sources)")
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                      help="data-set option, e.g. --set limit=1000 (repeatable)")
    info.add_argument("--json", action="store_true", help="one JSON object per split")
    info.set_defaults(func=cmd_info, needs_labs=True)
    typed(info, name=text, root=existing_dir, seed=seed_type, options=text)

    dl = sub.add_parser("download", help="download a data set into a data root (needs internet)")
    dl.add_argument("name", help="data set (e.g. fmnist-mnist) or file group (mnist, fashion-mnist, cifar10)")
    dl.add_argument("--root", default=None, help="data root to download into (default: $SHARPLAB_DATA)")
    dl.add_argument("--base-url", default=None, help="fetch every file from this URL folder (a mirror)")
    dl.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=cmd_download)
    typed(dl, name=text, root=text, base_url=text, timeout=timeout)


def cmd_list(args: argparse.Namespace) -> int:
    from sharplab.data import DATASETS, list_datasets
    from sharplab.data.image_classification import IMAGE_SETS

    summaries = {name: DATASETS.get(name).summary for name in list_datasets()}
    summaries.update({name: IMAGE_SETS.get(name).summary for name in IMAGE_SETS.names()})
    for name in sorted(summaries):
        print(f"{name:14s} {summaries[name]}")
    return 0


def parse_options(name: str, pairs: list[str]) -> dict[str, typing.Any]:
    """``KEY=VALUE`` strings -> typed option values, using the data set's options dataclass."""
    from sharplab.data import DATASETS

    entry = DATASETS.get(name)
    hints = typing.get_type_hints(entry.options)
    fields = {f.name for f in dataclasses.fields(entry.options)}
    out: dict[str, typing.Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ConfigError(f"bad --set {pair!r}: use KEY=VALUE, KEY one of: {', '.join(sorted(fields))}")
        out[key] = _convert(key, raw.strip(), hints[key])
    return out


def _convert(key: str, raw: str, hint: typing.Any) -> typing.Any:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else (hint,)
    if type(None) in args and raw.lower() in ("none", "null", ""):
        return None
    for t in (int, float, str):
        if t in args:
            try:
                return t(raw)
            except ValueError:
                continue
    kinds = {int: "an integer", float: "a number", str: "text"}
    wanted = " or ".join(kinds.get(t, getattr(t, "__name__", str(t))) for t in args if t is not type(None))
    raise ConfigError(f"option {key}={raw!r} must be {wanted}, e.g. {key}=10")


def pair_records(data) -> list[dict[str, typing.Any]]:
    from sharplab.data import SPLITS

    records = []
    for split in SPLITS:
        s = data.splits[split]
        counts = s.pair_counts()
        records.append({"split": split, "n": len(s),
                        "pair_counts": {f"{a},{b}": c for (a, b), c in sorted(counts.items())}})
    return records


def cmd_info(args: argparse.Namespace) -> int:
    from sharplab.data import load_two_feature
    from sharplab.data.image_classification import IMAGE_SETS

    if args.name in IMAGE_SETS:
        return image_set_info(args)

    options = parse_options(args.name, args.options)
    data = load_two_feature(args.name, root=args.root, seed=args.seed, **options)
    records = pair_records(data)
    if args.json:
        for r in records:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(f"{data.name}: input {'x'.join(map(str, data.input_shape))}, {data.num_classes} classes, "
          f"easy {data.num_easy_classes} / hard {data.num_hard_classes} feature classes")
    for key in ("easy_feature", "hard_feature", "hard_source", "digit_source", "test_domain"):
        if key in data.meta:
            print(f"  {key}: {data.meta[key]}")
    for r in records:
        pairs = " ".join(f"({k}):{v}" for k, v in r["pair_counts"].items())
        print(f"{r['split']:12s} n={r['n']:<7d} easy,hard pairs {pairs}")
    from sharplab.data.core import PRESETS

    for owner, preset in PRESETS.get(args.name, {}).items():
        sets = " ".join(f"--set {k}={v}" for k, v in preset.items())
        same = all(options.get(k) == v for k, v in preset.items())
        print(f"note: lab {owner} loads {args.name} with {', '.join(f'{k}={v}' for k, v in preset.items())} "
              f"unless its config says otherwise" + ("" if same else f"; see it with `sharplab data info "
                                                                   f"{args.name} {sets}`"))
    return 0


def image_set_info(args: argparse.Namespace) -> int:
    from sharplab.data.image_classification import IMAGE_SETS, VAL_FRACTION, split_records

    if args.options:
        raise ConfigError(f"image set {args.name!r} takes no --set options (a run chooses n_train / n_test in its "
                          "lab config)")
    entry = IMAGE_SETS.get(args.name)
    raw, records = split_records(entry.name, root=args.root, seed=args.seed)
    if args.json:
        for r in records:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(f"{entry.name}: input {'x'.join(map(str, entry.input_shape))}, {entry.num_classes} classes, uint8 "
          "pixels (floats in [0, 1] when loaded)")
    print(f"  source: {raw.source}")
    print(f"  val: {VAL_FRACTION:.0%} of the official training part, drawn with seed {args.seed} (--seed)")
    for r in records:
        counts = r["class_counts"]
        print(f"{r['split']:12s} n={r['n']:<7d} shape {'x'.join(map(str, r['shape']))}  per class "
              f"{min(counts)}..{max(counts)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import os

    from sharplab.data.download import download
    from sharplab.data.sources import ENV_VAR

    root = args.root or os.environ.get(ENV_VAR)
    if not root:
        raise ConfigError(f"no data root: pass --root DIR (or set ${ENV_VAR}) to say where to download")
    paths = download(args.name, root, base_url=args.base_url, timeout=args.timeout, quiet=args.quiet)
    for path in paths:
        print(path)
    return 0
