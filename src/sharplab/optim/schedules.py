r"""When SAM ascends and with which radius: one small :class:`Schedule` object.

``Schedule(every=k, start=s, rho=...)``: step t (counted by SAM from 0) ascends when ``t >= s`` and
``(t - s) % k == 0``; other steps are plain base-optimizer steps (bit-identical to it) unless the combiner
reuses something between ascents (LookSAM). The radius of each param group is ``rho_t = rho(t, rho, lr)``
with the group's ``rho`` and current ``lr``:

=====================  =================================================================  ================
rho schedule           rho_t                                                              use
=====================  =================================================================  ================
``Constant()``         rho                                                                SAM
``Linear(a, b, T)``    rho (a + (b - a) min(t, T) / T)                                    warm-up / decay
``Cosine(a, b, T)``    rho (b + (a - b) (1 + cos(pi min(t, T) / T)) / 2)                  decay
``LRTied(rho_min)``    rho_min + (rho - rho_min) (lr - lr_min) / (lr_max - lr_min)        GSAM (Zhuang 2022)
=====================  =================================================================  ================

``LRTied``'s lr_max is the schedule's peak: the explicit ``lr_max=``, else the group's ``initial_lr`` (what
every ``torch.optim.lr_scheduler`` records, the base lr a warm-up climbs to), else the group's lr at the
first step (a constant lr). rho_t is clamped to [rho_min, rho], so a warm-up from lr = 0 gives rho_min and
never a negative radius (Zhuang et al., ICLR 2022, sec. 5: rho_t = rho_min + (rho_max - rho_min)
(lr_t - lr_min) / (lr_max - lr_min)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sharplab.errors import SharplabError
from sharplab.optim.registry import check_int, check_number


class RhoSchedule:
    """rho_t from the step, the group's rho and lr (and the scheduler's ``initial_lr`` when there is one)."""

    def __call__(self, step: int, rho: float, lr: float, group: int = 0, initial_lr: float | None = None) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Constant(RhoSchedule):
    def __call__(self, step, rho, lr, group=0, initial_lr=None):
        return rho


@dataclass
class Linear(RhoSchedule):
    start: float = 0.0
    end: float = 1.0
    steps: int = 1000

    def __post_init__(self) -> None:
        check_int("Linear rho schedule", "steps", self.steps, 1)
        check_number("Linear rho schedule", "start", self.start, 0)
        check_number("Linear rho schedule", "end", self.end, 0)

    def __call__(self, step, rho, lr, group=0, initial_lr=None):
        return rho * (self.start + (self.end - self.start) * min(step, self.steps) / self.steps)


@dataclass
class Cosine(RhoSchedule):
    start: float = 1.0
    end: float = 0.0
    steps: int = 1000

    def __post_init__(self) -> None:
        check_int("Cosine rho schedule", "steps", self.steps, 1)
        check_number("Cosine rho schedule", "start", self.start, 0)
        check_number("Cosine rho schedule", "end", self.end, 0)

    def __call__(self, step, rho, lr, group=0, initial_lr=None):
        frac = min(step, self.steps) / self.steps
        return rho * (self.end + (self.start - self.end) * (1 + math.cos(math.pi * frac)) / 2)


@dataclass
class LRTied(RhoSchedule):
    rho_min: float = 0.0
    lr_min: float = 0.0
    lr_max: float | None = None
    _lr_max: dict[int, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_number("LRTied", "rho_min", self.rho_min, 0)
        check_number("LRTied", "lr_min", self.lr_min, 0)
        if self.lr_max is not None:
            check_number("LRTied", "lr_max", self.lr_max, self.lr_min, lo_open=True)

    def __call__(self, step, rho, lr, group=0, initial_lr=None):
        if self.lr_max is not None:
            top = self.lr_max
        elif initial_lr is not None:
            top = float(initial_lr)
        else:
            top = self._lr_max.setdefault(group, lr)
        if top <= self.lr_min:
            return rho
        t = (lr - self.lr_min) / (top - self.lr_min)
        lo, hi = sorted((self.rho_min, rho))
        return min(max(self.rho_min + (rho - self.rho_min) * t, lo), hi)

    def state_dict(self) -> dict:
        return {"lr_max": dict(self._lr_max)}

    def load_state_dict(self, state: dict) -> None:
        self._lr_max = {int(k): float(v) for k, v in state.get("lr_max", {}).items()}


@dataclass
class Schedule:
    """Ascend every ``every`` steps from step ``start``, with radius schedule ``rho``.

    ``Schedule.from_epoch(k, steps_per_epoch)`` starts at epoch k (ERM before, SAM after).
    """

    every: int = 1
    start: int = 0
    rho: RhoSchedule = field(default_factory=Constant)

    def __post_init__(self) -> None:
        check_int("Schedule", "every", self.every, 1)
        check_int("Schedule", "start", self.start, 0)
        if not isinstance(self.rho, RhoSchedule):
            raise SharplabError(f"Schedule: rho must be a rho schedule (Constant, Linear, Cosine, LRTied), "
                                f"got {type(self.rho).__name__}")

    @classmethod
    def from_epoch(cls, epoch: int, steps_per_epoch: int, every: int = 1, rho: RhoSchedule | None = None) -> Schedule:
        return cls(every=every, start=epoch * steps_per_epoch, rho=rho or Constant())

    def ascend(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.every == 0

    def radius(self, step: int, rho: float, lr: float, group: int = 0, initial_lr: float | None = None) -> float:
        value = self.rho(step, rho, lr, group, initial_lr)
        if not math.isfinite(value) or value < 0:
            raise SharplabError(f"the rho schedule gave rho = {value} at step {step} (param group {group}); "
                                "rho must be finite and >= 0")
        return value

    def state_dict(self) -> dict:
        return {"rho": self.rho.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rho.load_state_dict(state.get("rho", {}))
