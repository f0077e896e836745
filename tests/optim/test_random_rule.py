"""The ``random`` rule (issue 20): one forward/backward per step, at w + eps, with the noise drawn on the
parameters' device from a generator on that device.

References: the pass counts are counted by hooks (a forward hook on the model, an identity autograd
function on its output that counts its backward calls); the gradient is grad L(w + eps) computed by hand
with eps = rho z / ||z||, z drawn from a generator seeded as the rule's, on the same device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharplab.errors import SharplabError
from sharplab.optim import SAM, MultiStep, RandomRule, sam_grad

RHO, SEED = 0.3, 123


class _Counter(torch.autograd.Function):
    backward_calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _Counter.backward_calls += 1
        return g


class Counted(nn.Module):
    """A small BatchNorm MLP that counts its forward calls and the backward passes through its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3))
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return _Counter.apply(self.net(x))


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def by_hand(model: nn.Module, x, y, device) -> list[torch.Tensor]:
    """grad L(w + eps), eps = rho z / ||z||, z ~ N(0, I) from torch.Generator(device).manual_seed(SEED)."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    params = list(model.parameters())
    z = [torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32).to(p.dtype) for p in params]
    norm = torch.sqrt(sum((t ** 2).sum() for t in z))
    w_eps = {n: (p.detach() + RHO * t / (norm + 1e-12)).requires_grad_()
             for (n, p), t in zip(model.named_parameters(), z)}
    out = torch.func.functional_call(model, (w_eps, {k: b.clone() for k, b in model.named_buffers()}), (x,))
    return list(torch.autograd.grad(F.cross_entropy(out, y), list(w_eps.values())))


def test_sam_grad_random_is_one_forward_and_one_backward_at_w_plus_eps():
    model, (x, y) = Counted(), batch()
    want = by_hand(Counted(), x, y, "cpu")
    _Counter.backward_calls = 0
    sam_grad(model, F.cross_entropy, x, y, rho=RHO, rule=RandomRule(seed=SEED))
    assert (model.forwards, _Counter.backward_calls) == (1, 1)
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)
    assert model.net[1].num_batches_tracked.item() == 1  # its only pass updates BatchNorm, once


@pytest.mark.parametrize("path", ["closure", "two-phase"])
def test_sam_optimizer_random_runs_one_pass_per_step(path):
    model, (x, y) = Counted(), batch()
    ref = Counted()
    want = by_hand(ref, x, y, "cpu")
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, rule=RandomRule(seed=SEED), lr=0.1)
    assert opt.passes == 1
    calls = {"closure": 0}
    grads: list[torch.Tensor] = []

    def closure():
        calls["closure"] += 1
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads[:] = [p.grad.clone() for p in model.parameters()]
        return loss

    _Counter.backward_calls = 0
    if path == "closure":
        opt.step(closure)
        assert calls["closure"] == 1
    else:  # the manual loop of a rule that needs no gradient at w: first_step, one pass, second_step
        assert opt.first_step()
        closure()
        opt.second_step()
    assert (model.forwards, _Counter.backward_calls) == (1, 1)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert model.net[1].num_batches_tracked.item() == 1


def test_deep_net_random_method_is_one_pass():
    """The deep-net lab's ``random`` step (the labs' step builder, member ``random``): one forward, one backward."""
    from sharplab.labs.deep_net.config import DeepNetConfig
    from sharplab.labs.deep_net.train import Phases
    from sharplab.labs.training import take_step

    model, (x, y) = Counted(), batch()
    opt = Phases(DeepNetConfig(method="random", rho=RHO, batch_size=len(y)), model, seed=0).get("random", RHO)
    _Counter.backward_calls = 0
    take_step(model, opt, x, y, step=0)
    assert (model.forwards, _Counter.backward_calls) == (1, 1)


def test_noise_is_drawn_on_the_parameters_device_with_a_generator_there(monkeypatch):
    """Every draw names the parameter's device and uses a generator on it; eps lies on that device."""
    draws = []
    real = torch.randn

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        draws.append((kwargs.get("device"), kwargs["generator"].device, out.device))
        return out

    params = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)]
    rule = RandomRule(seed=SEED)
    monkeypatch.setattr(torch, "randn", spy)
    eps = rule.perturbation(None, params, [RHO, RHO])
    monkeypatch.undo()
    assert len(draws) == len(params)
    for (asked, gen_device, out_device), p, e in zip(draws, params, eps):
        assert torch.device(asked) == gen_device == out_device == p.device == e.device
    torch.testing.assert_close(torch.sqrt(sum((e ** 2).sum() for e in eps)), torch.tensor(RHO))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_on_cuda_parameters_is_drawn_on_cuda():
    params = [torch.zeros(64, 32, device="cuda", requires_grad=True)]
    rule = RandomRule(seed=SEED)
    eps = rule.perturbation(None, params, [RHO])
    assert eps[0].device.type == "cuda" and rule.generator(params[0].device).device.type == "cuda"
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    z = torch.randn(64, 32, generator=gen, device="cuda")
    torch.testing.assert_close(eps[0], (RHO * z / z.norm()).to(eps[0].dtype))
    state = rule.state_dict()
    again = RandomRule(seed=0)
    again.load_state_dict(state)
    torch.testing.assert_close(again.perturbation(None, params, [RHO]), rule.perturbation(None, params, [RHO]))


def test_state_round_trips_and_reads_the_former_cpu_format():
    params = [torch.zeros(6, requires_grad=True)]
    a = RandomRule(seed=SEED)
    a.perturbation(None, params, [1.0])
    b = RandomRule(seed=0)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.perturbation(None, params, [1.0]), b.perturbation(None, params, [1.0]))
    old = RandomRule(seed=0)
    old.load_state_dict({"generator": torch.Generator().manual_seed(SEED).get_state()})
    torch.testing.assert_close(old.perturbation(None, params, [1.0]),
                               RandomRule(seed=SEED).perturbation(None, params, [1.0]))


def test_multi_step_random_is_refused():
    with pytest.raises(SharplabError, match="needs a gradient rule"):
        MultiStep("random", steps=2)
