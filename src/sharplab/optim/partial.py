"""SAM in part: on the last layer only (LSAM), or one of its two mechanisms only (IW-only, LR-only).

Springer, Nagarajan & Raghunathan, *Sharpness-Aware Minimization Enhances Feature Quality via Balanced
Learning*, ICLR 2024 (arXiv:2405.20439), Sec. 4. With the
phantom ``w~ = w + eps`` (``eps = rho g / ||g||``) the SAM gradient factors as
``grad L(w~) = J(w~)^T dl/df(w~)``:

* ``lsam``: eps on the final linear layer only (:func:`~sharplab.optim.last_layer_params`, found on the
  ``model=`` given to :func:`~sharplab.optim.create`); the features stay at w;
* ``iw-only``: importance weighting only, ``g = J(w)^T dl/df(w~)``;
* ``lr-only``: learning-rate scaling only, ``g = J(w~)^T dl/df(w)``.

All three are :class:`~sharplab.optim.SAM` with the plain rule: LSAM sets ``perturb=``, the other two set
``mechanism=``, which runs through :func:`~sharplab.optim.sam_grad` and so only in batch mode
(``step(inputs=, targets=)`` with ``model=`` and ``loss_fn=``).

Example:
    >>> import torch, torch.nn.functional as F
    >>> from sharplab.optim import create
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> opt = create("iw-only", model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model,
    ...              loss_fn=F.cross_entropy)
    >>> loss = opt.step(inputs=torch.randn(8, 4), targets=torch.randint(0, 3, (8,)))
"""

from __future__ import annotations

from typing import Any

from sharplab.errors import SharplabError
from sharplab.optim.registry import Variant, register
from sharplab.optim.rules import SAMRule
from sharplab.optim.subsets import last_layer_params

_PAPER = "Springer et al., ICLR 2024, sec. 4"


def _mechanism(name: str, mechanism: str):
    def build(kw: dict[str, Any], schedule: Any) -> dict[str, Any]:
        if schedule is not None:
            raise SharplabError(f"{name}: schedule= is not supported (the mechanism variants run through sam_grad, "
                                "which ascends every step)")
        return {"rule": SAMRule(), "mechanism": mechanism}

    return build


register(Variant("lsam", _PAPER + ".3", "eps = rho g_head / ||g_head|| on the final linear layer only (needs model=)",
                 lambda kw, schedule: {"rule": SAMRule(), "schedule": schedule, "perturb": last_layer_params},
                 {"rho": 0.05}, aliases=("last-layer-sam",)))
register(Variant("iw-only", _PAPER, "g = J(w)^T dl/df(w + eps): SAM's importance weighting only",
                 _mechanism("iw-only", "iw_only"), {"rho": 0.05}, paths=("batch",),
                 notes="with model= and loss_fn="))
register(Variant("lr-only", _PAPER, "g = J(w + eps)^T dl/df(w): SAM's learning-rate scaling only",
                 _mechanism("lr-only", "lr_only"), {"rho": 0.05}, paths=("batch",),
                 notes="with model= and loss_fn="))
