"""Convergence of SGD, SAM and USAM with stochastic gradients on a smooth non-convex problem.

Andriushchenko & Flammarion (ICML 2022, arXiv:2206.06232, Sec. 5) show that unnormalised SAM (USAM,
``eps = rho g``) with stochastic gradients converges to a stationary point of a beta-smooth non-convex
objective when the step size and radius decay (``gamma_t, rho_t ~ 1/sqrt(t)``), and that *normalised*
SAM (``eps = rho g / ||g||``) with a constant radius need not: its perturbation keeps length ``rho``
near a stationary point, so ``||grad f||`` plateaus at ``O(beta rho)``.

Toy problem (documented choice): a finite sum with heterogeneous curvature and a shared non-convex term,

    f(w) = (1/N) sum_i l_i(w),    l_i(w) = (h_i/2) ||w - c_i||^2 - lam sum_j log(1 + w_j^2),

with ``h_i ~ U(0.2, 3)``, ``c_i ~ (1, 0.5, ...) + 0.3 N(0, I)`` and ``lam = 1`` (``w`` in R^d, default
d = 2). It is smooth (the log term's curvature lies in ``[-2 lam, lam/4]``), bounded below, and
non-convex (the curvature at 0 is ``mean(h) - 2 lam < 0``). Because the examples disagree in curvature,
the stochastic ascent is biased: at a stationary point ``w*`` of f, the expected descent direction of
normalised SAM is ``rho E[H_i g_i/||g_i||] != 0`` and that of USAM ``rho E[H_i g_i] != 0``, so with a
constant radius both stall at ``||grad f|| = O(rho)`` even as the step size decays, while a decaying
radius (and SGD with a decaying step) reach the stationary point. Steps use :class:`sharplab.optim.SAM`
(rule ``sam`` or ``usam``) on mini-batches; ``||grad f(w_t)||`` is the exact full gradient norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sharplab.errors import ConfigError, Diverged
from sharplab.labs.fields import lr_field, rho_field
from sharplab.registry import Registry

#: Step-size / radius schedules ``s -> factor`` with ``s = t / decay_steps``: the value at step t is
#: ``base * factor(t / decay_steps)``.
SCHEDULES: Registry[Callable[[float], float]] = Registry("schedule")
SCHEDULES.add("constant", lambda s: 1.0)
SCHEDULES.add("inv-sqrt", lambda s: 1.0 / math.sqrt(1.0 + s))  # gamma_t, rho_t ~ 1/sqrt(t) (Sec. 5)
SCHEDULES.add("inv", lambda s: 1.0 / (1.0 + s))

#: method name -> (perturbation rule of sam_grad, uses rho)
CONV_METHODS: dict[str, tuple[str, bool]] = {"sgd": ("sam", False), "sam": ("sam", True), "usam": ("usam", True)}


@dataclass(frozen=True)
class ConvergenceConfig:
    """One stochastic run on the robust-regression problem (seed: ``RunContext.seed``)."""

    method: str = field(default="sam", metadata={"choices": sorted(CONV_METHODS)})
    lr: float = lr_field(0.2, "base step size gamma_0")
    rho: float = rho_field(0.5, "base radius rho_0")
    lr_schedule: str = field(default="constant", metadata={"choices": ["constant", "inv-sqrt", "inv"]})
    rho_schedule: str = field(default="constant", metadata={"choices": ["constant", "inv-sqrt", "inv"]})
    decay_steps: float = field(default=10.0, metadata={"min": 1e-9, "help": "time scale of decays"})
    steps: int = field(default=5000, metadata={"min": 1})
    batch_size: int = field(default=1, metadata={"min": 1})
    n: int = field(default=20, metadata={"min": 2})
    d: int = field(default=2, metadata={"min": 1})
    record_every: int = field(default=10, metadata={"min": 1})

    def __post_init__(self) -> None:
        if self.method not in CONV_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(CONV_METHODS)}")
        for name in (self.lr_schedule, self.rho_schedule):
            SCHEDULES.get(name)
        if self.lr < 0 or self.rho < 0 or not (math.isfinite(self.lr) and math.isfinite(self.rho)):
            raise ConfigError(f"lr and rho must be finite and >= 0, got lr={self.lr}, rho={self.rho}")
        if self.batch_size > self.n:
            raise ConfigError(f"batch_size={self.batch_size} exceeds n={self.n}; lower --batch-size")

    @property
    def label(self) -> str:
        if not CONV_METHODS[self.method][1]:
            return f"sgd lr:{self.lr_schedule}"
        return f"{self.method} rho={self.rho:g}:{self.rho_schedule} lr:{self.lr_schedule}"


@dataclass(frozen=True)
class Problem:
    """The finite sum above: curvatures ``h (N,)``, centres ``c (N, d)``, non-convexity ``lam``."""

    h: torch.Tensor
    c: torch.Tensor
    lam: float = 1.0

    def loss(self, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of ``l_i(w)`` over ``idx`` (all examples when None)."""
        h, c = (self.h, self.c) if idx is None else (self.h[idx], self.c[idx])
        quad = 0.5 * (h * ((w - c) ** 2).sum(-1)).mean()
        return quad - self.lam * torch.log1p(w * w).sum()

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """Closed-form ``grad f(w) = mean_i h_i (w - c_i) - 2 lam w / (1 + w^2)``."""
        return (self.h[:, None] * (w - self.c)).mean(0) - 2 * self.lam * w / (1 + w * w)


