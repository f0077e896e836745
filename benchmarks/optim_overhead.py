"""Step-time overhead of the SAM family versus SGD, measured side by side in one process.

    python benchmarks/optim_overhead.py            # small CNN (batch 128) and PreAct ResNet-18 (batch 32)
    python benchmarks/optim_overhead.py --quick    # small CNN only, fewer steps

Every variant runs on the same random 3x32x32 data with 2 threads (``--threads``); steps are
interleaved round-robin after a warm-up and the median of ``--steps`` steps is reported, with the ratio
to SGD. Each family member is shown next to the same variant of ``pytorch_optimizer``
(``pip install -e '.[bench]'``; rows skipped if absent). sharplab is imported plainly, which leaves glibc's
allocator alone; ``--tune-allocator`` calls ``sharplab.tune_allocator()`` first and ``--compare-allocator``
reruns the small-CNN 1-SAM rows in a subprocess with it. ``--peak-memory`` reports the peak RSS of one
1-SAM step for several ``chunk_size`` values (each in a fresh process).

1-SAM (m = 1) rows: ``sam_grad(..., m=1, strategy=...)`` for ``vmap`` (per-example formulas), ``auto``,
``func`` (torch.func) and ``loop``, plus a hand-written per-example loop; their speed-up over
``strategy="loop"`` is the median over rounds of the ratio of the two times measured in the same round.
``--one-sam`` runs only SGD and these rows.

SAM vs peer: ``--sam-vs-peer N`` runs only SGD, sharplab's SAM and pytorch_optimizer's SAM on the small CNN,
N times with fresh models, and prints the ratio per repeat, the median over repeats and the median of
the back-to-back (same round) ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import sharplab
from sharplab.models import PreActResNet18, SmallCNN
from sharplab.optim import SAM, create, sam_grad


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def sharplab_step(model, x, y, rule: str) -> Callable[[], None]:
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, rule=rule, lr=0.01, momentum=0.9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return lambda: opt.step(closure)


def family_step(name: str, **kw) -> Callable:
    def make(model, x, y) -> Callable[[], None]:
        extra = dict(kw)
        if name == "esam":
            extra.update(model=model, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
        opt = create(name, model.parameters(), torch.optim.SGD, lr=0.01, momentum=0.9, **extra)
        if name == "esam":
            return lambda: opt.step(inputs=x, targets=y)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return lambda: opt.step(closure)

    return make


def peer_family(cls_name: str, pre_closure: bool = True, needs_model: bool = False, **kw) -> Callable:
    def make(model, x, y) -> Callable[[], None] | None:
        try:
            import pytorch_optimizer
        except ImportError:
            return None
        cls = getattr(pytorch_optimizer, cls_name)
        if cls_name == "GSAM":
            base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            class ConstantRho:
                def step(self) -> float:
                    return 0.05

            opt = cls(model.parameters(), base, model=model, rho_scheduler=ConstantRho(), **kw)

            def gsam_step() -> None:
                opt.set_closure(F.cross_entropy, x, y)
                opt.step()

            return gsam_step
        args = (model, model.parameters()) if needs_model else (model.parameters(),)
        opt = cls(*args, torch.optim.SGD, lr=0.01, momentum=0.9, **kw)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        def step() -> None:
            if pre_closure:
                closure()
            opt.step(closure)

        return step

    return make


def one_sam(strategy: str, chunk_size: int | None = None) -> Callable:
    """1-SAM (m = 1) through ``sam_grad(..., strategy=strategy)``."""

    def make(model, x, y) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            opt.zero_grad()
            sam_grad(model, F.cross_entropy, x, y, rho=0.05, m=1, strategy=strategy, chunk_size=chunk_size)
            opt.step()

        return step

    return make


def one_sam_loop(model, x, y) -> Callable[[], None]:
    """The plain alternative: a Python loop of per-example SAM steps (two passes per example)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        opt.zero_grad()
        for i in range(x.shape[0]):
            xi, yi = x[i : i + 1], y[i : i + 1]
            g = torch.autograd.grad(F.cross_entropy(model(xi), yi), params)
            norm = torch.sqrt(sum((t**2).sum() for t in g))
            with torch.no_grad():
                eps = [0.05 * t / (norm + 1e-12) for t in g]
                for p, e in zip(params, eps):
                    p.add_(e)
            F.cross_entropy(model(xi), yi).backward()
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
        for p in params:
            p.grad /= x.shape[0]
        opt.step()

    return step


