"""``create(name, params, base_optimizer, **kwargs)``: the SAM family by name, like timm's optimizer factory.

Keyword names follow each paper's symbols; everything not listed goes to :class:`FamilySAM` / :class:`SAM`
(``model=``, ``loss_fn=``, ``bn_policy=``, ``perturb=``, ``schedule=``) or to the base optimizer (``lr``,
``momentum``, ``weight_decay``, ...).

==========  ============================================  =================================  ==============
name        keywords (default)                            composition                        extra passes
==========  ============================================  =================================  ==============
``sam``     rho (0.05)                                    SAMRule                            1
``asam``    rho (0.5), eta (0.01), scaled (None = all)    ASAMRule                           1
``usam``    rho (0.05)                                    USAMRule                           1
``gsam``    rho (0.05 = rho_max), rho_min (0.0),          SAMRule + GSAM + LRTied schedule   1
            alpha (0.4)
``fsam``    rho (0.05), sigma (1.0), lmbda (0.9)          FriendlyRule                       1
``looksam`` rho (0.1), k (5), alpha (0.7),                SAMRule + LookSAM + every k        1/k
            layerwise (False)
``esam``    rho (0.05), beta (0.6), gamma (1.0)           ESAMRule [+ SharpestFraction]      < 1
``wsam``    rho (0.05), gamma (0.9), decouple (True)      SAMRule + WSAM                     1
``msam``    rho (0.3)                                     MomentumRule                       0
==========  ============================================  =================================  ==============

Example:
    >>> import torch
    >>> from sharplab.optim import create
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = create("gsam", model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.3, lr=0.1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sharplab.errors import SharplabError
from sharplab.optim.combiners import GSAM, WSAM, LookSAM
from sharplab.optim.family import FamilySAM
from sharplab.optim.rules import ASAMRule
from sharplab.optim.schedules import Constant, LRTied, Schedule
from sharplab.optim.selection import SharpestFraction
from sharplab.optim.variants import ESAMRule, FriendlyRule, MomentumRule


def _pop(kwargs: dict, **defaults: Any) -> list[Any]:
    return [kwargs.pop(k, v) for k, v in defaults.items()]


def _sam(kw):
    return {}


def _asam(kw):
    rho, eta, scaled = _pop(kw, rho=0.5, eta=0.01, scaled=None)
    return {"rho": rho, "rule": ASAMRule(eta=eta, scaled=scaled)}


def _usam(kw):
    return {"rule": "usam"}


def _gsam(kw):
    rho_min, alpha = _pop(kw, rho_min=0.0, alpha=0.4)
    sched = kw.pop("schedule", None) or Schedule(rho=LRTied(rho_min=rho_min))
    return {"combiner": GSAM(alpha), "schedule": sched}


def _fsam(kw):
    sigma, lmbda = _pop(kw, sigma=1.0, lmbda=0.9)
    return {"rule": FriendlyRule(sigma, lmbda)}


def _looksam(kw):
    rho, k, alpha, layerwise = _pop(kw, rho=0.1, k=5, alpha=0.7, layerwise=False)
    rho_sched = kw.pop("schedule", None)
    return {"rho": rho, "combiner": LookSAM(alpha, layerwise),
            "schedule": Schedule(every=k, rho=rho_sched.rho if rho_sched else Constant())}


def _esam(kw):
    beta, gamma, seed = _pop(kw, beta=0.6, gamma=1.0, seed=None)
    return {"rule": ESAMRule(beta, seed), "selection": SharpestFraction(gamma) if gamma < 1 else None}


def _wsam(kw):
    gamma, decouple = _pop(kw, gamma=0.9, decouple=True)
    return {"combiner": WSAM(gamma, decouple)}


def _msam(kw):
    rho, buffer = _pop(kw, rho=0.3, buffer=None)
    return {"rho": rho, "rule": MomentumRule(buffer)}


BUILDERS: dict[str, Callable[[dict], dict]] = {
    "sam": _sam, "asam": _asam, "usam": _usam, "gsam": _gsam, "fsam": _fsam,
    "looksam": _looksam, "esam": _esam, "wsam": _wsam, "msam": _msam,
}


def create(name: str, params: Iterable[Any] | None, base_optimizer: Any = torch.optim.SGD,
           **kwargs: Any) -> FamilySAM:
    """The SAM variant ``name`` (see the module table) around ``base_optimizer``; a ``torch.optim.Optimizer``
    with ``step(closure)``."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in BUILDERS:
        raise SharplabError(f"unknown SAM variant {name!r}; choose one of: {', '.join(BUILDERS)}")
    kw = dict(kwargs)
    parts = BUILDERS[key](kw)
    kw.setdefault("rho", parts.pop("rho", 0.05))
    parts.pop("rho", None)
    return FamilySAM(params, base_optimizer, **parts, **kw)
