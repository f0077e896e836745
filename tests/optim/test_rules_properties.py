"""Properties of the perturbation rules for arbitrary gradients (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharplab.optim import ASAMRule, MultiStep, SAMRule, USAMRule

values = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)
tensors = st.lists(st.lists(values, min_size=1, max_size=6), min_size=1, max_size=4).map(
    lambda rows: [torch.tensor(r, dtype=torch.float64) for r in rows]
)
radii = st.floats(0.0, 10.0, allow_nan=False)


def norm(ts):
    return torch.sqrt(sum((t**2).sum() for t in ts))


@settings(max_examples=60, deadline=None)
@given(grads=tensors, rho=radii)
def test_sam_perturbation_has_norm_rho_along_the_gradient(grads, rho):
    eps = SAMRule().perturbation(grads, grads, [rho] * len(grads))
    if norm(grads) > 1e-6:
        torch.testing.assert_close(norm(eps), torch.tensor(rho, dtype=torch.float64))
        for e, g in zip(eps, grads):  # same direction: eps = c g with c >= 0
            torch.testing.assert_close(e, g * (rho / norm(grads)))
    else:  # a (near-)zero gradient never gives more than rho, and no NaN
        assert norm(eps) <= rho + 1e-9


@settings(max_examples=60, deadline=None)
@given(grads=tensors, rho=radii)
def test_usam_is_linear_in_the_gradient(grads, rho):
    for e, g in zip(USAMRule().perturbation(grads, grads, [rho] * len(grads)), grads):
        torch.testing.assert_close(e, rho * g)


@settings(max_examples=60, deadline=None)
@given(grads=tensors, rho=radii, data=st.data())
def test_asam_perturbation_has_norm_rho_in_the_scaled_metric(grads, rho, data):
    params = [data.draw(st.lists(values, min_size=g.numel(), max_size=g.numel())) for g in grads]
    params = [torch.tensor(p, dtype=torch.float64) for p in params]
    eps = ASAMRule(eta=0.01).perturbation(grads, params, [rho] * len(grads))
    scaled = [e / (p.abs() + 0.01) for e, p in zip(eps, params)]  # T^{-1} eps = rho T g / ||T g||
    tg = [(p.abs() + 0.01) * g for p, g in zip(params, grads)]
    if norm(tg) > 1e-6:
        torch.testing.assert_close(norm(scaled), torch.tensor(rho, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(g1=tensors, rho=radii, steps=st.integers(2, 5))
def test_multi_step_stays_in_the_ball(g1, rho, steps):
    rule = MultiStep("usam", steps=steps)
    eps = None
    for k in range(steps):
        eps = rule.update(eps, [g * (k + 1) for g in g1], g1, [rho] * len(g1))
    assert norm(eps) <= rho * (1 + 1e-9) + 1e-12
