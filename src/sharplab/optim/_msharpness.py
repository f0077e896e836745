"""m-sharpness for :func:`~sharplab.optim.sam_grad`: every micro-batch of size m ascends on its own gradient.

g = (1/k) sum_j grad L_{S_j}(w + eps_j), eps_j = rule(grad L_{S_j}(w)) (Foret et al., 2021, sec. 4;
Andriushchenko & Flammarion, 2022, eq. 5), by three strategies that give the same gradient up to rounding:
``"vmap"`` (per-example formulas, :mod:`sharplab.optim._per_example`), ``"func"`` (``torch.func.vmap``) and
``"loop"`` (a plain-autograd SAM step per micro-batch, :func:`~sharplab.optim._ascent.whole_batch`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vjp, vmap

from sharplab.errors import SharplabError
from sharplab.optim import _per_example
from sharplab.optim._ascent import check_finite, whole_batch
from sharplab.optim._passes import RNGSnapshot
from sharplab.optim.rules import NORM_EPS, ASAMRule, Normed, PerturbationRule, SAMRule, USAMRule, global_norm, make_rule

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
STRATEGIES = ("auto", "vmap", "func", "loop")


def _fast_eligible(core: nn.Module, named, rule: PerturbationRule, mechanism: str) -> bool:
    """The per-example formulas cover this call: mechanism "full", a one-step closed-form rule, no autocast
    (their products would mix dtypes in the backward), and only supported layers holding trainable
    parameters (see :mod:`sharplab.optim._per_example`)."""
    autocast = any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))
    return (mechanism == "full" and type(rule) in (SAMRule, USAMRule, ASAMRule) and not autocast
            and _per_example.unsupported(core, [p for _, p in named]) is None)


def choose_strategy(strategy: str, core: nn.Module, named=None, rule: PerturbationRule | None = None,
              mechanism: str = "full", k: int = 1) -> str:
    """The m-sharpness path actually taken: "vmap" (per-example formulas), "func" (torch.func) or "loop"."""
    if strategy not in STRATEGIES:
        raise SharplabError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy in ("loop", "func"):  # fixed by the caller: no need to inspect the model
        return strategy
    if named is None:
        named = [(n, p) for n, p in core.named_parameters() if p.requires_grad]
    rule = make_rule("sam") if rule is None else rule
    fast = _fast_eligible(core, named, rule, mechanism)
    if strategy == "vmap":
        return "vmap" if fast else "func"
    if strategy != "auto":
        return strategy
    if fast:
        return "vmap"
    wide = any(isinstance(mod, nn.modules.conv._ConvNd) and mod.in_channels * mod.out_channels >= 128 * 128
               for mod in core.modules())
    return "loop" if wide else "func"


def _micro_losses(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The k micro-batch losses loss_fn(out_j, y_j) of outputs and targets laid out micro-batch by micro-batch."""
    return vmap(loss_fn)(out.reshape(k, -1, *out.shape[1:]), y.reshape(k, -1, *y.shape[1:]))


def per_example_batches(core, loss_fn, x, y, rho, m, rule, named, pert, chunk_size, step):
    """Vectorised m-sharpness from per-example gradient formulas (:mod:`sharplab.optim._per_example`):
    per chunk, one batched pass at w giving every micro-batch's gradient, then one batched pass at the
    micro-batch points w + eps_j whose backward gives only the sum of their gradients."""
    k = x.shape[0] // m
    params = [p for _, p in named]
    pert_params = [p for _, p in pert]
    rhos = [rho] * len(pert)
    passes = _per_example.Passes(core, pert_params)
    matrix = passes.matrix_weights
    closed = type(rule) in (SAMRule, USAMRule)  # eps_j = scale_j g_j: factored gradients stay factored
    chunk = k if chunk_size is None else max(1, min(chunk_size, k))
    total: list[torch.Tensor] | None = None
    losses = []
    for c in range(0, k, chunk):
        kc = min(chunk, k - c)
        xc, yc = x[c * m : (c + kc) * m], y[c * m : (c + kc) * m]
        rng = RNGSnapshot(params)
        with torch.enable_grad():
            loss_c = _micro_losses(loss_fn, passes.ascent(xc, kc), yc, kc)
            g, factors, sq = passes.per_example(loss_c.sum(), kc, factored=closed)
        held = [p for p in pert_params if id(p) not in factors]
        gl = [g[id(p)] if id(p) in g else p.new_zeros(kc, *p.shape) for p in held]
        del g
        sq_norms = torch.stack([torch.linalg.vector_norm(t.reshape(kc, -1), dim=1) ** 2 for t in gl], 1).sum(1) \
            if gl else loss_c.new_zeros(kc)
        norms = (sq_norms if sq is None else sq_norms + sq).sqrt()
        check_finite(norms, step)
        if closed:  # in place: the gradient buffers become eps_j = scale_j g_j
            scale = rho / (norms + NORM_EPS) if type(rule) is SAMRule else norms.new_full((kc,), rho)
            eps = [t.mul_(scale.view(kc, *[1] * (t.dim() - 1))) for t in gl]
            factors = {i: (a, gj * scale.view(kc, 1, 1)) for i, (a, gj) in factors.items()}
        else:
            eps = vmap(lambda gs: rule.update(None, gs, pert_params, rhos))(gl)
        del gl
        w_k = {id(p): e.add_(p.detach()) for p, e in zip(held, eps) if id(p) in matrix}  # w + eps_j
        eps_k = {id(p): e for p, e in zip(held, eps) if id(p) not in matrix}
        del eps
        rng.restore()
        with torch.enable_grad():
            out = passes.descent(xc, kc, w_k, eps_k, factors)
            new = torch.autograd.grad(_micro_losses(loss_fn, out, yc, kc).sum(), params, allow_unused=True)
        del w_k, eps_k, out, factors
        new = [torch.zeros_like(p) if t is None else t for t, p in zip(new, params)]
        total = new if total is None else [a.add_(b) for a, b in zip(total, new)]
        losses.append(loss_c.detach())
    if _tracks_running_stats(core):
        with torch.no_grad():
            core(x)  # one running-statistics update per step, from the whole batch at w
    return torch.cat(losses).mean(), [t / k for t in total]


