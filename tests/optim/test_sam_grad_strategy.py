"""m-sharpness strategies: the micro-batch loop and the vectorised path agree with a reference loop, and
``strategy="auto"`` picks the loop for wide convolutions."""

import pytest
import torch
import torch.nn.functional as F
from optim_reference import ref_msam_grad
from torch import nn

from sharplab.errors import SharplabError
from sharplab.optim import sam_grad
from sharplab.optim.functional import _strategy


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_strategies_match_the_reference_loop(m, strategy):
    model = mlp()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    expected = ref_msam_grad(model, F.cross_entropy, x, y, 0.1, m)
    loss = sam_grad(model, F.cross_entropy, x, y, rho=0.1, m=m, strategy=strategy)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_loop_and_vmap_agree_on_mechanisms_and_groupnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    net = net.double()
    x, y = torch.randn(6, 2, 6, 6), torch.randint(0, 3, (6,))
    for mechanism in ["full", "iw_only", "lr_only"]:
        out = {}
        for strategy in ["loop", "vmap"]:
            net.zero_grad()
            sam_grad(net, F.cross_entropy, x, y, rho=0.1, m=2, mechanism=mechanism, strategy=strategy)
            out[strategy] = [p.grad.clone() for p in net.parameters()]
        for a, b in zip(out["loop"], out["vmap"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_auto_picks_the_loop_for_wide_convolutions_only():
    assert _strategy("auto", nn.Sequential(nn.Conv2d(64, 128, 3))) == "vmap"
    assert _strategy("auto", nn.Sequential(nn.Conv2d(128, 128, 3))) == "loop"
    assert _strategy("auto", mlp()) == "vmap"
    with pytest.raises(SharplabError, match="strategy"):
        _strategy("fast", mlp())
