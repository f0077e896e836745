"""Sharpness measures against closed forms: quadratics with a known spectrum, linear losses on the ball."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharplab.errors import SharplabError
from sharplab.sharpness import hessian_eigenvalues, hessian_trace, m_sharpness


class Quadratic(nn.Module):
    """Outputs its parameter w (ignores x); with ``quad_loss`` L(w) = 1/2 (w - c)^T A (w - c)."""

    def __init__(self, w0: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def quad_loss(a: torch.Tensor, c: torch.Tensor):
    return lambda w, y: 0.5 * (w - c) @ a @ (w - c)


def spectrum_matrix(eigs: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


EIGS = [5.0, 3.0, 2.5, 1.0, 0.5, -0.7, 0.1, 0.05]
X, Y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_a_known_spectrum(method):
    a = spectrum_matrix(EIGS)
    model = Quadratic(torch.randn(8, dtype=torch.float64))
    top = hessian_eigenvalues(model, quad_loss(a, torch.zeros(8, dtype=torch.float64)), X, Y, k=3,
                              method=method, iters=None if method == "lanczos" else 3000, tol=1e-13)
    torch.testing.assert_close(top, torch.tensor([5.0, 3.0, 2.5], dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_eigenvalues_of_a_network_match_the_dense_hessian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 3, (20,))
    params = list(net.parameters())
    shapes = [p.shape for p in params]

    def f(v):
        out, i = [], 0
        for s in shapes:
            out.append(v[i:i + math.prod(s)].view(s))
            i += math.prod(s)
        h = torch.tanh(x @ out[0].T + out[1])
        return F.cross_entropy(h @ out[2].T + out[3], y)

    v = torch.cat([p.detach().flatten() for p in params])
    h = torch.autograd.functional.hessian(f, v)
    dense = torch.linalg.eigvalsh(h).flip(0)
    got = hessian_eigenvalues(net, F.cross_entropy, x, y, k=2, batch_size=7)  # chunked HVPs: same mean
    torch.testing.assert_close(got, dense[:2], rtol=1e-7, atol=1e-9)
    tr, _ = hessian_trace(net, F.cross_entropy, x, y, samples=60, seed=1)
    se = float(h.pow(2).sum().sqrt()) * math.sqrt(2 / 60)  # Var(v^T H v) <= 2 ||H||_F^2 (Rademacher)
    assert abs(tr - float(dense.sum())) < 5 * se


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    a = torch.diag(torch.tensor([2.0, -1.0, 0.5, 4.0], dtype=torch.float64))
    model = Quadratic(torch.ones(4, dtype=torch.float64))
    tr, se = hessian_trace(model, quad_loss(a, torch.zeros(4, dtype=torch.float64)), X, Y, samples=5)
    assert tr == pytest.approx(5.5, abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)


def test_m_sharpness_linear_losses_closed_form():
    """loss_i(w) = g_i . w: the worst case on the ball is rho ||mean_{S_j} g_i|| for each micro-batch."""
    g = torch.randn(16, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    rho = 0.3
    for m in (16, 4, 1):
        want = torch.stack([rho * g[j:j + m].mean(0).norm() for j in range(0, 16, m)]).mean()
        got = m_sharpness(model, lambda out, y: out.mean(), g, torch.zeros(16), rho=rho, m=m, steps=20)
        assert got == pytest.approx(float(want), rel=1e-10)
    # fewer steps than needed to reach the sphere (step 0.1 rho): the ascent has gone 5 * 0.1 rho
    got = m_sharpness(model, lambda out, y: out.mean(), g, torch.zeros(16), rho=rho, m=16, steps=5)
    assert got == pytest.approx(0.5 * rho * float(g.mean(0).norm()), rel=1e-10)


def test_m_sharpness_quadratic_known_worst_case():
    """L(w) = 1/2 (w - c)^T A (w - c) at w = 0 with c along the top eigenvector u1: the maximiser on the
    ball is delta = -rho u1, sharpness 1/2 lam1 ((|c| + rho)^2 - |c|^2)."""
    a = spectrum_matrix([4.0, 1.0, 0.5, 0.2], seed=3)
    lam, vecs = torch.linalg.eigh(a)
    c = 0.7 * vecs[:, -1]
    model = Quadratic(torch.zeros(4, dtype=torch.float64))
    rho = 0.2
    got = m_sharpness(model, quad_loss(a, c), X, torch.zeros(4), rho=rho, m=4, steps=20)
    assert got == pytest.approx(0.5 * 4.0 * ((0.7 + rho) ** 2 - 0.7 ** 2), rel=1e-9)
    assert torch.equal(model.w.detach(), torch.zeros(4, dtype=torch.float64))  # weights untouched


def test_batchnorm_model_is_measured_in_eval_mode_and_left_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    net(torch.randn(32, 3))  # some running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    s1 = m_sharpness(net, F.cross_entropy, x, y, rho=0.05, m=4)
    hessian_eigenvalues(net, F.cross_entropy, x, y, k=1)
    hessian_trace(net, F.cross_entropy, x, y, samples=2)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval mode: the same value as measuring an eval-mode copy (no batch statistics involved)
    net.eval()
    assert m_sharpness(net, F.cross_entropy, x, y, rho=0.05, m=4) == pytest.approx(s1, rel=1e-6)


def test_bad_arguments():
    model = nn.Linear(2, 1)
    with pytest.raises(SharplabError, match="divisor"):
        m_sharpness(model, lambda o, y: o.mean(), torch.zeros(6, 2), torch.zeros(6), m=4)
    with pytest.raises(SharplabError, match="k=5"):
        hessian_eigenvalues(model, lambda o, y: o.mean(), torch.zeros(2, 2), torch.zeros(2), k=5)
    with pytest.raises(SharplabError, match="unknown method"):
        hessian_eigenvalues(model, lambda o, y: o.mean(), torch.zeros(2, 2), torch.zeros(2), method="qr")


def test_package_docstring_example_runs():
    import doctest

    import sharplab.sharpness

    result = doctest.testmod(sharplab.sharpness)
    assert result.attempted > 0 and result.failed == 0