def micro_batch_loop(model, core, loss_fn, x, y, rho, m, rule, mechanism, named, pert, step):
    """m-sharpness as a loop of plain-autograd SAM steps, one per micro-batch, with the BatchNorm semantics of
    the vectorised path (micro-batch statistics, running statistics updated once from the whole batch)."""
    k = x.shape[0] // m
    total, losses = None, []
    with _batch_statistics_only(core):
        for j in range(k):
            sl = slice(j * m, (j + 1) * m)
            loss, new, _ = whole_batch(core, core, None, loss_fn, x[sl], y[sl], rho, rule, mechanism, named,
                                        pert, "every", False, step)
            new = [torch.zeros_like(p) if g is None else g for g, (_, p) in zip(new, named)]
            total = new if total is None else [a.add_(b) for a, b in zip(total, new)]
            losses.append(loss.detach())
    if _tracks_running_stats(core):
        with torch.no_grad():
            core(x)
    return torch.stack(losses).mean(), [t / k for t in total]


def micro_batches(core, loss_fn, x, y, rho, m, rule, mechanism, named, pert, chunk_size, step):
    """Vectorised m-sharpness: every micro-batch ascends on its own gradient (torch.func.vmap)."""
    k = x.shape[0] // m
    xs, ys = x.reshape(k, m, *x.shape[1:]), y.reshape(k, m, *y.shape[1:])
    pert_names = [n for n, _ in pert]
    pert_params = [p for _, p in pert]
    all_w = {n: p.detach() for n, p in named}
    buffers = dict(core.named_buffers())
    rhos = [rho] * len(pert)

    def f(params: dict[str, torch.Tensor], xj: torch.Tensor) -> torch.Tensor:
        return functional_call(core, (params, buffers), (xj,))

    def loss_at(pert_w: dict[str, torch.Tensor], rest: dict[str, torch.Tensor], xj, yj):
        return loss_fn(f({**rest, **pert_w}, xj), yj)

    def ascent(xj, yj):
        """(loss at w, eps_j) for one micro-batch."""
        w_p = {n: all_w[n] for n in pert_names}
        rest = {n: t for n, t in all_w.items() if n not in w_p}
        g, loss = grad_and_value(loss_at)(w_p, rest, xj, yj)
        gl = [g[n] for n in pert_names]
        norm = global_norm(gl)
        eps = rule.update(None, Normed(gl, norm), pert_params, rhos)
        for _ in range(rule.steps - 1):
            shifted = {n: w_p[n] + e for n, e in zip(pert_names, eps)}
            gj = grad(loss_at)(shifted, rest, xj, yj)
            eps = rule.update(eps, [gj[n] for n in pert_names], pert_params, rhos)
        return loss, norm, eps

    def descent(eps, xj, yj):
        """This micro-batch's gradient of all parameters under the chosen mechanism."""
        phantom = {**all_w, **{n: all_w[n] + e for n, e in zip(pert_names, eps)}}
        if mechanism == "full":
            return grad(lambda w: loss_fn(f(w, xj), yj))(phantom)
        if mechanism == "iw_only":
            dl_df = grad(lambda o: loss_fn(o, yj))(f(phantom, xj))
            _, pullback = vjp(lambda w: f(w, xj), all_w)
        else:  # lr_only
            dl_df = grad(lambda o: loss_fn(o, yj))(f(all_w, xj))
            _, pullback = vjp(lambda w: f(w, xj), phantom)
        return pullback(dl_df)[0]

    # chunk by chunk, summing as we go: memory holds ``chunk`` per-micro-batch gradients and eps at a time
    chunk = k if chunk_size is None else max(1, min(chunk_size, k))
    total: dict[str, torch.Tensor] = {}
    losses = []
    with _batch_statistics_only(core):
        for c in range(0, k, chunk):
            xc, yc = xs[c : c + chunk], ys[c : c + chunk]
            rng = RNGSnapshot(pert_params)
            loss_c, norms, eps = vmap(ascent, randomness="different")(xc, yc)
            check_finite(norms, step)
            rng.restore()
            per_micro = vmap(descent, randomness="different")(eps, xc, yc)
            del eps
            for n, _ in named:
                part = per_micro[n].sum(0)
                total[n] = part if n not in total else total[n].add_(part)
            del per_micro
            losses.append(loss_c)
    if _tracks_running_stats(core):
        with torch.no_grad():
            core(x)  # one running-statistics update per step, from the whole batch at w
    new = [total[n] / k for n, _ in named]
    return torch.cat(losses).mean(), new


def _tracks_running_stats(core: nn.Module) -> bool:
    return any(
        isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats
        for mod in core.modules()
    )


class _batch_statistics_only:
    """Inside vmap, BatchNorm layers in training mode normalise with their micro-batch's statistics and
    leave the running statistics alone (stock BatchNorm would update them in place, which vmap rejects)."""

    def __init__(self, core: nn.Module) -> None:
        self.layers = [
            mod for mod in core.modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats
        ]

    def __enter__(self) -> None:
        for mod in self.layers:
            mod.track_running_stats = False

    def __exit__(self, *exc: object) -> None:
        for mod in self.layers:
            mod.track_running_stats = True
