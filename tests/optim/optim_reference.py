"""Independent reference implementations for the optimizer tests: plain autograd on deep copies,
explicit Jacobians, Python loops. Nothing here imports sharplab.optim."""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Module:
    """The tiny float64 MLP (5 -> 7 -> 3, tanh) the optimizer tests share."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def batches(n: int = 8, steps: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` seeded batches of ``n`` examples (5 float inputs, 3 classes)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def flat_grad(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def sam_eps(grads, rho, rule="sam", params=None, eta=0.01):
    """eps for the closed-form rules, written out with Python sums."""
    if rule == "sam":
        norm = sum((g**2).sum() for g in grads).sqrt()
        return [rho * g / (norm + 1e-12) for g in grads]
    if rule == "usam":
        return [rho * g for g in grads]
    if rule == "asam":
        t = [p.detach().abs() + eta for p in params]
        norm = sum(((ti * g) ** 2).sum() for ti, g in zip(t, grads)).sqrt()
        return [rho * ti * ti * g / (norm + 1e-12) for ti, g in zip(t, grads)]
    raise ValueError(rule)


def ref_sam_grad(model, loss_fn, x, y, rho, rule="sam", perturb=None):
    """SAM gradient by perturbing a deep copy in place. ``perturb``: names of perturbed params."""
    m0 = copy.deepcopy(model)
    names = [n for n, _ in m0.named_parameters()]
    grads = flat_grad(m0, loss_fn(m0(x), y))
    chosen = [i for i, n in enumerate(names) if perturb is None or n in perturb]
    params = list(m0.parameters())
    eps = sam_eps([grads[i] for i in chosen], rho, rule, [params[i] for i in chosen])
    m1 = copy.deepcopy(model)
    p1 = list(m1.parameters())
    with torch.no_grad():
        for i, e in zip(chosen, eps):
            p1[i].add_(e)
    return flat_grad(m1, loss_fn(m1(x), y))


def jacobian(model, x):
    """J[o, j]: d outputs.flatten()[o] / d theta[j], theta = concatenated parameters."""
    params = list(model.parameters())
    out = model(x).reshape(-1)
    rows = []
    for o in range(out.numel()):
        g = torch.autograd.grad(out[o], params, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def dl_df(model, loss_fn, x, y):
    out = model(x).detach().requires_grad_()
    return torch.autograd.grad(loss_fn(out, y), out)[0].reshape(-1)


def perturbed_copy(model, loss_fn, x, y, rho):
    m1 = copy.deepcopy(model)
    grads = flat_grad(model, loss_fn(model(x), y))
    eps = sam_eps(grads, rho)
    with torch.no_grad():
        for p, e in zip(m1.parameters(), eps):
            p.add_(e)
    return m1


def unflatten(vec, model):
    out, i = [], 0
    for p in model.parameters():
        out.append(vec[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


def ref_mechanism_grad(model, loss_fn, x, y, rho, mechanism):
    """J(w)^T dl/df(w~) (iw_only) or J(w~)^T dl/df(w) (lr_only), with explicit Jacobian matrices."""
    tilde = perturbed_copy(model, loss_fn, x, y, rho)
    if mechanism == "iw_only":
        vec = jacobian(model, x).T @ dl_df(tilde, loss_fn, x, y)
    else:
        vec = jacobian(tilde, x).T @ dl_df(model, loss_fn, x, y)
    return unflatten(vec, model)


def ref_msam_grad(model, loss_fn, x, y, rho, m, rule="sam"):
    """m-sharpness by a Python loop over micro-batches."""
    total = None
    k = x.shape[0] // m
    for j in range(k):
        g = ref_sam_grad(model, loss_fn, x[j * m : (j + 1) * m], y[j * m : (j + 1) * m], rho, rule)
        total = g if total is None else [a + b for a, b in zip(total, g)]
    return [t / k for t in total]
