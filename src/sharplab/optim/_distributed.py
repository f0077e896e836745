"""DistributedDataParallel support: unwrap the model, average gradients across workers.

sharplab runs both SAM passes on the wrapped module under ``no_sync()`` and all-reduces explicitly:
the descent gradient always (so every worker takes the same step), the ascent gradient only when
``sync_ascent=True``. With local ascent each worker perturbs with its own batch gradient, which is
m-sharpness with m = per-worker batch size (Foret et al., 2021, sec. 4; Andriushchenko & Flammarion, 2022).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def unwrap(model: nn.Module) -> tuple[nn.Module, DistributedDataParallel | None]:
    """``(inner module, the DDP wrapper or None)``; looks through ``torch.compile(ddp_model)``."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, DistributedDataParallel):
        return inner.module, inner
    return model, None


def no_sync(ddp: DistributedDataParallel | None):
    """``ddp.no_sync()`` or a null context."""
    return ddp.no_sync() if ddp is not None else contextlib.nullcontext()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def allreduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors in place across all workers (one flattened all-reduce per dtype)."""
    n = world_size()
    if n == 1 or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def any_worker(flag: bool, device: torch.device) -> bool:
    """``True`` on every worker if ``flag`` is true on any (one all-reduce of a scalar; local if not distributed).

    Used for decisions every worker must take alike, such as skipping a float16 step whose local ascent
    gradient overflowed on one worker only: a worker that skips while the others enter the descent
    pass's all-reduce would leave them waiting forever.
    """
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
