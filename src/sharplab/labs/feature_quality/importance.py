"""Importance weighting at the real and the phantom parameter: per-example weights, Lorenz curve, Gini.

Springer, Nagarajan, Raghunathan, *Sharpness-Aware Minimization Enhances Feature Quality via Balanced
Learning* (ICLR 2024, arXiv:2405.20439), Sec. 4. With logits ``f_i = f(x_i; w)`` and per-example loss
``l(f_i, y_i)``, the gradient of the batch loss is

.. math::  \\nabla_w L(w) = \\frac{1}{n} \\sum_i J_i(w)^\\top \\, \\partial l / \\partial f_i (w),

so example ``i`` enters the update with the weight ``||dl/df_i||``. SAM evaluates the gradient at the
*phantom parameter* ``w~ = w + eps``, ``eps = rho * g / ||g||_2`` with ``g = grad L(w)`` (Foret et al. 2021,
eq. 2); LSAM perturbs only the last layer. The *importance weights* are

.. math::  \\lambda_i = ||\\partial l/\\partial f_i|| \\,/\\, \\sum_j ||\\partial l/\\partial f_j||,

evaluated at ``w`` (what SGD uses) and at ``w~`` (what SAM uses). Two phantoms are offered: the batch
one above (what ``sam``/``lsam`` training uses) and the per-example one of 1-SAM, ``w~_i = w + rho *
grad l_i / ||grad l_i||``, the setting of the paper's analysis (Sec. 4.1): to first order every example's
margin then drops by the same ``rho * ||grad f_i||``, which flattens the loss derivatives of the well-fit
examples towards those of the badly fit ones. For softmax cross-entropy
``dl/df_i = softmax(f_i) - onehot(y_i)``; for a single binary logit with ``BCEWithLogits`` it is
``sigmoid(f_i) - y_i``.

Uniformity is summarised by the Lorenz curve of the weights (sorted ascending, cumulative share) and the
Gini coefficient ``G = sum_ij |l_i - l_j| / (2 n^2 mean(l)) = 1 - 2 * (area under the Lorenz curve)``;
``G = 0`` for uniform weights and ``G = (n - 1)/n`` when one example carries all the weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sharplab.errors import SharplabError

LossFn = Callable[[Tensor, Tensor], Tensor]


# --- per-example loss derivatives ----------------------------------------------------------------------
def logit_grad_norms(logits: Tensor, targets: Tensor) -> Tensor:
    """``||dl/df_i||_2`` of cross-entropy per example, in closed form.

    ``logits`` of shape ``(N, C)`` with ``C >= 2``: softmax cross-entropy, ``||softmax(f_i) - e_{y_i}||``.
    ``logits`` of shape ``(N,)`` or ``(N, 1)``: binary cross-entropy with logits, ``|sigmoid(f_i) - y_i|``.
    """
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        z = logits.reshape(-1)
        return (torch.sigmoid(z) - targets.reshape(-1).to(z.dtype)).abs()
    if logits.dim() != 2:
        raise SharplabError(f"logits must have shape (N, C) or (N,), got {tuple(logits.shape)}; flatten them")
    diff = torch.softmax(logits, dim=1) - F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
    return diff.norm(dim=1)


def normalise(scores: Tensor) -> Tensor:
    """``scores / scores.sum()``; uniform weights when every score is zero (nothing to weight)."""
    scores = scores.detach().reshape(-1)
    if (scores < 0).any() or not torch.isfinite(scores).all():
        raise SharplabError("importance scores must be finite and non-negative")
    total = scores.sum()
    if total <= 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return scores / total


def importance_weights(logits: Tensor, targets: Tensor) -> Tensor:
    """Importance weights ``lambda_i`` of cross-entropy (sum to one over the batch)."""
    return normalise(logit_grad_norms(logits, targets))


# --- Lorenz curve and Gini coefficient -----------------------------------------------------------------
def lorenz_curve(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Lorenz curve of non-negative ``weights``: ``(x, y)`` with ``n + 1`` points from (0, 0) to (1, 1).

    ``x_k = k / n`` is the share of examples (sorted by increasing weight), ``y_k`` the share of total
    weight they carry.
    """
    w = normalise(torch.as_tensor(weights).detach().cpu().double())
    n = w.numel()
    if n == 0:
        raise SharplabError("cannot draw a Lorenz curve of an empty batch")
    y = torch.cat([w.new_zeros(1), torch.cumsum(torch.sort(w).values, 0)])
    y[-1] = 1.0
    x = torch.arange(n + 1, dtype=torch.float64) / n
    return x, y


def gini(weights: Tensor) -> float:
    """Gini coefficient ``1 - 2 * area under the Lorenz curve`` (trapezoidal, exact for a step curve)."""
    x, y = lorenz_curve(weights)
    area = torch.trapezoid(y, x)
    return float(1.0 - 2.0 * area)


# --- the phantom parameter ------------------------------------------------------------------------------
def _buffers(model: nn.Module) -> list[Tensor]:
    return [b for b in model.buffers() if b is not None]