def peer_step(model, x, y) -> Callable[[], None] | None:
    try:
        from pytorch_optimizer import SAM as PeerSAM
    except ImportError:
        return None
    opt = PeerSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step() -> None:
        closure()
        opt.step(closure)

    return step


def sam_vs_peer(make_model: Callable[[], torch.nn.Module], batch: int, steps: int, warmup: int,
                repeats: int) -> None:
    """SAM (sharplab) against SAM (pytorch_optimizer), ``repeats`` times with fresh models: each repeat
    interleaves SGD, ours and the peer step by step (the order alternating between rounds); printed are
    each repeat's ratio of medians, the median over repeats, and the median of the per-round ratios (ours
    and the peer measured back to back, which cancels load that drifts between rounds on a shared machine)."""
    names = ["SGD", "SAM (sharplab)", "SAM (pytorch_optimizer)"]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    if peer_step(make_model(), x, y) is None:
        print("\nSAM vs peer: pytorch_optimizer is not installed (pip install -e '.[bench]')")
        return
    ratios, paired = [], []
    print(f"\nSAM vs peer (small CNN, batch {batch}): {repeats} repeats of {steps} interleaved steps")
    for r in range(repeats):
        fns = {}
        for name in names:
            torch.manual_seed(r)
            fns[name] = VARIANTS[name](make_model(), x, y)
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(steps):
            for name in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ours, peer = med["SAM (sharplab)"], med["SAM (pytorch_optimizer)"]
        ratios.append(ours / peer)
        paired += [a / b for a, b in zip(times["SAM (sharplab)"], times["SAM (pytorch_optimizer)"])]
        print(f"  repeat {r}: SGD {1e3 * med['SGD']:7.1f} ms, "
              f"sharplab {1e3 * ours:7.1f} ms ({ours / med['SGD']:.2f}x), "
              f"peer {1e3 * peer:7.1f} ms ({peer / med['SGD']:.2f}x): "
              f"sharplab / peer {ratios[-1]:.3f}  (load {load_average()})")
    print(f"  sharplab / peer: median over repeats {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}), median of {len(paired)} per-round ratios "
          f"{statistics.median(paired):.3f}")


VARIANTS: dict[str, Callable] = {
    "SGD": sgd_step,
    "SAM (sharplab)": lambda m, x, y: sharplab_step(m, x, y, "sam"),
    "SAM (pytorch_optimizer)": peer_step,
    "ASAM (sharplab)": lambda m, x, y: sharplab_step(m, x, y, "asam"),
    "ASAM (pytorch_optimizer)": peer_family("SAM", adaptive=True),
    "GSAM (sharplab)": family_step("gsam"),
    "GSAM (pytorch_optimizer)": peer_family("GSAM", alpha=0.4),
    "WSAM (sharplab)": family_step("wsam"),
    "WSAM (pytorch_optimizer)": peer_family("WSAM", pre_closure=False, needs_model=True),
    "LookSAM k=5 (sharplab)": family_step("looksam", k=5),
    "LookSAM k=5 (pytorch_optimizer)": peer_family("LookSAM", k=5),
    "Friendly-SAM (sharplab)": family_step("fsam"),
    "Friendly-SAM (pytorch_optimizer)": peer_family("FriendlySAM"),
    "ESAM b=0.6 g=0.5 (sharplab)": family_step("esam", gamma=0.5),
    "Momentum-SAM (sharplab)": family_step("momentum-sam"),
    "1-SAM vmap (sharplab)": one_sam("vmap"),
    "1-SAM auto (sharplab)": one_sam("auto"),
    "1-SAM torch.func (sharplab)": one_sam("func"),
    "1-SAM loop (sharplab)": one_sam("loop"),
    "1-SAM per-example loop": one_sam_loop,
}
ONE_SAM = [name for name in VARIANTS if name.startswith("1-SAM")]
#: registry names (sharplab.optim.available()) -> the row that measures them; "<name>-peer" is pytorch_optimizer's
SHORT = {"sgd": "SGD", "sam": "SAM (sharplab)", "asam": "ASAM (sharplab)", "gsam": "GSAM (sharplab)",
         "wsam": "WSAM (sharplab)", "looksam": "LookSAM k=5 (sharplab)", "fsam": "Friendly-SAM (sharplab)",
         "esam": "ESAM b=0.6 g=0.5 (sharplab)", "momentum-sam": "Momentum-SAM (sharplab)",
         "1-sam": "1-SAM auto (sharplab)"}
