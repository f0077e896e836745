"""Linear interpolation between two diagonal-network solutions in the ``(u, v)`` parameters.

As the official notebook (tml-epfl/understanding-sam, ``diagonal_linear_nets/diag_nets_sam.ipynb``, the
"1D loss surface interpolation" cell; Andriushchenko & Flammarion, ICML 2022, Sec. 4): for two solutions
``(u_a, v_a)`` and ``(u_b, v_b)``,

    u(t) = (1 - t) u_a + t u_b,   v(t) = (1 - t) v_a + t v_b,   beta(t) = u(t) * v(t),

and the train/test losses ``||X beta(t) - y||^2 / (2N)`` along ``t``. The parameters ``(u, v)`` are
interpolated, not ``beta``: ``beta(t)`` is quadratic in ``t``, so the loss along the path is a quartic.
The notebook takes ``a`` = ERM -> 1-SAM (rho 10 at lr 1/30 after 10,001 GD steps) and ``b`` = the ERM
point it started from, ``t`` in ``linspace(-1, 2, 100)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sharplab.errors import ConfigError
from sharplab.labs.implicit_bias.diag_net import DiagNetData, DiagNetResult, make_data


@dataclass
class InterpolationCurve:
    """Losses along ``t``; ``t = 0`` is solution ``a`` and ``t = 1`` solution ``b``."""

    t: np.ndarray
    test_error: np.ndarray
    train_loss: np.ndarray

    def at(self, value: float) -> tuple[float, float]:
        """``(test_error, train_loss)`` at a grid point ``t == value``."""
        (hit,) = np.flatnonzero(self.t == value)[:1] if np.any(self.t == value) else (None,)
        if hit is None:
            raise ConfigError(f"t={value} is not on the interpolation grid; add it to the grid")
        return float(self.test_error[hit]), float(self.train_loss[hit])


def default_grid(lo: float = -1.0, hi: float = 2.0, points: int = 100) -> np.ndarray:
    """``linspace(lo, hi, points)`` with the end points ``0`` and ``1`` included exactly."""
    return np.unique(np.concatenate([np.linspace(lo, hi, points), [0.0, 1.0]]))


def interpolate(a: DiagNetResult, b: DiagNetResult, t: Sequence[float] | np.ndarray | None = None,
                data: DiagNetData | None = None) -> InterpolationCurve:
    """Losses along the straight line from ``a`` (t = 0) to ``b`` (t = 1) in ``(u, v)``.

    Both results must keep ``u`` and ``v`` (any :func:`~.diag_net.run_grid` result does) and come from
    the same data (seed and sizes); ``data`` defaults to :func:`~.diag_net.make_data` of ``a``.
    """
    if a.u is None or a.v is None or b.u is None or b.v is None:
        raise ConfigError("interpolation needs the (u, v) parameters of both solutions; use run_grid results")
    ca, cb = a.config, b.config
    if a.seed != b.seed or (ca.n, ca.d, ca.r, ca.n_test) != (cb.n, cb.d, cb.r, cb.n_test):
        raise ConfigError("the two solutions were trained on different data (seed or n, d, r, n_test differ)")
    data = data or make_data(a.seed, ca.n, ca.d, ca.r, ca.n_test)
    ts = default_grid() if t is None else np.asarray(t, dtype=np.float64)
    if ts.ndim != 1 or not ts.size or not np.all(np.isfinite(ts)):
        raise ConfigError("t must be a non-empty 1-D list of finite numbers")
    U = (1.0 - ts)[:, None] * a.u[None, :] + ts[:, None] * b.u[None, :]
    V = (1.0 - ts)[:, None] * a.v[None, :] + ts[:, None] * b.v[None, :]
    B = U * V

    def loss(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = B @ X.T - y
        return np.einsum("ij,ij->i", r, r) / (2 * len(y))

    return InterpolationCurve(ts, loss(data.X_test, data.y_test), loss(data.X, data.y))
