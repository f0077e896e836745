"""What each way of driving :class:`~sharplab.optim.SAM` runs as its passes, and how its base optimizer is built.

* :class:`ClosurePasses` -- ``step(closure)``: the closure at w, then at w + eps (a framework may have run
  the pass at w already: Lightning's ``16-mixed``).
* :class:`BatchPasses` -- ``step(inputs=, targets=)``: the batch's mean loss as a closure.
* :class:`SelectionPasses` -- ESAM's data selection: per-example losses at w, the sharpest fraction chosen
  at w + eps (Du et al., ICLR 2022, sec. 3.2).
* :class:`PassDriver` -- ``SAM.step``: runs one way's passes around ``first_step`` / ``second_step`` (every
  path runs the same two phases), restoring w when a pass raises.
* :func:`build_base` -- the base optimizer from a class and keywords, an unknown keyword named with SAM's
  options and the class's own arguments.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sharplab.errors import SharplabError
from sharplab.optim import _steps
from sharplab.optim._distributed import no_sync, unwrap
from sharplab.optim._passes import RNGSnapshot, frozen_bn_stats
from sharplab.optim.rules import PerturbationRule

#: SAM's own keyword arguments (everything else goes to the base optimizer class).
SAM_OPTIONS = ("rho", "rule", "combiner", "schedule", "selection", "ascent_steps", "perturb", "bn_policy",
               "model", "loss_fn", "m", "mechanism", "sync_ascent", "adaptive", "strategy", "ascent_batch")


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


class PreviousBatchPasses(ClosurePasses):
    """n-SAM's passes (``ascent_batch="previous"``): the ascent gradient at w on the previous batch, the
    descent gradient at w + eps on this one (the first step has no previous batch: this one for both)."""

    same_examples = False

    def __init__(self, opt: Any, x: torch.Tensor, y: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
        prev = opt.previous_batch
        xa, ya = (x, y) if prev is None else (prev[0].to(x.device), prev[1].to(y.device))
        self.opt, self.ran = opt, None
        self.ascent = BatchPasses(opt, xa, ya, scaler).closure
        self.descent = BatchPasses(opt, x, y, scaler).closure

    def at_w(self) -> torch.Tensor:
        return self.opt._call(self.ascent)

    def at_eps(self, ddp: Any) -> torch.Tensor:
        return self.opt._call(self.descent)


class PassDriver:
    """The part of :class:`~sharplab.optim.SAM` that runs the passes of a whole step: ``step(closure)`` and
    ``step(inputs=, targets=)`` (ESAM's selection, m-sharpness and the mechanism variants included) call
    the closure or the model at w and at w + eps around the phases ``first_step`` / ``second_step``."""

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor | None:
        """One step: ``step(closure)`` or ``step(inputs=x, targets=y)``; returns the loss at w (for
        Momentum-SAM, whose only pass is at w + eps, the loss there).

        With a ``GradScaler`` (float16; the closure calls ``scaler.scale(loss).backward()``) pass ``scaler=``,
        or let the scaler call this method (``scaler.step(opt, closure)``, as Accelerate does); the caller runs
        ``scaler.update()`` once per iteration. ``step()`` without a closure after :meth:`first_step`
        finishes that step like :meth:`second_step` (for trainers that call ``optimizer.step()`` themselves).
        """
        if inputs is not None:
            return self._batch_step(inputs, targets, scaler)
        closure, scaler, ran = _steps.scaler_handover(self, closure, scaler, self._pending())
        if closure is None:
            if self._pending():
                self.second_step(scaler=scaler)
                return None
            raise SharplabError("SAM.step needs a closure (forward, backward, return loss) "
                                "or inputs=/targets= with SAM(..., model=, loss_fn=)")
        if self.m is not None or self.mechanism != "full" or self.selection is not None \
                or self.ascent_batch != "same":
            raise SharplabError("m-sharpness, the mechanism variants, ESAM's data selection and n-SAM need the batch: "
                                "call step(inputs=x, targets=y) and build SAM with model= and loss_fn=")
        if ran is None:
            _steps.check_fresh(self.param_groups, self._left)
        loss = self._two_phase(ClosurePasses(torch.enable_grad()(closure), self, ran), scaler)
        if ran is not None:  # the framework runs the next pass at w before SAM can zero: leave no gradient
            self.zero_grad()
        return loss

    def _two_phase(self, passes: ClosurePasses, scaler: torch.amp.GradScaler | None,
                   driver: str = "closure") -> torch.Tensor:
        """The passes of one step around :meth:`first_step` / :meth:`second_step` (every path runs this)."""
        self._cache, self._driver = None, driver
        try:
            return self._run_passes(passes, scaler)
        finally:
            self._driver = None

    def _run_passes(self, passes: ClosurePasses, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
        ascend = self._ascends()
        ddp = unwrap(self.model)[1] if self.model is not None else None
        ascent_ddp = None if self.sync_ascent else ddp
        candidates = self._candidates()[0]
        rng = RNGSnapshot(candidates)
        try:
            if ascend and not self.rule.needs_grad:  # Momentum-SAM, random: the only pass is at w + eps
                if passes.ran is not None:
                    raise SharplabError("Momentum-SAM runs its only pass at w + eps, but the framework already ran "
                                        "the pass at w: use a precision plugin that lets the optimizer run the closure")
                self.first_step()
                loss = passes.at_eps(ddp=None)
                self.second_step(scaler=scaler)
                self.stats["perturbed_loss"] = loss
                return loss
            frozen: list[torch.Tensor] = []
            if scaler is not None and ascend:
                self._undo = self.rule.state_dict()  # before ESAM draws its mask: a skipped step puts it back
            if ascend and self.rule.needs_grad and type(self.rule).select is not PerturbationRule.select:
                self._mask = self.rule.select(candidates)  # ESAM: untouched tensors skip the backward
                frozen = [p for p, keep in zip(candidates, self._mask) if not keep and p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
            try:
                with no_sync(ascent_ddp if ascend else None):  # no ascent: the only pass must all-reduce
                    loss = passes.at_w()
            finally:
                for p in frozen:
                    p.requires_grad_(True)
            if not ascend or not self.first_step(scaler=scaler):
                self._mask = None
                if self._skip:  # float16 overflow at w: the weights stay at w, scaler.update() lowers the scale
                    self.second_step()
                else:
                    self.second_step(scaler=scaler)
                self.stats = {"loss": loss}
                return loss
            stats = self.stats
            for _ in range(self.rule.steps - 1):
                rng.restore()
                with no_sync(ascent_ddp), frozen_bn_stats(self.model, nesting=self._nesting):
                    passes.at_eps(ddp=ascent_ddp)
                self.first_step()
            rng.restore()
            perturbed = passes.at_eps(ddp=ddp)  # BatchNorm: first_step's guard holds for bn_policy="once"
        except BaseException:
            self.restore()
            self._undo, self._g, self._mask, self._skip = None, None, None, False
            raise
        self.second_step(scaler=scaler)
        stats.update(loss=loss, perturbed_loss=perturbed)
        if isinstance(loss, torch.Tensor) and isinstance(perturbed, torch.Tensor) and passes.same_examples:
            stats["sharpness"] = perturbed - loss
        if getattr(passes, "selected", None) is not None:
            stats["selected"] = passes.selected  # ESAM: indices of the examples the descent used
        self.stats = stats
        return loss

    def _call(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        _steps.clear_grads(self.param_groups)
        if self._bn_guard is None or not self._bn_guard.hooked:
            return loss_value(closure())
        with warnings.catch_warnings():  # our BatchNorm hook is meant to see compiled modules' calls
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks")
            return loss_value(closure())

    def _batch_step(self, inputs: torch.Tensor, targets: torch.Tensor | None,
                    scaler: torch.amp.GradScaler | None) -> torch.Tensor:
        if self.model is None or self.loss_fn is None or targets is None:
            raise SharplabError("step(inputs=, targets=) needs SAM(..., model=model, loss_fn=loss_fn) "
                                "and both inputs and targets")
        if self.m is not None or self.mechanism != "full":
            if scaler is not None:
                raise SharplabError("scaler= with m-sharpness or a mechanism variant is not supported; use "
                                    "bfloat16 autocast")
            loss = _steps.batch_grad(self, inputs, targets)
            self._base_step(None)
            self.stats = {"loss": loss}
            return loss
        if self.ascent_batch == "previous":
            return self._previous_batch_step(inputs, targets, scaler)
        passes = (SelectionPasses(self, inputs, targets, scaler) if self.selection is not None
                  else BatchPasses(self, inputs, targets, scaler))
        return self._two_phase(passes, scaler, driver="batch")

    def _previous_batch_step(self, inputs: torch.Tensor, targets: torch.Tensor,
                             scaler: torch.amp.GradScaler | None) -> torch.Tensor:
        """n-SAM's step; returns this batch's loss (at w + eps; at w on a step that does not ascend), since the
        loss at w is of another batch."""
        self._cache = None
        ascend = self._ascends()
        passes = (PreviousBatchPasses(self, inputs, targets, scaler) if ascend
                  else BatchPasses(self, inputs, targets, scaler))
        loss = self._two_phase(passes, scaler, driver="batch")
        self.previous_batch = (inputs.detach(), targets.detach())
        return self.stats.get("perturbed_loss", loss) if ascend else loss
