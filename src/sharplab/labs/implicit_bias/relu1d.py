"""1-D regression with a one-hidden-layer ReLU network: GD vs SAM, and how many linear pieces each learns.

Data (issue 5, after Andriushchenko & Flammarion, ICML 2022, arXiv:2206.06232): twelve points
``x_i = (-5.5, -4.5, ..., 5.5)/4 + 0.07`` and ``y_i = 0.345 + (-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1)_i``.

Network ``f(x) = sum_j a_j relu(w_j x + b_j) + c`` with ``H = 100`` units in float64; every weight and
first-layer bias starts ``N(0, 1)`` (seeded), ``c = 0``. Loss ``L = (1/n) sum_i (f(x_i) - y_i)^2``.
Full-batch GD (``torch.optim.SGD``) vs SAM (:class:`sharplab.optim.SAM`, normalised ascent
``eps = rho g/||g||``) with the same step size.

``f`` is piecewise linear with a kink at ``-b_j/w_j`` where the slope changes by ``|w_j| a_j``;
:func:`count_kinks` counts kinks inside the data range after merging kinks closer than ``merge`` and
dropping merged slope changes below ``slope_tol`` (linear pieces on the data range = kinks + 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from sharplab.errors import ConfigError, Diverged

X_POINTS = np.arange(-5.5, 6.0, 1.0) / 4 + 0.07
Y_POINTS = 0.345 + np.array([-2.0, 1.5, 0.0, 0.0, 2.0, 1.0, 0.0, -1.0, 0.0, 1.0, 2.0, -1.0])

RELU_METHODS = ("gd", "sam", "usam")


@dataclass(frozen=True)
class Relu1dConfig:
    """One 1-D ReLU run (seed: ``RunContext.seed``). ``rho`` is ignored by ``gd``."""

    method: str = field(default="sam", metadata={"choices": list(RELU_METHODS)})
    lr: float = field(default=6e-3, metadata={"min": 0.0, "help": "step size"})
    rho: float = field(default=0.1, metadata={"min": 0.0, "help": "SAM radius"})
    width: int = field(default=100, metadata={"min": 1})
    steps: int = field(default=40_000, metadata={"min": 0})
    tol: float = field(default=1e-8, metadata={"min": 0.0, "help": "stop when the training loss is below"})
    slope_tol: float = field(default=0.1, metadata={"min": 0.0, "help": "smallest counted slope change"})
    record_every: int = field(default=500, metadata={"min": 1})

    def __post_init__(self) -> None:
        if self.method not in RELU_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(RELU_METHODS)}")
        if not (math.isfinite(self.lr) and math.isfinite(self.rho)) or self.lr < 0 or self.rho < 0:
            raise ConfigError(f"lr and rho must be finite and >= 0, got lr={self.lr}, rho={self.rho}")


def make_network(width: int = 100, seed: int = 0) -> nn.Sequential:
    """``1 -> width -> 1`` ReLU network in float64, weights and hidden biases ``N(0, 1)``, output bias 0."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 1)).double()
    with torch.no_grad():
        for p in (net[0].weight, net[0].bias, net[2].weight):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        net[2].bias.zero_()
    return net


def kinks(net: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    """Kink positions ``-b_j/w_j`` and slope changes ``|w_j| a_j`` of every unit with ``w_j != 0``."""
    w = net[0].weight.detach().double().numpy()[:, 0]
    b = net[0].bias.detach().double().numpy()
    a = net[2].weight.detach().double().numpy()[0]
    live = w != 0
    return -b[live] / w[live], np.abs(w[live]) * a[live]


def count_kinks(positions: np.ndarray, deltas: np.ndarray, lo: float = float(X_POINTS.min()),
                hi: float = float(X_POINTS.max()), slope_tol: float = 0.1, merge: float = 1e-2) -> int:
    """Number of slope changes of magnitude > ``slope_tol`` inside ``[lo, hi]``.

    Kinks closer than ``merge * (hi - lo)`` are one kink whose slope change is the sum of theirs.
    """
    inside = (positions >= lo) & (positions <= hi)
    order = np.argsort(positions[inside])
    pos, dlt = positions[inside][order], deltas[inside][order]
    clusters: list[list[float]] = []
    for p, s in zip(pos, dlt):
        if clusters and p - clusters[-1][0] < merge * (hi - lo):
            clusters[-1][1] += s
        else:
            clusters.append([p, s])
    return int(sum(abs(s) > slope_tol for _, s in clusters))


@dataclass
class Relu1dResult:
    config: Relu1dConfig
    seed: int
    net: nn.Sequential
    steps_run: int
    train_loss: float
    kinks: int
    steps: np.ndarray
    loss_curve: np.ndarray

    @property
    def pieces(self) -> int:
        """Linear pieces on the data range."""
        return self.kinks + 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)).numpy()[:, 0]

    def record(self) -> dict:
        return {**asdict(self.config), "seed": self.seed, "steps_run": self.steps_run,
                "train_loss": self.train_loss, "kinks": self.kinks, "pieces": self.pieces}


def train_relu_1d(cfg: Relu1dConfig, seed: int = 0, progress: Iterable | None = None) -> Relu1dResult:
    """Full-batch training from :func:`make_network` until ``cfg.steps`` or training loss < ``cfg.tol``."""
    from sharplab.optim import SAM

    net = make_network(cfg.width, seed)
    x = torch.from_numpy(X_POINTS).reshape(-1, 1)
    y = torch.from_numpy(Y_POINTS)
    opt: torch.optim.Optimizer = (torch.optim.SGD(net.parameters(), lr=cfg.lr) if cfg.method == "gd" else
                                  SAM(net.parameters(), torch.optim.SGD, rho=cfg.rho, rule=cfg.method,
                                      lr=cfg.lr))

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = ((net(x)[:, 0] - y) ** 2).mean()
        loss.backward()
        return loss

    steps, losses = [], []
    done = 0
    for t in range(cfg.steps) if progress is None else progress:
        if cfg.method == "gd":
            loss = closure()
            opt.step()
        else:
            loss = opt.step(closure)
        done = t + 1
        value = float(loss.detach())  # the loss before this update
        if not math.isfinite(value):
            raise Diverged(t)
        if t % cfg.record_every == 0:
            steps.append(t)
            losses.append(value)
        if value < cfg.tol:
            break
    with torch.no_grad():
        final = float(((net(x)[:, 0] - y) ** 2).mean())
    steps.append(done)
    losses.append(final)
    pos, dlt = kinks(net)
    return Relu1dResult(cfg, seed, net, done, final, count_kinks(pos, dlt, slope_tol=cfg.slope_tol),
                        np.array(steps), np.array(losses))


def compare(steps: int = 40_000, lr: float = 6e-3, rho: float = 0.1, seed: int = 0,
            **kwargs) -> list[Relu1dResult]:
    """GD and SAM from the same initialisation (notebook convenience)."""
    return [train_relu_1d(Relu1dConfig(method=m, steps=steps, lr=lr, rho=rho, **kwargs), seed)
            for m in ("gd", "sam")]
