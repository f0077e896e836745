"""Diagonal linear networks: the vectorised grid against a plain per-example NumPy loop, finite
differences, closed forms, and the study's qualitative claim (1-SAM: lower test error, sparser beta)."""

from __future__ import annotations

import numpy as np
import pytest

from sharplab.errors import ConfigError, SharplabError
from sharplab.labs.implicit_bias import DiagNetConfig, expand_grid, make_data, run_grid
from sharplab.labs.implicit_bias.diag_net import micro_batch_groups, step_gradients


def reference_run(method: str, rho: float, lr: float, alpha: float, iters: int, seed: int = 0,
                  m: int = 1, switch_at: int = 0, then: str | None = None, n: int = 20, d: int = 30,
                  r: int = 3) -> np.ndarray:
    """Independent loop straight from the issue text; returns beta after ``iters`` updates."""
    np.random.seed(seed)
    X = np.random.randn(n, d)
    np.random.randn(1000, d)
    theta = np.random.randn(d)
    theta[r:] = 0
    theta = np.abs(theta) / np.linalg.norm(np.abs(theta))
    y = X @ theta
    draws = np.random.default_rng(seed).integers(0, n, size=iters)
    u, v = alpha * np.ones(d), np.zeros(d)
    for t in range(iters):
        meth = then if (then is not None and t >= switch_at) else method
        gu, gv = np.zeros(d), np.zeros(d)
        if meth == "gd":
            res = X @ (u * v) - y
            gu, gv = X.T @ res * v / n, X.T @ res * u / n
        elif meth == "sgd":
            k = draws[t]
            res = X[k] @ (u * v) - y[k]
            gu, gv = res * X[k] * v, res * X[k] * u
        elif meth == "nsam":
            res = X @ (u * v) - y
            ut, vt = u + rho * (X.T @ res * v) / n, v + rho * (X.T @ res * u) / n
            rt = X @ (ut * vt) - y
            gu, gv = X.T @ rt * vt / n, X.T @ rt * ut / n
        else:  # per micro-batch: 1sam (m=1), m-sam, iw1sam
            size = 1 if meth in ("1sam", "iw1sam") else m
            for start in range(0, n, size):
                idx = slice(start, start + size)
                res = X[idx] @ (u * v) - y[idx]
                ut = u + 2 * rho * (X[idx].T @ res) * v / size
                vt = v + 2 * rho * (X[idx].T @ res) * u / size
                for k in range(start, start + size):
                    rk = X[k] @ (ut * vt) - y[k]
                    if meth == "iw1sam":
                        gu, gv = gu + rk * X[k] * v / n, gv + rk * X[k] * u / n
                    else:
                        gu, gv = gu + rk * X[k] * vt / n, gv + rk * X[k] * ut / n
        u, v = u - lr * gu, v - lr * gv
    return u * v


def test_data_follow_the_protocol() -> None:
    np.random.seed(123)
    before = np.random.rand()
    np.random.seed(123)
    D = make_data(seed=7, n=5, d=8, r=2, n_test=11)
    assert np.random.rand() == before  # the caller's global generator is untouched
    np.random.seed(7)
    X, X_test, theta = np.random.randn(5, 8), np.random.randn(11, 8), np.random.randn(8)
    theta = np.abs(np.where(np.arange(8) < 2, theta, 0.0))
    theta /= np.linalg.norm(theta)
    np.testing.assert_array_equal(D.X, X)
    np.testing.assert_array_equal(D.X_test, X_test)
    np.testing.assert_array_equal(D.theta, theta)
    np.testing.assert_array_equal(D.y_test, X_test @ theta)
    assert np.count_nonzero(D.theta) == 2 and np.linalg.norm(D.theta) == pytest.approx(1.0)


CASES = [
    dict(method="gd", rho=0.0, lr=5 / 30, alpha=0.3),
    dict(method="sgd", rho=0.0, lr=2 / 30, alpha=0.3),
    dict(method="nsam", rho=0.4, lr=5 / 30, alpha=0.3),
    dict(method="1sam", rho=0.1, lr=5 / 30, alpha=0.3),
    dict(method="m-sam", rho=0.1, lr=5 / 30, alpha=0.3, m=4),
    dict(method="m-sam", rho=0.2, lr=10 / 30, alpha=0.1, m=5),
    dict(method="iw1sam", rho=0.1, lr=5 / 30, alpha=0.3),
    dict(method="gd", rho=0.1, lr=5 / 30, alpha=0.3, switch_at=120, then="1sam"),
    dict(method="1sam", rho=0.1, lr=5 / 30, alpha=0.3, switch_at=80, then="sgd"),
]


