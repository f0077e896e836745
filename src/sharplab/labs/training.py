"""The training core of the labs that train a network (feature-quality, deep-net): one step builder over
``sharplab.optim``'s registry, one training step, one evaluation, one training-state checkpoint.

Every lab step is an SGD base step (``torch.optim.SGD``: momentum, coupled weight decay) applied to a
gradient g. :func:`build_optimizer` maps a method name onto the registry:

* ``sgd`` (``erm``): g = grad L_B(w), the base step alone;
* any family member (``sharplab optim list``: ``sam``, ``usam``, ``asam``, ``gsam``, ``looksam``, ``nsam``,
  ``lsam``, ``iw-only``, ...): :func:`sharplab.optim.create` around that same base step, with the member's
  own keywords (:attr:`OptimizerSpec.options`, e.g. GSAM's ``alpha``), driven in batch mode
  (``step(inputs=, targets=)``), so m-sharpness (``m``), the mechanism variants and ESAM's selection work.

So a new family member registered in ``sharplab.optim`` trains in every lab with no lab change.
:func:`take_step` runs one step and turns a non-finite loss into :class:`~sharplab.errors.Diverged` naming
the lab's step; :func:`evaluate` is the eval-mode loss and error every lab reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sharplab.errors import ConfigError, Diverged, SharplabError
from sharplab.optim import SAM, MultiStep, create, make_rule, registry

#: names of the plain base step (no perturbation)
PLAIN = ("sgd", "erm")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def optimizer_names() -> tuple[str, ...]:
    """Every name :func:`build_optimizer` accepts: ``sgd`` and the members of ``sharplab.optim``'s registry."""
    return ("sgd", *registry.names())


@dataclass(frozen=True)
class OptimizerSpec:
    """What :func:`build_optimizer` builds.

    Attributes:
        name: ``sgd`` / ``erm`` or a ``sharplab.optim`` family member (aliases accepted).
        lr, momentum, weight_decay: of the SGD base step.
        rho: the member's radius (unused by ``sgd``).
        m: m-sharpness micro-batch size (0 = the whole batch ascends together).
        options: the member's own keywords (its paper defaults otherwise).
        ascent_steps, ascent_step_size: k > 1 projected ascent steps of size ``ascent_step_size * rho``
            (``None``: rho / k, :class:`~sharplab.optim.MultiStep`'s default; 1.0 is the official
            ``--sam_step_size_mult 1`` of Andriushchenko & Flammarion); rule-only members.
        strategy: how m-sharpness computes the micro-batch gradients (:func:`~sharplab.optim.sam_grad`).
    """

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float = 0.05
    m: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    ascent_steps: int = 1
    ascent_step_size: float | None = None
    strategy: str = "auto"

    @property
    def plain(self) -> bool:
        """The base step alone: ``sgd`` / ``erm``."""
        return self.name in PLAIN


