"""Run by test_ddp.py: two gloo workers take SAM steps on halves of a batch and save the result.

Each rank ends with ``os._exit(0)`` once its results are saved: a spawned rank that goes through
interpreter shutdown while gloo's worker thread still holds finished work can abort with SIGABRT
("terminate called without an active exception"; see /work/shared/perf-notes.md).
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sharplab.optim import SAM, sam_grad


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7, dtype=dtype), nn.Tanh(), nn.Linear(7, 3, dtype=dtype))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def sam_steps(model, opt, xs, ys, steps=1, scaler=None):
    def closure():
        loss = F.cross_entropy(model(xs), ys)  # no zero_grad: SAM zeroes before each pass
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss

    for _ in range(steps):
        opt.step(closure, scaler=scaler)
        if scaler is not None:
            scaler.update()


def worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=40))  # a hang fails instead of waiting 30 min
    x, y = batch()
    xs, ys = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    results = {}
    for sync in (False, True):
        model = DistributedDataParallel(mlp())
        sam_grad(model, F.cross_entropy, xs, ys, rho=0.2, sync_ascent=sync)
        results[f"grad_sync={sync}"] = [p.grad.clone() for p in model.parameters()]
        model = DistributedDataParallel(mlp())
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.5, model=model, sync_ascent=sync)
        sam_steps(model, opt, xs, ys)
        results[f"step_sync={sync}"] = [p.detach().clone() for p in model.parameters()]
    # rho = 0 (ERM phase of ERM -> SAM): the single pass must be all-reduced
    model = DistributedDataParallel(mlp())
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.5, momentum=0.9, model=model)
    sam_steps(model, opt, xs, ys, steps=2)
    results["rho0"] = [p.detach().clone() for p in model.parameters()]
    # float16 protocol, local ascent: only rank 0's ascent gradient overflows; both must skip alike
    model = DistributedDataParallel(nn.Linear(5, 3, dtype=torch.float32))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.5, model=model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    before = [p.detach().clone() for p in model.parameters()]
    xf = (1e4 if rank == 0 else 0.1) * xs.float()
    probe = nn.Linear(5, 3, dtype=torch.float32)
    probe.load_state_dict(model.module.state_dict())
    (F.cross_entropy(probe(xf), ys) * 2.0**127).backward()
    local_finite = all(bool(torch.isfinite(p.grad).all()) for p in probe.parameters())
    sam_steps(model, opt, xf, ys, scaler=scaler)
    results["scaler"] = {"before": before, "after": [p.detach().clone() for p in model.parameters()],
                         "skipped": getattr(opt, "skipped_steps", None), "scale": scaler.get_scale(),
                         "local_finite": local_finite}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    init, out = sys.argv[1], sys.argv[2]
    mp.start_processes(worker, args=(2, init, out), nprocs=2, start_method="spawn")
