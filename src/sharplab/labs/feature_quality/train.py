"""The feature-quality lab's training loop: SGD or any member of the SAM family, by name.

Every optimizer is an SGD base step (``torch.optim.SGD`` with momentum and coupled weight decay) applied
to a gradient ``g``; the labs' step builder (:func:`sharplab.labs.training.build_optimizer`) maps the name
onto ``sharplab.optim``'s registry, so every family member trains here with its keywords
(``TrainConfig.optimizer_options``, e.g. GSAM's ``alpha``). The ones the lab's studies use:

- ``sgd``:     g = grad L(w)
- ``sam``:     g = grad L(w + eps),  eps = rho * grad L(w) / ||grad L(w)||   (Foret et al., 2021, Eq. 2)
- ``lsam``:    as SAM, but eps only on the last layer (head); the features stay at w (Springer et al. 2024)
- ``iw-only``: SAM's importance weighting only (per-example loss derivatives taken at w + eps)
- ``lr-only``: SAM's learning-rate scaling only (Jacobian taken at w + eps)

The SAM family steps through :class:`sharplab.optim.SAM` in batch mode (``step(inputs=, targets=)``,
:func:`sharplab.labs.training.take_step`); ``rho = 0`` reproduces SGD exactly. ``m > 0`` is m-sharpness
(every micro-batch of ``m`` examples ascends on its own gradient; a last batch that ``m`` does not divide
is trimmed to a multiple of ``m``),
``sam_start_epoch = k`` takes plain SGD steps on the same base optimizer for the first ``k`` epochs (SAM
switched on after an ERM warm-up; the SAM optimizer's step count, which LookSAM's every-k and GSAM's
schedule read, starts then), and per-example loss weights (``train(weights=)``, JTT-style upweighting) make
the loss ``sum_i u_i l_i / sum_i u_i`` per batch. The loop checkpoints model, optimizer, RNG and data-order
state after every epoch through the :class:`~sharplab.runner.RunContext` (a killed run resumes where it
stopped) and raises :class:`~sharplab.errors.Diverged` on a non-finite loss or gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sharplab.errors import ConfigError
from sharplab.labs import training
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathways_from_meta
from sharplab.labs.training import evaluate
from sharplab.optim import SAM, registry
from sharplab.runner.context import RunContext

#: every optimizer name a run takes: plain SGD and the members of ``sharplab.optim``'s registry
OPTIMIZERS: tuple[str, ...] = training.optimizer_names()


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Attributes:
        optimizer: ``sgd`` or a ``sharplab.optim`` family member (:data:`OPTIMIZERS`; module docstring).
        rho: SAM radius (ignored by ``sgd``).
        lr, momentum, weight_decay: of the SGD base step.
        epochs, batch_size: passes over the training split and examples per step.
        model: ``auto`` (PathwayNet on the toy, SmallCNN on images) or a name for :func:`make_model`.
        m: micro-batch size of m-sharpness (0 = the whole batch ascends together).
        sam_start_epoch: epochs of plain SGD before the SAM step is switched on.
        optimizer_options: the family member's own keywords (``sharplab optim list``), e.g. ``{"alpha": 0.1}``
            for ``gsam``; its paper defaults otherwise.
    """

    optimizer: str = "sgd"
    rho: float = 0.05
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 10
    batch_size: int = 128
    model: str = "auto"
    m: int = 0
    sam_start_epoch: int = 0
    optimizer_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        checks = {
            "rho": (self.rho >= 0, "rho >= 0"),
            "lr": (self.lr > 0, "lr > 0"),
            "momentum": (0 <= self.momentum < 1, "0 <= momentum < 1"),
            "weight_decay": (self.weight_decay >= 0, "weight_decay >= 0"),
            "epochs": (self.epochs >= 0, "epochs >= 0"),
            "batch_size": (self.batch_size >= 1, "batch_size >= 1"),
            "m": (0 <= self.m <= self.batch_size, f"0 <= m <= batch_size = {self.batch_size}"),
            "sam_start_epoch": (self.sam_start_epoch >= 0, "sam_start_epoch >= 0"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is out of range; allowed: {rule}")
        training.check_optimizer(self.spec)

    @property
    def spec(self) -> training.OptimizerSpec:
        """The optimizer part, for the labs' step builder."""
        return training.OptimizerSpec(self.optimizer, lr=self.lr, momentum=self.momentum,
                                      weight_decay=self.weight_decay, rho=self.rho, m=self.m,
                                      options=self.optimizer_options)

    def replace(self, **changes: Any) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return TrainConfig(**values)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer for ``model`` (:func:`sharplab.labs.training.build_optimizer`; :func:`train` swaps in
    the weighted loss per batch)."""
    return training.build_optimizer(model, cfg.spec)


def step_phantom(optimizer: str) -> Callable[[nn.Module], list[nn.Parameter] | None] | None:
    """The phantom ``w + rho g / ||g||`` of ``optimizer``'s step: ``None`` when the step is taken at w (``sgd``),
    else ``f(model)`` -> the parameters it perturbs (``None`` = all; the head for ``lsam``). For members whose
    eps is not ``rho g / ||g||`` (ASAM, F-SAM, ...) this is the plain SAM phantom, a reference point."""
    if optimizer not in registry.names():
        return None
    variant = registry.get(optimizer)
    perturb = variant.build(dict(variant.defaults), None).get("perturb")
    return (lambda model: None) if perturb is None else (lambda model: list(perturb(model)))


def make_model(data: Any, model_name: str = "auto", seed: int = 0) -> nn.Module:
    """Build the lab's model for ``data`` with parameters drawn from ``seed`` (global RNG untouched).

    ``auto``: :class:`PathwayNet` when the data set names its feature coordinates (``meta["easy_dims"]``,
    the toy), :class:`~sharplab.models.SmallCNN` for images ``(C, H, W)``, an MLP for other vectors.
    Other names: ``pathway``, ``small-cnn``, ``small-cnn-gap`` (pooled 128-d features), ``mlp``,
    ``preact-resnet18``.
    """
    from sharplab.models import build_model

    shape = tuple(data.input_shape)
    k = int(data.num_classes)
    name = model_name.strip().lower().replace("_", "-")
    pathways = pathways_from_meta(getattr(data, "meta", {}) or {})
    if name == "auto":
        name = "pathway" if pathways else ("small-cnn" if len(shape) == 3 else "mlp")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "pathway":
            if not pathways:
                raise ConfigError(f"model 'pathway' needs meta['easy_dims'] (the toy); {data.name!r} has none")
            return PathwayNet(pathways, k)
        if name in ("small-cnn", "small-cnn-gap"):
            if len(shape) != 3:
                raise ConfigError(f"model 'small-cnn' needs images (C, H, W); {data.name!r} has {shape}")
            return build_model(name, in_channels=shape[0], num_classes=k, input_size=(shape[1], shape[2]))
        if name == "mlp":
            return build_model(name, in_features=math.prod(shape), num_classes=k)
        if name == "preact-resnet18":
            # PyTorch's default initialisation, as this lab's recorded studies used (not the deep-net study's)
            return build_model(name, num_classes=k, in_channels=shape[0], init="torch")
    raise ConfigError(f"unknown model {model_name!r}; use auto, pathway, small-cnn, small-cnn-gap, mlp or "
                      "preact-resnet18")


def train(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    *,
    seed: int,
    ctx: RunContext | None = None,
    callback: Callable[[int, int, nn.Module], None] | None = None,
    weights: torch.Tensor | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``data.splits["train"]`` with ``cfg``; return final metrics.

    Args:
        model: a :mod:`sharplab.models`-style model (``head`` attribute needed by ``lsam``).
        data: a two-feature data set (``.splits["train"]``, ``["val"]``, ``["test"]``).
        cfg: the optimizer and its hyperparameters.
        seed: seeds the data order and any randomness of the step.
        ctx: checkpoints (resumed from if present), metrics per epoch, progress bar, device.
        callback: ``callback(epoch, step, model)`` after every optimizer step (``step`` counts from 1).
        weights: optional per-example loss weights of the training split (``[n]``, positive).
        on_epoch: ``on_epoch(epoch, model)`` after every epoch (``epoch`` counts from 0), before the
            checkpoint is written.

    Returns:
        ``train_loss`` (mean over the last epoch, at w), ``val_loss``, ``val_error``, ``test_error``,
        ``epochs``, ``steps``.

    Raises:
        Diverged: the training loss became non-finite.
    """
    device = ctx.device if ctx is not None else torch.device("cpu")
    model.to(device)
    split = data.splits["train"]
    x, y = split.x.to(device), split.y.to(device)
    n = len(y)
    if weights is not None:
        if weights.shape != (n,) or not bool((weights > 0).all()):
            raise ConfigError(f"weights must be positive with shape ({n},), got {tuple(weights.shape)}")
        if cfg.m:
            raise ConfigError("per-example weights do not combine with m-sharpness here; use m=0")
        weights = weights.to(device)
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = build_optimizer(model, cfg)
    start_epoch, step, train_loss = 0, 0, float("nan")
    state = ctx.load_checkpoint() if ctx is not None else None
    if state is not None:
        done = training.restore_training_state(state, model, opt, {"order": order})
        start_epoch, step, train_loss = int(done["epoch"]), int(done["step"]), float(done["train_loss"])

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    quiet = ctx.quiet if ctx is not None else True
    from sharplab.progress import progress

    bar = progress(
        total=steps_per_epoch * cfg.epochs,
        initial=steps_per_epoch * start_epoch,
        disable=quiet,
        desc=cfg.optimizer,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            perm = torch.randperm(n, generator=order).to(device)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                sam_on = isinstance(opt, SAM) and epoch >= cfg.sam_start_epoch
                if cfg.m and sam_on:
                    idx = idx[: len(idx) - len(idx) % cfg.m] if len(idx) >= cfg.m else idx[:0]
                    if len(idx) == 0:
                        continue
                u = None if weights is None else weights[idx]
                step += 1
                loss = training.take_step(model, opt, x[idx], y[idx], step=step, loss_fn=weighted_ce(u),
                                          plain=not sam_on)
                total += loss * len(idx)
                if callback is not None:
                    callback(epoch, step, model)
                bar.update(1)
            train_loss = total / n
            val_loss, val_error = evaluate(model, data.splits["val"].x, data.splits["val"].y)
            if on_epoch is not None:
                on_epoch(epoch, model)
            bar.set_postfix(loss=f"{train_loss:.3g}", val_err=f"{val_error:.3g}")
            if ctx is not None:
                ctx.log_metrics(epoch + 1, {"train_loss": train_loss, "val_loss": val_loss, "val_error": val_error})
                ctx.save_checkpoint(training.training_state(model, opt, {"order": order}, epoch=epoch + 1, step=step,
                                                            train_loss=train_loss))
    finally:
        bar.close()
    val_loss, val_error = evaluate(model, data.splits["val"].x, data.splits["val"].y)
    _, test_error = evaluate(model, data.splits["test"].x, data.splits["test"].y)
    return {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_error": val_error,
        "test_error": test_error,
        "n_val": float(len(data.splits["val"].y)),
        "epochs": float(cfg.epochs),
        "steps": float(step),
    }


def weighted_ce(u: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy of a batch with per-example weights ``u``: ``sum_i u_i l_i / sum_i u_i``."""
    if u is None:
        return F.cross_entropy

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(out, t, reduction="none") * u).sum() / u.sum()

    return loss
