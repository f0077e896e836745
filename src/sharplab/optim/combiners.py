r"""Combiners: how the descent gradient is formed from g = grad L(w) and g_s = grad L(w + eps).

===============  ==================================================================  ===============================
combiner         descent gradient                                                     reference
===============  ==================================================================  ===============================
``Combiner``     g_s  (the plain combiner, the default)                               Foret et al., ICLR 2021
``GSAM(alpha)``  g_s - alpha g_perp,  g_perp = g - (g . g_s / ||g_s||^2) g_s           Zhuang et al., ICLR 2022, Alg. 1
``WSAM(gamma)``  g + gamma/(1-gamma) (g_s - g)  (decoupled: base on g, then the rest)  Yue et al., KDD 2023, Alg. 1
``LookSAM``      ascent steps: g_s, and g_v = g_s - ||g_s|| cos(g, g_s) g/||g|| kept;    Liu et al., CVPR 2022, Alg. 1
                 other steps: g + alpha ||g|| / ||g_v|| g_v  (no ascent pass)
===============  ==================================================================  ===============================

Inner products and norms are global over the perturbed tensors that have a gradient in both passes
(conjugated for complex tensors, so they are the real inner product of the underlying real vectors). A
combiner edits the tensors in ``.grad`` in place; ``after_step`` runs after the base optimizer (WSAM's
decoupled sharpness term).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sharplab.errors import SharplabError
from sharplab.optim.registry import Variant, check_int, check_number, register
from sharplab.optim.rules import NORM_EPS, SAMRule, global_norm
from sharplab.optim.schedules import Constant, LRTied, Schedule

Tensors = Sequence[torch.Tensor]


def _dot(a: Tensors, b: Tensors) -> torch.Tensor:
    """Re <a, b> = sum_i Re(conj(a_i) b_i): the Euclidean inner product, also for complex tensors."""
    total = torch.zeros((), dtype=torch.float64 if any(t.dtype == torch.float64 for t in a) else torch.float32)
    for x, y in zip(a, b):
        prod = (x.conj() * y).sum() if x.is_complex() else (x * y).sum()
        total = total.to(prod.device) + (prod.real if prod.is_complex() else prod)
    return total


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

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Called by SAM with its base optimizer (combiners that keep per-parameter state use its order)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


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
        self.alpha = check_number("gsam", "alpha", alpha, 0, 1)

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
        self.gamma = check_number("wsam", "gamma", gamma, 0, 1, hi_open=True)
        self.decouple = bool(decouple)
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
        self.alpha = check_number("looksam", "alpha", alpha, 0, 1, lo_open=True, hi_open=True)
        self.layerwise = bool(layerwise)
        self.gv: dict[int, torch.Tensor] = {}  # id(param) -> kept component g_v
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def _groups(self, n: int) -> list[list[int]]:
        return [[i] for i in range(n)] if self.layerwise else [list(range(n))]

    def combine(self, g, gs, params):
        for idx in self._groups(len(gs)):
            a, b = [g[i] for i in idx], [gs[i] for i in idx]
            na, nb = global_norm(a), global_norm(b)
            cos = _dot(a, b) / (torch.clamp(na, min=NORM_EPS) * torch.clamp(nb, min=NORM_EPS))
            for i in idx:
                self.gv[id(params[i])] = (gs[i] - (nb * cos / torch.clamp(na, min=NORM_EPS)).to(gs[i]) * g[i]).detach()

    def between(self, g, params):
        """d = g + alpha ||g|| / ||g_v|| g_v; a tensor with no kept component yet (added since the last
        ascent) counts as g_v = 0."""
        if not self.gv:
            return
        gv = [self.gv.get(id(p)) for p in params]
        for idx in self._groups(len(g)):
            kept = [i for i in idx if gv[i] is not None]
            if not kept:
                continue
            ng, nv = global_norm([g[i] for i in idx]), global_norm([gv[i] for i in kept])
            scale = self.alpha * ng / (nv + 1e-8)
            for i in kept:
                g[i].add_(scale.to(g[i]) * gv[i])

    def _params(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            raise SharplabError("LookSAM's state needs its optimizer: use it through SAM(...) or create('looksam')")
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """``{"gv": {position: g_v}}``, positions in the optimizer's parameter order."""
        if not self.gv:
            return {}
        return {"gv": {i: self.gv[id(p)].clone() for i, p in enumerate(self._params()) if id(p) in self.gv}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("gv", {})
        params = self._params() if saved else []
        self.gv = {id(params[int(i)]): t.clone() for i, t in saved.items()}


def merge_schedule(variant: str, user: Schedule | None, *, every: int | None = None,
                   rho: object | None = None) -> Schedule:
    """The variant's own schedule parts (``every``, a rho schedule) merged with the user's ``schedule=``.

    The user's ``start`` is always kept; ``every`` and the rho schedule are taken from whichever side sets
    them (not the default); both sides setting one of them is refused, naming the variant and the part.
    """
    user = user or Schedule()
    if not isinstance(user, Schedule):
        raise SharplabError(f"{variant}: schedule must be a sharplab.optim.Schedule, got {type(user).__name__}")
    if every is not None and user.every not in (1, every):
        raise SharplabError(f"{variant}: schedule=Schedule(every={user.every}) conflicts with the variant's own "
                            f"k={every}; give k= (or every= in the schedule with k left out), not both")
    if rho is not None and not isinstance(user.rho, Constant):
        raise SharplabError(f"{variant}: the variant sets its own rho schedule ({type(rho).__name__}); a schedule= "
                            "with a rho schedule cannot be merged: give its every/start only")
    return Schedule(every=every if every is not None else user.every, start=user.start,
                    rho=rho if rho is not None else user.rho)


def _gsam(kw, schedule):
    lr_max = kw["lr_max"]
    tied = LRTied(rho_min=check_number("gsam", "rho_min", kw["rho_min"], 0), lr_min=kw["lr_min"],
                  lr_max=None if lr_max is None else check_number("gsam", "lr_max", lr_max, 0, lo_open=True))
    return {"rule": SAMRule(), "combiner": GSAM(kw["alpha"]), "schedule": merge_schedule("gsam", schedule, rho=tied)}


def _looksam(kw, schedule):
    k = check_int("looksam", "k", kw["k"], 1)
    return {"rule": SAMRule(), "combiner": LookSAM(kw["alpha"], kw["layerwise"]),
            "schedule": merge_schedule("looksam", schedule, every=k)}


register(Variant("gsam", "Zhuang et al., ICLR 2022, Alg. 1",
                 "d = g_s - alpha g_perp (g's part orthogonal to g_s); rho_t tied to lr_t",
                 _gsam, {"rho": 0.05, "rho_min": 0.0, "alpha": 0.4, "lr_max": None, "lr_min": 0.0},
                 aliases=("surrogate-gap-sam",)))
register(Variant("wsam", "Yue et al., KDD 2023, Alg. 1",
                 "d = g + gamma/(1-gamma) (g_s - g), sharpness term decoupled from the base step",
                 lambda kw, schedule: {"rule": SAMRule(), "combiner": WSAM(kw["gamma"], kw["decouple"]),
                                       "schedule": schedule},
                 {"rho": 0.05, "gamma": 0.9, "decouple": True}, aliases=("weighted-sam",)))
register(Variant("looksam", "Liu et al., CVPR 2022, Alg. 1",
                 "ascend every k steps; between, d = g + alpha ||g||/||g_v|| g_v (g_v kept from the last ascent)",
                 _looksam, {"rho": 0.1, "k": 5, "alpha": 0.7, "layerwise": False}, passes="1 + 1/k",
))
