"""Ascent rules of the wider SAM family: Friendly-SAM, ESAM's stochastic weight perturbation, Momentum-SAM.

=========  =====================================================================  =================================
name       eps                                                                    reference
=========  =====================================================================  =================================
``fsam``   rho * d / ||d||,  d = g - sigma m,  m <- lmbda m + (1 - lmbda) g       Li et al., CVPR 2024, eq. (9)
``esam``   rho / beta * (M g) / ||M g||,  M: each tensor kept with prob. beta    Du et al., ICLR 2022, sec. 3.1
``momentum-sam``   -rho * v / ||v||,  v the base optimizer's momentum (no extra pass)    Becker et al., 2024, eq. (4)
=========  =====================================================================  =================================

They plug into :class:`~sharplab.optim.SAM` like the rules of :mod:`sharplab.optim.rules`
(``SAM(params, SGD, rule=FriendlyRule(sigma=1.0, lmbda=0.9))``, or by name through
:func:`sharplab.optim.create`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sharplab.errors import SharplabError
from sharplab.optim.registry import Variant, check_number, register
from sharplab.optim.rules import PerturbationRule, Tensors, build_rule_only, global_norm, scale_to_rho


class FriendlyRule(PerturbationRule):
    r"""Friendly-SAM (Li, Zhou, Zhang & Huang, *Friendly Sharpness-Aware Minimization*, CVPR 2024).

    The full-gradient component of the minibatch gradient barely raises the minibatch loss, so F-SAM
    removes an exponential moving average of past gradients (its estimate) from the ascent direction:

    .. math::
        d_t = g_t - \sigma m_{t-1},\qquad m_t = \lambda m_{t-1} + (1-\lambda) g_t,\qquad
        \epsilon_t = \rho\, d_t / \|d_t\|_2 .

    **Which form.** This is the authors' code (and pytorch_optimizer's ``FriendlySAM``): the direction uses
    the EMA *before* this step's update, m_{t-1}, and the EMA starts at the first gradient, m_0 = g_0, so
    the first step is a plain SAM step. (Algorithm 1 of the paper updates m first and subtracts m_t; the
    two differ by (1 - lambda) sigma g_t in the direction.) The EMA is kept per parameter, so a tensor
    added later (``add_param_group``) starts its own EMA at its first gradient and the others keep theirs.

    Args:
        sigma: weight of the removed component (1.0 in the paper).
        lmbda: EMA decay lambda (0.9 in the paper; 0.95 on ImageNet-scale runs).
    """

    name = "fsam"
    stateful = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9) -> None:
        self.sigma = check_number("fsam", "sigma", sigma, 0)
        self.lmbda = check_number("fsam", "lmbda", lmbda, 0, 1, hi_open=True)
        self.ema: dict[int, torch.Tensor] = {}  # id(param) -> m
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def _params(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            raise SharplabError("Friendly-SAM's state needs its optimizer: use it through SAM(...) or create('fsam')")
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def perturbation(self, grads, params, rhos):
        direction = []
        for p, g in zip(params, grads):
            m = self.ema.get(id(p))
            if m is None:
                self.ema[id(p)] = g.detach().clone()
                direction.append(g)
            else:
                direction.append(g - self.sigma * m)
                m.mul_(self.lmbda).add_(g, alpha=1 - self.lmbda)
        return scale_to_rho(direction, rhos, global_norm(direction), of_norm=True)

    def state_dict(self) -> dict:
        """``{"ema": {position: m}}``, positions in the optimizer's parameter order."""
        if not self.ema:
            return {}
        return {"ema": {i: self.ema[id(p)].clone() for i, p in enumerate(self._params()) if id(p) in self.ema}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("ema", {})
        params = self._params() if saved else []
        self.ema = {id(params[int(i)]): m.clone() for i, m in saved.items()}


class ESAMRule(PerturbationRule):
    r"""ESAM's stochastic weight perturbation (Du et al., *Efficient Sharpness-aware Minimization for
    Improved Training of Neural Networks*, ICLR 2022, sec. 3.1).

    Before each ascent pass every perturbed tensor is kept with probability beta (a Bernoulli mask M
    drawn from the rule's own generator); the ascent gradient is computed only for the kept tensors
    (the others get ``requires_grad = False`` during that pass, which is where the backward saves
    time), and

    .. math:: \epsilon = \frac{\rho}{\beta}\, \frac{M \odot g}{\|M \odot g\|_2}.

    As in the authors' code the mask is per tensor and the radius is divided by beta. The data
    half of ESAM (sharpness-sensitive selection) is :class:`~sharplab.optim.selection.SharpestFraction`.

    Args:
        beta: probability that a tensor is perturbed (0.6 in the paper's CIFAR runs); 1 = SAM.
        seed: seed of the rule's own generator (default: derived from ``torch.initial_seed()``).
    """

    name = "esam"

    def __init__(self, beta: float = 0.6, seed: int | None = None) -> None:
        self.beta = check_number("esam", "beta", beta, 0, 1, lo_open=True)
        self.generator = torch.Generator()
        self.generator.manual_seed(torch.initial_seed() + 104729 if seed is None else seed)
        self.mask: list[bool] | None = None

    def select(self, params: Tensors) -> list[bool]:
        """Draw the mask for the next ascent pass (at least one tensor is kept)."""
        draws = torch.rand(len(params), generator=self.generator) < self.beta
        if not bool(draws.any()):
            draws[int(torch.randint(len(params), (1,), generator=self.generator))] = True
        self.mask = draws.tolist()
        return self.mask

    def perturbation(self, grads, params, rhos):
        """eps on the kept tensors (SAM drops the others before calling: they are not perturbed)."""
        return scale_to_rho(list(grads), [r / self.beta for r in rhos], global_norm(grads), of_norm=True)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class MomentumRule(PerturbationRule):
    r"""Momentum-SAM (Becker, Altrichter & Shen, *Momentum-SAM: Sharpness Aware Minimization without
    Computational Overhead*, arXiv:2401.12033, 2024).

    The ascent direction is the base optimizer's momentum buffer v (SGD's ``momentum_buffer``, Adam's
    ``exp_avg``), which needs no gradient at w, so a step costs one forward/backward:

    .. math:: \epsilon_t = -\rho\, v_t / \|v_t\|_2, \qquad w_{t+1} = \mathrm{base}(w_t, \nabla L(w_t + \epsilon_t)).

    The minus sign follows the paper: with PyTorch's SGD (``w <- w - lr v``) the perturbation points along
    the *negative* momentum, i.e. ahead along the descent path. Before the first step (no buffer yet) eps = 0.
    The authors' code keeps the weights at w + eps between steps; here they are restored after every
    step (the same iterates w_t, and the model is never left perturbed). MSAM works with a much larger
    rho than SAM (the paper uses rho = 0.3 - 3 with SGD).

    Weight decay: with ``torch.optim.SGD`` the decay term enters the gradient before the momentum update, so
    v (and eps) includes it, and the base step's decay is computed at w (restored before it); the authors'
    optimizer holds the weights at w + eps, so its decay differs by lambda eps. A base optimizer without
    momentum (SGD with ``momentum=0``) is refused at construction.

    Args:
        buffer: the state key of the base optimizer's momentum (default: ``momentum_buffer`` or ``exp_avg``,
            whichever the optimizer keeps).
    """

    name = "momentum-sam"
    needs_grad = False

    def __init__(self, buffer: str | None = None) -> None:
        self.buffer = buffer
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse a base optimizer that keeps no momentum: Momentum-SAM would silently be the base alone."""
        for i, group in enumerate(optimizer.param_groups):
            if self.buffer is None and "momentum" in group and "betas" not in group and not group["momentum"]:
                raise SharplabError(
                    f"momentum-sam: param group {i} of {type(optimizer).__name__} has momentum=0, so there is no "
                    "momentum buffer to perturb along and Momentum-SAM would be plain SGD; give momentum > 0 "
                    "(the paper uses 0.9) or use Adam/AdamW")
        self.optimizer = optimizer

    def momentum(self, params: Tensors) -> list[torch.Tensor | None]:
        """The base optimizer's momentum for each of ``params`` (``None`` where it has none yet)."""
        if self.optimizer is None:
            raise SharplabError("Momentum-SAM needs the base optimizer: use it through SAM(...) or "
                                "create('momentum-sam', ...)")
        keys = [self.buffer] if self.buffer else ["momentum_buffer", "exp_avg"]
        out: list[torch.Tensor | None] = []
        for p in params:
            state = self.optimizer.state.get(p, {})
            v = next((state[k] for k in keys if state.get(k) is not None), None)
            if v is None and state:
                raise SharplabError(f"momentum-sam: the base optimizer keeps no momentum ({', '.join(keys)}); use SGD "
                                    "with momentum > 0 or Adam/AdamW")
            out.append(v)
        return out

    def perturbation(self, grads: Tensors | None, params: Tensors, rhos: Sequence[float]) -> list[torch.Tensor]:
        """eps = -rho v / ||v|| over the tensors that have a buffer; 0 on those that have none yet (a tensor
        never stepped, e.g. frozen so far); all 0 before the first step."""
        v = self.momentum(params)
        have = [i for i, t in enumerate(v) if t is not None]
        eps = [torch.zeros_like(p) for p in params]
        if have:
            kept = scale_to_rho([-v[i] for i in have], [rhos[i] for i in have], global_norm([v[i] for i in have]))
            for i, e in zip(have, kept):
                eps[i] = e
        return eps


def _esam(kw, schedule):
    from sharplab.optim.selection import SharpestFraction

    gamma = check_number("esam", "gamma", kw["gamma"], 0, 1, lo_open=True)
    return {"rule": ESAMRule(kw["beta"], kw["seed"]), "schedule": schedule,
            "selection": SharpestFraction(gamma) if gamma < 1 else None}


register(Variant("fsam", "Li et al., CVPR 2024, eq. 9", "eps = rho d / ||d||, d = g - sigma m_{t-1} (EMA of g)",
                 build_rule_only(lambda kw: FriendlyRule(kw["sigma"], kw["lmbda"])),
                 {"rho": 0.05, "sigma": 1.0, "lmbda": 0.9}, aliases=("friendly-sam",), rule=True))
register(Variant("esam", "Du et al., ICLR 2022, sec. 3", "eps = rho/beta (M g)/||M g||, M a random tensor mask; "
                 "gamma < 1: descend on the sharpest fraction gamma of the batch",
                 _esam, {"rho": 0.05, "beta": 0.6, "gamma": 1.0, "seed": None}, passes="< 2",
                 notes="gamma < 1 (data selection) runs only in batch mode: step(inputs=, targets=)", rule=True))
register(Variant("momentum-sam", "Becker et al., arXiv:2401.12033, 2024, eq. 4",
                 "eps = -rho v / ||v||, v the base optimizer's momentum (no ascent pass)",
                 build_rule_only(lambda kw: MomentumRule(kw["buffer"])), {"rho": 0.3, "buffer": None},
                 passes="1", rule=True))
