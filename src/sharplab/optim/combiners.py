r"""Combiners: how the descent gradient is formed from g = grad L(w) and g_s = grad L(w + eps).

===============  ==================================================================  ===============================
combiner         descent gradient                                                     reference
===============  ==================================================================  ===============================
``SAMCombiner``  g_s                                                                  Foret et al., ICLR 2021
``GSAM(alpha)``  g_s - alpha g_perp,  g_perp = g - (g . g_s / ||g_s||^2) g_s           Zhuang et al., ICLR 2022, Alg. 1
``WSAM(gamma)``  g + gamma/(1-gamma) (g_s - g)  (decoupled: base on g, then the rest)  Yue et al., KDD 2023, Alg. 1
``LookSAM``      ascent steps: g_s, and g_v = g_s - ||g_s|| cos(g, g_s) g/||g|| kept;    Liu et al., CVPR 2022, Alg. 1
                 other steps: g + alpha ||g|| / ||g_v|| g_v  (no ascent pass)
===============  ==================================================================  ===============================

Inner products and norms are global over the perturbed tensors. A combiner edits the tensors in
``.grad`` in place; ``after_step`` runs after the base optimizer (WSAM's decoupled sharpness term).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sharplab.errors import SharplabError
from sharplab.optim.rules import NORM_EPS, global_norm

Tensors = Sequence[torch.Tensor]


def _dot(a: Tensors, b: Tensors) -> torch.Tensor:
    return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros(()))


class Combiner:
    """Plain SAM: the descent gradient is g_s. Subclasses override what they change."""

    name = "sam"
    #: Whether SAM must keep a copy of g = grad L(w) for :meth:`combine`.
    needs_g: bool = False

    def combine(self, g: Tensors | None, gs: list[torch.Tensor], params: Tensors) -> None:
        """Turn ``gs`` (the tensors in ``.grad``, at w + eps) into the descent gradient, in place."""

    def between(self, g: list[torch.Tensor], params: Tensors) -> None:
        """On steps the schedule runs without an ascent: edit g (at w) in place (default: unchanged)."""

    def after_step(self, params: Tensors, lrs: Sequence[float]) -> None:
        """Called after the base optimizer's step on ascent steps."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


SAMCombiner = Combiner


