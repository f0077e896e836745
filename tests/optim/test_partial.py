"""SAM in part (lsam, iw-only, lr-only): registry members that equal sam_grad with perturb= / mechanism=.

Float64 (conftest). The registry members run the same floating-point operations as the functional
reference, so they are compared exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import SharplabError
from sharplab.optim import create, last_layer_params, sam_grad

REFERENCE = {"lsam": lambda model: {"perturb": last_layer_params(model)},
             "iw-only": lambda model: {"mechanism": "iw_only"},
             "lr-only": lambda model: {"mechanism": "lr_only"}}


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batches(n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("m", [None, 4])
def test_the_member_equals_sam_grad_with_its_setting(name, m):
    a = mlp()
    b = copy.deepcopy(a)
    opt = create(name, a.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9, weight_decay=5e-4,
                 model=a, loss_fn=F.cross_entropy, m=m)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in batches():
        opt.step(inputs=x, targets=y)
        ref.zero_grad(set_to_none=True)
        sam_grad(b, F.cross_entropy, x, y, rho=0.3, m=m, **REFERENCE[name](b))
        ref.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt.steps_taken == 5


def test_lsam_perturbs_the_last_layer_only_on_every_path():
    model = mlp()
    opt = create("lsam", model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, model=model)
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    assert opt.first_step(zero_grad=True)
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), before)]
    assert changed == [False, False, True, True]  # Linear(5, 8) weight, bias stay; the head moves
    F.cross_entropy(model(x), y).backward()
    opt.second_step()


def test_what_the_members_refuse_is_one_line():
    model = mlp()
    with pytest.raises(SharplabError, match="needs model="):
        create("lsam", model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(SharplabError, match="iw-only: mechanism= is set by the variant itself"):
        create("iw-only", model.parameters(), torch.optim.SGD, lr=0.1, mechanism="lr_only")
    from sharplab.optim import Schedule

    with pytest.raises(SharplabError, match="lr-only: schedule= is not supported"):
        create("lr-only", model.parameters(), torch.optim.SGD, lr=0.1, schedule=Schedule(every=2))
    opt = create("iw-only", model.parameters(), torch.optim.SGD, lr=0.1, model=model, loss_fn=F.cross_entropy)
    with pytest.raises(SharplabError, match="need the batch"):
        opt.step(lambda: F.cross_entropy(model(batches(1)[0][0]), batches(1)[0][1]))
