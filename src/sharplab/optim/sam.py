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
from sharplab.optim import _amp
from sharplab.optim._distributed import any_worker, no_sync, unwrap
from sharplab.optim._passes import BNGuard, RNGSnapshot, check_bn_policy, frozen_bn_stats
from sharplab.optim.functional import MECHANISMS, LossFn, sam_grad
from sharplab.optim.rules import PerturbationRule, global_norm, make_rule


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
        rule = kwargs.get("rule", args[3] if len(args) > 3 else "sam")
        if isinstance(rule, str):
            from sharplab.optim.rules import RULES

            rule = RULES.get(rule) if rule in RULES else None
        kind = rule if isinstance(rule, type) else type(rule)
        needs_family = rule is not None and issubclass(kind, PerturbationRule) and (
            not kind.needs_grad or kind.select is not PerturbationRule.select)
        parts = any(kwargs.get(k) is not None for k in ("combiner", "schedule", "selection"))
        if cls is SAM and (parts or needs_family) and SAM.family is not None:
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
            if params is not None and _param_ids(params) != _param_ids(base_optimizer.param_groups):
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
        self._skip = False  # first_step(scaler=) found a non-finite ascent gradient: second_step skips
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
        again = "old_p" in self.state[params[0]]
        if scaler is not None:
            if again or self.rule.steps > 1:
                raise SharplabError("a GradScaler with ascent_steps > 1 is not supported; use bfloat16 autocast")
            if self._overflowed(scaler, params):
                self._skip = True
                if zero_grad:
                    self.zero_grad()
                return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = global_norm(grads)
        if not torch.isfinite(norm):
            self._restore()  # a later ascent step: back to w before reporting
            raise Diverged(self.steps_taken, f"ascent gradient norm ({norm.item()})")
        previous = [self.state[p]["eps"] for p in params] if again else None
        eps = self.rule.update(previous, grads, params, rhos)
        if not again:
            self.stats = {"grad_norm": norm.detach()}
            if self.bn_policy == "once":
                self._bn_guard = BNGuard(self.model).start()
        self.stats["eps_norm"] = global_norm(eps).detach()
        for p, e in zip(params, eps):
            state = self.state[p]
            if "old_p" in state:  # a further ascent step starts again from w
                p.copy_(state["old_p"])
            else:
                state["old_p"] = p.detach().clone()
            state["eps"] = e
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
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "old_p" in state:
                    p.copy_(state.pop("old_p"))
                    state.pop("eps", None)
        if self._bn_guard is not None:
            self._bn_guard.stop()
            self._bn_guard = None

    def _pending(self) -> bool:
        """first_step() was called and second_step() not yet."""
        params, _ = self._perturbed()
        return self._skip or bool(params and "old_p" in self.state[params[0]])

    def _base_step(self, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is None:
            self.base.step()
            self.steps_taken += 1
        else:
            scaler.step(self.base)
            if any(bool(f.item()) for f in _amp.found_inf_flags(scaler, self.base)):
                self.skipped_steps += 1
            else:
                self.steps_taken += 1
        self._left = {id(p): (id(p.grad), p.grad._version)
                      for group in self.param_groups for p in group["params"] if p.grad is not None}

    def _overflowed(self, scaler: torch.amp.GradScaler, params: list[torch.Tensor]) -> bool:
        """Unscale the ascent gradient; ``True`` on every worker alike if it is not finite on any."""
        scaler.unscale_(self)  # in place; the found-inf check is recorded under this optimizer
        grads = [p.grad for p in params if p.grad is not None]
        local = any(bool(f.item()) for f in _amp.found_inf_flags(scaler, self))
        local = local or (bool(grads) and not bool(torch.isfinite(global_norm(grads))))
        ddp = unwrap(self.model)[1] if self.model is not None else None
        # local ascent under DDP: workers see different ascent gradients, so agree before skipping
        overflow = any_worker(local, params[0].device) if ddp is not None and not self.sync_ascent else local
        if overflow:
            _amp.record_overflow(scaler, self, params[0].device)
        return overflow

    def _check_fresh(self) -> None:
        """Refuse gradients accumulated outside the closure: SAM zeroes ``.grad`` before each pass."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None or self._left.get(id(p)) == (id(g), g._version):
                    continue  # none, or what the last step left
                if bool(g.any()):
                    raise SharplabError(
                        "SAM.step(closure) found gradients computed outside the closure (SAM zeroes them "
                        "before each pass): compute them inside the closure (accumulate by looping over "
                        "micro-batches in it), or drive first_step()/second_step() yourself")

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
        left at w, and the caller runs ``scaler.update()`` once per iteration, as usual.
        ``step()`` without a closure after :meth:`first_step` finishes that step like
        :meth:`second_step` (for trainers that call ``optimizer.step()`` themselves).
        """
        if inputs is not None:
            if scaler is not None:
                raise SharplabError("scaler= works with step(closure); step(inputs=, targets=) has no scaler")
            return self._batch_step(inputs, targets)
        pre_ran, done = False, None
        if scaler is None and _amp.inside_scaler_step(self):
            found = _amp.calling_scaler(self)
            if found is None:
                raise SharplabError("SAM.step was called by a GradScaler it cannot find on the call stack; "
                                    "call opt.step(closure, scaler=scaler) instead")
            scaler, caller = found
            if closure is None and not self._pending():
                ran = _amp.framework_closure(caller)  # Lightning's 16-mixed: the pass at w is done
                if ran is not None:
                    (closure, done), pre_ran = ran, True
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
        if pre_ran:
            loss = self._loss(done)
        else:
            self._check_fresh()
            with no_sync(ascent_ddp if params else None):  # rho = 0: the only pass must all-reduce
                loss = self._call(closure)
        if not params:  # rho = 0 everywhere: exactly the base optimizer
            self._base_step(scaler)
            if pre_ran:
                self.zero_grad()
            self.stats = {"loss": loss}
            return loss
        if scaler is not None and self._overflowed(scaler, params):
            self.skipped_steps += 1  # weights stay at w; scaler.update() lowers the scale
            self.stats = {"loss": loss}
            self.zero_grad()
            return loss
        try:
            self.first_step()
            for _ in range(self.rule.steps - 1):
                rng.restore()
                with no_sync(ascent_ddp), frozen_bn_stats(self.model):
                    self._call(closure)
                self.first_step()
            rng.restore()
            perturbed = self._call(closure)  # BatchNorm: first_step's guard holds for bn_policy="once"
        except BaseException:
            self._restore()
            raise
        stats = self.stats
        # the framework runs the next pass at w before SAM can zero (Lightning's manual 16-mixed never
        # zeroes): leave no gradient behind for it to accumulate onto
        self.second_step(zero_grad=pre_ran, scaler=scaler)
        if isinstance(loss, torch.Tensor) and isinstance(perturbed, torch.Tensor):
            stats.update(loss=loss, perturbed_loss=perturbed, sharpness=perturbed - loss)
        self.stats = stats
        return loss

    def _call(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.zero_grad()
        with warnings.catch_warnings():  # our BatchNorm hook is meant to see compiled modules' calls
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks")
            return self._loss(closure())

    @staticmethod
    def _loss(loss: Any) -> Any:
        if loss is None:
            raise SharplabError("the closure returned None; it must return the loss tensor")
        return loss.detach() if isinstance(loss, torch.Tensor) else loss

    def _batch_step(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if self.model is None or self.loss_fn is None or targets is None:
            raise SharplabError("step(inputs=, targets=) needs SAM(..., model=model, loss_fn=loss_fn) "
                                "and both inputs and targets")
        rhos = {group["rho"] for group in self.param_groups if group["rho"] > 0}
        if len(rhos) > 1:
            raise SharplabError("step(inputs=, targets=) supports one rho for all groups; use step(closure)")
        params, _ = self._perturbed()
        self.zero_grad()
        loss = sam_grad(
            self.model, self.loss_fn, inputs, targets, rho=rhos.pop() if rhos else 0.0, m=self.m,
            rule=self.rule, mechanism=self.mechanism, perturb=params, bn_policy=self.bn_policy,
            sync_ascent=self.sync_ascent, step=self.steps_taken,
        )
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


def _param_ids(params: Iterable[Any]) -> set[int]:
    """ids of the tensors in a parameter iterable or a list of param-group dicts."""
    ids: set[int] = set()
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            ids.update(id(p) for p in ([group] if isinstance(group, torch.Tensor) else group))
        else:
            ids.add(id(item))
    return ids
