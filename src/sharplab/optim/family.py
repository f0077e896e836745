"""``FamilySAM``: SAM composed of a rule (ascent), a combiner (descent), a schedule (when, which rho) and,
for ESAM, a data selection. ``sharplab.optim.create(name, ...)`` builds the named members.

One step at step count t (the passes are forward + backward unless noted):

* the schedule says no ascent (or every rho_t = 0): one pass at w, ``combiner.between`` (LookSAM adds its
  kept direction), base step -- with the plain combiner bit-identical to the base optimizer;
* a rule that needs no gradient (Momentum-SAM): eps from optimizer state, one pass at w + eps;
* otherwise: pass at w (only the tensors ``rule.select`` keeps get a gradient, ESAM), eps = rule(g),
  pass at w + eps (on the sharpest examples only with a selection, batch mode), restore w,
  ``combiner.combine(g, g_s)``, base step, ``combiner.after_step`` (WSAM decoupled).

With the defaults (plain combiner, ``Schedule()``, no selection) it is exactly :class:`SAM`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import _amp, _steps
from sharplab.optim._distributed import no_sync, unwrap
from sharplab.optim._passes import RNGSnapshot, frozen_bn_stats
from sharplab.optim.combiners import Combiner
from sharplab.optim.rules import Normed, PerturbationRule, global_norm
from sharplab.optim.sam import SAM
from sharplab.optim.schedules import Constant, Schedule
from sharplab.optim.selection import SharpestFraction


class FamilySAM(SAM):
    """:class:`SAM` with ``combiner=``, ``schedule=`` and ``selection=`` (see the module docstring).

    Args:
        params, base_optimizer, rho, rule, **kwargs: as for :class:`SAM`.
        combiner: a :class:`~sharplab.optim.combiners.Combiner` (default: plain SAM, descend on g_s).
        schedule: a :class:`~sharplab.optim.schedules.Schedule` (default: ascend every step, constant rho).
        selection: ESAM's :class:`~sharplab.optim.selection.SharpestFraction`; needs
            ``step(inputs=, targets=)`` with ``model=`` and a ``loss_fn`` returning per-example losses.
    """

    def __init__(self, params: Iterable[Any] | None, base_optimizer: Any = torch.optim.SGD, rho: float = 0.05,
                 rule: str | PerturbationRule = "sam", *, combiner: Combiner | None = None,
                 schedule: Schedule | None = None, selection: SharpestFraction | None = None, **kwargs: Any) -> None:
        super().__init__(params, base_optimizer, rho, rule, **kwargs)
        self.combiner = combiner or Combiner()
        self.schedule = schedule or Schedule()
        self.selection = selection
        self.rule.bind(self.base)
        if self.rule.steps > 1 and not self._fam_plain():
            raise SharplabError("multi-step ascent combines only with the plain combiner, schedule and selection")

    def _fam_plain(self) -> bool:
        s = self.schedule
        return (type(self.combiner) is Combiner and s.every == 1 and s.start == 0 and isinstance(s.rho, Constant)
                and self.selection is None and self.rule.needs_grad
                and type(self.rule).select is PerturbationRule.select)

    def _fam_radii(self) -> tuple[list[torch.Tensor], list[float], list[float]]:
        params, rhos, lrs = [], [], []
        for gi, group in enumerate(self.param_groups):
            rho = self.schedule.radius(self.steps_taken, group["rho"], group.get("lr", 0.0), gi)
            if rho <= 0:
                continue
            for p in group["params"]:
                if self._perturb is None or id(p) in self._perturb:
                    params.append(p)
                    rhos.append(rho)
                    lrs.append(group.get("lr", 0.0))
        return params, rhos, lrs

    def step(self, closure: Callable[[], torch.Tensor] | None = None, *, inputs: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
        """One step of the variant (see the module docstring); returns the loss at w.

        float16 with a ``GradScaler`` works as for :class:`SAM` (``scaler=``, ``scaler.step(opt, closure)``,
        Lightning's ``16-mixed``): each pass's gradient is unscaled before the rule or the combiner reads it,
        and a step whose gradient is not finite in either pass is skipped with the weights at w and the
        variant's state (EMA, LookSAM's kept component, the base optimizer's momentum) as it was.
        """
        if self._fam_plain():
            return super().step(closure, inputs=inputs, targets=targets, scaler=scaler)
        closure, scaler, ran = _steps.scaler_handover(self, closure, scaler, pending=False)
        if self.selection is not None:
            if inputs is None or targets is None or self.model is None or self.loss_fn is None:
                raise SharplabError("ESAM's data selection needs step(inputs=x, targets=y) and SAM(..., model=, "
                                    "loss_fn=) with a per-example loss, e.g. nn.CrossEntropyLoss(reduction='none')")
            if ran is not None:
                raise SharplabError("ESAM's data selection runs its own passes: call opt.step(inputs=, targets=, "
                                    "scaler=) instead of letting the framework run the closure")
            call = _SelectionPasses(self, inputs, targets, scaler)
        elif inputs is not None:
            raise SharplabError("this variant runs with step(closure); step(inputs=, targets=) is for plain SAM "
                                "and ESAM's data selection")
        elif closure is None:
            raise SharplabError("step needs a closure (zero grads, forward, backward, return loss)")
        else:
            if ran is None:
                self._check_fresh()  # as SAM: gradients made outside the closure are an error, not dropped
            call = _ClosurePasses(torch.enable_grad()(closure), self, ran)
        loss = self._family_step(call, scaler)
        if ran is not None:  # the framework runs the next pass at w before SAM can zero: leave no gradient
            self.zero_grad()
        return loss

    @torch.no_grad()
    def _family_step(self, call: _ClosurePasses, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
        params, rhos, lrs = self._fam_radii()
        ddp = unwrap(self.model)[1] if self.model is not None else None
        if not params or not self.schedule.ascend(self.steps_taken):
            loss = call.at_w(ddp=None)
            if scaler is not None:  # LookSAM reads ||g||: unscale first (scaler.step then skips on inf)
                scaler.unscale_(self.base)
            if params or any(p.grad is not None for p in self._fam_all()):
                grads = [p.grad for p in params if p.grad is not None]
                if len(grads) == len(params):
                    self.combiner.between(grads, params)
            self.stats = {"loss": loss}
            return self._fam_finish(loss, None, params, lrs, scaler)
        rng = RNGSnapshot(params)
        if not self.rule.needs_grad:  # Momentum-SAM: one pass, at w + eps
            eps = self.rule.perturbation(None, params, rhos)
            old = self._fam_shift(params, eps)
            loss = call.at_w(ddp=None)
            self._fam_put_back(params, old)
            self.stats = {"eps_norm": global_norm(eps), "perturbed_loss": loss}
            return self._fam_finish(loss, None, params, lrs, scaler)
        undo = self.rule.state_dict() if scaler is not None else None  # ESAM's generator, F-SAM's EMA
        mask = self.rule.select(params)
        frozen = [p for p, keep in zip(params, mask or []) if not keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with no_sync(None if self.sync_ascent else ddp):
                loss = call.at_w(ddp=ddp)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if scaler is not None and _steps.overflowed(self, scaler, params):
            return self._fam_skip(loss, undo)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = global_norm(grads)
        if not torch.isfinite(norm):
            raise Diverged(self.steps_taken, f"ascent gradient norm ({norm.item()}) at step {self.steps_taken}")
        g = [t.clone() for t in grads] if self.combiner.needs_g else None
        eps = self.rule.update(None, Normed(grads, norm), params, rhos)
        old = self._fam_shift(params, eps)
        rng.restore()
        with frozen_bn_stats(self.model, enabled=self.bn_policy == "once", nesting=self._nesting):
            perturbed = call.at_eps()
        self._fam_put_back(params, old)
        if scaler is not None:  # the combiner mixes g (unscaled above) with g_s: unscale g_s too
            scaler.unscale_(self.base)
            if any(bool(f.item()) for f in _amp.found_inf_flags(scaler, self.base)):
                return self._fam_skip(loss, undo)
        gs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, t in zip(params, gs):
            p.grad = t
        self.combiner.combine(g, gs, params)
        self.stats = {"grad_norm": norm, "eps_norm": global_norm(eps), "loss": loss, "perturbed_loss": perturbed}
        if isinstance(call, _SelectionPasses):
            self.stats["selected"] = call.selected  # indices of the examples the descent used
        elif isinstance(loss, torch.Tensor) and isinstance(perturbed, torch.Tensor):
            self.stats["sharpness"] = perturbed - loss
        return self._fam_finish(loss, self.combiner, params, lrs, scaler)

    def _fam_skip(self, loss: torch.Tensor, undo: dict | None) -> torch.Tensor:
        """A float16 step with a non-finite gradient: weights at w, no base step, the rule's state put back
        (scaler.update() lowers the scale)."""
        if undo is not None:
            self.rule.load_state_dict(undo)
        self.skipped_steps += 1
        self.stats = {"loss": loss}
        self.zero_grad()
        return loss

    def _fam_all(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _fam_shift(params: list[torch.Tensor], eps: list[torch.Tensor]) -> list[torch.Tensor]:
        old = [p.detach().clone() for p in params]
        torch._foreach_add_(params, eps)
        return old

    @staticmethod
    def _fam_put_back(params: list[torch.Tensor], old: list[torch.Tensor]) -> None:
        torch._foreach_copy_(params, old)

    def _fam_finish(self, loss: torch.Tensor, combiner: Combiner | None, params: list, lrs: list,
                    scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
        # SAM's: the base step (through the scaler), the step count, and which gradients it left
        if self._base_step(scaler) and combiner is not None:
            combiner.after_step(params, lrs)
        return loss

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["sam"].update(combiner=self.combiner.state_dict(), schedule=self.schedule.state_dict())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sam_state = dict(state_dict.get("sam", {}))
        super().load_state_dict(state_dict)
        self.combiner.load_state_dict(sam_state.get("combiner", {}))
        self.schedule.load_state_dict(sam_state.get("schedule", {}))

    def __repr__(self) -> str:
        return (f"FamilySAM(rule={self.rule.name}, combiner={self.combiner.name}, schedule={self.schedule}, "
                f"base={self.base!r})")


SAM.family = FamilySAM


class _ClosurePasses:
    """The two passes of ``step(closure)``: the closure at w, then at w + eps."""

    def __init__(self, closure: Callable[[], torch.Tensor], opt: FamilySAM, ran: tuple[Any] | None = None) -> None:
        self.closure, self.opt = closure, opt
        self.ran = ran  # the result of the pass at w a framework already ran (Lightning's 16-mixed)

    def _call(self) -> torch.Tensor:
        self.opt.zero_grad()  # a closure that forgets to zero must not add the two passes' gradients
        loss = self.closure()
        if loss is None:
            raise SharplabError("the closure returned None; it must return the loss tensor")
        return loss.detach() if isinstance(loss, torch.Tensor) else loss

    def at_w(self, ddp: Any) -> torch.Tensor:
        if self.ran is not None:
            loss, self.ran = self.ran[0], None
            if loss is None:
                raise SharplabError("the closure returned None; it must return the loss tensor")
            return loss.detach() if isinstance(loss, torch.Tensor) else loss
        return self._call()

    def at_eps(self) -> torch.Tensor:
        return self._call()


class _SelectionPasses(_ClosurePasses):
    """ESAM's passes in batch mode: per-example losses at w, the sharpest fraction chosen at w + eps."""

    def __init__(self, opt: FamilySAM, x: torch.Tensor, y: torch.Tensor,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.opt, self.x, self.y, self.scaler = opt, x, y, scaler
        self.before: torch.Tensor | None = None

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def at_w(self, ddp: Any) -> torch.Tensor:
        self.opt.zero_grad()
        with torch.enable_grad():
            losses = self.opt.loss_fn(self.opt.model(self.x), self.y)
            if losses.ndim != 1 or losses.shape[0] != self.x.shape[0]:
                raise SharplabError(f"ESAM's data selection needs per-example losses (shape [{self.x.shape[0]}]), "
                                    f"got {tuple(losses.shape)}: use e.g. nn.CrossEntropyLoss(reduction='none')")
            self._backward(losses.mean())
        self.before = losses.detach()
        return self.before.mean()

    def at_eps(self) -> torch.Tensor:
        opt = self.opt
        after = opt.loss_fn(opt.model(self.x), self.y).detach()
        idx = opt.selection.pick(after - self.before)
        opt.zero_grad()
        with torch.enable_grad():
            loss = opt.loss_fn(opt.model(self.x[idx]), self.y[idx]).mean()
            self._backward(loss)
        self.selected = idx
        return loss.detach()
