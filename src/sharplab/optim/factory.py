"""``create(name, params, base_optimizer, **kwargs)``: the SAM family by name, like timm's optimizer factory.

Every name, alias, keyword and default comes from the one registry (:mod:`sharplab.optim.registry`, each
variant declared next to its code); ``sharplab.optim.available()`` and ``sharplab optim list`` show it.
A keyword is the variant's own (its paper's symbol), one of :class:`~sharplab.optim.SAM`'s options
(``model=``, ``loss_fn=``, ``bn_policy=``, ``perturb=``, ``schedule=``, ...) or an argument of the base
optimizer (``lr``, ``momentum``, ``weight_decay``, ...); anything else is refused, naming the variant and
the keywords it takes. A user ``schedule=`` is merged with the variant's own parts (LookSAM's every-k,
GSAM's lr-tied radius) or refused where both set the same part.

Example:
    >>> import torch
    >>> from sharplab.optim import create
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = create("gsam", model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.3, lr=0.1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sharplab.errors import SharplabError
from sharplab.optim import registry
from sharplab.optim._drive import SAM_OPTIONS, arguments
from sharplab.optim.sam import SAM

#: SAM options that a variant's build sets itself (a user value would be overridden: refused instead).
_PARTS = ("rule", "combiner", "selection", "adaptive")


def create(name: str, params: Iterable[Any] | None, base_optimizer: Any = torch.optim.SGD,
           **kwargs: Any) -> SAM:
    """The SAM variant ``name`` around ``base_optimizer``: a ``torch.optim.Optimizer`` with ``step(closure)``,
    ``first_step()`` / ``second_step()`` and (with ``model=``, ``loss_fn=``) ``step(inputs=, targets=)``."""
    variant = registry.get(name)
    own = {k: kwargs.pop(k) for k in list(kwargs) if k in variant.defaults}
    for k in kwargs:
        if k in _PARTS:
            raise SharplabError(f"{variant.name}: {k}= is set by the variant itself; build SAM(..., {k}=...) "
                                "directly to choose it")
        if k in SAM_OPTIONS:
            continue
        accepted = None if isinstance(base_optimizer, torch.optim.Optimizer) else arguments(base_optimizer)
        if isinstance(base_optimizer, torch.optim.Optimizer) or (accepted is not None and k not in accepted):
            base_name = getattr(base_optimizer, "__name__", type(base_optimizer).__name__)
            base_part = ("the built base optimizer takes none" if accepted is None
                         else f"{base_name} takes {', '.join(sorted(accepted))}")
            raise SharplabError(
                f"{variant.name}: unknown keyword {k!r}; {variant.name} takes {', '.join(variant.defaults)}; SAM "
                f"takes {', '.join(o for o in SAM_OPTIONS if o not in _PARTS and o != 'rho')}; {base_part}")
    keywords = {**variant.defaults, **own}
    rho = registry.check_rho(keywords.pop("rho"), f"{variant.name}: rho")
    parts = variant.build({**keywords, "rho": rho}, kwargs.pop("schedule", None))
    parts = {k: v for k, v in parts.items() if v is not None}
    for k in parts:
        if k in kwargs:
            raise SharplabError(f"{variant.name}: {k}= is set by the variant itself; build SAM(..., {k}=...) "
                                "directly to choose it")
    return SAM(params, base_optimizer, rho=rho, **parts, **kwargs)
