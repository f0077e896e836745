"""m-sharpness: worst-case L2 sharpness on the rho-ball, averaged over micro-batches of m examples.

Following ``deep_nets/eval_sharpness.py`` + ``utils_eval.eval_sharpness`` + ``sam.weight_ascent_step`` of
the official code of *Towards Understanding SAM* (Andriushchenko & Flammarion, ICML 2022, eq. 5): the
examples are cut into consecutive micro-batches S_1..S_k of size m (the official loader with
``bs_sharpness = m``, ``shuffle=False``); for each S_j, starting from delta = 0,

    delta <- P_rho( delta + h * g / (||g||_2 + 1e-12) ),   g = grad L_{S_j}(w + delta),   h = 0.1 rho,

``steps`` times (official ``--n_iters 20``, ``--step_size_mult 0.1``), where P_rho rescales delta onto the
ball ||delta||_2 <= rho over *all* trainable parameters; the sharpness of S_j is
L_{S_j}(w + delta) - L_{S_j}(w), and the result is the mean over the k micro-batches.

Differences, stated: with ``restarts > 1`` each restart starts from a random point on the sphere of radius
rho and the largest *loss* increase is kept (the official code keeps the restart with the largest
*error*, and with one restart and zero error it reports 0 - L(w); both coincide for restarts = 1 whenever
the perturbed error is positive). The model is evaluated in eval mode (BatchNorm running statistics), as
the official script does. Micro-batches are processed together with ``vmap`` (``chunk_size`` at a time).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from sharplab.errors import SharplabError
from sharplab.sharpness._functional import LossFn, eval_mode, loss_of, trainable


def _norm(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())).to(next(iter(d.values())).dtype)


def m_sharpness(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, rho: float = 0.1,
                m: int = 128, steps: int = 20, step_size: float | None = None, restarts: int = 1,
                seed: int = 0, chunk_size: int | None = None) -> float:
    """Mean over micro-batches of size ``m`` of max_{||delta|| <= rho} L_S(w + delta) - L_S(w) (ascent).

    Args:
        rho: radius of the L2 ball (over all trainable parameters).
        m: micro-batch size; must divide ``len(x)`` (``m = len(x)`` is the sharpness of the whole set).
        steps: projected normalised ascent steps per micro-batch; ``step_size`` defaults to 0.1 rho.
        restarts: > 1 adds random starts on the sphere of radius rho; the largest loss increase is kept.
        chunk_size: micro-batches processed at once under ``vmap`` (bounds memory); None = all.
    """
    n = x.shape[0]
    if rho < 0 or steps < 0 or restarts < 1:
        raise SharplabError(f"need rho >= 0, steps >= 0, restarts >= 1 (got {rho}, {steps}, {restarts})")
    if m < 1 or n % m:
        raise SharplabError(f"m={m} must be a positive divisor of the number of examples {n}")
    h = 0.1 * rho if step_size is None else step_size
    k = n // m
    xs, ys = x.reshape(k, m, *x.shape[1:]), y.reshape(k, m, *y.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        w = trainable(model)

        def loss_at(delta: dict[str, torch.Tensor], xj: torch.Tensor, yj: torch.Tensor) -> torch.Tensor:
            return loss_of(model, loss_fn, xj, yj)({n_: w[n_] + delta[n_] for n_ in w})

        def ascend(delta: dict[str, torch.Tensor], xj: torch.Tensor, yj: torch.Tensor) -> dict[str, torch.Tensor]:
            for _ in range(steps):
                g = grad(loss_at)(delta, xj, yj)
                gn = _norm(g)
                delta = {n_: delta[n_] + h * g[n_] / (gn + 1e-12) for n_ in delta}
                scale = torch.clamp(rho / (_norm(delta) + 1e-30), max=1.0)
                delta = {n_: t * scale for n_, t in delta.items()}
            return {n_: t.detach() for n_, t in delta.items()}

        def sharp(delta: dict[str, torch.Tensor], xj: torch.Tensor, yj: torch.Tensor) -> torch.Tensor:
            delta = ascend(delta, xj, yj)
            zero = {n_: torch.zeros_like(t) for n_, t in delta.items()}
            return loss_at(delta, xj, yj) - loss_at(zero, xj, yj)

        best = None
        for r in range(restarts):
            if r == 0:
                d0 = {n_: torch.zeros((k, *t.shape), dtype=t.dtype, device=t.device) for n_, t in w.items()}
            else:
                z = {n_: torch.randn((k, *t.shape), generator=gen, dtype=t.dtype).to(t.device) for n_, t in w.items()}
                zn = torch.sqrt(sum((t.reshape(k, -1) ** 2).sum(1) for t in z.values()))
                d0 = {n_: t * (rho / zn).view(k, *([1] * (t.ndim - 1))) for n_, t in z.items()}
            with torch.no_grad():
                vals = vmap(sharp, chunk_size=chunk_size, randomness="same")(d0, xs, ys)
            best = vals if best is None else torch.maximum(best, vals)
    return float(best.double().mean())
