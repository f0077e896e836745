"""What each way of driving :class:`~sharplab.optim.SAM` runs as its passes, and how its base optimizer is built.

* :class:`ClosurePasses` -- ``step(closure)``: the closure at w, then at w + eps (a framework may have run
  the pass at w already: Lightning's ``16-mixed``).
* :class:`BatchPasses` -- ``step(inputs=, targets=)``: the batch's mean loss as a closure.
* :class:`SelectionPasses` -- ESAM's data selection: per-example losses at w, the sharpest fraction chosen
  at w + eps (Du et al., ICLR 2022, sec. 3.2).
* :func:`build_base` -- the base optimizer from a class and keywords, an unknown keyword named with SAM's
  options and the class's own arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sharplab.errors import SharplabError
from sharplab.optim import _steps

#: SAM's own keyword arguments (everything else goes to the base optimizer class).
SAM_OPTIONS = ("rho", "rule", "combiner", "schedule", "selection", "ascent_steps", "perturb", "bn_policy",
               "model", "loss_fn", "m", "mechanism", "sync_ascent", "adaptive")


def loss_value(loss: Any) -> Any:
    if loss is None:
        raise SharplabError("the closure returned None; it must return the loss tensor")
    return loss.detach() if isinstance(loss, torch.Tensor) else loss


def build_base(params: Iterable[Any] | None, base_optimizer: Any,
                base_kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """The base optimizer: the given instance, or the class built with ``params`` and ``base_kwargs``
    (an unknown keyword is named with SAM's options and the class's own arguments)."""
    if isinstance(base_optimizer, torch.optim.Optimizer):
        if base_kwargs:
            raise SharplabError(f"base optimizer instance given: pass {', '.join(sorted(base_kwargs))} to it, "
                                "not to SAM")
        if params is not None and _steps.param_ids(params) != _steps.param_ids(base_optimizer.param_groups):
            raise SharplabError("params differ from the parameters of the given base optimizer; pass "
                                "params=None with a built optimizer (SAM uses its param groups)")
        return base_optimizer
    if params is None:
        raise SharplabError("params is None: give the parameters or a built base optimizer")
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
        raise SharplabError(f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base_optimizer!r}")
    accepted = arguments(base_optimizer)
    if accepted is not None:
        unknown = sorted(set(base_kwargs) - accepted)
        if unknown:
            raise SharplabError(
                f"SAM: unknown keyword {unknown[0]!r}: not a SAM option ({', '.join(SAM_OPTIONS)}) nor an argument "
                f"of {base_optimizer.__name__} ({', '.join(sorted(accepted))})")
    return base_optimizer(params, **base_kwargs)


def arguments(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(params, ...)`` takes (``None`` when it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if n not in ("self", "params")
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


class ClosurePasses:
    """The passes of ``step(closure)``: the closure at w, then at w + eps."""

    same_examples = True  # both passes see the same examples: L(w + eps) - L(w) is the sharpness

    def __init__(self, closure: Callable[[], torch.Tensor], opt: Any, ran: tuple[Any] | None = None) -> None:
        self.closure, self.opt = closure, opt
        self.ran = ran  # the result of the pass at w a framework already ran (Lightning's 16-mixed)

    def at_w(self) -> torch.Tensor:
        if self.ran is not None:
            loss, self.ran = self.ran[0], None
            return loss_value(loss)
        return self.opt._call(self.closure)

    def at_eps(self, ddp: Any) -> torch.Tensor:
        return self.opt._call(self.closure)


class BatchPasses(ClosurePasses):
    """``step(inputs=, targets=)`` without m or a mechanism: the mean loss of the batch, as a closure."""

    def __init__(self, opt: Any, x: torch.Tensor, y: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
        def closure() -> torch.Tensor:
            loss = opt.loss_fn(opt.model(x), y)
            if loss.ndim:
                loss = loss.mean()
            (loss if scaler is None else scaler.scale(loss)).backward()
            return loss

        super().__init__(torch.enable_grad()(closure), opt)


class SelectionPasses(ClosurePasses):
    """ESAM's passes in batch mode: per-example losses at w, the sharpest fraction chosen at w + eps."""

    same_examples = False

    def __init__(self, opt: Any, x: torch.Tensor, y: torch.Tensor,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.opt, self.x, self.y, self.scaler, self.ran = opt, x, y, scaler, None
        self.before: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def at_w(self) -> torch.Tensor:
        opt = self.opt
        _steps.clear_grads(opt.param_groups)
        with torch.enable_grad():
            losses = opt.loss_fn(opt.model(self.x), self.y)
            if losses.ndim != 1 or losses.shape[0] != self.x.shape[0]:
                raise SharplabError(f"ESAM's data selection needs per-example losses (shape [{self.x.shape[0]}]), "
                                    f"got {tuple(losses.shape)}: use e.g. nn.CrossEntropyLoss(reduction='none')")
            self._backward(losses.mean())
        self.before = losses.detach()
        return self.before.mean()

    def at_eps(self, ddp: Any) -> torch.Tensor:
        opt = self.opt
        with torch.no_grad():
            after = opt.loss_fn(opt.model(self.x), self.y)
        idx = opt.selection.pick(after - self.before)
        _steps.clear_grads(opt.param_groups)
        with torch.enable_grad():
            loss = opt.loss_fn(opt.model(self.x[idx]), self.y[idx]).mean()
            self._backward(loss)
        self.selected = idx
        return loss.detach()
