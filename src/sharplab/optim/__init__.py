"""The SAM optimizer family: one engine, its parts, one registry.

* :class:`SAM` -- the drop-in optimizer around any base optimizer: ``step(closure)``,
  ``first_step()`` / ``second_step()``, ``step(inputs=, targets=)``; every member is SAM with its parts.
* Parts: perturbation rules (:mod:`~sharplab.optim.rules`: ``sam``, ``usam``, ``asam``, ``random``,
  :class:`MultiStep`; :mod:`~sharplab.optim.variants`: ``fsam``, ``esam``, ``momentum-sam``), combiners (GSAM,
  WSAM, LookSAM), schedules (every k, from step k, rho schedules), ESAM's data selection; SAM in part
  (:mod:`~sharplab.optim.partial`: ``lsam``, ``iw-only``, ``lr-only``); n-SAM's ascent from the previous
  batch (:mod:`~sharplab.optim.nsam`).
* :func:`create` builds a member by name; :func:`available` lists the registry (names, aliases, defaults).
* :func:`sam_grad` -- functional form: fills ``.grad`` with a SAM gradient; m-sharpness (vectorised
  1-SAM), last-layer SAM (``perturb=``), mechanism-isolating variants (``iw_only``, ``lr_only``).
"""

from sharplab.optim import nsam, partial  # noqa: F401  (register nsam; lsam, iw-only, lr-only)
from sharplab.optim.combiners import GSAM, WSAM, Combiner, LookSAM
from sharplab.optim.factory import create
from sharplab.optim.functional import MECHANISMS, sam_grad
from sharplab.optim.registry import available
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
    "MECHANISMS",
    "RULES",
    "SAM",
    "WSAM",
    "ASAMRule",
    "Combiner",
    "Constant",
    "Cosine",
    "ESAMRule",
    "FriendlyRule",
    "LRTied",
    "Linear",
    "LookSAM",
    "MomentumRule",
    "MultiStep",
    "PerturbationRule",
    "RandomRule",
    "SAMRule",
    "Schedule",
    "SharpestFraction",
    "USAMRule",
    "available",
    "create",
    "last_layer_params",
    "make_rule",
    "sam_grad",
    "weights_only",
]
