"""m-sharpness strategies: the per-example formulas ("vmap"), torch.func ("func") and the micro-batch loop
agree with a reference loop over micro-batches; ``strategy="auto"`` picks as documented.

Tolerances: every comparison is float64 between different orders of the same sums (per-example outer
products vs. batched kernels, Gram-matrix norms vs. direct norms), so the differences are rounding,
a few hundred ulps at most (observed <= 1e-15 on gradients of order 0.1-1); rtol 1e-10 / atol 1e-12
leaves room for that, while a wrong formula (an O(rho) = 0.1 change) is ~1e9 times larger.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_reference import ref_msam_grad
from torch import nn

from sharplab.errors import SharplabError
from sharplab.optim import _per_example, make_rule, sam_grad
from sharplab.optim._msharpness import choose_strategy as _strategy

TOL = {"rtol": 1e-10, "atol": 1e-12}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def conv_net(norm: str = "gn"):
    """Convolutions (bias, no bias, stride, dilation), a norm layer, LayerNorm and a linear head."""
    torch.manual_seed(0)
    norm_layer = nn.GroupNorm(2, 4) if norm == "gn" else nn.BatchNorm2d(4)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), norm_layer, nn.ReLU(),
                        nn.Conv2d(4, 6, 2, dilation=2, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.LayerNorm(6), nn.Linear(6, 3))
    return net.double()


def data(n=8, shape=(2, 5, 5), seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def grads_after(model, x, y, **kw):
    model.zero_grad()
    loss = sam_grad(model, F.cross_entropy, x, y, rho=0.1, **kw)
    return loss, [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_all_close(got, expected):
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("strategy", ["loop", "vmap", "func"])
def test_strategies_match_the_reference_loop(m, strategy):
    model = mlp()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    expected = ref_msam_grad(model, F.cross_entropy, x, y, 0.1, m)
    loss = sam_grad(model, F.cross_entropy, x, y, rho=0.1, m=m, strategy=strategy)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, **TOL)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


@pytest.mark.parametrize(("norm", "m", "rule", "chunk_size"), [
    ("gn", 1, "sam", None), ("gn", 1, "asam", 3), ("gn", 2, "usam", None), ("gn", 4, "sam", 3),
    ("bn", 1, "sam", 3), ("bn", 1, "usam", None), ("bn", 2, "asam", None), ("bn", 4, "sam", None),
])
def test_per_example_formulas_match_the_reference_loop(norm, m, rule, chunk_size):
    """Conv + GroupNorm/BatchNorm (per-micro-batch statistics) + LayerNorm + linear head, against a loop of
    plain-autograd SAM steps on deep copies, one per micro-batch; chunk_size=3 leaves a short last chunk."""
    net = conv_net(norm)
    x, y = data()
    assert _strategy("vmap", net) == "vmap"  # the per-example path, not the torch.func fallback
    expected = ref_msam_grad(net, F.cross_entropy, x, y, 0.1, m, rule)
    loss, got = grads_after(net, x, y, m=m, rule=rule, strategy="vmap", chunk_size=chunk_size)
    assert_all_close(got, expected)
    k = x.shape[0] // m
    ref_loss = sum(F.cross_entropy(copy.deepcopy(net)(x[j * m : (j + 1) * m]), y[j * m : (j + 1) * m])
                   for j in range(k)) / k
    torch.testing.assert_close(loss, ref_loss, **TOL)


def test_factored_and_materialised_micro_batch_gradients_are_the_per_example_gradients():
    """Passes.per_example against autograd on each micro-batch alone: the materialised gradients, the kept
    factors (g_j = G_j A_j^T) and their Gram-matrix norms ||g_j||^2."""
    net = conv_net("gn")
    x, y = data()
    k, m = 4, 2
    params = list(net.parameters())
    passes = _per_example.Passes(net, params)
    losses = torch.stack([F.cross_entropy(o, t) for o, t in zip(passes.ascent(x, k).split(m), y.split(m))])
    grads, factors, sq = passes.per_example(losses.sum(), k, factored=True)
    assert factors and grads  # this net exercises both forms
    conv_weight = net[3].weight
    assert id(conv_weight) in factors  # R = 2 rows x 1 position; 2 (16 + 6) < 16 * 6
    ref = [torch.autograd.grad(F.cross_entropy(net(x[j * m : (j + 1) * m]), y[j * m : (j + 1) * m]), params)
           for j in range(k)]
    ref_sq = torch.zeros(k, dtype=torch.float64)
    for i, p in enumerate(params):
        expected = torch.stack([r[i] for r in ref])
        if id(p) in factors:
            a, g = factors[id(p)]
            got = torch.bmm(g, a.transpose(1, 2)).view_as(expected)
            ref_sq += expected.reshape(k, -1).pow(2).sum(1)
        else:
            got = grads[id(p)]
        torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(sq, ref_sq, **TOL)


def test_frozen_parameters_and_a_perturbed_subset():
    """A frozen first convolution (requires_grad=False) gets no gradient; perturbing only the head matches
    the micro-batch loop of plain autograd steps."""
    net = conv_net("bn")
    net[0].weight.requires_grad_(False)
    x, y = data()
    for perturb in [None, list(net[7].parameters())]:
        _, loop = grads_after(net, x, y, m=2, strategy="loop", perturb=perturb)
        _, fast = grads_after(net, x, y, m=2, strategy="vmap", perturb=perturb)
        assert fast[0] is None and loop[0] is None
        assert_all_close(fast[1:], loop[1:])


def test_dropout_both_passes_use_the_mask_a_plain_batch_forward_draws():
    """With dropout, the per-example path draws one mask for the batch (what ``model(x)`` would draw from the
    same RNG state) and replays it in the second pass; the reference is the micro-batch loop on a copy whose
    dropout is that fixed mask."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    torch.manual_seed(11)
    mask = F.dropout(torch.ones(6, 16, dtype=torch.float64), 0.5)
    torch.manual_seed(11)
    _, fast = grads_after(net, x, y, m=1, strategy="vmap")
    after = torch.get_rng_state()

    class FixedMask(nn.Module):
        def forward(self, h):
            return h * self.rows

    ref_net = copy.deepcopy(net)
    ref_net[2] = FixedMask()
    expected = None
    for i in range(6):
        ref_net[2].rows = mask[i : i + 1]
        part = ref_msam_grad(ref_net, F.cross_entropy, x[i : i + 1], y[i : i + 1], 0.1, 1)
        expected = part if expected is None else [a + b for a, b in zip(expected, part)]
    assert_all_close(fast, [e / 6 for e in expected])
    torch.manual_seed(11)
    net(x)
    assert torch.equal(after, torch.get_rng_state())  # the RNG moved as for one forward