def test_mixed_grid_matches_per_example_loop() -> None:
    iters, seeds = 200, (0, 3)
    cfgs = [DiagNetConfig(iters=iters, **c) for c in CASES]
    results = run_grid(cfgs, seeds)  # all methods and both seeds in one batch
    assert len(results) == len(cfgs) * len(seeds)
    for res in results:
        c = res.config
        ref = reference_run(c.method, c.rho, c.lr, c.alpha, iters, seed=res.seed, m=c.m,
                            switch_at=c.switch_at, then=None if c.then == "none" else c.then)
        np.testing.assert_allclose(res.beta, ref, rtol=1e-11, atol=1e-15, err_msg=str(c))
        D = make_data(res.seed)
        assert res.train_loss == pytest.approx(np.sum((D.X @ ref - D.y) ** 2) / 40, rel=1e-8)
        assert res.test_error == pytest.approx(np.sum((D.X_test @ ref - D.y_test) ** 2) / 2000, rel=1e-8)
        assert res.l1_norm == pytest.approx(np.abs(ref).sum(), rel=1e-9)
        assert res.dist_theta == pytest.approx(np.linalg.norm(ref - D.theta), rel=1e-8)


def _point(seed: int = 1, n: int = 6, d: int = 5):
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)
    return X, y, rng.normal(size=d), rng.normal(size=d)


def _grad_fd(f, u, v, h=1e-6):
    """Central finite differences of f(u, v) in u and v."""
    gu, gv = np.zeros_like(u), np.zeros_like(v)
    for i in range(len(u)):
        e = np.zeros_like(u)
        e[i] = h
        gu[i] = (f(u + e, v) - f(u - e, v)) / (2 * h)
        gv[i] = (f(u, v + e) - f(u, v - e)) / (2 * h)
    return gu, gv


def _kernel(X, y, u, v, s, full, groups):
    n = len(y)
    S = np.array([[s]])
    return step_gradients(u[None], v[None], X[None], y[None], S, np.array([[float(full)]]),
                          micro_batch_groups(np.array([groups]), S), np.full((1, n), 1 / n))


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_kernel_gradient_equals_finite_differences(size: int) -> None:
    X, y, u, v = _point()
    n, rho = len(y), 0.07
    s = 2 * rho / size  # m-SAM convention: ascent on (1/m) sum_B r_k^2
    gu, gv = _kernel(X, y, u, v, s, True, size)
    ref_u, ref_v = np.zeros_like(u), np.zeros_like(v)
    for start in range(0, n, size):
        idx = slice(start, start + size)

        def batch(a, b, idx=idx):
            return np.mean((X[idx] @ (a * b) - y[idx]) ** 2)

        au, av = _grad_fd(batch, u, v)
        ut, vt = u + rho * au, v + rho * av  # ascent = rho * FD gradient of the micro-batch loss
        for k in range(start, start + size):
            du, dv = _grad_fd(lambda a, b, k=k: (X[k] @ (a * b) - y[k]) ** 2 / (2 * n), ut, vt)
            ref_u, ref_v = ref_u + du, ref_v + dv
    np.testing.assert_allclose(gu[0], ref_u, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gv[0], ref_v, rtol=1e-6, atol=1e-8)


