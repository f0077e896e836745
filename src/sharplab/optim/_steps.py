"""What :class:`~sharplab.optim.SAM`'s step is made of, apart from the two passes themselves.

* :class:`Perturbed` -- the weights at w saved by ``first_step`` and the perturbation eps applied on
  top of them; ``second_step`` copies w back from the saved tensors (never by subtracting eps), with
  one fused copy over all perturbed tensors.
* Gradient bookkeeping: :func:`clear_grads` (``zero_grad`` without the profiler label, between the
  passes), :func:`grads_left` / :func:`check_fresh` (refuse gradients a closure-mode step would lose).
* Batch mode: :func:`batch_grad` (``step(inputs=, targets=)`` with m-sharpness or a mechanism, through
  :func:`~sharplab.optim.sam_grad`); :func:`check_dense` (sparse gradients refused).
* float16 with a ``GradScaler``: :func:`scaler_handover` finds the scaler that called ``step`` (and the
  pass at w a framework already ran), :func:`overflowed` unscales the ascent gradient and decides the
  skip alike on every worker, :func:`base_step` steps the base optimizer through the scaler.

Nothing here makes a host sync unless a ``GradScaler`` is in use (the skip decision needs one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sharplab.errors import SharplabError
from sharplab.optim import _amp
from sharplab.optim._distributed import any_worker, unwrap
from sharplab.optim.functional import sam_grad
from sharplab.optim.rules import global_norm

Groups = list[dict[str, Any]]


class Perturbed:
    """The weights at w of ``params`` (copies) and the perturbation ``eps`` they were moved by."""

    def __init__(self, params: list[torch.Tensor], eps: list[torch.Tensor],
                 reuse: list[torch.Tensor] | None = None) -> None:
        self.params, self.eps = params, eps
        if reuse is not None and len(reuse) == len(params) and all(
                b.shape == p.shape and b.dtype == p.dtype and b.device == p.device for b, p in zip(reuse, params)):
            torch._foreach_copy_(reuse, params)  # the last step's buffers: no allocation (and no page faults)
            self.old = reuse
        else:
            self.old = [p.clone() for p in params]  # under no_grad (first_step)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to w, every saved tensor alike (with or without ``.grad``)."""
        torch._foreach_copy_(self.params, self.old)


def clear_grads(groups: Groups) -> None:
    """``Optimizer.zero_grad()`` (``set_to_none=True``) for the passes SAM runs itself."""
    for group in groups:
        for p in group["params"]:
            p.grad = None


def grads_left(groups: Groups) -> dict[int, tuple[int, int]]:
    """id(p) -> (id, version) of each ``.grad`` a step leaves behind."""
    return {id(p): (id(p.grad), p.grad._version) for group in groups for p in group["params"] if p.grad is not None}


def check_fresh(groups: Groups, left: dict[int, tuple[int, int]]) -> None:
    """Refuse gradients accumulated outside the closure: SAM zeroes ``.grad`` before each pass."""
    for group in groups:
        for p in group["params"]:
            g = p.grad
            if g is None or left.get(id(p)) == (id(g), g._version):
                continue  # none, or what the last step left
            if bool(g.any()):
                raise SharplabError(
                    "SAM.step(closure) found gradients computed outside the closure (SAM zeroes them "
                    "before each pass): compute them inside the closure (accumulate by looping over "
                    "micro-batches in it), or drive first_step()/second_step() yourself")


