"""``sam_grad``: fill ``p.grad`` with a SAM gradient, for any model, loss and base optimizer.

For a model f(x; w) and a mean loss L(w) = l(f(x; w), y), one SAM gradient is (Foret et al., 2021,
eq. 3, dropping the second-order term)

    eps = rule(grad L(w)),    w~ = w + eps,    g_SAM = grad L(w~) = J(w~)^T dl/df(w~),

where J is the Jacobian of the outputs with respect to the parameters. The mechanism-isolating variants
of Springer et al. (ICLR 2024, sec. 4) take only one factor at the phantom parameter w~:

    iw_only  (importance weighting only):   g = J(w)^T  dl/df(w~)
    lr_only  (learning-rate scaling only):  g = J(w~)^T dl/df(w)

m-sharpness (Foret et al., 2021, sec. 4; Andriushchenko & Flammarion, 2022, eq. 5) splits the batch into
micro-batches S_1..S_k of size m and averages their own SAM gradients,

    g = (1/k) sum_j grad L_{S_j}(w + eps_j),    eps_j = rule(grad L_{S_j}(w)),

computed for all j at once. ``strategy="vmap"`` runs each pass once on the whole batch with
per-example gradient formulas for the usual layers (:mod:`sharplab.optim._per_example`): the ascent
pass gives every micro-batch's gradient in closed form, and the descent pass, since eps_j is held
constant, needs only their sum, d/dw sum_j L_{S_j}(w + eps_j), which the ordinary batched backward gives.
``"func"`` uses ``torch.func`` (``vmap`` of ``grad``) and covers any model; ``"loop"`` is a Python loop
of plain SAM steps. So m = 1 (1-SAM) costs a few vectorised passes instead of a loop over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vjp, vmap

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import _per_example
from sharplab.optim._distributed import allreduce_mean_, no_sync, unwrap
from sharplab.optim._passes import RNGSnapshot, check_bn_policy, frozen_bn_stats
from sharplab.optim.combiners import WSAM, Combiner, LookSAM
from sharplab.optim.rules import (
    NORM_EPS,
    ASAMRule,
    Normed,
    PerturbationRule,
    SAMRule,
    USAMRule,
    global_norm,
    make_rule,
)

MECHANISMS = ("full", "iw_only", "lr_only")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sam_grad(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rho: float = 0.05,
    m: int | None = None,
    rule: str | PerturbationRule = "sam",
    mechanism: str = "full",
    *,
    perturb: Iterable[torch.Tensor] | None = None,
    bn_policy: str = "once",
    ascent_steps: int = 1,
    sync_ascent: bool = False,
    chunk_size: int | None = None,
    strategy: str = "auto",
    combiner: Combiner | None = None,
    step: int | None = None,
) -> torch.Tensor:
    """Add the SAM gradient of ``loss_fn(model(inputs), targets)`` to the parameters' ``.grad``.

    Like ``loss.backward()`` it accumulates into ``.grad`` (zero the gradients first, or call it once per
    micro-batch to accumulate), and it never changes the parameter values.

    Args:
        model: any ``nn.Module`` returning outputs (logits) for ``inputs``; may be wrapped in DDP.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        inputs, targets: the batch.
        rho: perturbation radius rho >= 0; ``rho = 0`` is exactly one plain backward pass.
        m: micro-batch size for m-sharpness (must divide the batch); ``None`` = the whole batch.
        rule: ``"sam"``, ``"usam"``, ``"asam"``, ``"random"`` or a :class:`PerturbationRule`.
        mechanism: ``"full"``, ``"iw_only"`` or ``"lr_only"`` (see module docstring).
        perturb: the parameters to perturb (others stay at w, e.g. ``model.head.parameters()`` for
            last-layer SAM); ``None`` perturbs all.
        bn_policy: ``"once"`` (only the pass at w updates BatchNorm statistics) or ``"every"``.
            With ``m`` set, BatchNorm uses per-micro-batch batch statistics inside the vectorised passes
            and the running statistics are updated once per step by a forward at w on the whole batch.
        ascent_steps: k > 1 runs k projected ascent steps (:class:`~sharplab.optim.rules.MultiStep`).
        sync_ascent: under DDP, average the ascent gradient over workers (default: local ascent).
        chunk_size: with ``m``, process this many micro-batches at a time (bounds memory: the
            per-micro-batch gradients held at once are at most ``chunk_size`` copies of the parameters;
            with ``"vmap"`` layers with few rows per micro-batch keep theirs factored, much smaller).
        strategy: with ``m``: ``"vmap"`` (vectorised: per-example formulas when every layer holding a
            trainable parameter is ``Linear``, ``Conv2d``, ``BatchNorm``, ``GroupNorm`` or ``LayerNorm``, the
            mechanism is ``"full"`` and the rule is ``sam``/``usam``/``asam`` with one ascent step;
            ``torch.func`` otherwise), ``"func"`` (always ``torch.func.vmap``), ``"loop"`` (one
            plain-autograd SAM step per micro-batch, memory of one step) or ``"auto"`` (default): the
            per-example formulas where they apply; otherwise the loop for models with a wide convolution
            (in x out channels >= 128 x 128), which ``torch.func`` turns into a slow grouped convolution on
            CPU, and ``torch.func`` for the rest. All give the same gradient up to rounding; dropout masks
            differ between them (each draws its own), and BatchNorm uses per-micro-batch statistics in all.
        combiner: a descent combiner applied to the SAM gradient g_s with the gradient g at w (whole batch
            only): :class:`~sharplab.optim.combiners.GSAM` (d = g_s - alpha g_perp) or
            ``WSAM(decouple=False)`` (d = g + gamma/(1-gamma) (g_s - g)). Combiners that act between or
            after optimizer steps (LookSAM, decoupled WSAM) need :func:`~sharplab.optim.create` instead.
        step: optional step index, used only in error messages.

    Returns:
        The loss at w (detached).

    Raises:
        SharplabError: negative rho, ``m`` not dividing the batch, unknown rule or mechanism.
        Diverged: the ascent gradient norm is not finite.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> model = torch.nn.Linear(4, 3)
        >>> base = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> base.zero_grad()
        >>> loss = sam_grad(model, F.cross_entropy, x, y, rho=0.05)
        >>> base.step()
    """
    if rho < 0:
        raise SharplabError(f"rho must be >= 0, got {rho}")
    if mechanism not in MECHANISMS:
        raise SharplabError(f"unknown mechanism {mechanism!r}; choose one of: {', '.join(MECHANISMS)}")
    check_bn_policy(bn_policy)
    combiner = _check_combiner(combiner, m, inputs.shape[0], mechanism)
    rule_obj = make_rule(rule, ascent_steps)
    core, ddp = unwrap(model)
    named = [(n, p) for n, p in core.named_parameters() if p.requires_grad]
    if not named:
        raise SharplabError("the model has no parameters with requires_grad=True")
    chosen = None if perturb is None else {id(p) for p in perturb}
    pert = [(n, p) for n, p in named if chosen is None or id(p) in chosen]
    if not pert:
        raise SharplabError("perturb selects none of the model's trainable parameters")
    batch = inputs.shape[0]
    if m is not None and (m < 1 or batch % m):
        raise SharplabError(f"m={m} must be a positive divisor of the batch size {batch}")

    g_at_w = None
    if rho == 0 and mechanism == "full":
        with no_sync(ddp):
            loss = loss_fn(model(inputs), targets)
            new = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    elif m is None or m == batch:
        loss, new, g_at_w = _whole_batch(model, core, ddp, loss_fn, inputs, targets, rho, rule_obj, mechanism,
                                         named, pert, bn_policy, sync_ascent, step, want_g=combiner is not None)
    else:
        chosen_strategy = _strategy(strategy, core, named, rule_obj, mechanism, inputs.shape[0] // m)
        if chosen_strategy == "loop":
            loss, new = _micro_batch_loop(model, core, loss_fn, inputs, targets, rho, m, rule_obj, mechanism, named,
                                          pert, step)
        else:
            result = None
            if chosen_strategy == "vmap":
                rng = RNGSnapshot([p for _, p in named])
                try:
                    result = _per_example_batches(core, loss_fn, inputs, targets, rho, m, rule_obj, named, pert,
                                                  chunk_size, step)
                except _per_example.Unsupported:
                    rng.restore()  # a layer saw its examples off dim 0: nothing written yet, use torch.func
            loss, new = result if result is not None else _micro_batches(
                core, loss_fn, inputs, targets, rho, m, rule_obj, mechanism, named, pert, chunk_size, step)
    grads = [torch.zeros_like(p) if g is None else g for g, (_, p) in zip(new, named)]
    allreduce_mean_(grads)
    if combiner is not None:
        if g_at_w is None:  # rho = 0: the descent gradient is the gradient at w
            g_at_w = [t.clone() for t in grads]
        else:
            allreduce_mean_(g_at_w)
        combiner.combine(g_at_w, grads, [p for _, p in named])
    with torch.no_grad():
        for g, (_, p) in zip(grads, named):
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g)
    return loss.detach()


def _check_combiner(combiner: Combiner | None, m: int | None, batch: int, mechanism: str) -> Combiner | None:
    """The combiner to apply (``None`` for plain SAM); refuses those that need an optimizer or a schedule."""
    if combiner is None or type(combiner) is Combiner:
        return None
    if not isinstance(combiner, Combiner):
        raise SharplabError(f"combiner must be a sharplab.optim Combiner (GSAM, WSAM), got {type(combiner).__name__}")
    if isinstance(combiner, LookSAM):
        raise SharplabError("LookSAM reuses a direction between steps, which needs an optimizer: use "
                            "sharplab.optim.create('looksam', ...) instead of sam_grad")
    if isinstance(combiner, WSAM) and combiner.decouple:
        raise SharplabError("WSAM(decouple=True) applies its sharpness term after the base step, which sam_grad "
                            "does not take: use WSAM(decouple=False) or SAM(..., combiner=WSAM())")
    if m is not None and m != batch:
        raise SharplabError("combiner= works on the whole-batch SAM gradient; with m= (m-sharpness) leave it out")
    if mechanism != "full":
        raise SharplabError(f"combiner= needs mechanism='full' (got {mechanism!r})")
    return combiner


def check_finite(norm: torch.Tensor, step: int | None) -> None:
    if not torch.isfinite(norm).all():
        raise Diverged(step, f"ascent gradient norm ({norm.max().item()})")


def _whole_batch(model, core, ddp, loss_fn, x, y, rho, rule, mechanism, named, pert, bn_policy,
                 sync_ascent, step, want_g=False):
    """Plain-autograd SAM step on the whole batch; the phantom point is evaluated with functional_call.
    Returns (loss at w, descent gradients, gradients of all parameters at w if ``want_g`` else None)."""
    params = [p for _, p in named]
    pert_params = [p for _, p in pert]
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
    norm = global_norm(g)
    check_finite(norm, step)
    rhos = [rho] * len(g)
    eps = rule.update(None, Normed(g, norm), pert_params, rhos)  # the norm is taken once

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
        norm = global_norm(gj)
        check_finite(norm, step)
        eps = rule.update(eps, Normed(gj, norm), pert_params, rhos)

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


STRATEGIES = ("auto", "vmap", "func", "loop")


def _fast_eligible(core: nn.Module, named, rule: PerturbationRule, mechanism: str) -> bool:
    """The per-example formulas cover this call: mechanism "full", a one-step closed-form rule, no autocast
    (their products would mix dtypes in the backward), and only supported layers holding trainable
    parameters (see :mod:`sharplab.optim._per_example`)."""
    autocast = any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))
    return (mechanism == "full" and type(rule) in (SAMRule, USAMRule, ASAMRule) and not autocast
            and _per_example.unsupported(core, [p for _, p in named]) is None)


def _strategy(strategy: str, core: nn.Module, named=None, rule: PerturbationRule | None = None,
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


def _per_example_batches(core, loss_fn, x, y, rho, m, rule, named, pert, chunk_size, step):
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


def _micro_batch_loop(model, core, loss_fn, x, y, rho, m, rule, mechanism, named, pert, step):
    """m-sharpness as a loop of plain-autograd SAM steps, one per micro-batch, with the BatchNorm semantics of
    the vectorised path (micro-batch statistics, running statistics updated once from the whole batch)."""
    k = x.shape[0] // m
    total, losses = None, []
    with _batch_statistics_only(core):
        for j in range(k):
            sl = slice(j * m, (j + 1) * m)
            loss, new, _ = _whole_batch(core, core, None, loss_fn, x[sl], y[sl], rho, rule, mechanism, named,
                                        pert, "every", False, step)
            new = [torch.zeros_like(p) if g is None else g for g, (_, p) in zip(new, named)]
            total = new if total is None else [a.add_(b) for a, b in zip(total, new)]
            losses.append(loss.detach())
    if _tracks_running_stats(core):
        with torch.no_grad():
            core(x)
    return torch.stack(losses).mean(), [t / k for t in total]


def _micro_batches(core, loss_fn, x, y, rho, m, rule, mechanism, named, pert, chunk_size, step):
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