@contextlib.contextmanager
def phantom(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    rho: float,
    loss_fn: LossFn = F.cross_entropy,
    perturb: Iterable[nn.Parameter] | None = None,
) -> Iterator[float]:
    """Temporarily move ``model`` to ``w~ = w + rho * g / ||g||`` (SAM's ascent step on this batch).

    ``perturb`` restricts the perturbation to some parameters (LSAM: ``model.head.parameters()``); the
    gradient norm is then taken over those only. Buffers (BatchNorm statistics) and ``.grad`` are untouched
    and the weights are restored from saved copies on exit. Yields ``||eps||`` (``rho``, or 0 when g = 0).
    """
    if rho < 0:
        raise SharplabError(f"rho must be >= 0, got {rho}; use rho=0 for the real parameter")
    params = [p for p in (model.parameters() if perturb is None else perturb) if p.requires_grad]
    saved_params = [p.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in _buffers(model)]
    try:
        with torch.enable_grad():
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for b, s in zip(_buffers(model), saved_buffers):
            b.copy_(s)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)) if grads else torch.tensor(0.0)
        eps_norm = 0.0
        if norm > 0 and rho > 0:
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g, alpha=float(rho / norm))
            eps_norm = float(rho)
        yield eps_norm
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved_params):
                p.copy_(s)
            for b, s in zip(_buffers(model), saved_buffers):
                b.copy_(s)


@torch.no_grad()
def logits_restoring_buffers(model: nn.Module, inputs: Tensor) -> Tensor:
    """``model(inputs)`` without gradients, every buffer (BatchNorm running statistics) left as it was."""
    saved = [b.detach().clone() for b in _buffers(model)]
    out = model(inputs)
    for b, s in zip(_buffers(model), saved):
        b.copy_(s)
    return out


def per_example_phantom_norms(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    rho: float,
    perturb: Iterable[nn.Parameter] | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """``||dl/df_i||`` at the 1-SAM phantom ``w~_i = w + rho * grad l_i(w) / ||grad l_i(w)||``, per example.

    Vectorised with ``torch.func`` (``vmap`` of ``grad``); ``perturb`` restricts the perturbation (and the
    norm) to some parameters (LSAM). Buffers are read, never updated: models with BatchNorm in train mode
    are refused (per-example batch statistics are undefined).
    """
    from torch.func import functional_call, grad, vmap

    if rho < 0:
        raise SharplabError(f"rho must be >= 0, got {rho}; use rho=0 for the real parameter")
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise SharplabError("per-example phantom needs a model without BatchNorm in train mode; use eval()")
    chosen = {id(p) for p in (model.parameters() if perturb is None else perturb)}
    fixed = {k: v.detach() for k, v in model.named_parameters() if id(v) not in chosen}
    moved = {k: v.detach() for k, v in model.named_parameters() if id(v) in chosen}
    buffers = dict(model.named_buffers())

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, ({**fixed, **p}, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None])

    def norm_one(xi: Tensor, yi: Tensor) -> Tensor:
        g = grad(loss_one)(moved, xi, yi)
        norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
        scale = rho / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        shifted = {k: v + scale * g[k] for k, v in moved.items()}
        out = functional_call(model, ({**fixed, **shifted}, buffers), (xi[None],))
        return logit_grad_norms(out, yi[None])[0]

    with torch.no_grad():
        parts = [vmap(norm_one)(inputs[i : i + chunk_size], targets[i : i + chunk_size])
                 for i in range(0, len(targets), chunk_size)]
    return torch.cat(parts).detach()


@dataclass(frozen=True)
class ImportanceSnapshot:
    """Importance weights of one batch at the real and the phantom parameter of one checkpoint."""

    real: Tensor
    phantom: Tensor

    @property
    def gini_real(self) -> float:
        return gini(self.real)

    @property
    def gini_phantom(self) -> float:
        return gini(self.phantom)


def importance_snapshot(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    rho: float,
    perturb: Callable[[nn.Module], Iterable[nn.Parameter]] | None = None,
    per_example: bool = False,
) -> ImportanceSnapshot:
    """Cross-entropy importance weights of ``(inputs, targets)`` at ``w`` and at ``w~ = w + eps``.

    ``perturb(model)`` selects the perturbed parameters (None = all, i.e. SAM; ``lambda m:
    m.head.parameters()`` = LSAM). ``per_example``: the 1-SAM phantom of each example
    (:func:`per_example_phantom_norms`) instead of the batch's. The model's mode is used as it is.
    """
    real = importance_weights(logits_restoring_buffers(model, inputs), targets)
    params = None if perturb is None else perturb(model)
    if per_example:
        return ImportanceSnapshot(real, normalise(per_example_phantom_norms(model, inputs, targets, rho, params)))
    with phantom(model, inputs, targets, rho, perturb=params):
        ph = importance_weights(logits_restoring_buffers(model, inputs), targets)
    return ImportanceSnapshot(real=real, phantom=ph)
