"""Training throughput (images/s) of SGD, SAM and 1-SAM on PreAct ResNet-18, batch 128, 3 x 32 x 32.

    python benchmarks/deep_net_throughput.py --device cuda            # width 64, GroupNorm
    python benchmarks/deep_net_throughput.py --device cpu --smoke     # tiny model, 2 steps: checks it runs

Synthetic inputs (no data set needed). One step = zero_grad, the method's gradient
(``sharplab.optim.sam_grad``: rho = 0 is one plain backward, SAM the whole-batch ascent, 1-SAM ``m=1``
vectorised with ``torch.func``), then an SGD step. Median over timed steps after warm-up; on CUDA each
step is synchronised. Prints one line per method and a JSON line with all numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunk", type=int, default=None, help="1-SAM: examples per vmap chunk (memory)")
    p.add_argument("--smoke", action="store_true", help="width 4, batch 8, 2 steps")
    a = p.parse_args(argv)
    if a.smoke:
        a.width, a.batch, a.steps, a.warmup = 4, 8, 2, 1
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    from sharplab.models import build_model
    from sharplab.optim import sam_grad

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = build_model("preact-resnet18", num_classes=10, norm="gn", width=a.width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    methods = {"sgd": {"rho": 0.0}, "sam": {"rho": 0.05}, "1-sam": {"rho": 0.05, "m": 1, "chunk_size": a.chunk}}
    result = {"device": str(dev), "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "batch": a.batch, "width": a.width}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for name, kw in methods.items():
        times = []
        for i in range(a.warmup + a.steps):
            sync()
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            sam_grad(model, F.cross_entropy, x, y, **kw)
            opt.step()
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        result[name] = a.batch / med
        print(f"{name:6s} {a.batch / med:10.1f} images/s  ({1e3 * med:.1f} ms/step, median of {a.steps})")
    result["sam_vs_sgd"] = result["sgd"] / result["sam"]
    result["1sam_vs_sgd"] = result["sgd"] / result["1-sam"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
