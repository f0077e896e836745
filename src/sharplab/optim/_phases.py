"""The two phases of a :class:`~sharplab.optim.SAM` step, below ``first_step`` / ``second_step``.

Ascent (``first_step``): eps = rule(g) from the gradient at w (or without one for Momentum-SAM and the
random rule), w is saved and moved to w + eps, BatchNorm statistics are guarded for ``bn_policy="once"``;
a multi-step rule takes its further steps from the current perturbation. Descent (``second_step``): w is
restored from the saved copies, the combiner forms the descent gradient from g and g_s = grad L(w + eps),
the base optimizer steps. A float16 step with a non-finite gradient is skipped with the rule's state put
back. :class:`Phases` holds these internals; :class:`~sharplab.optim.SAM` holds the public interface.
"""

from __future__ import annotations

import torch

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import _amp, _steps
from sharplab.optim._passes import BNGuard
from sharplab.optim.combiners import Combiner
from sharplab.optim.rules import Normed, global_norm


class Phases:
    """The ascent and descent internals of :class:`~sharplab.optim.SAM` (a mixin: it reads the
    optimizer's rule, combiner, schedule, saved weights and BatchNorm guard)."""

    def _start_ascent(self, scaler: torch.amp.GradScaler | None) -> bool:
        params, rhos, lrs = self._candidates()
        if not params or not self.schedule.ascend(self.steps_taken):
            self._mask = None
            return False
        if scaler is not None and self._undo is None:
            self._undo = self.rule.state_dict()  # put back if this step is skipped (ESAM's generator, F-SAM's EMA)
        if self.rule.needs_grad:
            mask = self._mask if self._mask is not None else self.rule.select(params)
            self._mask = None
            keep = [i for i, p in enumerate(params) if (mask is None or mask[i]) and p.grad is not None]
            params, rhos, lrs = [params[i] for i in keep], [rhos[i] for i in keep], [lrs[i] for i in keep]
            if not params:
                return False
            _steps.check_dense(params)
            if scaler is not None:
                if self.rule.steps > 1:
                    raise SharplabError("a GradScaler with ascent_steps > 1 is not supported; use bfloat16 autocast")
                if _steps.overflowed(self, scaler, params):
                    self._skip = True
                    return False
            grads = [p.grad for p in params]
            norm = global_norm(grads)
            if not bool(torch.isfinite(norm)):
                raise Diverged(self.steps_taken, f"ascent gradient norm ({norm.item()})")  # weights unchanged
            self._g = [g.clone() for g in grads] if self.combiner.needs_g else None
            eps = self.rule.update(None, Normed(grads, norm), params, rhos)  # ||g|| taken once (Normed)
            self.stats = {"grad_norm": norm}
        else:  # Momentum-SAM, random: eps needs no gradient at w; frozen tensors stay at w
            keep = [i for i, p in enumerate(params) if p.requires_grad]
            params, rhos, lrs = [params[i] for i in keep], [rhos[i] for i in keep], [lrs[i] for i in keep]
            if not params:
                return False
            eps = self.rule.perturbation(None, params, rhos)
            self._g = None
            self.stats = {}
        self._lrs, self._rhos = lrs, rhos
        if self.bn_policy == "once" and self.rule.needs_grad:  # a one-pass rule's only pass updates them
            self._bn_guard = BNGuard(self.model, self._nesting).start()
        self._saved = _steps.Perturbed(params, eps, reuse=self._old_buffers)
        self._old_buffers = self._saved.old
        self.stats["eps_norm"] = global_norm(eps)
        torch._foreach_add_(params, eps)
        return True

    def _further_ascent(self) -> None:
        """One more step of a multi-step ascent, from the current perturbation (weights at w kept)."""
        saved = self._saved
        params = saved.params
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = global_norm(grads)
        if not bool(torch.isfinite(norm)):
            self.restore()
            raise Diverged(self.steps_taken, f"ascent gradient norm at w + eps ({norm.item()})")  # back at w
        eps = self.rule.update(saved.eps, Normed(grads, norm), params, self._rhos)
        saved.restore()
        saved.eps = eps
        self.stats["eps_norm"] = global_norm(eps)
        torch._foreach_add_(params, eps)

    def _plain_descent(self, scaler: torch.amp.GradScaler | None) -> None:
        """A step without ascent: the gradient at w, ``combiner.between`` (LookSAM), the base step."""
        if type(self.combiner) is not Combiner:
            params = [p for p in self._candidates()[0] if p.grad is not None]
            if params:
                if scaler is not None:  # LookSAM reads ||g||: unscale first (scaler.step then skips on inf)
                    scaler.unscale_(self.base)
                self.combiner.between([p.grad for p in params], params)
        self._base_step(scaler)

    def _descend(self, scaler: torch.amp.GradScaler | None) -> None:
        params = self._saved.params
        self.restore()
        pairs = [i for i, p in enumerate(params) if p.grad is not None]
        gs = [params[i].grad for i in pairs]
        if scaler is not None:
            if type(self.combiner) is not Combiner:  # the combiner mixes g (unscaled) with g_s: unscale g_s
                scaler.unscale_(self.base)
                if any(bool(f.item()) for f in _amp.found_inf_flags(scaler, self.base)):
                    self._skip_step()
                    return
        else:
            norm = global_norm(gs)
            if not bool(torch.isfinite(norm)):
                self._g = None
                self._undo = None  # the weights are back at w and the base optimizer did not step
                raise Diverged(self.steps_taken, f"gradient at w + eps (norm {norm.item()})")
        if type(self.combiner) is not Combiner:
            g = None if self._g is None else [self._g[i] for i in pairs]
            self.combiner.combine(g, gs, [params[i] for i in pairs])
        self._g = None
        if self._base_step(scaler):
            self.combiner.after_step([params[i] for i in pairs], [self._lrs[i] for i in pairs])

    def _skip_step(self) -> None:
        """A float16 step with a non-finite gradient: weights at w, no base step, the rule's state put back,
        no gradient left behind (scaler.update() lowers the scale)."""
        if self._undo is not None:
            self.rule.load_state_dict(self._undo)
        self._undo, self._g = None, None
        self.skipped_steps += 1
        self.zero_grad()

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
