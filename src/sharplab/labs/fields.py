"""The optimizer fields of every lab's config, with their bounds written once.

Each lab's frozen config dataclass declares the fields it trains with (``lr``, ``momentum``,
``weight_decay``, ``rho``) through these factories: the lab chooses the default and the help text, the bounds
are the same everywhere and are checked when a study file or ``--set`` is loaded
(:func:`sharplab.runner.validation.check_value`), so a bad value fails at load with one line naming the field,
never at run time:

* ``lr`` > 0 (a zero step size trains nothing) and finite;
* ``momentum`` in [0, 0.999] (heavy-ball momentum 1 never forgets a gradient: the iterates do not settle);
* ``weight_decay`` >= 0;
* ``rho`` >= 0 (rho = 0 is the plain step).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

LR_BOUNDS: dict[str, Any] = {"gt": 0.0, "max": 1e6}
MOMENTUM_BOUNDS: dict[str, Any] = {"min": 0.0, "max": 0.999}
WEIGHT_DECAY_BOUNDS: dict[str, Any] = {"min": 0.0}
RHO_BOUNDS: dict[str, Any] = {"min": 0.0}


def _field(default: float, help: str, bounds: dict[str, Any], **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **bounds, **meta})


def lr_field(default: float, help: str = "learning rate", **meta: Any) -> Any:
    """A learning-rate field: > 0."""
    return _field(default, help, LR_BOUNDS, **meta)


def momentum_field(default: float = 0.9, help: str = "SGD momentum", **meta: Any) -> Any:
    """A heavy-ball momentum field: in [0, 0.999]."""
    return _field(default, help, MOMENTUM_BOUNDS, **meta)


def weight_decay_field(default: float = 5e-4, help: str = "coupled L2 weight decay of SGD", **meta: Any) -> Any:
    """A weight-decay field: >= 0."""
    return _field(default, help, WEIGHT_DECAY_BOUNDS, **meta)


def rho_field(default: float, help: str = "SAM radius", **meta: Any) -> Any:
    """A perturbation-radius field: >= 0."""
    return _field(default, help, RHO_BOUNDS, **meta)
