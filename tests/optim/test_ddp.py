"""DistributedDataParallel semantics with two real gloo processes.

Synchronised ascent on two halves equals single-process SAM on the whole batch; local ascent (the
default) equals m-sharpness with m = the per-worker batch. Both passes' results agree across workers.
A rho = 0 step is all-reduced (plain data-parallel SGD); a float16 step whose local ascent gradient
overflows on one worker only is skipped on both (no deadlock, same scale).
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
    cmd = [sys.executable, str(HERE / "ddp_worker.py"), init, str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-process gloo run did not finish in 150 s (a hang); stderr:\n{e.stderr}")
    missing = [r for r in (0, 1) if not (out / f"rank{r}.pt").exists()]
    if proc.returncode != 0 or missing:
        pytest.fail(f"the 2-process gloo run exited with {proc.returncode} (ranks without results: "
                    f"{missing}); its stderr:\n{proc.stderr[-4000:]}")
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


def test_rho_zero_under_ddp_is_data_parallel_sgd(ddp_results):
    sys.path.insert(0, str(HERE))
    from ddp_worker import batch, mlp

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()  # mean over the whole batch = average of the halves
        opt.step()
    for rank in (0, 1):
        for a, b in zip(ddp_results[rank]["rho0"], model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


def test_float16_overflow_on_one_worker_skips_on_both(ddp_results):
    r0, r1 = ddp_results[0]["scaler"], ddp_results[1]["scaler"]
    assert not r0["local_finite"] and r1["local_finite"]  # the premise: only rank 0 overflows
    for r in (r0, r1):
        assert r["skipped"] == 1
        for a, b in zip(r["before"], r["after"]):
            assert torch.equal(a, b)
        assert r["scale"] == 2.0**126  # both lowered by the backoff factor, so they stay equal