SHORT.update({f"{k}-peer": v.replace("(sharplab)", "(pytorch_optimizer)") for k, v in SHORT.items()
              if "(sharplab)" in v and v.replace("(sharplab)", "(pytorch_optimizer)") in VARIANTS})


def resolve_variants(text: str) -> list[str]:
    """Rows for ``--variants``: full row names or the short names above; an unknown name exits in one line."""
    from sharplab.optim import registry

    rows = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key = "1-sam" if item.lower() == "1-sam" else (f"{registry.normalise(item[:-5])}-peer"
                                                       if item.lower().endswith("-peer") else
                                                       registry.normalise(item))
        if item in VARIANTS:
            rows.append(item)
        elif key in SHORT:
            rows.append(SHORT[key])
        else:
            sys.exit(f"error: unknown variant {item!r}; use one of: {', '.join(SHORT)} (or a full row name: "
                     f"{', '.join(VARIANTS)})")
    return rows


def measure(make_model: Callable[[], torch.nn.Module], batch: int, steps: int, warmup: int,
            names: list[str], rounds: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median step time of each variant; ``rounds`` (if given) receives every round's times."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    fns = {}
    for name in names:
        torch.manual_seed(0)
        fn = VARIANTS[name](make_model(), x, y)
        if fn is not None:
            fns[name] = fn
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    if rounds is not None:
        rounds.update(times)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, medians: dict[str, float], rounds: dict[str, list[float]] | None = None) -> None:
    base = medians["SGD"]
    print(f"\n{title}")
    print(f"  {'variant':34s} {'median ms':>10s} {'x SGD':>7s} {'x peer':>7s}")
    for name, t in medians.items():
        twin = medians.get(name.replace("(sharplab)", "(pytorch_optimizer)")) if "(sharplab)" in name else None
        vs_peer = f"{t / twin:7.2f}" if twin else ""
        print(f"  {name:34s} {1e3 * t:10.1f} {t / base:7.2f} {vs_peer}")
    if rounds and "1-SAM loop (sharplab)" in rounds:
        one_sam_report(rounds)


def one_sam_report(rounds: dict[str, list[float]]) -> None:
    """1-SAM speed-up over ``strategy="loop"``: the median over rounds of loop time / variant time, both
    measured in the same round (interleaved), with the spread (min-max) over rounds."""
    loop = rounds["1-SAM loop (sharplab)"]
    for name in ONE_SAM:
        if name in rounds and name != "1-SAM loop (sharplab)":
            ratios = [a / b for a, b in zip(loop, rounds[name])]
            print(f"  1-SAM speed-up over strategy='loop': {name:30s} {statistics.median(ratios):5.2f}x "
                  f"(median of {len(ratios)} rounds, range {min(ratios):.2f}-{max(ratios):.2f})")


