"""Importance weights, Lorenz curve and Gini coefficient against closed forms and hand-written references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sharplab.errors import SharplabError
from sharplab.labs.feature_quality.importance import (
    gini,
    importance_snapshot,
    importance_weights,
    logit_grad_norms,
    lorenz_curve,
    per_example_phantom_norms,
    phantom,
)


def logit_grad_norms_autograd(logits, targets, loss_fn):
    """Reference: ``||dl/df_i||_2`` for a per-example loss ``loss_fn(logits, targets) -> (N,)``. Since
    ``l_i`` depends only on row ``i`` of the logits, the gradient of ``sum_i l_i`` holds ``dl_i/df_i`` in
    row ``i``."""
    f = logits.detach().clone().requires_grad_(True)
    losses = loss_fn(f, targets)
    assert losses.shape == (f.shape[0],), "loss_fn must return one loss per example (reduction='none')"
    (grad,) = torch.autograd.grad(losses.sum(), f)
    return grad.reshape(f.shape[0], -1).norm(dim=1)


def _gini_pairwise(w: list[float]) -> float:
    """Reference: mean absolute difference over all ordered pairs / (2 * mean)."""
    n = len(w)
    mean = sum(w) / n
    return sum(abs(a - b) for a, b in itertools.product(w, w)) / (2 * n * n * mean)


def test_softmax_ce_norms_match_autograd_and_hand_values() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    ref = logit_grad_norms_autograd(logits, y, lambda f, t: F.cross_entropy(f, t, reduction="none"))
    torch.testing.assert_close(logit_grad_norms(logits, y), ref, rtol=1e-12, atol=1e-12)
    # hand value: logits (0, 0), label 0 -> softmax (1/2, 1/2), dl/df = (-1/2, 1/2), norm = sqrt(1/2)
    val = logit_grad_norms(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]))
    assert val.item() == pytest.approx(math.sqrt(0.5), abs=1e-15)


def test_binary_logit_norms_match_autograd() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 1, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (9,), generator=g)
    ref = logit_grad_norms_autograd(
        z, y, lambda f, t: F.binary_cross_entropy_with_logits(f.reshape(-1), t.double(), reduction="none")
    )
    torch.testing.assert_close(logit_grad_norms(z, y), ref, rtol=1e-12, atol=1e-12)


def test_weights_sum_to_one_and_follow_the_derivatives() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (50,), generator=g)
    lam = importance_weights(logits, y)
    assert lam.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (lam >= 0).all()
    norms = logit_grad_norms(logits, y)
    torch.testing.assert_close(lam * norms.sum(), norms)
    # a perfectly fitted batch has no derivative left: weights fall back to uniform, still summing to one
    fitted = importance_weights(torch.tensor([[100.0, -100.0], [-100.0, 100.0]], dtype=torch.float64),
                                torch.tensor([0, 1]))
    torch.testing.assert_close(fitted, torch.full((2,), 0.5, dtype=torch.float64))


def test_lorenz_and_gini_closed_forms() -> None:
    n = 8
    x, y = lorenz_curve(torch.ones(n))
    torch.testing.assert_close(y, x)  # uniform: the diagonal
    assert gini(torch.ones(n)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(n)
    one_hot[3] = 5.0
    x, y = lorenz_curve(one_hot)
    assert y[:-1].abs().max().item() == 0.0 and y[-1].item() == 1.0
    assert gini(one_hot) == pytest.approx((n - 1) / n, abs=1e-12)
    # hand case: weights (1, 2, 3, 4) -> shares 0.1 .. 0.4, Lorenz (0, .1, .3, .6, 1)
    x, y = lorenz_curve(torch.tensor([3.0, 1.0, 4.0, 2.0]))
    torch.testing.assert_close(y, torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64))
    # area = 0.25 * (0.05 + 0.2 + 0.45 + 0.8) = 0.375 -> G = 0.25
    assert gini(torch.tensor([3.0, 1.0, 4.0, 2.0])) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gini_matches_pairwise_formula(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(13, generator=g, dtype=torch.float64) ** 3
    assert gini(w) == pytest.approx(_gini_pairwise(w.tolist()), abs=1e-12)


def test_bad_scores_raise_user_errors() -> None:
    with pytest.raises(SharplabError):
        gini(torch.tensor([1.0, -1.0]))
    with pytest.raises(SharplabError):
        logit_grad_norms(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))


class _TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)  # LSAM perturbs the last layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return _TwoLayer().double()


def test_phantom_is_the_sam_ascent_step_and_restores_weights() -> None:
    model = _linear_model()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    w0 = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
    rho = 0.3
    with phantom(model, x, y, rho) as eps_norm:
        assert eps_norm == pytest.approx(rho)
        for p, p0, gr in zip(model.parameters(), w0, grads):
            torch.testing.assert_close(p, p0 + rho * gr / norm, rtol=0, atol=1e-14)
    for p, p0 in zip(model.parameters(), w0):
        assert torch.equal(p, p0)
    # LSAM: only the head moves, by rho times the head gradient over the head-only norm
    head_grads = grads[2:]
    head_norm = torch.sqrt(sum((gr**2).sum() for gr in head_grads))
    with phantom(model, x, y, rho, perturb=model.head.parameters()):
        ps = list(model.parameters())
        assert torch.equal(ps[0], w0[0]) and torch.equal(ps[1], w0[1])
        for p, p0, gr in zip(ps[2:], w0[2:], head_grads):
            torch.testing.assert_close(p, p0 + rho * gr / head_norm, rtol=0, atol=1e-14)


def test_phantom_leaves_batchnorm_statistics_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().train()
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    snap = importance_snapshot(model, x, y, rho=0.1)
    assert snap.real.sum().item() == pytest.approx(1.0) and snap.phantom.sum().item() == pytest.approx(1.0)
    for b, b0 in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), before):
        assert torch.equal(b, b0)


def test_snapshot_matches_a_manual_computation() -> None:
    model = _linear_model()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (32,), generator=g)
    snap = importance_snapshot(model, x, y, rho=0.5)
    # manual: w~ = w + rho g/||g||, then ||softmax - onehot|| normalised
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p.add_(0.5 * gr / norm)
        probs = torch.softmax(model(x), 1)
    manual = (probs - F.one_hot(y, 2).double()).norm(dim=1)
    torch.testing.assert_close(snap.phantom, manual / manual.sum(), rtol=1e-12, atol=1e-14)
    assert snap.gini_phantom == pytest.approx(_gini_pairwise(snap.phantom.tolist()), abs=1e-12)


def test_per_example_phantom_closed_form_on_a_linear_model() -> None:
    # Linear 2-class model: grad of l_i w.r.t. (W, b) is sigma(-z_i) (e_o - e_y) [x_i; 1]^T, so the 1-SAM
    # phantom lowers the margin z_i by exactly rho * sqrt(2) * sqrt(||x_i||^2 + 1), and ||dl/df|| there is
    # sqrt(2) * sigmoid(-(z_i - shift_i)).
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=g)
    rho = 0.4
    out = model(x).detach()
    z = out.gather(1, y[:, None])[:, 0] - out.gather(1, (1 - y)[:, None])[:, 0]
    shift = rho * math.sqrt(2) * torch.sqrt((x**2).sum(1) + 1)
    expected = math.sqrt(2) * torch.sigmoid(-(z - shift))
    got = per_example_phantom_norms(model, x, y, rho, chunk_size=16)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_per_example_phantom_matches_a_loop_over_examples() -> None:
    model = _linear_model()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=g)
    for perturb in (None, lambda m: m.head.parameters()):
        ref = []
        for i in range(len(y)):
            params = None if perturb is None else perturb(model)
            with phantom(model, x[i : i + 1], y[i : i + 1], 0.2, perturb=params), torch.no_grad():
                ref.append(logit_grad_norms(model(x[i : i + 1]), y[i : i + 1])[0])
        params = None if perturb is None else perturb(model)
        got = per_example_phantom_norms(model, x, y, 0.2, params)
        torch.testing.assert_close(got, torch.stack(ref), rtol=1e-10, atol=1e-12)


def test_per_example_phantom_refuses_batchnorm_in_train_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(SharplabError, match="BatchNorm"):
        per_example_phantom_norms(model, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_weights_are_more_uniform_on_the_toy(seed: int) -> None:
    """Importance weighting (Springer et al. 2024, Sec. 4): at an SGD checkpoint of a linear model on the
    toy, the weights SAM uses (at w + eps, batch or 1-SAM phantom) have a lower Gini than SGD's (at w)."""
    from sharplab.labs.feature_quality.experiment import load_data

    tr = load_data("toy").splits["train"]
    torch.manual_seed(seed)
    model = nn.Linear(tr.x.shape[1], 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    order = torch.randperm(len(tr.y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        opt.zero_grad()
        F.cross_entropy(model(tr.x[idx]), tr.y[idx]).backward()
        opt.step()
    x, y = tr.x[:512], tr.y[:512]
    for per_example in (False, True):
        snap = importance_snapshot(model, x, y, rho=0.3, per_example=per_example)
        assert snap.gini_phantom < snap.gini_real - 0.002, (per_example, snap.gini_real, snap.gini_phantom)
