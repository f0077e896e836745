"""DistributedDataParallel semantics with two real gloo processes.

Synchronised ascent on two halves equals single-process SAM on the whole batch; local ascent (the
default) equals m-sharpness with m = the per-worker batch. Both passes' results agree across workers.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sharplab.optim import sam_grad

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    init = f"file://{out / 'rendezvous'}"
    subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), init, str(out)], check=True, timeout=120)
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


def single_process(m):
    sys.path.insert(0, str(HERE))
    from ddp_worker import batch, mlp

    model = mlp()
    x, y = batch()
    sam_grad(model, F.cross_entropy, x, y, rho=0.2, m=m)
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        stepped = [p - 0.5 * g for p, g in zip(model.parameters(), grads)]
    return grads, stepped


@pytest.mark.parametrize(("sync", "m"), [(True, None), (False, 4)])
def test_ddp_equals_single_process(ddp_results, sync, m):
    grads, stepped = single_process(m)
    for rank in (0, 1):
        for a, b in zip(ddp_results[rank][f"grad_sync={sync}"], grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(ddp_results[rank][f"step_sync={sync}"], stepped):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_local_and_synchronised_ascent_differ(ddp_results):
    local, synced = ddp_results[0]["grad_sync=False"], ddp_results[0]["grad_sync=True"]
    assert any(not torch.allclose(a, b) for a, b in zip(local, synced))
