"""``sam_grad(..., combiner=)``: GSAM and coupled WSAM descent directions against hand-written formulas on
the tiny float64 MLP (gradients by plain autograd on deep copies, see optim_reference)."""

import pytest
import torch
import torch.nn.functional as F
from optim_reference import batches, flat_grad, mlp, ref_sam_grad

from sharplab.errors import SharplabError
from sharplab.optim import GSAM, WSAM, LookSAM, sam_grad

TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64, same sums in another order


def dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def run(model, x, y, combiner, rho=0.1):
    model.zero_grad()
    sam_grad(model, F.cross_entropy, x, y, rho=rho, combiner=combiner)
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gsam_descends_along_gs_minus_alpha_g_perp(alpha):
    model = mlp()
    x, y = batches(steps=1)[0]
    g = flat_grad(model, F.cross_entropy(model(x), y))
    gs = ref_sam_grad(model, F.cross_entropy, x, y, 0.1)
    coef = dot(g, gs) / dot(gs, gs)
    expected = [s - alpha * (gi - coef * s) for gi, s in zip(g, gs)]  # Zhuang et al. 2022, Alg. 1
    for got, e in zip(run(model, x, y, GSAM(alpha)), expected):
        torch.testing.assert_close(got, e, **TOL)


def test_coupled_wsam_is_g_plus_weighted_sharpness_gradient():
    model = mlp()
    x, y = batches(steps=1)[0]
    g = flat_grad(model, F.cross_entropy(model(x), y))
    gs = ref_sam_grad(model, F.cross_entropy, x, y, 0.1)
    a = 0.8 / 0.2  # gamma / (1 - gamma), Yue et al. 2023
    expected = [gi + a * (s - gi) for gi, s in zip(g, gs)]
    for got, e in zip(run(model, x, y, WSAM(0.8, decouple=False)), expected):
        torch.testing.assert_close(got, e, **TOL)


def test_rho_zero_with_a_combiner_is_the_plain_gradient():
    model = mlp()
    x, y = batches(steps=1)[0]
    g = flat_grad(model, F.cross_entropy(model(x), y))
    for got, e in zip(run(model, x, y, GSAM(0.5), rho=0.0), g):
        torch.testing.assert_close(got, e, **TOL)


@pytest.mark.parametrize(("combiner", "kw", "match"), [
    (LookSAM(), {}, "create"),
    (WSAM(0.8), {}, "decouple=False"),
    (GSAM(0.2), {"m": 2}, "m-sharpness"),
    (GSAM(0.2), {"mechanism": "iw_only"}, "mechanism"),
    ("gsam", {}, "Combiner"),
])
def test_combiners_that_need_an_optimizer_are_refused_in_one_line(combiner, kw, match):
    model = mlp()
    x, y = batches(steps=1)[0]
    with pytest.raises(SharplabError, match=match):
        sam_grad(model, F.cross_entropy, x, y, rho=0.1, combiner=combiner, **kw)
