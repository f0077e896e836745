"""Ascent rules of the wider SAM family: Friendly-SAM, ESAM's stochastic weight perturbation, Momentum-SAM.

=========  =====================================================================  =================================
name       eps                                                                    reference
=========  =====================================================================  =================================
``fsam``   rho * d / ||d||,  d = g - sigma m,  m <- lmbda m + (1 - lmbda) g       Li et al., CVPR 2024, eq. (9)
``esam``   rho / beta * (M g) / ||M g||,  M: each tensor kept with prob. beta    Du et al., ICLR 2022, sec. 3.1
``msam``   -rho * v / ||v||,  v the base optimizer's momentum (no extra pass)    Becker et al., 2024, eq. (4)
=========  =====================================================================  =================================

They plug into :class:`~sharplab.optim.SAM` like the rules of :mod:`sharplab.optim.rules`
(``SAM(params, SGD, rule=FriendlyRule(sigma=1.0, lmbda=0.9))``, or by name through
:func:`sharplab.optim.create`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sharplab.errors import SharplabError
from sharplab.optim.rules import RULES, PerturbationRule, Tensors, _scale, global_norm


class FriendlyRule(PerturbationRule):
    r"""Friendly-SAM (Li, Zhou, Zhang & Huang, *Friendly Sharpness-Aware Minimization*, CVPR 2024).

    The full-gradient component of the minibatch gradient barely raises the minibatch loss, so F-SAM
    removes an exponential moving average of past gradients (its estimate) from the ascent direction:

    .. math::
        d_t = g_t - \sigma m_{t-1},\qquad m_t = \lambda m_{t-1} + (1-\lambda) g_t,\qquad
        \epsilon_t = \rho\, d_t / \|d_t\|_2 .

    As in the authors' code (and pytorch_optimizer's ``FriendlySAM``) the EMA starts at the first
    gradient, m_0 = g_0, so the first step is a plain SAM step.

    Args:
        sigma: weight of the removed component (1.0 in the paper).
        lmbda: EMA decay lambda (0.9 in the paper; 0.95 on ImageNet-scale runs).
    """

    name = "fsam"
    stateful = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9) -> None:
        if sigma < 0 or not 0 <= lmbda < 1:
            raise SharplabError(f"Friendly-SAM needs sigma >= 0 and 0 <= lmbda < 1, got sigma={sigma}, lmbda={lmbda}")
        self.sigma, self.lmbda = sigma, lmbda
        self.ema: list[torch.Tensor] | None = None

    def perturbation(self, grads, params, rhos):
        if self.ema is None or len(self.ema) != len(grads):
            self.ema = [g.detach().clone() for g in grads]
            direction = list(grads)
        else:
            direction = [g - self.sigma * m for g, m in zip(grads, self.ema)]
            for m, g in zip(self.ema, grads):
                m.mul_(self.lmbda).add_(g, alpha=1 - self.lmbda)
        return _scale(direction, rhos, global_norm(direction), of_norm=True)

    def state_dict(self) -> dict:
        return {} if self.ema is None else {"ema": [m.clone() for m in self.ema]}

    def load_state_dict(self, state: dict) -> None:
        self.ema = [m.clone() for m in state["ema"]] if "ema" in state else None


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
        if not 0 < beta <= 1:
            raise SharplabError(f"ESAM beta must be in (0, 1], got {beta}")
        self.beta = beta
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
        mask = self.mask if self.mask is not None and len(self.mask) == len(grads) else [True] * len(grads)
        kept = [g if keep else torch.zeros_like(g) for g, keep in zip(grads, mask)]
        return _scale(kept, [r / self.beta for r in rhos], global_norm(kept), of_norm=True)

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

    Args:
        buffer: the state key of the base optimizer's momentum (default: ``momentum_buffer`` or ``exp_avg``,
            whichever the optimizer keeps).
    """

    name = "msam"
    needs_grad = False

    def __init__(self, buffer: str | None = None) -> None:
        self.buffer = buffer
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def momentum(self, params: Tensors) -> list[torch.Tensor] | None:
        """The base optimizer's momentum for ``params`` (None before its first step)."""
        if self.optimizer is None:
            raise SharplabError("Momentum-SAM needs the base optimizer: use it through SAM(...) or create('msam', ...)")
        out = []
        for p in params:
            state = self.optimizer.state.get(p, {})
            keys = [self.buffer] if self.buffer else ["momentum_buffer", "exp_avg"]
            v = next((state[k] for k in keys if state.get(k) is not None), None)
            if v is None:
                if state:
                    raise SharplabError(f"Momentum-SAM: the base optimizer keeps no momentum ({', '.join(keys)}); "
                                        "use SGD with momentum > 0 or Adam/AdamW")
                return None
            out.append(v)
        return out

    def perturbation(self, grads: Tensors | None, params: Tensors, rhos: Sequence[float]) -> list[torch.Tensor]:
        v = self.momentum(params)
        if v is None:
            return [torch.zeros_like(p) for p in params]
        return _scale([-t for t in v], rhos, global_norm(v), of_norm=True)


RULES.add("fsam", FriendlyRule)
RULES.add("esam", ESAMRule)
RULES.add("msam", MomentumRule)