def scaler_handover(opt: Any, closure: Callable | None, scaler: torch.amp.GradScaler | None,
                    pending: bool) -> tuple[Callable | None, torch.amp.GradScaler | None, tuple[Any] | None]:
    """``(closure, scaler, ran)`` for a ``step`` that a ``GradScaler`` may have called.

    ``scaler.step(opt, closure)`` (Accelerate's fp16) calls ``opt.step`` with no scaler argument: the scaler
    is found on the call stack. Lightning's ``16-mixed`` ran the closure (the pass at w) itself and calls
    ``scaler.step(opt)`` with none: its closure is taken from the caller and ``ran = (its result,)``.
    """
    if scaler is not None or not _amp.inside_scaler_step(opt):
        return closure, scaler, None
    found = _amp.calling_scaler(opt)
    if found is None:
        raise SharplabError("SAM.step was called by a GradScaler it cannot find on the call stack; "
                            "call opt.step(closure, scaler=scaler) instead")
    scaler, caller = found
    if closure is None and not pending:
        ran = _amp.framework_closure(caller)  # Lightning's 16-mixed: the pass at w is done
        if ran is not None:
            return ran[0], scaler, (ran[1],)
    return closure, scaler, None


def overflowed(opt: Any, scaler: torch.amp.GradScaler, params: list[torch.Tensor]) -> bool:
    """Unscale the ascent gradient in place; ``True`` on every worker alike if it is not finite on any.

    The unscaling is recorded under ``opt`` itself (the descent gradient is unscaled under ``opt.base``).
    """
    scaler.unscale_(opt)
    grads = [p.grad for p in params if p.grad is not None]
    local = any(bool(f.item()) for f in _amp.found_inf_flags(scaler, opt))
    local = local or (bool(grads) and not bool(torch.isfinite(global_norm(grads))))
    ddp = unwrap(opt.model)[1] if opt.model is not None else None
    # local ascent under DDP: workers see different ascent gradients, so agree before skipping
    overflow = any_worker(local, params[0].device) if ddp is not None and not opt.sync_ascent else local
    if overflow:
        _amp.record_overflow(scaler, opt, params[0].device)
    return overflow


def base_step(base: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
    """The base optimizer's step (through ``scaler.step`` if given); ``False`` if the scaler skipped it."""
    if scaler is None:
        base.step()
        return True
    scaler.step(base)
    return not any(bool(f.item()) for f in _amp.found_inf_flags(scaler, base))


def check_dense(params: list[torch.Tensor]) -> None:
    """Refuse sparse gradients (``nn.Embedding(sparse=True)``) in one line: their norm and the restore of w
    are not defined for them here."""
    if any(p.grad is not None and p.grad.is_sparse for p in params):
        raise SharplabError("SAM does not support sparse gradients (e.g. nn.Embedding(sparse=True)): build the "
                            "layer with sparse=False, or leave it out of SAM's perturbation with perturb=")


def batch_grad(opt: Any, inputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """``step(inputs=, targets=)``: fill ``.grad`` with :func:`~sharplab.optim.sam_grad` (m-sharpness,
    mechanism variants) with the optimizer's settings; returns the loss at w."""
    if opt.model is None or opt.loss_fn is None or targets is None:
        raise SharplabError("step(inputs=, targets=) needs SAM(..., model=model, loss_fn=loss_fn) "
                            "and both inputs and targets")
    rhos = {group["rho"] for group in opt.param_groups if group["rho"] > 0}
    if len(rhos) > 1:
        raise SharplabError("step(inputs=, targets=) supports one rho for all groups; use step(closure)")
    params = opt._candidates()[0]
    opt.zero_grad()
    if not params:  # rho = 0 in every group: one plain pass at w, exactly the base optimizer's gradient
        return sam_grad(opt.model, opt.loss_fn, inputs, targets, rho=0.0, bn_policy=opt.bn_policy,
                        step=opt.steps_taken)
    return sam_grad(
        opt.model, opt.loss_fn, inputs, targets, rho=rhos.pop() if rhos else 0.0, m=opt.m,
        rule=opt.rule, mechanism=opt.mechanism, perturb=params, bn_policy=opt.bn_policy,
        sync_ascent=opt.sync_ascent, strategy=opt.strategy, step=opt.steps_taken,
    )


def param_ids(params: Iterable[Any]) -> set[int]:
    """ids of the tensors in a parameter iterable or a list of param-group dicts."""
    ids: set[int] = set()
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            ids.update(id(p) for p in ([group] if isinstance(group, torch.Tensor) else group))
        else:
            ids.add(id(item))
    return ids