class GSAM(Combiner):
    r"""Surrogate-gap guided SAM (Zhuang et al., *Surrogate Gap Minimization Improves Sharpness-Aware
    Training*, ICLR 2022, Algorithm 1).

    With g_s the gradient at w + eps (the perturbed loss f_p) and g the gradient at w, g is split into
    its parts parallel and orthogonal to g_s; descending along -g_perp raises f but lowers the
    surrogate gap h = f_p - f without changing f_p to first order:

    .. math::
        g_\perp = g - \frac{g\cdot g_s}{\|g_s\|^2} g_s,\qquad d = g_s - \alpha\, g_\perp .

    GSAM ties rho to the learning rate (``schedules.LRTied``; :func:`sharplab.optim.create` sets it up
    with ``rho_min``). Same decomposition as pytorch_optimizer's ``GSAM.gradient_decompose``.

    Args:
        alpha: weight of the surrogate-gap term (0.4 in pytorch_optimizer; the paper tunes 0.01 - 0.3
            on ImageNet).
    """

    name = "gsam"
    needs_g = True

    def __init__(self, alpha: float = 0.4) -> None:
        if not 0 <= alpha <= 1:
            raise SharplabError(f"GSAM alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def combine(self, g, gs, params):
        coef = _dot(g, gs) / (_dot(gs, gs) + NORM_EPS)
        for gi, si in zip(g, gs):
            si.sub_(gi - coef.to(si) * si, alpha=self.alpha)


class WSAM(Combiner):
    r"""Weighted SAM (Yue et al., *Sharpness-Aware Minimization Revisited: Weighted Sharpness as a
    Regularization Term*, KDD 2023).

    Minimises L(w) + gamma/(1-gamma) (L(w + eps) - L(w)); with a = gamma / (1 - gamma):

    .. math:: d = g + a (g_s - g)\quad\text{(coupled)};\qquad
              w \leftarrow \mathrm{base}(w, g) - \eta\, a\, (g_s - g)\quad\text{(decoupled, default)} .

    The decoupled form (the paper's Algorithm 1, and pytorch_optimizer's default) keeps the
    sharpness term out of the base optimizer's moments, like decoupled weight decay. gamma = 1/2 is SAM.

    Args:
        gamma: sharpness weight in [0, 1) (0.9 in pytorch_optimizer; the paper tunes 0.8 - 0.95).
        decouple: apply the sharpness term after the base step with the group's lr.
    """

    name = "wsam"
    needs_g = True

    def __init__(self, gamma: float = 0.9, decouple: bool = True) -> None:
        if not 0 <= gamma < 1:
            raise SharplabError(f"WSAM gamma must be in [0, 1), got {gamma}")
        self.gamma, self.decouple = gamma, decouple
        self.a = gamma / (1 - gamma)
        self._sharp: list[torch.Tensor] | None = None

    def combine(self, g, gs, params):
        if self.decouple:
            self._sharp = [si - gi for gi, si in zip(g, gs)]
            for gi, si in zip(g, gs):
                si.copy_(gi)
        else:
            for gi, si in zip(g, gs):
                si.sub_(gi).mul_(self.a).add_(gi)

    def after_step(self, params, lrs):
        if self._sharp is not None:
            with torch.no_grad():
                for p, s, lr in zip(params, self._sharp, lrs):
                    p.add_(s, alpha=-lr * self.a)
            self._sharp = None


class LookSAM(Combiner):
    r"""LookSAM (Liu et al., *Towards Efficient and Scalable Sharpness-Aware Minimization*, CVPR 2022,
    Algorithm 1). Run it with a schedule that ascends every k steps (``Schedule(every=k)``).

    On ascent steps the part of g_s orthogonal to g is kept; on the k - 1 steps between, only g is
    computed and the kept direction is added back, rescaled to the current gradient norm:

    .. math::
        g_v = g_s - \|g_s\| \cos(g, g_s) \frac{g}{\|g\|},\qquad
        d = g + \alpha \frac{\|g\|}{\|g_v\|} g_v .

    Args:
        alpha: weight of the reused component (0.7 in the paper and pytorch_optimizer).
        layerwise: per-tensor norms and cosines as in pytorch_optimizer's ``LookSAM`` (default: global,
            as the paper's vectors).
    """

    name = "looksam"
    needs_g = True

    def __init__(self, alpha: float = 0.7, layerwise: bool = False) -> None:
        if not 0 < alpha < 1:
            raise SharplabError(f"LookSAM alpha must be in (0, 1), got {alpha}")
        self.alpha, self.layerwise = alpha, layerwise
        self.gv: list[torch.Tensor] | None = None

    def combine(self, g, gs, params):
        groups = [[i] for i in range(len(gs))] if self.layerwise else [list(range(len(gs)))]
        gv = [torch.empty(0)] * len(gs)
        for idx in groups:
            a, b = [g[i] for i in idx], [gs[i] for i in idx]
            na, nb = global_norm(a), global_norm(b)
            cos = _dot(a, b) / (torch.clamp(na, min=NORM_EPS) * torch.clamp(nb, min=NORM_EPS))
            for i in idx:
                gv[i] = gs[i] - (nb * cos / torch.clamp(na, min=NORM_EPS)).to(gs[i]) * g[i]
        self.gv = [t.detach().clone() for t in gv]

    def between(self, g, params):
        if self.gv is None or len(self.gv) != len(g):
            return
        groups = [[i] for i in range(len(g))] if self.layerwise else [list(range(len(g)))]
        for idx in groups:
            ng, nv = global_norm([g[i] for i in idx]), global_norm([self.gv[i] for i in idx])
            scale = self.alpha * ng / (nv + 1e-8)
            for i in idx:
                g[i].add_(scale.to(g[i]) * self.gv[i])

    def state_dict(self) -> dict:
        return {} if self.gv is None else {"gv": [t.clone() for t in self.gv]}

    def load_state_dict(self, state: dict) -> None:
        self.gv = [t.clone() for t in state["gv"]] if "gv" in state else None