def test_unsupported_layers_and_batch_off_dim_0_fall_back_to_torch_func():
    class Scale(nn.Module):  # a parameter with no per-example formula
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.tensor([1.5], dtype=torch.float64))

        def forward(self, h):
            return h * self.s

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), Scale(), nn.Tanh(), nn.Linear(4, 3)).double()
    assert "Scale" in _per_example.unsupported(net, list(net.parameters()))
    assert _strategy("vmap", net) == "func" and _strategy("auto", net) == "func"
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    _, got = grads_after(net, x, y, m=1, strategy="vmap")
    assert_all_close(got, ref_msam_grad(net, F.cross_entropy, x, y, 0.1, 1))

    class TimeMajor(nn.Module):  # the linear layer sees time x batch: its dim 0 is not the examples
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, h):
            return self.lin(h.view(-1, 5, 2).transpose(0, 1)).mean(0)

    torch.manual_seed(0)
    net = TimeMajor().double()
    x = torch.randn(4, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    _, got = grads_after(net, x, y, m=1, strategy="vmap")
    assert_all_close(got, ref_msam_grad(net, F.cross_entropy, x, y, 0.1, 1))


def test_mechanisms_and_multi_step_use_torch_func_and_match_the_loop():
    net = conv_net("gn")
    x, y = data(6)
    assert _strategy("vmap", net, rule=make_rule("sam", 2)) == "func"
    for kw in [{"mechanism": "iw_only"}, {"mechanism": "lr_only"}, {"ascent_steps": 2}]:
        expected = "vmap" if "ascent_steps" in kw else "func"  # MultiStep: the rule check above
        assert _strategy("vmap", net, mechanism=kw.get("mechanism", "full")) == expected
        _, loop = grads_after(net, x, y, m=2, strategy="loop", **kw)
        _, fast = grads_after(net, x, y, m=2, strategy="vmap", **kw)
        assert_all_close(fast, loop)


def test_chunk_size_bounds_the_micro_batches_held_at_once(monkeypatch):
    seen = []
    original = _per_example.Passes.ascent

    def spy(self, x, k):
        seen.append(k)
        return original(self, x, k)

    monkeypatch.setattr(_per_example.Passes, "ascent", spy)
    net = conv_net("gn")
    x, y = data(8)
    sam_grad(net, F.cross_entropy, x, y, rho=0.1, m=1, chunk_size=3, strategy="vmap")
    assert seen == [3, 3, 2]


def test_auto_rule():
    # per-example formulas whenever they cover the model (small CNN and PreAct ResNet-18 alike)
    assert _strategy("auto", conv_net("bn")) == "vmap"
    assert _strategy("auto", nn.Sequential(nn.Conv2d(128, 128, 3))) == "vmap"
    # otherwise torch.func, or the loop for wide convolutions torch.func makes into slow grouped ones
    assert _strategy("auto", nn.Sequential(nn.Conv2d(64, 128, 3, groups=2))) == "func"
    assert _strategy("auto", nn.Sequential(nn.Conv2d(128, 256, 3, groups=2))) == "loop"
    assert _strategy("auto", mlp(), mechanism="iw_only") == "func"
    assert _strategy("auto", mlp()) == "vmap"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed dtypes: torch.func handles autocast
        assert _strategy("vmap", mlp()) == "func"
    with pytest.raises(SharplabError, match="strategy"):
        _strategy("fast", mlp())