def build_optimizer(model: nn.Module, spec: OptimizerSpec, loss_fn: LossFn = F.cross_entropy,
                    base: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``spec`` for ``model``: ``torch.optim.SGD`` for ``sgd``, else the family member around
    the same SGD base step. ``base`` (an SGD already built on ``model``) is shared instead of a new one: a lab
    that switches method mid-run (ERM -> SAM) keeps one momentum buffer."""
    if base is None:
        base_arg: Any = torch.optim.SGD
        params: Any = model.parameters()
        base_kw = {"lr": spec.lr, "momentum": spec.momentum, "weight_decay": spec.weight_decay}
    else:
        base_arg, params, base_kw = base, None, {}
    if spec.plain:
        if spec.options:
            raise ConfigError(f"{spec.name} takes no optimizer options, got {', '.join(spec.options)}")
        return base if base is not None else torch.optim.SGD(params, **base_kw)
    sam_kw: dict[str, Any] = {"model": model, "loss_fn": loss_fn, "m": spec.m or None}
    if spec.strategy != "auto":
        sam_kw["strategy"] = spec.strategy
    try:
        if spec.ascent_steps > 1:
            variant = registry.get(spec.name)
            if not variant.rule:
                raise ConfigError(f"ascent_steps > 1 needs a perturbation-rule member (sam, usam, asam, ...), "
                                  f"not {variant.name!r}")
            rule = MultiStep(make_rule(variant.name), spec.ascent_steps, step_size=spec.ascent_step_size)
            return SAM(params, base_arg, rho=spec.rho, rule=rule, **sam_kw, **base_kw)
        return create(spec.name, params, base_arg, rho=spec.rho, **sam_kw, **dict(spec.options), **base_kw)
    except TypeError as exc:  # a keyword that reaches a constructor with the wrong type
        raise ConfigError(f"{spec.name}: {exc}") from None


def check_optimizer(spec: OptimizerSpec) -> None:
    """Build ``spec``'s optimizer on a one-layer stand-in: every keyword is checked as a run would check it,
    before the run starts."""
    try:
        build_optimizer(nn.Linear(1, 1), spec)
    except ConfigError:
        raise
    except SharplabError as exc:
        raise ConfigError(str(exc)) from None


def take_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *, step: int,
              loss_fn: LossFn = F.cross_entropy, plain: bool = False) -> float:
    """One optimizer step on the batch; returns the mini-batch loss (at w; a member whose pass is elsewhere,
    e.g. ``random`` or ``nsam``, returns its own, see ``sharplab.optim``).

    ``plain`` (or a plain optimizer) takes the base step on grad L_B(w) alone: SGD, or a SAM optimizer's base
    during a warm-up. A non-finite loss or gradient raises :class:`~sharplab.errors.Diverged` with ``step``.
    """
    if plain or not isinstance(opt, SAM):
        base = opt.base if isinstance(opt, SAM) else opt
        base.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Diverged(step)
        base.step()
        return value
    opt.loss_fn = loss_fn
    try:
        value = float(opt.step(inputs=x, targets=y))
    except Diverged as exc:  # weights and optimizer state are back at w
        raise Diverged(step, exc.what) from None
    if not math.isfinite(value):
        raise Diverged(step)
    return value


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, error rate) of ``model`` on ``(x, y)`` in eval mode, in batches of ``batch_size``
    moved to the model's device; ``(nan, nan)`` for no examples. The training mode is restored."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss, wrong = 0.0, 0
    try:
        for i in range(0, len(y), batch_size):
            out = model(x[i : i + batch_size].to(device))
            yb = y[i : i + batch_size].to(device)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            wrong += int((out.argmax(1) != yb).sum())
    finally:
        model.train(was_training)
    return loss / len(y), wrong / len(y)


def training_state(model: nn.Module, opt: Any, generators: Mapping[str, torch.Generator],
                   **progress: Any) -> dict[str, Any]:
    """A checkpoint of a training loop: weights, optimizer (anything with ``state_dict``: a SAM optimizer's
    base and parts, a lab's set of phase optimizers), the named data
    generators, every global RNG, and the loop's own ``progress`` (epoch, step, metrics, ...)."""
    from sharplab.runner.checkpoint import capture_rng

    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "generators": {k: g.get_state() for k, g in generators.items()}, "rng": capture_rng(), **progress}


def restore_training_state(state: Mapping[str, Any], model: nn.Module, opt: Any,
                           generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Load :func:`training_state`'s checkpoint into the loop's objects; returns the rest (the progress)."""
    from sharplab.runner.checkpoint import restore_rng

    if "generators" not in state:
        raise ConfigError("this run's checkpoint was written by an older sharplab (no 'generators' entry): delete "
                          "the run's checkpoint.pt (the run restarts from epoch 0) or finish it with that version")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # a SAM optimizer also reads a checkpoint of its base alone
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    restore_rng(state["rng"])
    return {k: v for k, v in state.items() if k not in ("model", "optimizer", "generators", "rng")}