PEAK = """
import sys, torch, torch.nn.functional as F
from sharplab.models import PreActResNet18, SmallCNN
from sharplab.optim import sam_grad
torch.set_num_threads(int(sys.argv[2]))
if sys.argv[4] == "cnn":
    model, x, y = SmallCNN(3, 10), torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
else:
    model, x, y = PreActResNet18(10), torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = kib("VmRSS")
chunk = None if sys.argv[1] == "none" else int(sys.argv[1])
sam_grad(model, F.cross_entropy, x, y, rho=0.05, m=1, chunk_size=chunk, strategy=sys.argv[3])
print((kib("VmHWM") - before) / 1024)
"""


def peak_memory(threads: int, models: list[str]) -> None:
    """Peak RSS above the start of one 1-SAM step (fresh process each) per strategy and chunk_size."""
    for which in models:
        title = "small CNN, batch 128" if which == "cnn" else "PreAct ResNet-18, batch 32"
        print(f"\n1-SAM peak memory ({title}): RSS above the start of one sam_grad(m=1) call, fresh process each")
        chunks = ["none", "64", "16", "4"] if which == "cnn" else ["none", "8", "2"]
        runs = [("vmap", c) for c in chunks] + [("func", chunks[1]), ("loop", "none")]
        for strategy, chunk in runs:
            out = subprocess.run([sys.executable, "-c", PEAK, chunk, str(threads), strategy, which],
                                 capture_output=True, text=True, check=True)
            print(f"  strategy={strategy:5s} chunk_size={chunk:>5s}: {float(out.stdout):8.0f} MiB")


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine is shared: ratios are only comparable at similar load)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small CNN only, 10 steps")
    parser.add_argument("--only", choices=["cnn", "resnet"], help="run one model only")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma list of rows: {', '.join(SHORT)}, or full row names (default: all)")
    parser.add_argument("--compare-allocator", action="store_true",
                        help="also run the small-CNN 1-SAM rows with sharplab.tune_allocator() in force")
    parser.add_argument("--tune-allocator", action="store_true", help="call sharplab.tune_allocator() first")
    parser.add_argument("--peak-memory", action="store_true", help="peak memory of 1-SAM per chunk_size")
    parser.add_argument("--one-sam", action="store_true", help="only SGD and the 1-SAM rows (with speed-ups)")
    parser.add_argument("--sam-vs-peer", type=int, default=0, metavar="N",
                        help="only SAM vs pytorch_optimizer's SAM on the small CNN, N repeats with fresh models")
    args = parser.parse_args()
    if args.tune_allocator:
        sharplab.tune_allocator()
    torch.set_num_threads(args.threads)
    names = ["SGD", *ONE_SAM] if args.one_sam else resolve_variants(args.variants)
    steps = 10 if args.quick else args.steps
    print(f"sharplab {sharplab.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, allocator: {sharplab.allocator_setting()}")
    print(f"load average at start: {load_average()}")
    if args.sam_vs_peer:
        sam_vs_peer(lambda: SmallCNN(3, 10), 128, steps, args.warmup, args.sam_vs_peer)
        return
    if args.only != "resnet":
        rounds: dict[str, list[float]] = {}
        report("Small CNN (feature-quality study), batch 128, 3x32x32",
               measure(lambda: SmallCNN(3, 10), 128, steps, args.warmup, names, rounds), rounds)
    if not args.quick and args.only != "cnn":
        resnet_names = [n for n in names if n]
        rounds = {}
        report("PreAct ResNet-18 (BatchNorm), batch 32, 3x32x32",
               measure(lambda: PreActResNet18(10), 32, max(5, steps // 2) if steps < 20 else steps,
                       args.warmup, resnet_names, rounds), rounds)
    print(f"load average at end: {load_average()}")
    if args.peak_memory:
        peak_memory(args.threads, ["cnn"] if args.quick or args.only == "cnn" else
                    ["resnet"] if args.only == "resnet" else ["cnn", "resnet"])
    if args.compare_allocator:
        cmd = [sys.executable, __file__, "--only", "cnn", "--steps", str(steps), "--threads", str(args.threads),
               "--tune-allocator", "--variants", "SGD,1-SAM vmap (sharplab),1-SAM loop (sharplab)"]
        print("\n--- the same small-CNN rows with sharplab.tune_allocator() ---")
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
