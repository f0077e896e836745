"""Vectorised full-batch training of many 1-D ReLU networks at once (seeds x methods x radii).

Network ``f(x) = sum_j a_j relu(w_j x + b_j) + c`` (``c`` only with an output bias), ``C`` networks in
float64 arrays of shape ``(C, H)``. Loss ``L = s sum_i (f(x_i) - y_i)^2`` with ``s = 1/2`` (the official
notebook, ``0.5 * MSELoss(reduction='sum')``) or ``s = 1/n`` (mean). Forward and backward are written by
hand: with ``z = w x_i + b``, ``e_i = 2 s (f(x_i) - y_i)`` and ``D_ij = e_i a_j [z_ij > 0]``,

    dL/da_j = sum_i e_i relu(z_ij),   dL/db_j = sum_i D_ij,   dL/dw_j = sum_i x_i D_ij,   dL/dc = sum_i e_i.

A step (Andriushchenko & Flammarion, ICML 2022, arXiv:2206.06232; notebook
``one_layer_relu_nets/1d_nn.ipynb`` of tml-epfl/understanding-sam) is, per network,

    g = grad L(theta);   theta~ = theta + rho g / ||g||   (SAM; USAM: + rho g; GD: theta~ = theta)
    theta <- theta - lr_t grad L(theta~),   lr_t = lr (1 - t / T) with linear decay, else lr,

with ``||g||`` over all parameters and ``t = 1, 2, ...``. Stopping rule of the notebook: after step ``t``
a network stops when the loss computed last in that step (at ``theta~`` for SAM/USAM, at ``theta`` for
GD) is below ``tol``, or when ``t = T``. Finished networks leave the batch, so the batch shrinks as
networks converge. A network's result does not depend on the rest of its batch beyond float64 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class BatchSpec:
    """Per-network settings of one batch (arrays of length ``C``)."""

    lr: np.ndarray
    rho: np.ndarray
    normalised: np.ndarray  # bool: SAM (rho g/||g||) vs USAM (rho g); ignored where rho == 0
    decay: np.ndarray  # bool: linear learning-rate decay to 0 at step T
    steps: np.ndarray  # int: T, the most steps
    tol: np.ndarray
    record_every: int = 500


@dataclass
class BatchOutcome:
    """Final parameters ``(W, B, A, c)``, steps run, the loss that stopped each network, curves."""

    params: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    steps_run: np.ndarray
    stop_loss: np.ndarray
    train_loss: np.ndarray
    diverged: np.ndarray
    curves: list[tuple[list[int], list[float]]]


def loss_and_grads(x: np.ndarray, y: np.ndarray, W: np.ndarray, B: np.ndarray, A: np.ndarray,
                   c: np.ndarray | None, scale: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Loss ``s sum (f - y)^2`` per network and its gradient ``(dW, dB, dA, dc)`` (``dc`` None without bias).

    Shapes: ``x, y (n,)``; ``W, B, A (C, H)``; ``c (C,)`` or None.
    """
    Z = x[None, :, None] * W[:, None, :]
    Z += B[:, None, :]  # (C, n, H)
    M = (Z > 0).astype(np.float64)
    R = Z * M  # relu(z)
    F = (R @ A[:, :, None])[:, :, 0]  # (C, n)
    if c is not None:
        F += c[:, None]
    E = F - y
    loss = scale * np.einsum("cn,cn->c", E, E)
    E *= 2.0 * scale
    G = np.stack([E, E * x], axis=1) @ M  # (C, 2, H): sum_i e_i [z_ij > 0], sum_i e_i x_i [z_ij > 0]
    dA = (E[:, None, :] @ R)[:, 0, :]
    dB = A * G[:, 0]
    dW = A * G[:, 1]
    dc = E.sum(axis=1) if c is not None else None
    return loss, (dW, dB, dA, dc)


def train_batch(x: np.ndarray, y: np.ndarray, params: Sequence[np.ndarray | None], spec: BatchSpec,
                scale: float, progress=None) -> BatchOutcome:
    """Train ``C`` networks from ``params = (W, B, A, c or None)`` with the step above.

    ``progress``: an object with ``update(k)`` (e.g. tqdm) advanced every 1000 steps of the batch.
    """
    W0, B0, A0, c0 = params
    has_c = c0 is not None
    C = W0.shape[0]
    final = [np.array(W0, dtype=np.float64), np.array(B0, dtype=np.float64),
             np.array(A0, dtype=np.float64), np.zeros(C) if not has_c else np.array(c0, dtype=np.float64)]
    P = [p.copy() for p in final]  # working copies of the rows still running
    ids = np.arange(C)
    steps_run = np.zeros(C, dtype=np.int64)
    stop_loss = np.full(C, np.nan)
    diverged = np.zeros(C, dtype=bool)
    curves: list[tuple[list[int], list[float]]] = [([], []) for _ in range(C)]
    lr, rho = spec.lr.astype(np.float64), spec.rho.astype(np.float64)
    norm_, decay, T, tol = spec.normalised.astype(bool), spec.decay.astype(bool), spec.steps.astype(np.int64), \
        spec.tol.astype(np.float64)
    every = max(1, int(spec.record_every))
    t = 0
    with np.errstate(all="ignore"):
        done0 = T <= 0
        if done0.any():  # zero-step rows never enter the loop
            keep = ~done0
            ids, P = ids[keep], [p[keep] for p in P]
        while ids.size:
            t += 1
            loss0, g = loss_and_grads(x, y, P[0], P[1], P[2], P[3] if has_c else None, scale)
            r_ids = rho[ids]
            if (r_ids > 0).any():
                sq = sum(np.einsum("ch,ch->c", gi, gi) for gi in g[:3])
                if has_c:
                    sq = sq + g[3] * g[3]
                coef = np.where(norm_[ids], r_ids / np.sqrt(sq), r_ids)
                coef = np.where(r_ids > 0, coef, 0.0)
                Pt = [p + coef[:, None] * gi for p, gi in zip(P[:3], g[:3])]
                ct = P[3] + coef * g[3] if has_c else None
                check, g = loss_and_grads(x, y, Pt[0], Pt[1], Pt[2], ct, scale)
                check = np.where(r_ids > 0, check, loss0)
            else:
                check = loss0
            if (t - 1) % every == 0:
                for k, cid in enumerate(ids):
                    curves[cid][0].append(t - 1)
                    curves[cid][1].append(float(loss0[k]))
            lr_t = np.where(decay[ids], lr[ids] * (1.0 - t / T[ids]), lr[ids])
            for p, gi in zip(P[:3], g[:3]):
                p -= lr_t[:, None] * gi
            if has_c:
                P[3] -= lr_t * g[3]
            bad = ~np.isfinite(check)
            stop = bad | (check < tol[ids]) | (t >= T[ids])
            if stop.any():
                out = ids[stop]
                for p_final, p in zip(final, P):
                    p_final[out] = p[stop]
                steps_run[out] = t
                stop_loss[out] = check[stop]
                diverged[out] = bad[stop]
                keep = ~stop
                ids, P = ids[keep], [p[keep] for p in P]
            if progress is not None and t % 1000 == 0:
                progress.update(1000)
        train, _ = loss_and_grads(x, y, final[0], final[1], final[2], final[3] if has_c else None, scale)
    for cid in range(C):
        curves[cid][0].append(int(steps_run[cid]))
        curves[cid][1].append(float(train[cid]))
    diverged |= ~np.isfinite(train)
    return BatchOutcome((final[0], final[1], final[2], final[3]), steps_run, stop_loss, train, diverged, curves)
