"""The whole-batch SAM gradient without touching the weights: the pass at w, the rule's eps, and the pass at
the phantom point w + eps through ``torch.func.functional_call`` (so the mechanism-isolating variants can
pull the loss and the Jacobian from different points). Used by :func:`~sharplab.optim.sam_grad` and by the
looped m-sharpness strategy; the ascent itself is :func:`ascent`, the same call :class:`~sharplab.optim.SAM`
makes (norm taken once, checked finite, then the rule)."""

from __future__ import annotations

import torch
from torch.func import functional_call

from sharplab.errors import Diverged
from sharplab.optim._distributed import allreduce_mean_, no_sync
from sharplab.optim._passes import RNGSnapshot, frozen_bn_stats
from sharplab.optim.rules import Normed, PerturbationRule, global_norm


def ascent(rule: PerturbationRule, eps: list[torch.Tensor] | None, grads: list[torch.Tensor],
           params: list[torch.Tensor], rhos: list[float], step: int | None) -> list[torch.Tensor]:
    """One ascent step: ``rule.update(eps, g)`` with ||g|| taken once and checked finite."""
    norm = global_norm(grads)
    check_finite(norm, step)
    return rule.update(eps, Normed(grads, norm), params, rhos)


def check_finite(norm: torch.Tensor, step: int | None) -> None:
    if not torch.isfinite(norm).all():
        raise Diverged(step, f"ascent gradient norm ({norm.max().item()})")


def whole_batch(model, core, ddp, loss_fn, x, y, rho, rule, mechanism, named, pert, bn_policy,
                 sync_ascent, step, want_g=False):
    """Plain-autograd SAM step on the whole batch; the phantom point is evaluated with functional_call.
    Returns (loss at w, descent gradients, gradients of all parameters at w if ``want_g`` else None).

    A rule that needs no gradient (``random``) runs one pass, at w + eps, and returns the loss there."""
    params = [p for _, p in named]
    pert_params = [p for _, p in pert]
    if not rule.needs_grad and mechanism == "full" and not want_g:  # random: its only pass is at w + eps
        eps = [e.detach() for e in rule.perturbation(None, pert_params, [rho] * len(pert))]
        check_finite(global_norm(eps), step)
        at_eps = {n: p + e for (n, p), e in zip(pert, eps)}
        loss = loss_fn(functional_call(core, at_eps, (x,)), y)  # BatchNorm statistics: updated once, here
        return loss, torch.autograd.grad(loss, params, allow_unused=True), None
    rng = RNGSnapshot(params)
    with no_sync(ddp):
        out = model(x)
    loss = loss_fn(out, y)
    wanted_params = params if want_g else pert_params
    wanted = wanted_params + ([out] if mechanism == "lr_only" else [])
    first = torch.autograd.grad(loss, wanted, retain_graph=mechanism == "iw_only", allow_unused=True)
    at_w = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(first, wanted_params)]
    by_id = {id(p): t for p, t in zip(wanted_params, at_w)}
    g = [by_id[id(p)] for p in pert_params]
    if sync_ascent:
        allreduce_mean_(g)
    rhos = [rho] * len(g)
    eps = ascent(rule, None, g, pert_params, rhos, step)

    def at(eps_list: list[torch.Tensor], detach: bool) -> dict[str, torch.Tensor]:
        """Parameters at w + eps; gradients flow to w unless ``detach``."""
        return {n: (p.detach() if detach else p) + e for (n, p), e in zip(pert, eps_list)}

    for _ in range(rule.steps - 1):  # extra ascent steps (MultiStep)
        rng.restore()
        phantom = {n: t.requires_grad_() for n, t in at(eps, detach=True).items()}
        with frozen_bn_stats(core):
            lj = loss_fn(functional_call(core, phantom, (x,)), y)
        gj = list(torch.autograd.grad(lj, list(phantom.values()), allow_unused=True))
        gj = [torch.zeros_like(p) if t is None else t for t, p in zip(gj, pert_params)]
        if sync_ascent:
            allreduce_mean_(gj)
        eps = ascent(rule, eps, gj, pert_params, rhos, step)

    rng.restore()
    eps = [e.detach() for e in eps]
    with frozen_bn_stats(core, enabled=bn_policy == "once"):
        if mechanism == "iw_only":
            with torch.no_grad():
                out_t = functional_call(core, at(eps, detach=True), (x,))
            out_t.requires_grad_()
            (dl_df_t,) = torch.autograd.grad(loss_fn(out_t, y), out_t)
            new = torch.autograd.grad(out, params, grad_outputs=dl_df_t, allow_unused=True)
        else:
            out_t = functional_call(core, at(eps, detach=False), (x,))
            if mechanism == "lr_only":
                new = torch.autograd.grad(out_t, params, grad_outputs=first[-1], allow_unused=True)
            else:
                new = torch.autograd.grad(loss_fn(out_t, y), params, allow_unused=True)
    return loss, new, (at_w if want_g else None)
