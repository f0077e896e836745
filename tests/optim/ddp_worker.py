"""Run by test_ddp.py: two gloo workers take SAM steps on halves of a batch and save the result."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sharplab.optim import SAM, sam_grad


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7, dtype=torch.float64), nn.Tanh(), nn.Linear(7, 3, dtype=torch.float64))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, y = batch()
    xs, ys = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    results = {}
    for sync in (False, True):
        model = DistributedDataParallel(mlp())
        sam_grad(model, F.cross_entropy, xs, ys, rho=0.2, sync_ascent=sync)
        results[f"grad_sync={sync}"] = [p.grad.clone() for p in model.parameters()]
        model = DistributedDataParallel(mlp())
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.5, model=model, sync_ascent=sync)

        def closure(opt=opt, model=model):
            opt.zero_grad()
            loss = F.cross_entropy(model(xs), ys)
            loss.backward()
            return loss

        opt.step(closure)
        results[f"step_sync={sync}"] = [p.detach().clone() for p in model.parameters()]
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    init, out = sys.argv[1], sys.argv[2]
    mp.start_processes(worker, args=(2, init, out), nprocs=2, start_method="spawn")
