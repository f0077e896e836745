"""Diagonal linear networks ``beta = u * v`` trained by GD, SGD and SAM variants, whole grids at once.

Protocol of Andriushchenko & Flammarion, *Towards Understanding Sharpness-Aware Minimization*
(ICML 2022, arXiv:2206.06232), Sec. 3: sparse regression with ``np.random.seed(seed)``,
``X = randn(n, d)``, ``X_test = randn(n_test, d)``, ``theta = randn(d)`` kept on its first ``r``
entries, made non-negative and unit-norm; ``y = X theta`` (no noise). Init ``u = alpha 1``, ``v = 0``;
loss ``L = ||X beta - y||^2 / (2n)``; metrics after exactly ``iters`` updates.

All configurations of a grid (method, rho, alpha, step size, seed, switch point) advance together as one
float64 batch through the kernel described in :mod:`.methods` (see there for the 2x factor convention
between ``m-sam`` with ``m = n`` and ``nsam``). The kernel uses the expansion
``u~ v~ = uv + s a (u^2 + v^2) + s^2 a^2 uv``, so a step costs a few ``(C, n, d)`` array operations.

Every product of the kernel is a stacked (per-configuration) matrix-vector product, so a configuration's
numbers do not depend on the rest of its batch, bit for bit: a run of one configuration (the runner's
``diag-net`` lab) equals the same configuration inside any grid. One GEMM over all rows would be faster for
large single-seed grids, but BLAS sums a GEMM row in another order than a one-row product, which moved the
last digits of a configuration with the size of its grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product

import numpy as np

from sharplab.errors import ConfigError
from sharplab.labs.fields import lr_field, rho_field
from sharplab.labs.implicit_bias.methods import METHODS, get_method

NO_SWITCH = "none"


@dataclass(frozen=True)
class DiagNetConfig:
    """One diagonal-network run (the seed is separate: ``RunContext.seed`` or the grid's ``seeds``).

    ``switch_at``/``then``: train with ``method`` for ``switch_at`` updates, then with ``then``
    (``"none"``: no switch). ``m`` is the micro-batch size of ``m-sam`` (must divide ``n``).
    """

    method: str = field(default="1sam", metadata={"choices": sorted(METHODS), "help": "training rule"})
    rho: float = rho_field(0.0)
    lr: float = lr_field(5.0 / 30, "step size gamma")
    alpha: float = field(default=0.1, metadata={"min": 0.0, "help": "init scale u = alpha 1"})
    m: int = field(default=1, metadata={"min": 1, "help": "micro-batch size of m-sam"})
    iters: int = field(default=10_001, metadata={"min": 0, "help": "number of updates"})
    switch_at: int = field(default=0, metadata={"min": 0, "help": "updates before switching"})
    then: str = field(default=NO_SWITCH, metadata={"choices": [NO_SWITCH, *sorted(METHODS)],
                                                    "help": "method after the switch, or none"})
    n: int = field(default=20, metadata={"min": 1, "help": "training examples"})
    d: int = field(default=30, metadata={"min": 1, "help": "dimension"})
    r: int = field(default=3, metadata={"min": 1, "help": "support size of theta"})
    n_test: int = field(default=1000, metadata={"min": 1, "help": "test examples"})
    #: what the runner logs (the numbers do not depend on it): test error and training loss every
    #: ``record_every`` updates (0: 100 points), plus about ``log_curves`` log-spaced update counts
    record_every: int = field(default=0, metadata={"min": 0, "omit_default": True,
                                                   "help": "log the losses every this many updates (0: 100 points)"})
    log_curves: int = field(default=0, metadata={"min": 0, "omit_default": True,
                                                 "help": "log the losses at about this many log-spaced steps"})

    def __post_init__(self) -> None:
        for name in (self.method,) + ((self.then,) if self.then != NO_SWITCH else ()):
            if name not in METHODS:
                raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
        for key in ("rho", "lr", "alpha"):
            value = getattr(self, key)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
        if self.n < 1 or self.d < 1 or self.n_test < 1 or self.iters < 0 or self.switch_at < 0:
            raise ConfigError("n, d, n_test must be >= 1 and iters, switch_at >= 0; fix the config")
        if not 1 <= self.r <= self.d:
            raise ConfigError(f"r (support size) must be in 1..d={self.d}, got {self.r}")
        if self.m < 1 or self.n % self.m:
            raise ConfigError(f"m must divide n={self.n}, got m={self.m}; pick a divisor of n")
        if self.then == NO_SWITCH and self.switch_at:
            raise ConfigError("switch_at is set but then='none'; give the method to switch to (--then)")
        if self.record_every < 0 or self.log_curves < 0:
            raise ConfigError("record_every and log_curves must be >= 0; fix the config")

    @property
    def recording(self) -> tuple[int, list[int]]:
        """``(record_every, record_at)`` of :func:`run_grid` for the runner's logged curves."""
        if self.log_curves:
            return self.record_every, log_steps(self.iters, self.log_curves)
        return self.record_every or max(1, self.iters // 100), []

    @property
    def phases(self) -> tuple[str, str]:
        """``(method before switch_at, method from switch_at on)``."""
        return (self.method, self.method if self.then == NO_SWITCH else self.then)

    @property
    def uses_rho(self) -> bool:
        return any(get_method(p).uses_rho for p in self.phases)


@dataclass(frozen=True)
class DiagNetData:
    """Training/test data and the ground truth of one seed."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    theta: np.ndarray


def make_data(seed: int = 0, n: int = 20, d: int = 30, r: int = 3, n_test: int = 1000) -> DiagNetData:
    """The study's data, drawn in its order from the global NumPy generator seeded with ``seed``.

    The global generator's state is saved and restored, so callers are not affected.
    """
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        X = np.random.randn(n, d)
        X_test = np.random.randn(n_test, d)
        theta = np.random.randn(d)
    finally:
        np.random.set_state(state)
    theta[r:] = 0.0
    theta = np.abs(theta)
    theta = theta / np.linalg.norm(theta)
    return DiagNetData(X, X @ theta, X_test, X_test @ theta, theta)


@dataclass
class DiagNetResult:
    """Final metrics of one configuration (and its trajectory when recorded)."""

    config: DiagNetConfig
    seed: int
    test_error: float
    train_loss: float
    l1_norm: float
    dist_theta: float
    beta: np.ndarray
    u: np.ndarray | None = None
    v: np.ndarray | None = None
    steps: np.ndarray | None = None
    test_curve: np.ndarray | None = None
    train_curve: np.ndarray | None = None

    @property
    def diverged(self) -> bool:
        return not np.isfinite(self.train_loss)

    def record(self) -> dict:
        """The JSON line of the CLI: config fields, seed and the metrics."""
        out = asdict(self.config)
        out.update(seed=self.seed, test_error=self.test_error, train_loss=self.train_loss,
                   l1_norm=self.l1_norm, dist_theta=self.dist_theta, diverged=self.diverged)
        return out


def expand_grid(methods: Sequence[str] = ("1sam",), rhos: Sequence[float] = (0.0,),
                lrs: Sequence[float] = (5.0 / 30,), alphas: Sequence[float] = (0.1,),
                **common) -> list[DiagNetConfig]:
    """The product grid of configurations; rho is collapsed to 0 for rules that ignore it (GD, SGD)."""
    seen: dict[DiagNetConfig, None] = {}
    for method, rho, lr, alpha in product(methods, rhos, lrs, alphas):
        cfg = DiagNetConfig(method=method, rho=float(rho), lr=float(lr), alpha=float(alpha), **common)
        if not cfg.uses_rho:
            cfg = DiagNetConfig(**{**asdict(cfg), "rho": 0.0})
        seen.setdefault(cfg, None)
    return list(seen)


def run_grid(configs: Iterable[DiagNetConfig], seeds: Iterable[int] = (0,), *, record_every: int = 0,
             record_at: Iterable[int] = (), progress: bool = False) -> list[DiagNetResult]:
    """Train every ``(config, seed)`` pair; pairs with equal ``(n, d, iters)`` share one vectorised batch.

    Args:
        configs: configurations (see :func:`expand_grid`).
        seeds: data seeds; each also seeds SGD's example draws (``np.random.default_rng(seed)``).
        record_every: record test error and training loss every this many updates (0: final only).
        record_at: also record after these numbers of updates (e.g. :func:`log_steps` for long runs).
        progress: show a tqdm bar over the updates.

    Returns:
        One :class:`DiagNetResult` per pair, in ``product(configs, seeds)`` order.
    """
    pairs = [(c, int(s)) for c, s in product(list(configs), list(seeds))]
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault((c.n, c.d, c.n_test, c.iters), []).append(i)
    results: list[DiagNetResult | None] = [None] * len(pairs)
    for idx in groups.values():
        for i, res in zip(idx, _run_batch([pairs[i] for i in idx], record_every, set(record_at), progress)):
            results[i] = res
    return results  # type: ignore[return-value]


def _phase_arrays(cfgs: Sequence[DiagNetConfig], phase: int) -> dict[str, np.ndarray]:
    """Per-configuration kernel coefficients of one phase (see :mod:`.methods`)."""
    C, n = len(cfgs), cfgs[0].n
    S = np.zeros((C, 1))
    F = np.zeros((C, 1))
    M = np.ones(C, dtype=int)
    stoch = np.zeros(C, dtype=bool)
    for c, cfg in enumerate(cfgs):
        spec = get_method(cfg.phases[phase])
        S[c] = spec.scale(cfg.rho, n, cfg.m)
        F[c] = 1.0 if spec.full_jacobian else 0.0
        M[c] = spec.group(n, cfg.m)
        stoch[c] = spec.stochastic
    return {"S": S, "F": F, "M": M, "stoch": stoch}


def log_steps(iters: int, points: int = 200) -> list[int]:
    """About ``points`` update counts from 0 to ``iters``, log-spaced (all of the first few), ends included."""
    grid = np.unique(np.round(np.logspace(0, np.log10(max(iters, 1)), points)).astype(int))
    return sorted({0, *grid[grid <= iters].tolist(), iters})


def _run_batch(pairs: Sequence[tuple[DiagNetConfig, int]], record_every: int, record_at: set[int],
               progress: bool) -> list[DiagNetResult]:
    cfgs = [c for c, _ in pairs]
    c0 = cfgs[0]
    n, d, iters = c0.n, c0.d, c0.iters
    C = len(pairs)
    datas: dict[tuple[int, int], DiagNetData] = {}
    for c, s in pairs:
        if (s, c.r) not in datas:
            datas[(s, c.r)] = make_data(s, n, d, c.r, c.n_test)
    data = [datas[(s, c.r)] for c, s in pairs]
    X = np.stack([D.X for D in data])  # (C, n, d), contiguous: fast elementwise products
    Y = np.stack([D.y for D in data])  # (C, n)
    LR = np.array([[c.lr] for c in cfgs])
    U = np.array([[c.alpha] for c in cfgs]) * np.ones((C, d))
    V = np.zeros((C, d))
    phases = [_phase_arrays(cfgs, 0), _phase_arrays(cfgs, 1)]
    cur = {k: v.copy() for k, v in phases[0].items()}
    groups = micro_batch_groups(cur["M"], cur["S"])
    switch = {}
    for c, cfg in enumerate(cfgs):
        if cfg.phases[0] != cfg.phases[1] and cfg.switch_at < iters:
            switch.setdefault(cfg.switch_at, []).append(c)
    any_stoch = bool(phases[0]["stoch"].any() or phases[1]["stoch"].any())
    draws = np.stack([np.random.default_rng(s).integers(0, n, size=iters) for _, s in pairs]) \
        if any_stoch else None
    W = np.full((C, n), 1.0 / n)
    rows = np.arange(C)

    def weights(t: int) -> np.ndarray:
        if not cur["stoch"].any():
            return W
        Wt = W.copy()
        st = cur["stoch"]
        Wt[st] = 0.0
        Wt[rows[st], draws[st, t]] = 1.0
        return Wt

    steps, tests, trains = [], [], []

    def snapshot(t: int) -> None:
        B = U * V
        steps.append(t)
        tests.append(_errors(B, data, test=True))
        trains.append(_errors(B, data, test=False))

    bar = None
    if progress:
        from sharplab.progress import progress as make_progress

        bar = make_progress(total=iters, desc="diag-net", leave=False)
    with np.errstate(all="ignore"):
        recording = bool(record_every or record_at)
        if recording and (record_every or 0 in record_at):
            snapshot(0)
        for t in range(iters):
            if t in switch:
                for k in ("S", "F", "M", "stoch"):
                    cur[k][switch[t]] = phases[1][k][switch[t]]
                groups = micro_batch_groups(cur["M"], cur["S"])
            gU, gV = step_gradients(U, V, X, Y, cur["S"], cur["F"], groups, weights(t))
            U = U - LR * gU
            V = V - LR * gV
            if recording and ((record_every and (t + 1) % record_every == 0) or (t + 1) in record_at):
                snapshot(t + 1)
            if bar is not None and (t + 1) % 100 == 0:
                bar.update(100)
        if bar is not None:
            bar.close()
        B = U * V
        test = _errors(B, data, test=True)
        train = _errors(B, data, test=False)
        out = []
        for c, (cfg, seed) in enumerate(pairs):
            res = DiagNetResult(cfg, seed, float(test[c]), float(train[c]), float(np.abs(B[c]).sum()),
                                float(np.linalg.norm(B[c] - data[c].theta)), B[c].copy(), U[c].copy(),
                                V[c].copy())
            if recording:
                res.steps = np.array(steps)
                res.test_curve = np.array([v[c] for v in tests])
                res.train_curve = np.array([v[c] for v in trains])
            out.append(res)
    return out


def micro_batch_groups(sizes: np.ndarray, S: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """``[(rows, m)]`` for the rows whose ascent (``S != 0``) sums over micro-batches of size ``m > 1``."""
    active = S[:, 0] != 0
    return [(np.flatnonzero(active & (sizes == m)), int(m)) for m in np.unique(sizes[active]) if m > 1]


def step_gradients(U: np.ndarray, V: np.ndarray, X: np.ndarray, Y: np.ndarray, S: np.ndarray,
                   F: np.ndarray, groups: Sequence[tuple[np.ndarray, int]],
                   W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's descent direction ``(g_u, g_v)`` for a batch of C configurations (see :mod:`.methods`).

    Shapes: ``U, V (C, d)``, ``X (C, n, d)`` (contiguous), ``Y (C, n)``, ascent scale ``S (C, 1)``,
    full-Jacobian flag ``F (C, 1)``, example weights ``W (C, n)``; ``groups`` lists ``(rows, m)`` whose
    micro-batches have ``m > 1`` consecutive examples (:func:`micro_batch_groups`; other rows: ``m = 1``).
    Every product is stacked per row, so each row's result is independent of the others (module docstring).
    """

    def xdot(M: np.ndarray) -> np.ndarray:  # (C, d) -> (C, n): x_k . m_c
        return (X @ M[:, :, None])[:, :, 0]

    def xsum(Q: np.ndarray) -> np.ndarray:  # (C, n) -> (C, d): sum_k q_ck x_k
        return (Q[:, None, :] @ X)[:, 0, :]

    B = U * V
    R = xdot(B) - Y  # (C, n) residuals at w
    if not S.any():
        g1 = xsum(W * R)
        return V * g1, U * g1
    A = R[:, :, None] * X  # (C, n, d): a_k = sum_{j in B(k)} r_j x_j, here for m = 1
    C, n, d = A.shape
    for rows, m in groups:  # block sums over consecutive micro-batches, broadcast back to each example
        blocks = A[rows].reshape(len(rows), n // m, m, d).sum(axis=2, keepdims=True)
        A[rows] = np.broadcast_to(blocks, (len(rows), n // m, m, d)).reshape(len(rows), n, d)
    AX = A * X
    H = U * U + V * V
    # r~_k = x_k . (u~_k v~_k) - y_k with u~_k v~_k = uv + s a_k (u^2 + v^2) + s^2 a_k^2 uv
    Rt = R + S * (AX @ H[:, :, None])[:, :, 0] + (S * S) * ((AX * A) @ B[:, :, None])[:, :, 0]
    WR = W * Rt
    g1 = xsum(WR)  # sum_k w_k r~_k x_k
    g2 = (WR[:, None, :] @ AX)[:, 0, :]  # sum_k w_k r~_k x_k a_k
    FS = F * S
    return V * g1 + FS * U * g2, U * g1 + FS * V * g2


def _errors(B: np.ndarray, data: Sequence[DiagNetData], *, test: bool) -> np.ndarray:
    """``||X beta - y||^2 / (2 N)`` per configuration, on the test or the training set."""
    out = np.empty(len(data))
    by_data: dict[int, list[int]] = {}
    for c, D in enumerate(data):
        by_data.setdefault(id(D), []).append(c)
    for rows in by_data.values():
        D = data[rows[0]]
        Xs, ys = (D.X_test, D.y_test) if test else (D.X, D.y)
        res = (Xs[None] @ B[rows][:, :, None])[:, :, 0] - ys  # (len(rows), N), one product per row
        out[rows] = np.einsum("ij,ij->i", res, res) / (2 * len(ys))
    return out


def train_diag_net(method: str = "1sam", rho: float = 0.0, lr: float = 5.0 / 30, alpha: float = 0.1,
             seed: int = 0, record_every: int = 0, **kwargs) -> DiagNetResult:
    """Train one configuration (notebook convenience around :func:`run_grid`)."""
    cfg = DiagNetConfig(method=method, rho=rho, lr=lr, alpha=alpha, **kwargs)
    return run_grid([cfg], [seed], record_every=record_every)[0]
