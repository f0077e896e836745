"""``SAM``: the one SAM engine, a drop-in ``torch.optim.Optimizer`` around any base optimizer.

Foret et al., *Sharpness-Aware Minimization for Efficiently Improving Generalization*, ICLR 2021
(arXiv:2010.01412); shape after davda54/sam. Every family member is this class with its parts: a **rule**
(the ascent), a **combiner** (the descent gradient), a **schedule** (when to ascend, which radius) and, for
ESAM, a **selection** (which examples descend). One step at step count t (eq. 3 of the paper, first-order):

    rho_t = schedule(t, rho, lr)                          # per param group; Constant by default
    eps   = rule(g),  g = grad L(w)                       # ascent phase   (first_step)
    g_s   = grad L(w + eps)
    w    <- base(w, combiner(g, g_s)); combiner.after     # descent phase  (second_step)

A step the schedule does not ascend is one pass at w, ``combiner.between(g)`` (LookSAM's reuse) and the
base step. ``step(closure)``, ``first_step()`` / ``second_step()`` and ``step(inputs=, targets=)`` all run
these two phases, so a member gives the same iterates on every path. The base optimizer (SGD, AdamW, ...)
owns the update, weight decay, momentum and its state; param groups are shared, so schedulers attached to
either act on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sharplab.errors import SharplabError
from sharplab.optim import _steps, registry
from sharplab.optim._drive import PassDriver, build_base
from sharplab.optim._msharpness import STRATEGIES
from sharplab.optim._passes import BNGuard, Nesting, check_bn_policy
from sharplab.optim._phases import Phases
from sharplab.optim.combiners import Combiner
from sharplab.optim.functional import MECHANISMS, LossFn
from sharplab.optim.rules import ASAMRule, PerturbationRule, make_rule
from sharplab.optim.schedules import Constant, Schedule
from sharplab.optim.selection import SharpestFraction

#: where the ascent gradient comes from: this batch, or the previous one (n-SAM)
ASCENT_BATCHES = ("same", "previous")


class SAM(PassDriver, Phases, torch.optim.Optimizer):
    r"""Sharpness-Aware Minimization around a base optimizer; with ``combiner=``, ``schedule=``,
    ``selection=`` or another ``rule=``, any member of the family (:func:`~sharplab.optim.create` builds
    them by name).

    .. math::
        \hat\epsilon = \mathrm{rule}(\nabla L(w)),\qquad
        w \leftarrow \mathrm{base}\big(w, \mathrm{combiner}(\nabla L(w), \nabla L(w + \hat\epsilon))\big)

    Ways to drive it (the same two phases underneath):

    * ``step(closure)`` -- the closure runs forward and backward and returns the loss. SAM zeroes the
      gradients before each call (a closure that zeroes them too is fine), calls it at w, perturbs, calls it
      at w + eps, restores w from saved copies and lets the base optimizer step. Returns the loss at w. Any
      exception in a pass (a closure error, ``KeyboardInterrupt``) puts w back before it propagates.
      Gradients found in ``.grad`` on entry that the last step did not leave there are refused.
    * ``first_step()`` / ``second_step()`` -- for loops that run the passes themselves (clipping,
      frameworks). ``first_step()`` returns whether it perturbed: ``False`` on a step the schedule does not
      ascend (LookSAM between ascents, rho_t = 0), where the second pass can be skipped and
      ``second_step()`` steps on the gradient at w. Momentum-SAM needs no gradient before ``first_step()``.
      If a pass raises between the two, call :meth:`restore`. ``step()`` without a closure after
      ``first_step()`` is ``second_step()``.
    * ``step(inputs=x, targets=y)`` -- needs ``model=`` and ``loss_fn=``: m-sharpness (``m``), the
      mechanism-isolating variants (``mechanism="iw_only" | "lr_only"``) through
      :func:`~sharplab.optim.sam_grad`, and ESAM's data selection.

    **Safety, every member and path.** A parameter whose ``.grad`` is ``None`` (frozen, unused) is never
    perturbed and never stepped. A non-finite gradient at w or at w + eps raises :class:`Diverged` before
    the base step, with w (and BatchNorm statistics) restored. float16 with a ``GradScaler``:
    ``step(closure, scaler=)``, ``scaler.step(opt, closure)``, Lightning's ``16-mixed`` plugin, or
    ``first_step(scaler=)`` / ``second_step(scaler=)``; a non-finite gradient skips the step (counted in
    ``skipped_steps``) instead, agreed across DDP workers (:mod:`sharplab.optim._amp`).

    Args:
        params: parameters or param groups (a group may set its own ``rho``; ``rho = 0`` groups are not
            perturbed and do not enter the gradient norm).
        base_optimizer: an optimizer class (constructed with ``params`` and ``**base_kwargs``) or an
            already built optimizer instance (then ``params`` may be ``None``). ``opt.base`` (alias
            ``opt.base_optimizer``) is it; ``opt.state`` is its state.
        rho: perturbation radius, finite and >= 0 (default: the paper default of the rule's variant, e.g.
            0.05 for ``sam``, 0.5 for ``asam``, 0.3 for ``momentum-sam``).
        rule: a rule-variant name (``sam``, ``usam``, ``asam``, ``random``, ``fsam``, ``esam``, ``momentum-sam``; see
            :func:`~sharplab.optim.available`) or a rule object; ``ascent_steps > 1`` makes it a projected
            multi-step ascent (plain combiner and schedule only).
        combiner: a :class:`~sharplab.optim.combiners.Combiner` (default: descend on g_s).
        schedule: a :class:`~sharplab.optim.schedules.Schedule` (default: ascend every step, constant rho).
        selection: ESAM's :class:`~sharplab.optim.selection.SharpestFraction` (batch mode only, with a
            per-example ``loss_fn``).
        perturb: restrict the perturbation to these parameters (e.g. ``model.head.parameters()``), or a
            function of ``model`` that returns them (e.g. :func:`~sharplab.optim.last_layer_params`, LSAM).
        bn_policy: ``"once"`` (default): BatchNorm running statistics are updated only by the pass at w;
            ``"every"``: by both passes, as in the original SAM code. Without ``model`` the BatchNorm
            layers are found by a forward hook (it sees ``torch.compile(model)`` too, not a compiled
            function that calls the model: pass ``model=`` then).
        model: the model (optionally DDP-wrapped or compiled): lets SAM run the ascent under ``no_sync()``.
        loss_fn: ``loss_fn(outputs, targets)``, for ``step(inputs=, targets=)``.
        m, mechanism: m-sharpness micro-batch size and mechanism variant (batch mode only).
        strategy: how m-sharpness computes the micro-batches' gradients (:func:`~sharplab.optim.sam_grad`:
            ``"auto"``, ``"vmap"``, ``"func"`` or ``"loop"``; the same gradient up to rounding).
        ascent_batch: ``"same"`` (default) or ``"previous"``: the ascent gradient from the batch of the last
            ``step(inputs=, targets=)`` (n-SAM, ``create("nsam")``; batch mode only).
        sync_ascent: under DDP, all-reduce the ascent gradient too (default: local ascent per worker).
        adaptive: davda54/sam's ``adaptive=True``: ASAM with T = |w| (no eta), i.e. ``rule=ASAMRule(eta=0)``.
        **base_kwargs: passed to the base optimizer class (``lr``, ``momentum``, ``weight_decay``, ...).

    Raises:
        SharplabError: a rho or hyperparameter that is NaN, infinite or out of range; an unknown keyword
            (named, with the valid ones); sparse gradients; an option the chosen path cannot run.
        Diverged: a non-finite gradient at w or w + eps without a ``GradScaler`` (the weights are back at w).

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

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer = torch.optim.SGD,
        rho: float | None = None,
        rule: str | PerturbationRule = "sam",
        *,
        combiner: Combiner | None = None,
        schedule: Schedule | None = None,
        selection: SharpestFraction | None = None,
        ascent_steps: int = 1,
        perturb: Iterable[torch.Tensor] | None = None,
        bn_policy: str = "once",
        model: nn.Module | None = None,
        loss_fn: LossFn | None = None,
        m: int | None = None,
        mechanism: str = "full",
        sync_ascent: bool = False,
        adaptive: bool = False,
        strategy: str = "auto",
        ascent_batch: str = "same",
        **base_kwargs: Any,
    ) -> None:
        if adaptive:
            if not (isinstance(rule, str) and registry.normalise(rule) == "sam"):
                raise SharplabError("adaptive=True is davda54/sam's ASAM switch; give it with the default rule only")
            rule = ASAMRule(eta=0.0)
        self.rule = make_rule(rule, ascent_steps)
        rho = registry.default_rho(self.rule.name) if rho is None else registry.check_rho(rho)
        if mechanism not in MECHANISMS:
            raise SharplabError(f"unknown mechanism {mechanism!r}; choose one of: {', '.join(MECHANISMS)}")
        self.combiner = combiner if combiner is not None else Combiner()
        self.schedule = schedule if schedule is not None else Schedule()
        self.selection = selection
        _check_parts(self)
        self.base = build_base(params, base_optimizer, base_kwargs)
        for i, group in enumerate(self.base.param_groups):
            group.setdefault("rho", rho)
            registry.check_rho(group["rho"], f"rho of param group {i}")
        self._built = False
        super().__init__(self.base.param_groups, dict(self.base.defaults, rho=rho))
        self._built = True
        self.param_groups = self.base.param_groups
        self.state = self.base.state  # opt.state shows the base optimizer's state (davda54 / torch habit)
        if callable(perturb):
            if model is None:
                raise SharplabError("perturb=<function of the model> needs model=: the parameters it picks are the "
                                    "model's (e.g. its last layer for lsam)")
            perturb = perturb(model)
        self._perturb = None if perturb is None else {id(p) for p in perturb}
        self.bn_policy = check_bn_policy(bn_policy)
        self.model, self.loss_fn = model, loss_fn
        self.m, self.mechanism, self.sync_ascent = m, mechanism, sync_ascent
        for name, value, allowed in (("strategy", strategy, STRATEGIES),
                                     ("ascent_batch", ascent_batch, ASCENT_BATCHES)):
            if value not in allowed:
                raise SharplabError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.strategy, self.ascent_batch = strategy, ascent_batch
        if ascent_batch == "previous" and (m is not None or mechanism != "full" or selection is not None
                                           or not self.rule.needs_grad):
            raise SharplabError("ascent_batch='previous' (n-SAM) takes a gradient rule on the whole batch: leave "
                                "m, mechanism and selection out")
        #: the batch of the last step(inputs=, targets=), whose gradient n-SAM's next ascent uses
        self.previous_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        if (m is not None or mechanism != "full") and not self._plain_parts():
            raise SharplabError("m-sharpness and the mechanism variants run through sam_grad, which takes the plain "
                                "combiner, schedule and a gradient rule: leave combiner/schedule/selection out")
        self.rule.bind(self.base)
        self.combiner.bind(self.base)
        #: Steps the base optimizer took, and float16 steps skipped because a gradient was not finite.
        self.steps_taken, self.skipped_steps = 0, 0
        #: Diagnostics of the last step (detached tensors; call ``.item()`` when logging):
        #: ``grad_norm`` ||g(w)||, ``eps_norm`` ||eps||, ``loss`` L(w), ``perturbed_loss`` L(w + eps) and
        #: ``sharpness`` = L(w + eps) - L(w) (the latter three in ``step(closure)`` mode only). A step
        #: without perturbation (rho = 0, a step the schedule skips) leaves only ``loss``.
        self.stats: dict[str, torch.Tensor] = {}
        self._bn_guard: BNGuard | None = None  # BatchNorm statistics saved from first_step to second_step
        self._nesting = Nesting()  # learned by the first guard: may later guards lift their hook (BNGuard)
        self._phase: str | None = None  # None, "plain" (this step does not ascend) or "ascent" (w + eps held)
        self._skip = False  # first_step(scaler=) found a non-finite ascent gradient: second_step skips
        self._saved: _steps.Perturbed | None = None  # w and eps, from first_step to second_step
        self._old_buffers: list[torch.Tensor] | None = None  # copies of w, reused from step to step
        self._g: list[torch.Tensor] | None = None  # a copy of g = grad L(w), for combiners that need it
        self._lrs: list[float] = []  # the lr of each perturbed tensor, for combiner.after_step
        self._rhos: list[float] = []  # and its radius rho_t (further ascent steps)
        self._cache: tuple[int, tuple] | None = None  # (step, candidates): computed once per step
        self._driver: str | None = None  # "closure" / "batch" while step() runs the passes, None otherwise
        self._mask: list[bool] | None = None  # ESAM's tensor mask, drawn before the pass at w
        self._undo: dict | None = None  # the rule's state before a scaled step, put back if it is skipped
        self._left: dict[int, tuple[int, int]] = {}  # id(p) -> (id, version) of the .grad a step left

    # --- the parts ------------------------------------------------------------------------------------
    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The base optimizer (davda54/sam's name for :attr:`base`)."""
        return self.base

    @property
    def passes(self) -> int:
        """Forward/backward passes ``step(closure)`` runs this step: 1 (no ascent, or Momentum-SAM) or
        1 + ascent_steps."""
        if not self._candidates()[0] or not self.schedule.ascend(self.steps_taken):
            return 1
        return 1 if not self.rule.needs_grad else 1 + self.rule.steps

    def _plain_parts(self) -> bool:
        return (type(self.combiner) is Combiner and _plain_schedule(self.schedule) and self.selection is None
                and (self.rule.needs_grad or type(self.rule).bind is PerturbationRule.bind)  # not Momentum-SAM
                and type(self.rule).select is PerturbationRule.select)

    def _candidates(self) -> tuple[list[torch.Tensor], list[float], list[float]]:
        """The tensors this step may perturb, their radius rho_t and lr (groups with rho_t = 0 left out);
        computed once per step (the cache ends with the step)."""
        if self._cache is not None and self._cache[0] == self.steps_taken:
            return self._cache[1]
        params, rhos, lrs = [], [], []
        for gi, group in enumerate(self.param_groups):
            rho = registry.check_rho(group["rho"], f"rho of param group {gi}")
            lr = group.get("lr", 0.0)
            if type(self.schedule.rho) is not Constant:
                rho = self.schedule.radius(self.steps_taken, rho, float(lr), gi, group.get("initial_lr"))
            if rho <= 0:
                continue
            for p in group["params"]:
                if self._perturb is None or id(p) in self._perturb:
                    params.append(p)
                    rhos.append(rho)
                    lrs.append(lr)
        self._cache = (self.steps_taken, (params, rhos, lrs))
        return params, rhos, lrs

    def _ascends(self) -> bool:
        return self.schedule.ascend(self.steps_taken) and bool(self._candidates()[0])

    # --- the ascent phase -----------------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> bool:
        """The ascent phase: move w to w + eps using the gradient now in ``.grad`` (the gradient at w).

        Returns ``True`` when it perturbed; ``False`` on a step the schedule does not ascend (or where no
        perturbed tensor has a gradient): then the weights stay at w and :meth:`second_step` steps on the
        gradient at w. Called again before :meth:`second_step`, it takes one more ascent step of a
        multi-step rule from the current perturbation. With ``bn_policy="once"`` BatchNorm running
        statistics are saved here and restored by :meth:`second_step`. With a ``GradScaler`` (the backward
        was ``scaler.scale(loss).backward()``) the gradient is unscaled first; if it is not finite, w is
        left as is and :meth:`second_step` skips the step. ``zero_grad=True`` clears ``.grad`` for the pass
        at w + eps only when it perturbed (otherwise :meth:`second_step` needs the gradient at w).
        """
        if self._phase == "ascent":
            self._further_ascent()
        elif self._phase is None:
            if self._driver is None:
                self._cache = None  # a new step driven by hand: read the groups' rho and lr afresh
            if self.selection is not None and self._driver != "batch":
                raise SharplabError("esam with gamma < 1 (data selection) picks examples at w + eps, so it runs "
                                    "only in batch mode: opt.step(inputs=x, targets=y) with SAM(..., model=, "
                                    "loss_fn=) and a per-example loss")
            self._phase = "ascent" if self._start_ascent(scaler) else "plain"
        if zero_grad and self._phase == "ascent":  # a step without ascent descends on the gradient at w: kept
            self.zero_grad()
        return self._phase == "ascent"

    # --- the descent phase ----------------------------------------------------------------------------
    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """The descent phase: restore w from the saved copies, form the descent gradient (the combiner) from
        the gradient now in ``.grad`` and let the base optimizer step (through ``scaler.step`` if given).

        A non-finite gradient at w + eps raises :class:`Diverged` with w restored and no base step (with a
        scaler: the step is skipped). To clip a scaled descent gradient, unscale it first with
        ``scaler.unscale_(opt.base)``. After a ``first_step()`` that returned ``False`` it steps on the
        gradient at w (LookSAM adds its kept direction).
        """
        phase, self._phase = self._phase, None
        self._cache = None  # the next step reads the groups' rho and lr afresh
        if self._skip:  # first_step(scaler=) found an overflow: the whole step is skipped
            self._skip = False
            self._skip_step()
        elif phase == "ascent":
            self._descend(scaler)
        else:
            self._plain_descent(scaler)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to w: copy the saved weights into every perturbed tensor and end the BatchNorm guard (the
        statistics are put back). Safe to call at any time; the step in progress is abandoned."""
        if self._saved is not None:
            self._saved.restore()
            self._saved = None
        if self._bn_guard is not None:
            self._bn_guard.stop()
            self._bn_guard = None
        if self._phase == "ascent":
            self._phase = None

    def _pending(self) -> bool:
        """first_step() was called and second_step() not yet."""
        return self._skip or self._phase is not None

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus ``"sam"``: the step count and the parts' own state."""
        state = self.base.state_dict()
        state["sam"] = {"steps_taken": self.steps_taken, "rule": self.rule.state_dict(),
                        "combiner": self.combiner.state_dict(), "schedule": self.schedule.state_dict()}
        if self.previous_batch is not None:
            state["sam"]["previous_batch"] = list(self.previous_batch)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        sam_state = state_dict.pop("sam", {})
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # load_state_dict rebuilt the group dicts
        self.state = self.base.state
        self.steps_taken = int(sam_state.get("steps_taken", 0))
        self.rule.load_state_dict(sam_state.get("rule", {}))
        self.combiner.load_state_dict(sam_state.get("combiner", {}))
        self.schedule.load_state_dict(sam_state.get("schedule", {}))
        batch = sam_state.get("previous_batch")
        self.previous_batch = None if batch is None else (batch[0], batch[1])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._built:  # called by Optimizer.__init__ while building
            return super().add_param_group(param_group)
        param_group.setdefault("rho", self.defaults["rho"])
        registry.check_rho(param_group["rho"], "rho of the added param group")
        self.base.add_param_group(param_group)
        self.param_groups = self.base.param_groups

    def __repr__(self) -> str:
        parts = [f"rule={self.rule.name}"] + (["ascent_batch=previous"] if self.ascent_batch != "same" else [])
        if type(self.combiner) is not Combiner:
            parts.append(f"combiner={self.combiner.name}")
        if not _plain_schedule(self.schedule):
            parts.append(f"schedule={self.schedule}")
        if self.selection is not None:
            parts.append(f"selection=SharpestFraction({self.selection.gamma:g})")
        return f"SAM({', '.join(parts)}, bn_policy={self.bn_policy}, base={self.base!r})"


def _plain_schedule(s: Schedule) -> bool:
    """Ascend every step from step 0 with the constant radius."""
    return s.every == 1 and s.start == 0 and type(s.rho) is Constant


def _check_parts(opt: SAM) -> None:
    if not isinstance(opt.combiner, Combiner):
        raise SharplabError(f"combiner must be a sharplab.optim Combiner (GSAM, WSAM, LookSAM), got "
                            f"{type(opt.combiner).__name__}")
    if not isinstance(opt.schedule, Schedule):
        raise SharplabError(f"schedule must be a sharplab.optim.Schedule, got {type(opt.schedule).__name__}")
    if opt.selection is not None and not isinstance(opt.selection, SharpestFraction):
        raise SharplabError(f"selection must be a SharpestFraction, got {type(opt.selection).__name__}")
    plain = type(opt.combiner) is Combiner and _plain_schedule(opt.schedule) and opt.selection is None
    if opt.rule.steps > 1 and not plain:
        raise SharplabError("multi-step ascent (ascent_steps > 1) combines only with the plain combiner, schedule "
                            "and selection")
    if opt.selection is not None and not opt.rule.needs_grad:
        raise SharplabError("ESAM's data selection needs a gradient rule (not momentum-sam or random)")
