"""float16 training with a ``GradScaler``: the protocols through which frameworks drive ``SAM``.

A SAM step runs two backward passes, and a ``GradScaler`` must see both: the ascent gradient is
unscaled before its norm is taken, and a step whose ascent or descent gradient is not finite is skipped
with the weights left at w (the scaler lowers its scale at ``update()``). Three ways in:

* ``opt.step(closure, scaler=scaler)`` -- sharplab's own form.
* ``scaler.step(opt, closure)`` -- what Hugging Face Accelerate's ``AcceleratedOptimizer.step`` does in
  fp16. ``SAM`` sets ``_step_supports_amp_scaling``, so the scaler hands the step over (it sets
  ``opt.grad_scale``) instead of unscaling gradients that do not exist yet; ``SAM.step`` then finds the
  calling scaler (:func:`calling_scaler`) and runs the protocol above.
* Lightning's ``MixedPrecision.optimizer_step`` (``precision="16-mixed"``) runs ``closure()`` itself --
  the pass at w -- and then calls ``scaler.step(optimizer)`` without the closure. ``SAM.step`` takes the
  closure from that caller (:func:`framework_closure`) for the pass at w + eps.

The scaler's record of a non-finite gradient is per optimizer (``found_inf_per_device``); under DDP with
local ascent the decision to skip is agreed across workers and written back into that record, so every
worker skips, and lowers its scale, alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from torch.amp import GradScaler

#: How many frames up to look for the GradScaler.step that called SAM.step (Accelerate adds one wrapper;
#: SAM.step -> _two_phase -> _run_passes and torch.optim's step wrappers add up to four more).
_MAX_DEPTH = 12


def inside_scaler_step(opt: torch.optim.Optimizer) -> bool:
    """``GradScaler.step`` sets ``grad_scale`` and ``found_inf`` on optimizers with
    ``_step_supports_amp_scaling`` while it runs their ``step`` (``grad_scale`` is ``None`` when the
    gradients were unscaled already, e.g. by ``first_step(scaler=)``)."""
    return hasattr(opt, "found_inf")


def calling_scaler(opt: torch.optim.Optimizer) -> tuple[GradScaler, FrameType | None] | None:
    """The ``GradScaler`` whose ``step(opt, ...)`` is on the call stack, and the frame that called it."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        scaler = frame.f_locals.get("self")
        if (frame.f_code.co_name == "step" and isinstance(scaler, GradScaler)
                and frame.f_locals.get("optimizer") is opt):
            return scaler, frame.f_back
        frame = frame.f_back
    return None


def framework_closure(frame: FrameType | None) -> tuple[Callable[[], Any], Any] | None:
    """``(closure, its result)`` when the caller of ``scaler.step`` already ran the closure.

    Matches Lightning's ``MixedPrecision.optimizer_step`` (``closure_result = closure()`` followed by
    ``self.scaler.step(optimizer)``): the gradients at w are in ``.grad``, scaled.
    """
    if frame is None:
        return None
    local = frame.f_locals
    closure = local.get("closure")
    if callable(closure) and "closure_result" in local:
        return closure, local["closure_result"]
    return None


def found_inf_flags(scaler: GradScaler, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The scaler's per-device non-finite flags for ``opt`` (filled by ``scaler.unscale_(opt)``)."""
    return list(scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values())


def record_overflow(scaler: GradScaler, opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Make the scaler lower its scale at ``update()`` for a step skipped because of ``opt``."""
    flags = found_inf_flags(scaler, opt)
    if flags:
        for t in flags:
            t.fill_(1.0)
    else:  # no gradient at all was unscaled: record one flag on the parameters' device
        state = scaler._per_optimizer_states[id(opt)]
        state["found_inf_per_device"][device] = torch.ones((), dtype=torch.float32, device=device)
