"""Step time of every SAM-family member now versus an earlier git revision, measured side by side.

``python benchmarks/optim_regression.py --against REV`` extracts ``src/sharplab`` at ``REV`` (``git archive``)
into a temporary folder as the package ``sharplab_at_rev`` (its ``sharplab`` imports rewritten), builds
each member twice on identical models (this tree's ``create`` and the revision's), and times their steps
interleaved in one process, alternating the order every round, so load that drifts on a shared machine hits
both alike. Printed per member: the median step time of each and the median of the per-round ratios
(now / then) with its interquartile range, the run-to-run spread to judge a difference against.

Model: the small CNN (3x32x32, batch 128) of the feature-quality study, SGD with momentum 0.9 as the base.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sharplab.models import SmallCNN
from sharplab.optim import create

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {"sam": {}, "asam": {}, "usam": {}, "gsam": {}, "wsam": {}, "looksam": {"k": 5}, "fsam": {},
           "esam": {"gamma": 0.5}, "momentum-sam": {}}


def import_revision(rev: str, into: Path) -> object:
    """The ``sharplab`` package at ``rev`` as the module ``sharplab_at_rev`` (imports rewritten)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/sharplab"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    pkg = into / "sharplab_at_rev"
    shutil.move(str(into / "src" / "sharplab"), pkg)
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bsharplab\.", "sharplab_at_rev.", re.sub(r"\bfrom sharplab import",
                                                                           "from sharplab_at_rev import", text)))
    sys.path.insert(0, str(into))
    return importlib.import_module("sharplab_at_rev.optim")


def make_step(build: Callable, name: str, seed: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(seed)
    model = SmallCNN(3, 10)
    extra = dict(MEMBERS[name])
    if name == "esam":
        extra.update(model=model, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    opt = build(name, model.parameters(), torch.optim.SGD, lr=0.01, momentum=0.9, **extra)

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    if name == "esam":
        return lambda: opt.step(inputs=x, targets=y)
    return lambda: opt.step(closure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision to compare with (e.g. HEAD~3, a hash)")
    parser.add_argument("--members", default=",".join(MEMBERS), help=f"comma list of: {', '.join(MEMBERS)}")
    parser.add_argument("--steps", type=int, default=20, help="measured rounds per member")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEMBERS]
    if unknown:
        sys.exit(f"error: unknown member {unknown[0]!r}; use one of: {', '.join(MEMBERS)}")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.against, Path(tmp))
        print(f"now: {ROOT} (working tree); then: {args.against}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; small CNN, batch 128; {args.steps} interleaved rounds")
        print(f"  {'member':<8} {'now ms':>8} {'then ms':>8}  now/then (median of rounds, IQR)")
        for name in names:
            steps = {"now": make_step(create, name, 0, x, y), "then": make_step(old.create, name, 0, x, y)}
            for fn in steps.values():
                for _ in range(args.warmup):
                    fn()
            times: dict[str, list[float]] = {"now": [], "then": []}
            for i in range(args.steps):
                for key in ("now", "then") if i % 2 == 0 else ("then", "now"):
                    t0 = time.perf_counter()
                    steps[key]()
                    times[key].append(time.perf_counter() - t0)
            ratios = sorted(a / b for a, b in zip(times["now"], times["then"]))
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            now, then = (1e3 * statistics.median(times[k]) for k in ("now", "then"))
            print(f"  {name:<8} {now:8.1f} {then:8.1f}  {statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
