"""n-SAM: the ascent direction from a different batch than the descent step.

Andriushchenko & Flammarion, *Towards Understanding Sharpness-Aware Minimization*, ICML 2022, sec. 2: n-SAM
maximises the loss of all n training points with one perturbation, which on a deep network would need a
full-batch gradient per step. The official code (``deep_nets/train.py``, ``--sam_use_prev_batch``, commented
"MaxSum SAM") takes the ascent gradient from the *previous* batch instead, so the perturbation no longer
depends on the examples it is applied to (what separates n-SAM from m-SAM):

    eps_t = rho g' / ||g'||,   g' = grad L_{B_{t-1}}(w_t),     w_{t+1} = base(w_t, grad L_{B_t}(w_t + eps_t))

It is :class:`~sharplab.optim.SAM` with the plain rule and ``ascent_batch="previous"``: batch mode only
(``step(inputs=, targets=)`` with ``model=`` and ``loss_fn=``), the first step uses its own batch, the kept
batch is part of ``state_dict()``, and w is restored from saved copies after the descent pass, as for every
member. ``step`` returns this batch's loss at w + eps (the loss at w is of the previous batch).

Example:
    >>> import torch, torch.nn.functional as F
    >>> from sharplab.optim import create
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = create("nsam", model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model,
    ...              loss_fn=F.cross_entropy)
    >>> loss = opt.step(inputs=torch.randn(8, 4), targets=torch.randint(0, 3, (8,)))
"""

from __future__ import annotations

from sharplab.optim.registry import Variant, register
from sharplab.optim.rules import SAMRule

register(Variant("nsam", "Andriushchenko & Flammarion, ICML 2022, sec. 2 (official --sam_use_prev_batch)",
                 "eps = rho g' / ||g'||, g' = grad L(w) on the previous batch",
                 lambda kw, schedule: {"rule": SAMRule(), "schedule": schedule, "ascent_batch": "previous"},
                 {"rho": 0.05}, aliases=("n-sam",), paths=("batch",), notes="with model= and loss_fn="))
