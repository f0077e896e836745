"""Load on the results store: claims per second and run completions with many concurrent workers on tiny runs.

    python benchmarks/store_load.py --workers 50 --runs 500                    # SQLite in a temp folder
    python benchmarks/store_load.py --workers 50 --runs 500 --store postgresql://me@host/db   # an empty db

Each worker is a process with its own store connection (and, on PostgreSQL, its own host identity). It walks
the pending runs from its own offset and, for each run it claims, logs ``--epochs`` history rows and
finishes it (no training: the store is what is measured). Bounded in count (``--runs``) and time
(``--seconds``). Prints one line per backend and a JSON line: claim attempts/s, claims/s, completions/s,
and a check that every run finished exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class _Spec:
    run_id: str
    seed: int
    lab: str = "bench"
    study: str = "load"
    nproc: int = 1
    config: dict = field(default_factory=dict)


def _worker(out: str, url: str | None, ids: list[str], offset: int, epochs: int, deadline: float, q) -> None:
    if url:  # many hosts on a shared store; SQLite is one machine's (another host's row would be taken over)
        os.environ["SHARPLAB_HOST"] = f"bench-{offset}"
    from sharplab.runner.store import open_store

    attempts = claimed = 0
    with open_store(out, url) as store:
        order = ids[offset:] + ids[:offset]
        for run_id in order:
            if time.time() > deadline:
                break
            attempts += 1
            if store.claim(run_id) != "claimed":
                continue
            claimed += 1
            for step in range(1, epochs + 1):
                store.log_epoch(run_id, step, {"loss": 1.0 / step})
            store.finish(run_id, "done", {"loss": 1.0 / epochs})
    q.put((attempts, claimed))


def measure(url: str | None, workers: int, runs: int, epochs: int, seconds: float) -> dict:
    from sharplab.runner.store import open_store

    out = tempfile.mkdtemp(prefix="sharplab-load-")
    specs = [_Spec(f"run{i:06d}", i) for i in range(runs)]
    with open_store(out, url) as store:
        store.add_runs(specs)
    ids = [s.run_id for s in specs]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.time()
    procs = [ctx.Process(target=_worker, args=(out, url, ids, (i * runs) // workers, epochs, t0 + seconds, q))
             for i in range(workers)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.time() - t0
    with open_store(out, url, readonly=True) as store:
        recs = store.runs(history=False)
    done = sum(r.status == "done" for r in recs)
    return {"backend": "postgresql" if url else "sqlite", "workers": workers, "runs": runs, "epochs": epochs,
            "wall_s": round(wall, 2), "claim_attempts_per_s": round(sum(a for a, _ in results) / wall, 1),
            "claims_per_s": round(sum(c for _, c in results) / wall, 1), "completed": done,
            "completions_per_s": round(done / wall, 1), "each_once": all(r.attempts <= 1 for r in recs)
            and sum(c for _, c in results) == done}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=50)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3, help="history rows per run")
    p.add_argument("--seconds", type=float, default=60.0, help="stop claiming after this long")
    p.add_argument("--store", default=None, help="a PostgreSQL URL (an empty database) to measure as well")
    args = p.parse_args(argv)
    if not (1 <= args.workers <= 500 and 1 <= args.runs <= 100_000 and 0 <= args.epochs <= 1000):
        print("error: --workers in [1, 500], --runs in [1, 100000], --epochs in [0, 1000]", file=sys.stderr)
        return 2
    results = [measure(None, args.workers, args.runs, args.epochs, args.seconds)]
    if args.store:
        results.append(measure(args.store, args.workers, args.runs, args.epochs, args.seconds))
    for r in results:
        print(f"{r['backend']:10s} {r['workers']} workers: {r['claims_per_s']} claims/s "
              f"({r['claim_attempts_per_s']} attempts/s), {r['completed']}/{r['runs']} runs in {r['wall_s']} s "
              f"= {r['completions_per_s']} completions/s, each once: {r['each_once']}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
