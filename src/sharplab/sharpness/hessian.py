"""Hessian spectrum and trace of the mean loss from Hessian-vector products (``torch.func``).

For L(w) = (1/n) sum_i l(f(x_i; w), y_i), the product H v = d/dt grad L(w + t v) |_{t=0} is one
forward-over-reverse pass (``jvp`` of ``grad``), never forming H. On top of it:

* :func:`hessian_eigenvalues`: the top-k eigenvalues (largest first) by the Lanczos method with full
  re-orthogonalisation (Golub & Van Loan, *Matrix Computations*, sec. 10.1; as in PyHessian, Yao et al.
  2020), or by power iteration with deflation (``method="power"``: each new vector is kept orthogonal to
  the eigenvectors already found, so it converges to the next eigenvalue of largest magnitude).
* :func:`hessian_trace`: Hutchinson's estimator tr(H) = E[v^T H v] with Rademacher v (Hutchinson 1990),
  returned with its standard error over the probes.

Large inputs are processed in chunks of ``batch_size`` examples; the HVP of the mean loss is the
size-weighted mean of the chunk HVPs (exact for a mean-reduced loss). The model is evaluated in eval mode
(see :func:`sharplab.sharpness._functional.eval_mode`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, jvp

from sharplab.errors import SharplabError
from sharplab.sharpness._functional import LossFn, eval_mode, flat, loss_of, trainable, unflat


def hvp_fn(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
           ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(hvp, w)``: ``hvp(v)`` = H v for a flat vector v (H at the current weights w, flattened)."""
    params = trainable(model)
    if not params:
        raise SharplabError("the model has no parameters with requires_grad=True")
    n = x.shape[0]
    bs = batch_size or n
    chunks = [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        vd = unflat(v, params)
        total = torch.zeros_like(v)
        for xc, yc in chunks:
            g = grad(loss_of(model, loss_fn, xc, yc))
            _, hv = jvp(g, (params,), (vd,))
            total += flat(hv) * (xc.shape[0] / n)
        return total

    return hvp, flat(params)


def _check_k(k: int, dim: int) -> None:
    if not 1 <= k <= dim:
        raise SharplabError(f"k={k} eigenvalues requested; use 1 <= k <= {dim} (the number of parameters)")


def hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, k: int = 1,
                        iters: int | None = None, method: str = "lanczos", tol: float = 1e-6, seed: int = 0,
                        batch_size: int | None = None) -> torch.Tensor:
    """Top-``k`` eigenvalues (descending) of the Hessian of ``loss_fn(model(x), y)`` at the current weights.

    Args:
        iters: Lanczos steps (default ``min(dim, max(4k + 20, 40))``) or power steps per eigenvalue
            (default 200).
        method: ``"lanczos"`` (largest algebraic eigenvalues) or ``"power"`` (power iteration with
            deflation; largest in magnitude).
        tol: power iteration stops when the Rayleigh quotient changes by less than ``tol`` (relative).
        seed: seed of the start vector(s).
    """
    with eval_mode(model):
        hvp, w = hvp_fn(model, loss_fn, x, y, batch_size)
        dim = w.numel()
        _check_k(k, dim)
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(dim, generator=gen, dtype=w.dtype).to(w.device)
        if method == "lanczos":
            return _lanczos(hvp, start, k, min(dim, iters or max(4 * k + 20, 40)))
        if method == "power":
            return _power(hvp, start, k, iters or 200, tol, gen)
        raise SharplabError(f"unknown method {method!r}; use 'lanczos' or 'power'")


def _lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """m Lanczos steps with full re-orthogonalisation; Ritz values of the tridiagonal T_m."""
    basis = [v / v.norm()]
    alphas, betas = [], []
    for j in range(m):
        w = hvp(basis[j])
        alpha = torch.dot(w, basis[j])
        alphas.append(alpha)
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)
        w = w - Q.T @ (Q @ w)  # twice is enough (Kahan-Parlett)
        beta = w.norm()
        if j == m - 1 or beta <= 1e-10 * max(1.0, abs(float(alpha))):
            break
        betas.append(beta)
        basis.append(w / beta)
    a = torch.stack(alphas).double().cpu()
    t = torch.diag(a)
    if betas:
        b = torch.stack(betas[: len(alphas) - 1]).double().cpu()
        t += torch.diag(b, 1) + torch.diag(b, -1)
    ritz = torch.linalg.eigvalsh(t).flip(0)
    if ritz.numel() < k:
        raise SharplabError(f"the Krylov space has only {ritz.numel()} dimensions; k={k} is too many")
    return ritz[:k].to(v.dtype)


def _power(hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, k: int, iters: int, tol: float,
           gen: torch.Generator) -> torch.Tensor:
    found: list[torch.Tensor] = []
    values = []
    for i in range(k):
        if i:
            v = torch.randn(v.numel(), generator=gen, dtype=v.dtype).to(v.device)
        lam = math.nan
        for _ in range(iters):
            for u in found:  # deflation: stay orthogonal to the eigenvectors already found
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            hv = hvp(v)
            new = float(torch.dot(v, hv))
            v = hv
            if math.isfinite(lam) and abs(new - lam) <= tol * max(1.0, abs(new)):
                lam = new
                break
            lam = new
        u = v
        for f in found:
            u = u - torch.dot(f, u) * f
        found.append(u / u.norm())
        values.append(lam)
    return torch.tensor(values, dtype=v.dtype)


def hessian_trace(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, samples: int = 20,
                  seed: int = 0, batch_size: int | None = None) -> tuple[float, float]:
    """Hutchinson estimate of tr(H): ``(mean of v^T H v, its standard error)`` over ``samples`` probes."""
    if samples < 1:
        raise SharplabError(f"samples={samples} must be >= 1")
    with eval_mode(model):
        hvp, w = hvp_fn(model, loss_fn, x, y, batch_size)
        gen = torch.Generator().manual_seed(seed)
        est = []
        for _ in range(samples):
            v = (torch.randint(0, 2, (w.numel(),), generator=gen) * 2 - 1).to(dtype=w.dtype, device=w.device)
            est.append(float(torch.dot(v, hvp(v))))
    t = torch.tensor(est, dtype=torch.float64)
    se = float(t.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else math.nan
    return float(t.mean()), se