def test_gd_and_nsam_gradients_equal_finite_differences() -> None:
    X, y, u, v = _point(2)
    n, rho = len(y), 0.05

    def loss(a, b):
        return np.sum((X @ (a * b) - y) ** 2) / (2 * n)

    gu, gv = _kernel(X, y, u, v, 0.0, True, 1)
    fu, fv = _grad_fd(loss, u, v)
    np.testing.assert_allclose(gu[0], fu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gv[0], fv, rtol=1e-6, atol=1e-9)
    su, sv = _kernel(X, y, u, v, rho / n, True, n)
    tu, tv = _grad_fd(loss, u + rho * fu, v + rho * fv)
    np.testing.assert_allclose(su[0], tu, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(sv[0], tv, rtol=1e-5, atol=1e-8)


def test_closed_forms_rho_zero_and_two_x_convention() -> None:
    iters = 400
    methods = ("gd", "nsam", "1sam", "iw1sam")
    cfgs = [DiagNetConfig(method=m, rho=0.0, alpha=0.2, iters=iters) for m in methods]
    cfgs += [DiagNetConfig(method="m-sam", rho=0.0, m=5, alpha=0.2, iters=iters)]
    cfgs += [DiagNetConfig(method="m-sam", m=20, rho=0.15, alpha=0.2, iters=iters),
             DiagNetConfig(method="nsam", rho=0.30, alpha=0.2, iters=iters),
             DiagNetConfig(method="m-sam", m=1, rho=0.15, alpha=0.2, iters=iters),
             DiagNetConfig(method="1sam", rho=0.15, alpha=0.2, iters=iters)]
    res = run_grid(cfgs)
    gd = res[0].beta
    np.testing.assert_allclose(gd, reference_run("gd", 0.0, 5 / 30, 0.2, iters), rtol=1e-10, atol=1e-14)
    # Rows of one batched product are the same arithmetic but not always the same BLAS kernel (OpenBLAS on
    # AMD computes the last of an odd number of rows with another one), so compare to float64 rounding:
    # one ulp at |beta| <= 1 is 1.1e-16 (a run alone vs in the batch differs by that), and 1e-13 allows for
    # 400 iterations of such rounding while staying 1e-9 below any rho > 0 effect (asserted below).
    for r in res[1:5]:
        np.testing.assert_allclose(r.beta, gd, rtol=1e-13, atol=1e-15)  # rho = 0 reproduces GD
    np.testing.assert_allclose(res[5].beta, res[6].beta, rtol=1e-11, atol=1e-14)  # m-sam(m=n, rho)=nsam(2rho)
    np.testing.assert_allclose(res[7].beta, res[8].beta, rtol=1e-13, atol=1e-15)  # m-sam(m=1) is 1-SAM
    assert not np.allclose(res[5].beta, gd, rtol=1e-6)


def test_one_sam_is_sparser_and_generalises_better_at_small_alpha() -> None:
    seeds = (0, 1, 2, 3)
    cfgs = expand_grid(["gd", "nsam", "1sam"], rhos=[0.1], lrs=[5 / 30], alphas=[0.01, 0.1])
    res = {(r.config.method, r.config.alpha, r.seed): r for r in run_grid(cfgs, seeds)}
    for alpha in (0.01, 0.1):
        ratios = []
        for seed in seeds:
            gd, nsam, one = (res[(m, alpha, seed)] for m in ("gd", "nsam", "1sam"))
            assert gd.train_loss < 1e-5 and one.train_loss < 1e-5  # both (nearly) interpolate
            assert one.test_error < 0.7 * gd.test_error
            assert one.l1_norm < gd.l1_norm  # sparser: closer to the min-l1 interpolator
            assert one.dist_theta < gd.dist_theta
            assert one.test_error < nsam.test_error  # per-example ascent is the stronger regulariser
            ratios.append(one.test_error / gd.test_error)
        assert np.exp(np.mean(np.log(ratios))) < 0.35, ratios


def test_grid_collapses_rho_for_gd_and_records_trajectories() -> None:
    cfgs = expand_grid(["gd", "1sam"], rhos=[0.0, 0.1], alphas=[0.1], iters=50)
    assert [(c.method, c.rho) for c in cfgs] == [("gd", 0.0), ("1sam", 0.0), ("1sam", 0.1)]
    (res,) = run_grid(cfgs[2:], record_every=10)
    assert list(res.steps) == [0, 10, 20, 30, 40, 50]
    assert res.test_curve[-1] == pytest.approx(res.test_error)
    assert res.train_curve[0] == pytest.approx(np.sum(make_data(0).y ** 2) / 40)  # beta = 0 at init
    rec = res.record()
    for key in ("method", "rho", "lr", "alpha", "seed", "iters", "test_error", "train_loss", "l1_norm"):
        assert key in rec


def test_divergence_is_reported_not_raised() -> None:
    (res,) = run_grid([DiagNetConfig(method="gd", lr=50.0, alpha=1.0, iters=200)])
    assert res.diverged


@pytest.mark.parametrize("kwargs", [dict(method="adam"), dict(method="m-sam", m=3), dict(rho=-1.0),
                                    dict(r=40), dict(switch_at=5)])
def test_bad_configs_raise_one_line_errors(kwargs) -> None:
    with pytest.raises((ConfigError, SharplabError)) as info:
        DiagNetConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_rho_figure_averages_decade_spanning_errors_geometrically_and_narrow_ones_arithmetically():
    from sharplab.labs.implicit_bias.plots import test_error_vs_rho

    rows = [{"method": "1sam", "alpha": 0.1, "rho": r, "test_error": e, "l1_norm": n}
            for r, e, n in ((0.0, 1e-2, 1.50), (0.0, 1e-4, 1.52), (0.1, 1e-3, 1.40), (0.1, 1e-5, 1.42))]
    ax = test_error_vs_rho(rows, "test_error").axes[0]
    assert ax.get_yscale() == "log"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([1e-3, 1e-4])  # geometric means
    ax = test_error_vs_rho(rows, "l1_norm").axes[0]
    assert ax.get_yscale() == "linear"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([1.51, 1.41])


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_a_configuration_alone_equals_it_inside_the_grid_bit_for_bit(seeds) -> None:
    """The runner runs one configuration at a time: every product of the kernel is per row, so a
    configuration's numbers do not depend on its batch (one GEMM over a single-seed grid used to move the
    last digits with the grid's size)."""
    from sharplab.labs.implicit_bias.diag_net import expand_grid, run_grid

    grid = expand_grid(["gd", "sgd", "nsam", "1sam"], [0.0, 0.1], [5 / 30], [0.05, 0.1], iters=150)
    together = run_grid(grid, seeds)
    alone = [run_grid([c], [s])[0] for c in grid for s in seeds]
    for a, b in zip(together, alone):
        assert a.beta.tobytes() == b.beta.tobytes()
        assert (a.test_error, a.train_loss, a.l1_norm, a.dist_theta) == (b.test_error, b.train_loss, b.l1_norm,
                                                                       b.dist_theta)