def make_problem(seed: int = 0, n: int = 20, d: int = 2, lam: float = 1.0) -> Problem:
    """A seeded instance in float64."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.2, 3.0, n)
    centre = np.array([1.0, 0.5] + [0.0] * (d - 2))[:d]
    c = centre + 0.3 * rng.standard_normal((n, d))
    return Problem(torch.from_numpy(h), torch.from_numpy(c), lam)


class _Point(nn.Module):
    """The parameter vector ``w`` as a module, so the team's optimizers can drive it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))


@dataclass
class ConvergenceResult:
    config: ConvergenceConfig
    seed: int
    steps: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray

    @property
    def final_grad_norm(self) -> float:
        """Mean of ``||grad f||`` over the last 10% of the records (a plateau level, not one sample)."""
        k = max(1, len(self.grad_norm) // 10)
        return float(np.mean(self.grad_norm[-k:]))

    def record(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self.config), "seed": self.seed, "final_grad_norm": self.final_grad_norm,
                "min_grad_norm": float(self.grad_norm.min()), "final_loss": float(self.loss[-1]),
                "label": self.config.label}


def run_convergence(cfg: ConvergenceConfig, seed: int = 0, progress: Iterable | None = None,
                    on_record: Callable[[int, float, float], None] | None = None) -> ConvergenceResult:
    """Train ``w`` (init 0) with mini-batch SGD/SAM/USAM steps on :func:`make_problem`.

    At step t the step size is ``lr * S_lr(t)`` and the radius ``rho * S_rho(t)`` (see :data:`SCHEDULES`).
    """
    from sharplab.optim import SAM

    prob = make_problem(seed, cfg.n, cfg.d)
    model = _Point(cfg.d)
    rule, uses_rho = CONV_METHODS[cfg.method]
    opt: torch.optim.Optimizer = (SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, rule=rule, lr=cfg.lr)
                                  if uses_rho else torch.optim.SGD(model.parameters(), lr=cfg.lr))
    gen = torch.Generator().manual_seed(seed)
    lr_s, rho_s = SCHEDULES.get(cfg.lr_schedule), SCHEDULES.get(cfg.rho_schedule)
    steps, norms, losses = [], [], []

    def record(t: int) -> None:
        with torch.no_grad():
            loss, gnorm = float(prob.loss(model.w)), float(torch.linalg.vector_norm(prob.grad(model.w)))
        if not math.isfinite(loss) or not math.isfinite(gnorm):
            raise Diverged(t)
        steps.append(t)
        norms.append(gnorm)
        losses.append(loss)
        if on_record is not None:
            on_record(t, loss, gnorm)

    record(0)
    for t in range(cfg.steps) if progress is None else progress:
        idx = torch.randint(0, cfg.n, (cfg.batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_s(t / cfg.decay_steps)
            group["rho"] = cfg.rho * rho_s(t / cfg.decay_steps)

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = prob.loss(model.w, idx)
            loss.backward()
            return loss

        if uses_rho:
            opt.step(closure)
        else:
            closure()
            opt.step()
        if (t + 1) % cfg.record_every == 0 or t + 1 == cfg.steps:
            record(t + 1)
    return ConvergenceResult(cfg, seed, np.array(steps), np.array(norms), np.array(losses))


def default_study(steps: int = 5000, lr: float = 0.2, rho: float = 0.5, schedule: str = "inv",
                  **kwargs) -> list[ConvergenceConfig]:
    """The figure's comparison: SGD with constant/decaying step; SAM and USAM with a decaying step and a
    constant or decaying radius."""
    out = [ConvergenceConfig(method="sgd", lr=lr, rho=0.0, steps=steps, lr_schedule=s, **kwargs)
           for s in ("constant", schedule)]
    for method in ("sam", "usam"):
        for rs in ("constant", schedule):
            out.append(ConvergenceConfig(method=method, lr=lr, rho=rho, steps=steps, rho_schedule=rs,
                                         lr_schedule=schedule, **kwargs))
    return out
