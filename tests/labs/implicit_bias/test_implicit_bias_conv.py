"""Convergence study: the toy problem's closed forms, SGD/SAM/USAM steps against a hand-written NumPy loop,
and the qualitative claim (constant rho stalls at ||grad f|| = O(rho); decaying rho converges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharplab.errors import ConfigError
from sharplab.labs.implicit_bias.convergence import (
    ConvergenceConfig,
    default_study,
    make_problem,
    run_convergence,
)


def test_closed_form_gradient_matches_finite_differences_and_is_non_convex() -> None:
    prob = make_problem(seed=2, n=7, d=3)
    w = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    h = 1e-6
    fd = torch.stack([(prob.loss(w + h * e) - prob.loss(w - h * e)) / (2 * h) for e in torch.eye(3).double()])
    torch.testing.assert_close(prob.grad(w), fd, rtol=1e-7, atol=1e-9)
    # Hessian at 0: mean(h) I - 2 lam I  (log(1 + w^2) has curvature 2 at 0)
    hess = torch.autograd.functional.hessian(lambda v: prob.loss(v), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(hess, (prob.h.mean() - 2 * prob.lam) * torch.eye(3, dtype=torch.float64))
    assert float(prob.h.mean()) - 2 * prob.lam < 0  # non-convex


def reference(cfg: ConvergenceConfig, seed: int) -> np.ndarray:
    """Plain NumPy SGD / SAM / USAM with the schedules written out; same index draws as the lab."""
    prob = make_problem(seed, cfg.n, cfg.d)
    hh, c, lam = prob.h.numpy(), prob.c.numpy(), prob.lam
    gen = torch.Generator().manual_seed(seed)
    decay = {"constant": lambda s: 1.0, "inv-sqrt": lambda s: (1 + s) ** -0.5, "inv": lambda s: 1 / (1 + s)}

    def grad(w, idx):
        return (hh[idx, None] * (w - c[idx])).mean(0) - 2 * lam * w / (1 + w * w)

    w = np.zeros(cfg.d)
    for t in range(cfg.steps):
        idx = torch.randint(0, cfg.n, (cfg.batch_size,), generator=gen).numpy()
        lr = cfg.lr * decay[cfg.lr_schedule](t / cfg.decay_steps)
        rho = cfg.rho * decay[cfg.rho_schedule](t / cfg.decay_steps)
        g = grad(w, idx)
        if cfg.method == "sam":
            g = grad(w + rho * g / (np.linalg.norm(g) + 1e-12), idx)
        elif cfg.method == "usam":
            g = grad(w + rho * g, idx)
        w = w - lr * g
    return w


@pytest.mark.parametrize("cfg", [
    ConvergenceConfig(method="sgd", lr=0.1, lr_schedule="inv-sqrt", steps=120, batch_size=3, d=3),
    ConvergenceConfig(method="sam", lr=0.2, rho=0.3, lr_schedule="inv", steps=120, batch_size=2),
    ConvergenceConfig(method="usam", lr=0.1, rho=0.2, rho_schedule="inv", lr_schedule="inv", steps=120),
])
def test_steps_match_a_numpy_loop(cfg: ConvergenceConfig) -> None:
    res = run_convergence(cfg, seed=4)
    w = reference(cfg, seed=4)
    prob = make_problem(4, cfg.n, cfg.d)
    final = float(np.linalg.norm(prob.grad(torch.from_numpy(w)).numpy()))
    assert res.grad_norm[-1] == pytest.approx(final, rel=1e-9, abs=1e-12)
    assert res.steps[0] == 0 and res.steps[-1] == cfg.steps


def test_constant_rho_stalls_decaying_rho_converges() -> None:
    common = dict(lr=0.2, rho=1.0, lr_schedule="inv", steps=600, record_every=20)
    const = run_convergence(ConvergenceConfig(method="sam", **common), seed=0)
    decay = run_convergence(ConvergenceConfig(method="sam", rho_schedule="inv", **common), seed=0)
    sgd = run_convergence(ConvergenceConfig(method="sgd", **common), seed=0)
    assert const.final_grad_norm > 3 * decay.final_grad_norm
    assert const.final_grad_norm > 3 * sgd.final_grad_norm
    assert const.final_grad_norm > 0.1  # O(rho) plateau, far from stationary


def test_default_study_and_validation() -> None:
    labels = [c.label for c in default_study(steps=10)]
    assert len(labels) == len(set(labels)) == 6
    with pytest.raises(ConfigError):
        ConvergenceConfig(method="adam")
    with pytest.raises(ConfigError):
        ConvergenceConfig(batch_size=50, n=20)
