"""n-SAM (``create("nsam")``, ``ascent_batch="previous"``) against a hand-written loop in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import SharplabError
from sharplab.optim import SAM, create


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
            for _ in range(n)]


def _reference(batches, rho: float, lr: float) -> tuple[list[torch.Tensor], list[float]]:
    """eps_t = rho g'/||g'|| with g' the previous batch's gradient at w_t; plain SGD on grad L_{B_t}(w_t + eps)."""
    model = _net()
    params = list(model.parameters())
    losses, prev = [], None
    for x, y in batches:
        xa, ya = prev if prev is not None else (x, y)
        g = torch.autograd.grad(F.cross_entropy(model(xa), ya), params)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        w = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, g):
                p.add_(rho * t / norm)
        loss = F.cross_entropy(model(x), y)
        gs = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, w0, t in zip(params, w, gs):
                p.copy_(w0 - lr * t)
        losses.append(float(loss.detach()))
        prev = (x, y)
    return [p.detach() for p in params], losses


def test_nsam_matches_hand_written_loop() -> None:
    batches = _batches()
    ref, ref_losses = _reference(batches, rho=0.3, lr=0.2)
    model = _net()
    opt = create("nsam", model.parameters(), torch.optim.SGD, rho=0.3, lr=0.2, model=model, loss_fn=F.cross_entropy)
    losses = [float(opt.step(inputs=x, targets=y)) for x, y in batches]
    assert losses == pytest.approx(ref_losses, rel=1e-12)  # the loss returned: this batch's, at w + eps
    for p, q in zip(model.parameters(), ref):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-13)


def test_nsam_state_dict_carries_the_previous_batch() -> None:
    batches = _batches()
    model = _net()
    opt = create("nsam", model.parameters(), torch.optim.SGD, rho=0.3, lr=0.2, model=model, loss_fn=F.cross_entropy)
    for x, y in batches[:2]:
        opt.step(inputs=x, targets=y)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved = opt.state_dict()
    opt.step(inputs=batches[2][0], targets=batches[2][1])
    after = [p.detach().clone() for p in model.parameters()]
    model2 = _net()
    model2.load_state_dict(state)
    opt2 = create("nsam", model2.parameters(), torch.optim.SGD, rho=0.3, lr=0.2, model=model2,
                  loss_fn=F.cross_entropy)
    opt2.load_state_dict(saved)
    opt2.step(inputs=batches[2][0], targets=batches[2][1])  # same computation: identical
    for p, q in zip(model2.parameters(), after):
        assert torch.equal(p.detach(), q)
    model3 = _net()
    model3.load_state_dict(state)
    fresh = create("nsam", model3.parameters(), torch.optim.SGD, rho=0.3, lr=0.2, model=model3,
                   loss_fn=F.cross_entropy)  # no previous batch: the ascent uses this batch -> another step
    fresh.step(inputs=batches[2][0], targets=batches[2][1])
    assert any(not torch.equal(p.detach(), q) for p, q in zip(model3.parameters(), after))


def test_nsam_refuses_the_closure_path_and_m() -> None:
    model = _net()
    opt = create("nsam", model.parameters(), torch.optim.SGD, lr=0.1, model=model, loss_fn=F.cross_entropy)
    with pytest.raises(SharplabError, match="need the batch"):
        opt.step(lambda: F.cross_entropy(model(torch.randn(2, 5, dtype=torch.float64)), torch.tensor([0, 1])))
    with pytest.raises(SharplabError, match="ascent_batch='previous'"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, m=2, ascent_batch="previous")
    with pytest.raises(SharplabError, match="ascent_batch must be one of"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, ascent_batch="next")


def test_strategy_reaches_sam_grad() -> None:
    """SAM(m=, strategy="loop") is sam_grad(strategy="loop") plus the base step: the same computation."""
    from sharplab.optim import sam_grad

    x, y = _batches(1)[0]
    a, b = _net(), _net()
    base = torch.optim.SGD(a.parameters(), lr=0.1)
    base.zero_grad()
    sam_grad(a, F.cross_entropy, x, y, rho=0.2, m=2, strategy="loop")
    base.step()
    opt = SAM(b.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, model=b, loss_fn=F.cross_entropy, m=2,
              strategy="loop")
    opt.step(inputs=x, targets=y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(SharplabError, match="strategy must be one of"):
        SAM(b.parameters(), torch.optim.SGD, lr=0.1, strategy="fast")
