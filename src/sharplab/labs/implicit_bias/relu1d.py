"""1-D regression with a one-hidden-layer ReLU network: GD vs SAM, and how many linear pieces each learns.

Data (after Andriushchenko & Flammarion, ICML 2022, arXiv:2206.06232): twelve points
``x_i = (-5.5, -4.5, ..., 5.5)/4 + 0.07`` and ``y_i = 0.345 + (-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1)_i``.

Network ``f(x) = sum_j a_j relu(w_j x + b_j) (+ c)`` with ``H = 100`` units in float64. Defaults: the
official notebook (tml-epfl/understanding-sam, ``one_layer_relu_nets/1d_nn.ipynb``): data of Maennel et
al., init of Blanc et al. (``w_j = +-2.5``, ``b_j ~ N(0, 2.5^2)``, ``a_j ~ N(0, 4^2)``, no output bias),
``L = 1/2 sum_i (f(x_i) - y_i)^2``, full-batch steps with lr 5e-5, normalised SAM
``theta + rho g/||g||`` with rho 0.3, up to 10^6 steps, stop at loss < 1e-5, linear lr decay (SAM branch).
A second parameterisation (``N(0, 1)`` init, output bias, mean loss; ``--protocol legacy``) is
:data:`LEGACY`. All runs go through the vectorised trainer :mod:`.relu1d_batch` (seeds x methods in one
float64 computation).

``f`` is piecewise linear with a kink at ``-b_j/w_j`` where the slope changes by ``|w_j| a_j``;
:func:`count_kinks` counts kinks inside the data range after merging kinks closer than ``merge`` and
dropping merged slope changes below ``slope_tol`` (linear pieces on the data range = kinks + 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from sharplab.errors import ConfigError, Diverged
from sharplab.labs.fields import lr_field, rho_field

X_POINTS = np.arange(-5.5, 6.0, 1.0) / 4 + 0.07
Y_POINTS = 0.345 + np.array([-2.0, 1.5, 0.0, 0.0, 2.0, 1.0, 0.0, -1.0, 0.0, 1.0, 2.0, -1.0])

RELU_METHODS = ("gd", "sam", "usam")
INITS = ("blanc", "normal")
LOSSES = ("half-sum", "mean")
LR_DECAYS = ("notebook", "linear", "none")

#: The second parameterisation (``--protocol legacy``): N(0, 1) init with a trained output bias, mean loss.
LEGACY = {"init": "normal", "loss": "mean", "output_bias": True, "lr_decay": "none", "lr": 6e-3, "rho": 0.1,
          "steps": 40_000, "tol": 1e-8}


@dataclass(frozen=True)
class Relu1dConfig:
    """One 1-D ReLU run (seed: ``RunContext.seed``). ``rho`` is ignored by ``gd``.

    Defaults: the official notebook (``one_layer_relu_nets/1d_nn.ipynb``): Blanc et al. init, no output
    bias, ``L = 1/2 sum (f - y)^2``, lr 5e-5, normalised SAM with rho 0.3, at most 10^6 steps, stop at
    loss < 1e-5, linear lr decay in the SAM branch only (``lr_decay="notebook"``; ``"linear"``: every
    method). :data:`LEGACY` holds the second parameterisation.
    """

    method: str = field(default="sam", metadata={"choices": list(RELU_METHODS)})
    lr: float = lr_field(5e-5, "step size")
    rho: float = rho_field(0.3)
    width: int = field(default=100, metadata={"min": 1})
    steps: int = field(default=1_000_000, metadata={"min": 0, "help": "most steps T (also the decay horizon)"})
    tol: float = field(default=1e-5, metadata={"min": 0.0, "help": "stop when the step's loss is below"})
    slope_tol: float = field(default=0.1, metadata={"min": 0.0, "help": "smallest counted slope change"})
    record_every: int = field(default=500, metadata={"min": 1})
    init: str = field(default="blanc", metadata={"choices": list(INITS),
                                                  "help": "blanc: w = +-2.5, b ~ N(0, 2.5^2), a ~ N(0, 16)"})
    loss: str = field(default="half-sum", metadata={"choices": list(LOSSES)})
    output_bias: bool = field(default=False, metadata={"help": "train an output bias c (init 0)"})
    lr_decay: str = field(default="notebook", metadata={"choices": list(LR_DECAYS)})
    then_gd: bool = field(default=False, metadata={
        "omit_default": True, "help": "continue the SAM/USAM solution with GD (same lr, steps, tol): the "
        "run's results are the continuation's (are the fewer kinks kept once the data are interpolated?)"})

    def __post_init__(self) -> None:
        for key, allowed in (("method", RELU_METHODS), ("init", INITS), ("loss", LOSSES),
                             ("lr_decay", LR_DECAYS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}; choose one of: {', '.join(allowed)}")
        if not (math.isfinite(self.lr) and math.isfinite(self.rho)) or self.lr < 0 or self.rho < 0:
            raise ConfigError(f"lr and rho must be finite and >= 0, got lr={self.lr}, rho={self.rho}")
        if self.width < 1 or self.steps < 0 or self.record_every < 1:
            raise ConfigError("width and record_every must be >= 1 and steps >= 0; fix the config")
        if not (math.isfinite(self.tol) and math.isfinite(self.slope_tol)) or self.tol < 0 or self.slope_tol < 0:
            raise ConfigError(f"tol and slope_tol must be finite and >= 0, got {self.tol}, {self.slope_tol}")
        if self.then_gd and self.method == "gd":
            raise ConfigError("then_gd continues a SAM or USAM run with GD; method 'gd' has nothing to continue")

    @property
    def decays(self) -> bool:
        """Whether the step size decays linearly (the notebook decays it only in its SAM branch)."""
        return self.lr_decay == "linear" or (self.lr_decay == "notebook" and self.perturbs)

    @property
    def perturbs(self) -> bool:
        return self.method != "gd" and self.rho > 0

    @property
    def loss_scale(self) -> float:
        return 0.5 if self.loss == "half-sum" else 1.0 / len(X_POINTS)


def blanc_init(width: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w, b, a)`` drawn exactly as the notebook's ``Net`` (init of Blanc et al.), as float64.

    The notebook seeds ``torch.manual_seed(seed)``, builds ``nn.Linear(1, width)`` (its default init draws
    first), sets ``w = 2.5 (2 round(U[0, 1)) - 1)`` and ``b = 2.5 N(0, 1)``, builds
    ``nn.Linear(width, 1, bias=False)`` and sets ``a = 4 N(0, 1)``, all in float32. The same draws are
    made here inside :func:`torch.random.fork_rng`, so the global generator is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hidden = nn.Linear(1, width, dtype=torch.float32)
        w = 2.5 * (-1 + 2 * torch.round(torch.rand_like(hidden.weight)))
        b = torch.randn_like(hidden.bias) * 2.5
        predict = nn.Linear(width, 1, bias=False, dtype=torch.float32)
        a = torch.randn_like(predict.weight) * 4.0
    return (w.detach()[:, 0].double().numpy(), b.detach().double().numpy(), a.detach()[0].double().numpy())


def make_network(width: int = 100, seed: int = 0, init: str = "normal", output_bias: bool = True) -> nn.Sequential:
    """``1 -> width -> 1`` ReLU network in float64.

    ``init="normal"``: weights and hidden biases ``N(0, 1)`` from ``torch.Generator().manual_seed(seed)``,
    output bias 0; ``init="blanc"``: :func:`blanc_init`.
    """
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 1, bias=output_bias)).double()
    with torch.no_grad():
        if init == "blanc":
            w, b, a = blanc_init(width, seed)
            net[0].weight[:, 0] = torch.from_numpy(w)
            net[0].bias.copy_(torch.from_numpy(b))
            net[2].weight[0] = torch.from_numpy(a)
        else:
            gen = torch.Generator().manual_seed(seed)
            for p in (net[0].weight, net[0].bias, net[2].weight):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        if output_bias:
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
    stop_loss: float = float("nan")
    diverged: bool = False

    @property
    def pieces(self) -> int:
        """Linear pieces on the data range."""
        return self.kinks + 1

    @property
    def fits(self) -> bool:
        """Whether the final training loss is below the stopping tolerance (the data are interpolated)."""
        return bool(self.train_loss < self.config.tol)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)).numpy()[:, 0]

    def record(self) -> dict:
        return {**asdict(self.config), "seed": self.seed, "steps_run": self.steps_run,
                "train_loss": self.train_loss, "stop_loss": self.stop_loss, "fits": self.fits,
                "diverged": self.diverged, "kinks": self.kinks, "pieces": self.pieces}


def train_relu_batch(configs: Sequence[Relu1dConfig], seeds: Iterable[int] = (0,), *,
                     progress=None, start: Sequence[nn.Sequential] | None = None) -> list[Relu1dResult]:
    """Train every ``(config, seed)`` pair; pairs with equal width, loss and output bias form one batch.

    ``start``: one network per pair to continue from (e.g. GD after SAM) instead of the seed's init;
    its output bias must match the config's.

    The kernel (:mod:`.relu1d_batch`) advances all networks of a batch together in float64 and drops each
    one when it stops. Returns results in ``product(configs, seeds)`` order; diverged runs have
    ``diverged=True`` (their losses are not finite).
    """
    from sharplab.labs.implicit_bias.relu1d_batch import BatchSpec, train_batch

    pairs = [(c, int(s)) for c in configs for s in seeds]
    if start is not None and len(start) != len(pairs):
        raise ConfigError(f"start holds {len(start)} networks for {len(pairs)} (config, seed) pairs")
    groups: dict[tuple, list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault((c.width, c.loss, c.output_bias), []).append(i)
    results: list[Relu1dResult | None] = [None] * len(pairs)
    x, y = X_POINTS.astype(np.float64), Y_POINTS.astype(np.float64)
    for idx in groups.values():
        cfgs = [pairs[i][0] for i in idx]
        nets = [make_network(c.width, s, c.init, c.output_bias) for c, s in (pairs[i] for i in idx)]
        if start is not None:
            for net, i in zip(nets, idx):
                net.load_state_dict(start[i].state_dict())
        W = np.stack([n[0].weight.detach().numpy()[:, 0] for n in nets])
        B = np.stack([n[0].bias.detach().numpy() for n in nets])
        A = np.stack([n[2].weight.detach().numpy()[0] for n in nets])
        c0 = np.zeros(len(idx)) if cfgs[0].output_bias else None
        spec = BatchSpec(lr=np.array([c.lr for c in cfgs]),
                         rho=np.array([c.rho if c.perturbs else 0.0 for c in cfgs]),
                         normalised=np.array([c.method == "sam" for c in cfgs]),
                         decay=np.array([c.decays for c in cfgs]), steps=np.array([c.steps for c in cfgs]),
                         tol=np.array([c.tol for c in cfgs]), record_every=min(c.record_every for c in cfgs))
        out = train_batch(x, y, (W, B, A, c0), spec, cfgs[0].loss_scale, progress=progress)
        for k, i in enumerate(idx):
            cfg, seed = pairs[i]
            net = nets[k]
            with torch.no_grad():
                net[0].weight[:, 0] = torch.from_numpy(out.params[0][k])
                net[0].bias.copy_(torch.from_numpy(out.params[1][k]))
                net[2].weight[0] = torch.from_numpy(out.params[2][k])
                if cfg.output_bias:
                    net[2].bias.fill_(float(out.params[3][k]))
            pos, dlt = kinks(net)
            n_kinks = count_kinks(pos, dlt, slope_tol=cfg.slope_tol) if not out.diverged[k] else -1
            steps, losses = out.curves[k]
            results[i] = Relu1dResult(cfg, seed, net, int(out.steps_run[k]), float(out.train_loss[k]), n_kinks,
                                      np.array(steps), np.array(losses), float(out.stop_loss[k]),
                                      bool(out.diverged[k]))
    return results  # type: ignore[return-value]


def train_relu_1d(cfg: Relu1dConfig, seed: int = 0, progress=None) -> Relu1dResult:
    """One run (a batch of one); raises :class:`~sharplab.errors.Diverged` if the loss is not finite.

    With ``cfg.then_gd`` the SAM/USAM solution is continued by GD (:func:`gd_continuation`) and the
    continuation's result is returned."""
    first = replace(cfg, then_gd=False)
    (res,) = train_relu_batch([first], [seed], progress=progress)
    if res.diverged:
        raise Diverged(res.steps_run)
    if cfg.then_gd:
        (res,) = train_relu_batch([gd_continuation(first)], [seed], start=[res.net])
        if res.diverged:
            raise Diverged(res.steps_run)
    return res


def gd_continuation(cfg: Relu1dConfig) -> Relu1dConfig:
    """The GD run that continues a solution of ``cfg`` (same lr, steps and tol)."""
    return replace(cfg, method="gd", rho=0.0, then_gd=False)


def compare(seeds: Iterable[int] = (0, 1, 2, 3, 4), **kwargs) -> list[Relu1dResult]:
    """GD and SAM from the same initialisations, all in one batch (notebook convenience).

    ``kwargs`` are :class:`Relu1dConfig` fields (defaults: the official notebook's settings).
    """
    kwargs.pop("method", None)
    return train_relu_batch([Relu1dConfig(method=m, **kwargs) for m in ("gd", "sam")], list(seeds))
