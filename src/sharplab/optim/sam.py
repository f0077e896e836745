"""``SAM``: a drop-in ``torch.optim.Optimizer`` that wraps any base optimizer.

Foret et al., *Sharpness-Aware Minimization for Efficiently Improving Generalization*, ICLR 2021
(arXiv:2010.01412); shape after davda54/sam. One step (eq. 3 of the paper, first-order):

    eps = rule(grad L(w))                 # e.g. rho * g / ||g||
    w  <- w - lr * base_update(grad L(w + eps))

The base optimizer (SGD, AdamW, ...) owns the update, weight decay, momentum and its state; SAM owns
only the perturbation. Param groups are shared, so schedulers attached to either act on both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import _steps
from sharplab.optim._distributed import no_sync, unwrap
from sharplab.optim._passes import BNGuard, Nesting, RNGSnapshot, check_bn_policy, frozen_bn_stats
from sharplab.optim.functional import MECHANISMS, LossFn
from sharplab.optim.rules import Normed, PerturbationRule, global_norm, make_rule


class SAM(torch.optim.Optimizer):
    r"""Sharpness-Aware Minimization around a base optimizer.

    .. math::
        \hat\epsilon = \mathrm{rule}(\nabla L(w)),\qquad
        w \leftarrow \mathrm{base}(w, \nabla L(w + \hat\epsilon))

    with the rules of :mod:`sharplab.optim.rules` (``sam``: :math:`\rho g/\|g\|_2`; ``usam``:
    :math:`\rho g`; ``asam``: :math:`\rho T^2 g/\|Tg\|_2`, :math:`T=|w|+\eta`; ``random``).

    Ways to drive it:

    * ``step(closure)`` -- the closure runs forward and backward and returns the loss. SAM zeroes the
      gradients before each call (a closure that zeroes them too is fine), calls it at w (under
      ``enable_grad``), perturbs, calls it at w + eps, restores w from saved copies and lets the base
      optimizer step. Returns the loss at w. Gradients found in ``.grad`` on entry that the last step did
      not leave there are refused (they would be lost): accumulate inside the closure.
    * ``first_step()`` / ``second_step()`` -- for loops that run the two passes themselves (clipping,
      frameworks); ``step()`` without a closure after ``first_step()`` is ``second_step()``.
    * ``step(inputs=x, targets=y)`` -- needs ``model=`` and ``loss_fn=``; computes the gradient with
      :func:`~sharplab.optim.sam_grad`, which also offers m-sharpness (``m``) and the
      mechanism-isolating variants (``mechanism="iw_only" | "lr_only"``).

    float16 with a ``GradScaler``: ``step(closure, scaler=)``, ``scaler.step(opt, closure)``, Lightning's
    ``16-mixed`` plugin, or ``first_step(scaler=)`` / ``second_step(scaler=)``; a non-finite gradient skips
    the step (counted in ``skipped_steps``), agreed across DDP workers (:mod:`sharplab.optim._amp`).

    Args:
        params: parameters or param groups (a group may set its own ``rho``; ``rho = 0`` groups are not
            perturbed and do not enter the gradient norm).
        base_optimizer: an optimizer class (constructed with ``params`` and ``**base_kwargs``) or an
            already built optimizer instance (then ``params`` may be ``None``).
        rho: perturbation radius rho >= 0 (default for groups that set none).
        rule: perturbation rule name or object; ``ascent_steps > 1`` makes it a projected multi-step ascent.
        perturb: restrict the perturbation to these parameters (e.g. ``model.head.parameters()``, LSAM).
        bn_policy: ``"once"`` (default): BatchNorm running statistics are updated only by the pass at w
            (they are saved in ``first_step`` and restored in ``second_step``, on every path);
            ``"every"``: by both passes, as in the original SAM code. Without ``model`` the BatchNorm
            layers are found by a forward hook (it sees ``torch.compile(model)`` too, not a compiled
            function that calls the model: pass ``model=`` then).
        model: the model (optionally DDP-wrapped or compiled). Lets SAM run the ascent pass under
            ``no_sync()``.
        loss_fn: ``loss_fn(outputs, targets)``, for ``step(inputs=, targets=)``.
        m, mechanism: m-sharpness micro-batch size and mechanism variant (batch mode only).
        sync_ascent: under DDP, all-reduce the ascent gradient too (default: each worker ascends locally,
            i.e. m-sharpness with m = per-worker batch). The descent gradient is always all-reduced.
        **base_kwargs: passed to the base optimizer class (``lr``, ``momentum``, ``weight_decay``, ...).

    Raises:
        SharplabError: rho < 0, a closure returning no loss, an incompatible combination of options,
            ``params`` that differ from a given optimizer's.
        Diverged: a non-finite ascent gradient norm without a ``GradScaler`` (the weights are back at
            w; the step index is in the message).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> def closure():
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    #: ``GradScaler.step(opt, ...)`` hands float16 steps to :meth:`step` instead of unscaling first (see
    #: :mod:`sharplab.optim._amp`): the protocol of Accelerate's fp16 and Lightning's ``16-mixed``.
    _step_supports_amp_scaling = True

    #: The composed class (:class:`~sharplab.optim.family.FamilySAM` sets itself here when imported).
    family: type[SAM] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> SAM:
        """``SAM(..., combiner=, schedule=, selection=)``, or a rule that needs no gradient (``msam``) or
        picks tensors (``esam``), builds the composed family member (:class:`~sharplab.optim.family.FamilySAM`,
        a subclass with the same protocol)."""
        if cls is SAM and SAM.family is not None and _steps.builds_family(args, kwargs):
            return super().__new__(SAM.family)
        return super().__new__(cls)

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer = torch.optim.SGD,
        rho: float = 0.05,
        rule: str | PerturbationRule = "sam",
        *,
        ascent_steps: int = 1,
        perturb: Iterable[torch.Tensor] | None = None,
        bn_policy: str = "once",
        model: nn.Module | None = None,
        loss_fn: LossFn | None = None,
        m: int | None = None,
        mechanism: str = "full",
        sync_ascent: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise SharplabError(f"rho must be >= 0, got {rho}")
        if mechanism not in MECHANISMS:
            raise SharplabError(f"unknown mechanism {mechanism!r}; choose one of: {', '.join(MECHANISMS)}")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if base_kwargs:
                raise SharplabError("base optimizer instance given: pass its settings to it, not to SAM")
            if params is not None and _steps.param_ids(params) != _steps.param_ids(base_optimizer.param_groups):
                raise SharplabError("params differ from the parameters of the given base optimizer; pass "
                                    "params=None with a built optimizer (SAM uses its param groups)")
            self.base = base_optimizer
        else:
            if params is None:
                raise SharplabError("params is None: give the parameters or a built base optimizer")
            self.base = base_optimizer(params, **base_kwargs)
        for group in self.base.param_groups:
            group.setdefault("rho", rho)
            if group["rho"] < 0:
                raise SharplabError(f"rho must be >= 0, got {group['rho']} in a param group")
        self._built = False
        super().__init__(self.base.param_groups, dict(self.base.defaults, rho=rho))
        self._built = True
        self.param_groups = self.base.param_groups
        self.rule = make_rule(rule, ascent_steps)
        self._perturb = None if perturb is None else {id(p) for p in perturb}
        self.bn_policy = check_bn_policy(bn_policy)
        self.model, self.loss_fn = model, loss_fn
        self.m, self.mechanism, self.sync_ascent = m, mechanism, sync_ascent
        #: Steps the base optimizer took, and float16 steps skipped because a gradient was not finite.
        self.steps_taken, self.skipped_steps = 0, 0
        #: Diagnostics of the last step (detached tensors; call ``.item()`` when logging):
        #: ``grad_norm`` ||g(w)||, ``eps_norm`` ||eps||, ``loss`` L(w), ``perturbed_loss`` L(w + eps) and
        #: ``sharpness`` = L(w + eps) - L(w) (the latter three in ``step(closure)`` mode only). A step
        #: without perturbation (rho = 0) or a skipped float16 step leaves only ``loss``.
        self.stats: dict[str, torch.Tensor] = {}
        self._bn_guard: BNGuard | None = None  # BatchNorm statistics saved from first_step to second_step
        self._nesting = Nesting()  # learned by the first guard: may later guards lift their hook (BNGuard)
        self._skip = False  # first_step(scaler=) found a non-finite ascent gradient: second_step skips
        self._saved: _steps.Perturbed | None = None  # w and eps, from first_step to second_step
        self._old_buffers: list[torch.Tensor] | None = None  # copies of w, reused from step to step
        self._undo: dict | None = None  # the rule's state before a scaled step, put back if it is skipped
        self._left: dict[int, tuple[int, int]] = {}  # id(p) -> (id, version) of the .grad a step left

    # --- the two passes ------------------------------------------------------------------------------
    def _perturbed(self) -> tuple[list[torch.Tensor], list[float]]:
        params, rhos = [], []
        for group in self.param_groups:
            if group["rho"] <= 0:
                continue
            for p in group["params"]:
                if self._perturb is None or id(p) in self._perturb:
                    params.append(p)
                    rhos.append(group["rho"])
        return params, rhos

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Move w to w + eps using the current ``.grad`` (the gradient at the current point).

        Called again before :meth:`second_step`, it takes one more ascent step of a multi-step rule from
        the current perturbation (the weights at w are kept from the first call). With ``bn_policy="once"``
        BatchNorm running statistics are saved here and restored by :meth:`second_step`, so the forward
        passes in between leave them alone. With a ``GradScaler`` (the backward was
        ``scaler.scale(loss).backward()``) the gradient is unscaled first; if it is not finite, w is
        left as is and :meth:`second_step` skips the step (the scaler lowers its scale at ``update()``).
        """
        params, rhos = self._perturbed()
        if not params:
            return
        saved = self._saved
        if scaler is not None:
            if saved is not None or self.rule.steps > 1:
                raise SharplabError("a GradScaler with ascent_steps > 1 is not supported; use bfloat16 autocast")
            if _steps.overflowed(self, scaler, params):
                self._skip = True
                if zero_grad:
                    self.zero_grad()
                return
            self._undo = self.rule.state_dict()  # put back if the descent gradient overflows
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = global_norm(grads)
        if not torch.isfinite(norm):
            self._restore()  # a later ascent step: back to w before reporting
            raise Diverged(self.steps_taken, f"ascent gradient norm ({norm.item()})")
        # the rule's own ||g|| is this one (Normed): the norm is taken once
        eps = self.rule.update(None if saved is None else saved.eps, Normed(grads, norm), params, rhos)
        if saved is None:
            self.stats = {"grad_norm": norm}
            if self.bn_policy == "once":
                self._bn_guard = BNGuard(self.model, self._nesting).start()
            self._saved = _steps.Perturbed(params, eps, reuse=self._old_buffers)
            self._old_buffers = self._saved.old
        else:  # a further ascent step starts again from w
            saved.restore()
            saved.eps = eps
        self.stats["eps_norm"] = global_norm(eps)
        torch._foreach_add_(params, eps)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore w from the saved copies (every perturbed tensor, with or without ``.grad``) and let
        the base optimizer step with the gradient now in ``.grad`` (through ``scaler.step`` if given,
        which unscales it and skips the step if it is not finite). To clip a scaled descent gradient,
        unscale it first with ``scaler.unscale_(opt.base)``."""
        if self._skip:  # first_step(scaler=) found an overflow: the whole step is skipped
            self._skip = False
            self.skipped_steps += 1
        else:
            self._restore()
            self._base_step(scaler)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _restore(self) -> None:
        """Back to w: copy the saved weights into every perturbed tensor; end the BatchNorm guard."""
        if self._saved is not None:
            self._saved.restore()
            self._saved = None
        if self._bn_guard is not None:
            self._bn_guard.stop()
            self._bn_guard = None

    def _pending(self) -> bool:
        """first_step() was called and second_step() not yet."""
        return self._skip or self._saved is not None

    def _base_step(self, scaler: torch.amp.GradScaler | None) -> bool:
        """The base step; a step the scaler skips is counted and leaves the rule's state as it was."""
        stepped = _steps.base_step(self.base, scaler)
        if stepped:
            self.steps_taken += 1
        else:
            self.skipped_steps += 1
            if self._undo is not None:
                self.rule.load_state_dict(self._undo)
        self._undo = None
        self._left = _steps.grads_left(self.param_groups)
        return stepped

    def _check_fresh(self) -> None:
        _steps.check_fresh(self.param_groups, self._left)

    # --- one full step -------------------------------------------------------------------------------
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor | None:
        """One SAM step: ``step(closure)`` or ``step(inputs=x, targets=y)``; returns the loss at w.

        SAM zeroes the gradients before each call of the closure (a closure that zeroes them too is
        fine). With a ``GradScaler`` (float16 training; the closure calls
        ``scaler.scale(loss).backward()``) pass ``scaler=``, or let the scaler call this method
        (``scaler.step(opt, closure)``, as Accelerate does): the ascent gradient is unscaled before its
        norm is taken, a step whose ascent or descent gradient is not finite is skipped with the weights
        left at w (and a stateful rule's state as it was), and the caller runs ``scaler.update()`` once
        per iteration, as usual. ``step()`` without a closure after :meth:`first_step` finishes that step
        like :meth:`second_step` (for trainers that call ``optimizer.step()`` themselves).
        """
        if inputs is not None:
            if scaler is not None:
                raise SharplabError("scaler= works with step(closure); step(inputs=, targets=) has no scaler")
            return self._batch_step(inputs, targets)
        closure, scaler, ran = _steps.scaler_handover(self, closure, scaler, self._pending())
        if closure is None:
            if self._pending():
                self.second_step(scaler=scaler)
                return None
            raise SharplabError("SAM.step needs a closure (forward, backward, return loss) "
                                "or inputs=/targets= with SAM(..., model=, loss_fn=)")
        if self.m is not None or self.mechanism != "full":
            raise SharplabError("m-sharpness and mechanism variants need the batch: call "
                                "step(inputs=x, targets=y) and build SAM with model= and loss_fn=")
        if scaler is not None and self.rule.steps > 1:
            raise SharplabError("a GradScaler with ascent_steps > 1 is not supported; use bfloat16 autocast")
        closure = torch.enable_grad()(closure)
        params, _ = self._perturbed()
        ddp = unwrap(self.model)[1] if self.model is not None else None
        ascent_ddp = None if self.sync_ascent else ddp
        rng = RNGSnapshot(params)
        if ran is not None:
            loss = self._loss(ran[0])
        else:
            self._check_fresh()
            with no_sync(ascent_ddp if params else None):  # rho = 0: the only pass must all-reduce
                loss = self._call(closure)
        if not params:  # rho = 0 everywhere: exactly the base optimizer
            self._base_step(scaler)
            if ran is not None:
                self.zero_grad()
            self.stats = {"loss": loss}
            return loss
        if scaler is not None:
            if _steps.overflowed(self, scaler, params):
                self.skipped_steps += 1  # weights stay at w; scaler.update() lowers the scale
                self.stats = {"loss": loss}
                self.zero_grad()
                return loss
            self._undo = self.rule.state_dict()  # put back if the descent gradient overflows
        try:
            self.first_step()
            for _ in range(self.rule.steps - 1):
                rng.restore()
                with no_sync(ascent_ddp), frozen_bn_stats(self.model, nesting=self._nesting):
                    self._call(closure)
                self.first_step()
            rng.restore()
            perturbed = self._call(closure)  # BatchNorm: first_step's guard holds for bn_policy="once"
        except BaseException:
            self._restore()
            self._undo = None
            raise
        stats = self.stats
        # the framework runs the next pass at w before SAM can zero (Lightning's manual 16-mixed never
        # zeroes): leave no gradient behind for it to accumulate onto
        self.second_step(zero_grad=ran is not None, scaler=scaler)
        if isinstance(loss, torch.Tensor) and isinstance(perturbed, torch.Tensor):
            stats.update(loss=loss, perturbed_loss=perturbed, sharpness=perturbed - loss)
        self.stats = stats
        return loss

    def _call(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        _steps.clear_grads(self.param_groups)
        if self._bn_guard is None or not self._bn_guard.hooked:
            return self._loss(closure())
        with warnings.catch_warnings():  # our BatchNorm hook is meant to see compiled modules' calls
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks")
            return self._loss(closure())

    @staticmethod
    def _loss(loss: Any) -> Any:
        if loss is None:
            raise SharplabError("the closure returned None; it must return the loss tensor")
        return loss.detach() if isinstance(loss, torch.Tensor) else loss

    def _batch_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        loss = _steps.batch_grad(self, inputs, targets)
        self.base.step()
        self.steps_taken += 1
        return loss

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus ``"sam"``: the step count and the rule's own state."""
        state = self.base.state_dict()
        state["sam"] = {"steps_taken": self.steps_taken, "rule": self.rule.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        sam_state = state_dict.pop("sam", {})
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # load_state_dict rebuilt the group dicts
        self.steps_taken = int(sam_state.get("steps_taken", 0))
        self.rule.load_state_dict(sam_state.get("rule", {}))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._built:  # called by Optimizer.__init__ while building
            return super().add_param_group(param_group)
        param_group.setdefault("rho", self.defaults["rho"])
        self.base.add_param_group(param_group)
        self.param_groups = self.base.param_groups

    def __repr__(self) -> str:
        return f"SAM(rule={self.rule.name}, bn_policy={self.bn_policy}, base={self.base!r})"

