"""The SAM optimizer family.

* :class:`SAM` -- drop-in optimizer wrapping any base optimizer (``step(closure)``).
* :func:`sam_grad` -- functional form: fills ``.grad`` with a SAM gradient; m-sharpness (vectorised
  1-SAM), last-layer SAM (``perturb=``), mechanism-isolating variants (``iw_only``, ``lr_only``).
* Perturbation rules (:mod:`sharplab.optim.rules`): ``sam``, ``usam``, ``asam``, ``random``, and
  :class:`MultiStep` ascent.
"""

from sharplab.optim.functional import MECHANISMS, sam_grad
from sharplab.optim.rules import (
    RULES,
    ASAMRule,
    MultiStep,
    PerturbationRule,
    RandomRule,
    SAMRule,
    USAMRule,
    make_rule,
)
from sharplab.optim.sam import SAM
from sharplab.optim.subsets import last_layer_params

__all__ = [
    "MECHANISMS",
    "RULES",
    "SAM",
    "ASAMRule",
    "MultiStep",
    "PerturbationRule",
    "RandomRule",
    "SAMRule",
    "USAMRule",
    "last_layer_params",
    "make_rule",
    "sam_grad",
]
