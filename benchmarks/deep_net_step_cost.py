"""Seconds per training step of the ``deep-net`` lab's methods, side by side in one process.

    python benchmarks/deep_net_step_cost.py                                   # Fashion-MNIST, width 8
    python benchmarks/deep_net_step_cost.py --dataset digits --width 4 --steps 3 --warmup 1

One step = the lab's step (``sharplab.labs.training.take_step`` with the optimizer the lab builds for ERM,
n-SAM, 128-SAM or m-SAM), on real batches of the image set (so the m-SAM path is the one a run takes: a
loop for at most two micro-batches, the vectorised path below). Median over the timed steps after the
warm-up, one thread unless ``--threads``. The CPU m-sharpness stand-in (docs/deep_net_standins.md) was
sized from these numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ms", default="0,64,32,16,8", help="m-SAM micro-batch sizes (0 = the whole batch)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sharplab.labs.deep_net.config import DeepNetConfig
    from sharplab.labs.deep_net.train import Phases, build_net, load_data
    from sharplab.labs.training import take_step

    cfg = DeepNetConfig(dataset=a.dataset, width=a.width, batch_size=a.batch, lr=0.01, weight_decay=0.0)
    data, labels, _ = load_data(cfg, seed=0)
    n = len(labels)
    methods = [("ERM", "erm", 0), ("n-SAM", "nsam", 0)]
    methods += [(f"{m or a.batch}-SAM", "m-sam", m) for m in (int(v) for v in a.ms.split(","))]
    result = {}
    for name, method, m in methods:
        torch.manual_seed(0)
        model = build_net(cfg, data.input_shape[0], data.num_classes).train()
        run_cfg = DeepNetConfig(**{**vars(cfg), "method": method, "m": m})
        opt = Phases(run_cfg, model, seed=0).get(method, 0.1)
        times = []
        for i in range(a.warmup + a.steps):
            idx = torch.arange(i * a.batch, (i + 1) * a.batch) % n
            start = time.perf_counter()
            take_step(model, opt, data.x_train[idx], labels[idx], step=i)
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times[a.warmup:])
        print(f"{name:>8}: {result[name]:.3f} s/step", flush=True)
    print(json.dumps({"dataset": a.dataset, "width": a.width, "batch": a.batch, "threads": a.threads,
                      "seconds_per_step": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
