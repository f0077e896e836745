"""The family against pytorch_optimizer's implementations (a bench extra; skipped without it).

Conventions that differ, and how the comparison aligns them (docs/optim.md explains the choices):
LookSAM there uses per-tensor norms (``layerwise=True`` here), and its step needs the caller to compute
the gradient at w before ``step``; ASAM there has no eta (``eta=0`` here)."""

import pytest
import torch
import torch.nn.functional as F
from test_family import LR, MU, batches, closure_for, mlp, run

from sharplab.optim import create

peer = pytest.importorskip("pytorch_optimizer", reason="pytorch_optimizer is a bench extra (pip install -e '.[bench]')")


def run_peer(opt, model, data, pre_closure=True):
    for x, y in data:
        closure = closure_for(opt, model, x, y)
        if pre_closure:
            closure()
        opt.step(closure)
    return list(model.parameters())


def close(a, b):
    """pytorch_optimizer accumulates the global gradient norm in float32 (get_global_gradient_norm), so its
    eps carries a relative error of ~1e-7 even in float64; after a few steps that is ~1e-9 in the weights.
    A different convention (norm, eta, per-tensor vs global, sign) moves them by > 1e-3."""
    for p, q in zip(a, b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_matches_pytorch_optimizer(decouple):
    a, b = mlp(), mlp()
    ours = run(create("wsam", a.parameters(), torch.optim.SGD, rho=0.1, gamma=0.8, decouple=decouple, lr=LR,
                      momentum=MU), a, batches())
    theirs = peer.WSAM(b, b.parameters(), torch.optim.SGD, rho=0.1, gamma=0.8, decouple=decouple, lr=LR, momentum=MU)
    close(ours, run_peer(theirs, b, batches(), pre_closure=False))


def test_looksam_layerwise_matches_pytorch_optimizer():
    a, b = mlp(), mlp()
    ours = run(create("looksam", a.parameters(), torch.optim.SGD, rho=0.1, k=3, alpha=0.7, layerwise=True, lr=LR,
                      momentum=MU), a, batches(steps=7))
    theirs = peer.LookSAM(b.parameters(), torch.optim.SGD, rho=0.1, k=3, alpha=0.7, lr=LR, momentum=MU)
    close(ours, run_peer(theirs, b, batches(steps=7)))


def test_friendly_sam_matches_pytorch_optimizer():
    a, b = mlp(), mlp()
    ours = run(create("fsam", a.parameters(), torch.optim.SGD, rho=0.1, sigma=0.8, lmbda=0.6, lr=LR, momentum=MU),
               a, batches())
    theirs = peer.FriendlySAM(b.parameters(), torch.optim.SGD, rho=0.1, sigma=0.8, lmbda=0.6, lr=LR, momentum=MU)
    close(ours, run_peer(theirs, b, batches()))


def test_asam_without_eta_matches_pytorch_optimizer_adaptive_sam():
    a, b = mlp(), mlp()
    ours = run(create("asam", a.parameters(), torch.optim.SGD, rho=0.5, eta=0.0, lr=LR, momentum=MU), a, batches())
    theirs = peer.SAM(b.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=LR, momentum=MU)
    close(ours, run_peer(theirs, b, batches()))


def test_gsam_matches_pytorch_optimizer_at_constant_rho():
    a, b = mlp(), mlp()
    ours = run(create("gsam", a.parameters(), torch.optim.SGD, rho=0.1, rho_min=0.1, alpha=0.3, lr=LR, momentum=MU),
               a, batches())

    class ConstantRho:
        def step(self):
            return 0.1

    base = torch.optim.SGD(b.parameters(), lr=LR, momentum=MU)
    theirs = peer.GSAM(b.parameters(), base, model=b, rho_scheduler=ConstantRho(), alpha=0.3)
    for x, y in batches():
        theirs.set_closure(F.cross_entropy, x, y)
        theirs.step()
    close(ours, list(b.parameters()))
