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

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import _msharpness, _per_example_ops
from sharplab.optim._ascent import whole_batch
from sharplab.optim._distributed import allreduce_mean_, no_sync, unwrap
from sharplab.optim._passes import RNGSnapshot, check_bn_policy
from sharplab.optim.combiners import WSAM, Combiner, LookSAM
from sharplab.optim.registry import check_rho
from sharplab.optim.rules import PerturbationRule, global_norm, make_rule

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
        SharplabError: a negative, NaN or infinite rho, ``m`` not dividing the batch, unknown rule or mechanism.
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
    rho = check_rho(rho)
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
        loss, new, g_at_w = whole_batch(model, core, ddp, loss_fn, inputs, targets, rho, rule_obj, mechanism,
                                         named, pert, bn_policy, sync_ascent, step, want_g=combiner is not None)
    else:
        chosen_strategy = _msharpness.choose_strategy(strategy, core, named, rule_obj, mechanism, batch // m)
        if chosen_strategy == "loop":
            loss, new = _msharpness.micro_batch_loop(model, core, loss_fn, inputs, targets, rho, m, rule_obj,
                                                     mechanism, named, pert, step)
        else:
            result = None
            if chosen_strategy == "vmap":
                rng = RNGSnapshot([p for _, p in named])
                try:
                    result = _msharpness.per_example_batches(core, loss_fn, inputs, targets, rho, m, rule_obj,
                                                             named, pert, chunk_size, step)
                except _per_example_ops.Unsupported:
                    rng.restore()  # a layer saw its examples off dim 0: nothing written yet, use torch.func
            loss, new = result if result is not None else _msharpness.micro_batches(
                core, loss_fn, inputs, targets, rho, m, rule_obj, mechanism, named, pert, chunk_size, step)
    unused = [g is None for g in new]  # no gradient at all: .grad is left alone (never a zero the base steps on)
    grads = [torch.zeros_like(p) if g is None else g for g, (_, p) in zip(new, named)]
    allreduce_mean_(grads)
    if rho > 0 or mechanism != "full":
        norm = global_norm(grads)
        if not bool(torch.isfinite(norm)):
            raise Diverged(step, f"loss or gradient at w + eps (norm {norm.item()}); .grad was left unchanged")
    if combiner is not None:
        if g_at_w is None:  # rho = 0: the descent gradient is the gradient at w
            g_at_w = [t.clone() for t in grads]
        else:
            allreduce_mean_(g_at_w)
        combiner.combine(g_at_w, grads, [p for _, p in named])
    with torch.no_grad():
        for g, (_, p), skip in zip(grads, named, unused):
            if skip:
                continue
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
