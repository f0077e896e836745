"""1-D ReLU network: the data, kink counting against a numerical count, GD and SAM steps of the legacy
parameterisation (mean loss, output bias, N(0, 1) init) against a hand-written NumPy network (gradient
checked by finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharplab.errors import ConfigError
from sharplab.labs.implicit_bias.relu1d import (
    LEGACY,
    X_POINTS,
    Y_POINTS,
    Relu1dConfig,
    count_kinks,
    kinks,
    make_network,
    train_relu_1d,
)


def test_training_points_follow_the_issue() -> None:
    assert len(X_POINTS) == len(Y_POINTS) == 12
    assert X_POINTS[0] == pytest.approx(-5.5 / 4 + 0.07) and X_POINTS[-1] == pytest.approx(5.5 / 4 + 0.07)
    np.testing.assert_allclose(np.diff(X_POINTS), 0.25)
    assert Y_POINTS[4] == pytest.approx(2.345) and Y_POINTS[0] == pytest.approx(-1.655)


def _numeric_kinks(f, lo: float, hi: float, tol: float, n: int = 200_001) -> int:
    """Count slope changes > tol of a piecewise-linear f from finite-difference slopes on a fine grid."""
    x = np.linspace(lo, hi, n)
    slope = np.diff(f(x)) / np.diff(x)
    jumps = np.diff(slope)
    count, i = 0, 0
    while i < len(jumps):  # one kink spreads over at most two grid cells
        if abs(jumps[i]) > tol / 2 and abs(jumps[i:i + 2].sum()) > tol:
            count += 1
            i += 2
        else:
            i += 1
    return count


def test_count_kinks_matches_numerical_slope_changes() -> None:
    net = make_network(width=9, seed=0)
    with torch.no_grad():
        net[0].weight[:, 0] = torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0, -1.0, 0.0, 1.0, -1.0]).double()
        # kinks at -b/w: -1, 0.25, 0.6 (twice: cancel), 3.0 (outside), 0.9 (tiny), const unit, 1.2, 1.2
        net[0].bias[:] = torch.tensor([1.0, 0.5, -0.3, -0.6, -9.0, 0.9, 0.7, -1.2, 1.2]).double()
        net[2].weight[0] = torch.tensor([0.8, 0.4, 1.0, -0.5, 2.0, 0.01, 5.0, 0.3, 0.2]).double()
    pos, dlt = kinks(net)
    assert len(pos) == 8  # the unit with w = 0 is a constant, no kink
    lo, hi = float(X_POINTS.min()), float(X_POINTS.max())
    ours = count_kinks(pos, dlt, lo, hi, slope_tol=0.1)

    def f(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).reshape(-1, 1)).numpy()[:, 0]

    assert ours == _numeric_kinks(f, lo, hi, tol=0.1) == 3  # at -1, 0.25 and 1.2 (0.3 + 0.2 merged)
    # the two units at 0.6 cancel exactly (0.5*1.0 - 1.0*0.5), the 0.9 kink changes the slope by 0.01
    assert count_kinks(pos, dlt, lo, hi, slope_tol=0.005) == _numeric_kinks(f, lo, hi, tol=0.005) == 4


def _np_grad(params, x, y):
    """Mean squared error of f(x) = a . relu(w x + b) + c and its gradient, by hand."""
    w, b, a, c = params
    z = np.outer(x, w) + b
    act = np.maximum(z, 0)
    r = act @ a + c - y
    loss = np.mean(r**2)
    df = 2 * r / len(x)
    da = act.T @ df
    dz = np.outer(df, a) * (z > 0)
    return loss, [x @ dz, dz.sum(0), da, np.array(df.sum())]


def _params(net):
    return [net[0].weight.detach().numpy()[:, 0].copy(), net[0].bias.detach().numpy().copy(),
            net[2].weight.detach().numpy()[0].copy(), net[2].bias.detach().numpy()[0].copy()]


def test_numpy_reference_gradient_equals_finite_differences() -> None:
    p = _params(make_network(width=6, seed=1))
    sizes = [np.size(q) for q in p]
    flat = np.concatenate([np.atleast_1d(q) for q in p])

    def unflat(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return parts[:3] + [parts[3][0]]

    _, g = _np_grad(p, X_POINTS, Y_POINTS)
    g = np.concatenate([np.atleast_1d(q) for q in g])
    h = 1e-6
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = h
        fd = (_np_grad(unflat(flat + e), X_POINTS, Y_POINTS)[0]
              - _np_grad(unflat(flat - e), X_POINTS, Y_POINTS)[0]) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("method,rho", [("gd", 0.0), ("sam", 0.3), ("usam", 0.05)])
def test_training_matches_a_numpy_loop(method: str, rho: float) -> None:
    cfg = Relu1dConfig(**{**LEGACY, "method": method, "rho": rho, "lr": 5e-3, "width": 10, "steps": 60,
                          "tol": 0.0})
    res = train_relu_1d(cfg, seed=2)
    p = _params(make_network(width=10, seed=2))
    for _ in range(60):
        _, g = _np_grad(p, X_POINTS, Y_POINTS)
        if method != "gd":
            norm = np.sqrt(sum(float(np.sum(gi**2)) for gi in g))
            scale = rho / norm if method == "sam" else rho
            _, g = _np_grad([pi + scale * gi for pi, gi in zip(p, g)], X_POINTS, Y_POINTS)
        p = [pi - 5e-3 * gi for pi, gi in zip(p, g)]
    got = _params(res.net)
    for a, b in zip(got, p):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert res.steps_run == 60
    assert res.train_loss == pytest.approx(_np_grad(p, X_POINTS, Y_POINTS)[0], rel=1e-9)


def test_stops_at_tolerance_and_rejects_bad_configs() -> None:
    res = train_relu_1d(Relu1dConfig(**{**LEGACY, "method": "gd", "width": 10, "steps": 500, "tol": 10.0}), seed=0)
    assert res.steps_run == 1  # the initial loss is already below tol
    with pytest.raises(ConfigError):
        Relu1dConfig(method="adam")
    with pytest.raises(ConfigError):
        Relu1dConfig(rho=-1.0)
