"""SAM keeps its copies of w in buffers reused from step to step (no allocation per step): the steps stay
those of SAM written out (reference: plain autograd on a copy), including after a parameter group is added
(new shapes: fresh copies) and after a step that raised."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_reference import batches, mlp, ref_sam_grad

from sharplab.errors import Diverged
from sharplab.optim import SAM

RHO, LR = 0.05, 0.1


def _reference_steps(model, data):
    for x, y in data:
        g = ref_sam_grad(model, F.cross_entropy, x, y, RHO)
        with torch.no_grad():
            for p, gi in zip(model.parameters(), g):
                p -= LR * gi


def _sam_steps(opt, model, data):
    for x, y in data:
        def closure(x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)


def test_reused_buffers_give_sams_steps():
    model, ref = mlp(), mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    data = batches(steps=5)
    _sam_steps(opt, model, data[:1])
    kept = [t.data_ptr() for t in opt._old_buffers]
    _sam_steps(opt, model, data[1:])
    assert [t.data_ptr() for t in opt._old_buffers] == kept  # the same storage every step
    _reference_steps(ref, data)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)  # float64, two different computations


def test_added_group_gets_fresh_copies():
    model, ref = mlp(), mlp()
    extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = SAM(first, torch.optim.SGD, rho=RHO, lr=LR)
    data = batches(steps=3)
    _sam_steps(opt, model, data[:1])
    model.zero_grad(set_to_none=True)  # the closure's backward also filled the layer not yet optimized
    opt.add_param_group({"params": rest + [extra]})
    _sam_steps(opt, model, data[1:])
    assert len(opt._old_buffers) == len(first) + len(rest)  # extra has no gradient: never perturbed or saved
    # reference: step 1 perturbs and updates only the first layer, steps 2-3 all parameters
    x, y = data[0]
    g = ref_sam_grad(ref, F.cross_entropy, x, y, RHO, perturb=["0.weight", "0.bias"])
    with torch.no_grad():
        for p, gi in zip(list(ref.parameters())[:2], g):
            p -= LR * gi
    _reference_steps(ref, data[1:])
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(extra) == 0  # not in the graph: no gradient, untouched


def test_step_after_a_diverged_step_starts_from_w():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    x, y = batches(steps=1)[0]
    _sam_steps(opt, model, [(x, y)])
    w = copy.deepcopy(model.state_dict())

    def bad():
        loss = F.cross_entropy(model(x), y) * float("inf")
        loss.backward()
        return loss

    with pytest.raises(Diverged):
        opt.step(bad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, w[k])  # restored to w exactly (the same copy, bit for bit)
    model.zero_grad(set_to_none=True)  # the inf gradients of the failed step
    ref = copy.deepcopy(model)
    _sam_steps(opt, model, [(x, y)])
    _reference_steps(ref, [(x, y)])
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
