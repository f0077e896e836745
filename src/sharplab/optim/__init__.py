"""The SAM optimizer family.

* :class:`SAM` -- drop-in optimizer wrapping any base optimizer (``step(closure)``).
* :func:`sam_grad` -- functional form: fills ``.grad`` with a SAM gradient; m-sharpness (vectorised
  1-SAM), last-layer SAM (``perturb=``), mechanism-isolating variants (``iw_only``, ``lr_only``).
* Perturbation rules (:mod:`sharplab.optim.rules`): ``sam``, ``usam``, ``asam``, ``random``, and
  :class:`MultiStep` ascent; :mod:`sharplab.optim.variants`: ``fsam``, ``esam``, ``msam``.
* The wider family by composition (:class:`FamilySAM`): combiners (GSAM, WSAM, LookSAM), schedules
  (every k, from step k, rho schedules), ESAM's data selection; :func:`create` builds them by name.
"""

from sharplab.optim.combiners import GSAM, WSAM, Combiner, LookSAM
from sharplab.optim.factory import create
from sharplab.optim.family import FamilySAM
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
    weights_only,
)
from sharplab.optim.sam import SAM
from sharplab.optim.schedules import Constant, Cosine, Linear, LRTied, Schedule
from sharplab.optim.selection import SharpestFraction
from sharplab.optim.subsets import last_layer_params
from sharplab.optim.variants import ESAMRule, FriendlyRule, MomentumRule

__all__ = [
    "GSAM",
    "WSAM",
    "Combiner",
    "Constant",
    "Cosine",
    "ESAMRule",
    "FamilySAM",
    "FriendlyRule",
    "LRTied",
    "Linear",
    "LookSAM",
    "MomentumRule",
    "Schedule",
    "SharpestFraction",
    "create",
    "weights_only",
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
