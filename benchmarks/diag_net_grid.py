"""Wall time of a whole diagonal-linear-network grid advancing as one float64 batch (issue target: the
study's grid, >= 30 configurations x 10^4 steps, in about 2 s on 2 CPU cores).

    python benchmarks/diag_net_grid.py            # GD + n-SAM + 1-SAM x rho x alpha, 10001 steps
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sharplab.labs.implicit_bias.diag_net import expand_grid, run_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10_001)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rhos = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
    alphas = [0.01, 0.1, 1.0]
    grid = expand_grid(("gd", "nsam", "1sam"), rhos, (5 / 30,), alphas, iters=args.iters)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        results = run_grid(grid)
        times.append(time.perf_counter() - t0)
    print(f"{len(grid)} configurations x {args.iters} updates (float64, one batch): "
          f"median {statistics.median(times):.2f} s over {args.repeats} repeats (target about 2 s)")
    best = {}
    for cfg, res in zip(grid, results):
        if cfg.alpha == 0.01:
            best[cfg.method] = min(best.get(cfg.method, np.inf), res.test_error)
    print("alpha 0.01, best test error per method: " + ", ".join(f"{m} {e:.2e}" for m, e in best.items()))


if __name__ == "__main__":
    main()
