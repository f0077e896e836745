"""Training loop of the ``deep-net`` lab: SGD with momentum and one weight-perturbation method per step.

Per step on a batch B (Andriushchenko & Flammarion, ICML 2022, sec. 2; Foret et al., 2021), every method a
``sharplab.optim`` family member built by the labs' step builder (:mod:`sharplab.labs.training`):

* ``erm``:    g = grad L_B(w)                                     (the SGD base step alone)
* ``random``: g = grad L_B(w + eps),  eps = rho z / ||z||,  z ~ N(0, I)   (member ``random``)
* ``m-sam``:   g = (1/k) sum_j grad L_{S_j}(w + rho g_j / ||g_j||),  g_j = grad L_{S_j}(w), |S_j| = m
              (member ``sam`` with ``m``; m = batch is standard SAM, "128-SAM" at batch 128)
* ``usam``:   g = grad L_B(w + rho grad L_B(w))                   (member ``usam``)
* ``nsam``:   g = grad L_B(w + rho g'/||g'||),  g' = grad L_{B_prev}(w) on the *previous* batch (member
              ``nsam``: the official ``--sam_use_prev_batch``; see :mod:`sharplab.optim.nsam`)
* any other member (``gsam``, ``asam``, ``looksam``, ...) with its keywords from ``optimizer_options``.

Then ``w <- SGD-momentum(g)`` with coupled weight decay; every phase of a run (fine-tuning switches method)
steps on one SGD base, so the momentum buffer carries over the switch.

Evaluation (eval mode, no augmentation) every ``eval_every`` epochs and at the last: test and validation
error/loss; every ``train_eval_every`` epochs and at the last, the training error, with label noise on the
noisy examples (w.r.t. their noisy labels) and on the clean ones apart, and with ``grad_norm`` the full-batch
training loss and ||grad L(w)||; ``eval_n`` cuts each part to its first n examples. The sharpness measures at
the end use the clean training labels, as the official ``eval_sharpness.py``. A checkpoint after each epoch makes runs
resumable; the final weights go to ``final.pt`` (read by the sharpness and interpolation studies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharplab.data.augment import random_crop_flip
from sharplab.data.image_classification import ImageSet, load_image_set
from sharplab.data.label_noise import symmetric_label_noise
from sharplab.labs.deep_net.config import DeepNetConfig, method_spec
from sharplab.labs.training import (
    OptimizerSpec,
    build_optimizer,
    evaluate,
    restore_training_state,
    take_step,
    training_state,
)
from sharplab.optim import SAM

EVAL_BATCH = 512
#: (padding, flip) of the augmentation: the official CIFAR setting, scaled to the side for the stand-ins
#: (no flip for digits, whose mirror images are other symbols)
AUGMENT = {"cifar10": (4, True), "cifar100": (4, True), "fashion-mnist": (3, True), "digits": (1, False)}


def build_net(cfg: DeepNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    from sharplab.models import build_model

    return build_model(cfg.model, num_classes=num_classes, in_channels=in_channels, norm=cfg.norm,
                       width=cfg.width, init=cfg.init)


def load_data(cfg: DeepNetConfig, seed: int) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    """The image set (validation split seeded by the run seed), noisy training labels and noise mask.

    With label noise the validation labels get the same kind of noise (as in the official code), so early
    stopping on the validation error uses no clean labels."""
    data = load_image_set(cfg.dataset, cfg.root or None, seed=seed, n_train=cfg.n_train, n_test=cfg.n_test)
    noisy, mask = symmetric_label_noise(data.y_train, cfg.label_noise, data.num_classes, seed + 17)
    if cfg.label_noise > 0:  # the official code draws noise for the validation part too
        data.y_val = symmetric_label_noise(data.y_val, cfg.label_noise, data.num_classes, seed + 18)[0]
    return data, noisy, mask


def full_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
                   ) -> tuple[float, float]:
    """(mean training loss, ||grad L(w)||_2) over all of (x, y), in train mode without BN updates."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    total = 0.0
    for i in range(0, len(y), EVAL_BATCH):
        xb, yb = x[i:i + EVAL_BATCH].to(device), y[i:i + EVAL_BATCH].to(device)
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(y)
        for g, d in zip(grads, torch.autograd.grad(loss, params)):
            g += d
        total += float(loss.detach())
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return total, float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


class Phases:
    """The optimizer of each training phase (method, rho), built on one shared SGD base step, so switching
    method mid-run (fine-tuning) keeps the momentum buffer; ``erm`` and rho = 0 step on the base alone."""

    def __init__(self, cfg: DeepNetConfig, model: nn.Module, seed: int) -> None:
        self.cfg, self.model, self.seed = cfg, model, seed
        self.base = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        self._built: dict[str, torch.optim.Optimizer] = {}

    def keys(self) -> list[tuple[str, float]]:
        """The (method, rho) of every phase of the run."""
        cfg = self.cfg
        return list(dict.fromkeys(cfg.method_at(e) for e in (0, cfg.switch_epoch if cfg.then_method else 0)))

    def get(self, method: str, rho: float) -> torch.optim.Optimizer:
        key = f"{method}@{rho!r}"
        if key not in self._built:
            plain = method == "erm" or rho == 0
            spec = OptimizerSpec("sgd") if plain else method_spec(self.cfg, method, rho, self.seed)
            self._built[key] = build_optimizer(self.model, spec, base=self.base)
        return self._built[key]

    def state_dict(self) -> dict[str, Any]:
        """The base step's state and each SAM phase's own (its step count, rule and combiner state, n-SAM's
        previous batch)."""
        sam = {k: o.state_dict()["sam"] for k, o in self._built.items() if isinstance(o, SAM)}
        return {**self.base.state_dict(), "phases": sam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        phases = state.pop("phases", {})
        self.base.load_state_dict(state)
        for method, rho in self.keys():
            opt = self.get(method, rho)
            key = f"{method}@{rho!r}"
            if isinstance(opt, SAM) and key in phases:
                opt.load_state_dict({**self.base.state_dict(), "sam": phases[key]})


def epoch_metrics(cfg: DeepNetConfig, model: nn.Module, data: ImageSet, noisy: torch.Tensor,
                  mask: torch.Tensor, device: torch.device, train_loss: float, train_set: bool = True,
                  test_set: bool = True) -> dict[str, float]:
    """With ``test_set`` the test / validation error (and loss) of the model; with ``train_set`` the
    training-set errors (noisy / clean parts with label noise) and, with ``cfg.grad_norm``, the full-batch loss
    and gradient norm. Each part is cut to its first ``cfg.eval_n`` examples when that is set."""
    def cap(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x[: cfg.eval_n], y[: cfg.eval_n]) if cfg.eval_n else (x, y)

    out = {"train_loss": train_loss}
    if test_set:
        out["test_loss"], out["test_error"] = evaluate(model, *cap(data.x_test, data.y_test), EVAL_BATCH)
        out["val_error"] = evaluate(model, *cap(data.x_val, data.y_val), EVAL_BATCH)[1]
    if not train_set:
        return out
    xt, yt = cap(data.x_train, noisy)
    mt = mask[: len(yt)]
    out["train_error"] = evaluate(model, xt, yt, EVAL_BATCH)[1]
    if cfg.label_noise > 0:
        out["train_error_noisy"] = evaluate(model, xt[mt], yt[mt], EVAL_BATCH)[1]
        out["train_error_clean"] = evaluate(model, xt[~mt], yt[~mt], EVAL_BATCH)[1]
        out["train_error_noisy_true"] = evaluate(model, xt[mt], data.y_train[: len(yt)][mt], EVAL_BATCH)[1]
    if cfg.grad_norm:
        out["full_train_loss"], out["grad_norm"] = full_grad_norm(model, data.x_train, noisy, device)
    return out


def sharpness_metrics(cfg: DeepNetConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                      ) -> dict[str, float]:
    """m-sharpness (rho = sharpness_rho, m = sharpness_m, 20 steps), top Hessian eigenvalue, trace, on the
    first ``sharpness_n`` of (x, y); the callers pass the *clean* training labels, as the official
    ``eval_sharpness.py`` (its loaders are built without ``p_label_noise``), also after label-noise training."""
    from sharplab.sharpness import hessian_eigenvalues, hessian_trace, m_sharpness

    x, y = x[: cfg.sharpness_n], y[: cfg.sharpness_n]
    n = len(y) - len(y) % cfg.sharpness_m
    x, y = x[:n], y[:n]
    return {
        "m_sharpness": m_sharpness(model, F.cross_entropy, x, y, rho=cfg.sharpness_rho, m=cfg.sharpness_m,
                                   steps=20, chunk_size=1),
        "hessian_top": float(hessian_eigenvalues(model, F.cross_entropy, x, y, k=1, iters=20,
                                                 batch_size=128)[0]),
        "hessian_trace": hessian_trace(model, F.cross_entropy, x, y, samples=10, batch_size=128)[0],
    }


def run(cfg: DeepNetConfig, ctx: Any) -> dict[str, float]:
    """Train per ``cfg``; resume from the run's checkpoint when present."""
    from sharplab.io import atomic_torch_save

    device = ctx.device
    torch.manual_seed(ctx.seed)
    np.random.seed(ctx.seed)
    data, noisy, mask = load_data(cfg, ctx.seed)
    n, bs = len(noisy), cfg.batch_size
    if bs > n:
        from sharplab.errors import ConfigError

        raise ConfigError(f"batch_size = {bs} exceeds the {n} training examples; lower it or raise n_train")
    model = build_net(cfg, data.input_shape[0], data.num_classes).to(device)
    phases = Phases(cfg, model, ctx.seed)
    order = torch.Generator().manual_seed(ctx.seed)
    aug = torch.Generator().manual_seed(ctx.seed + 1)
    generators = {"order": order, "aug": aug}
    steps_per_epoch = n // bs  # drop_last, as the official training loader
    epoch, metrics, hist = 0, {}, []
    ckpt = ctx.load_checkpoint()
    if ckpt is not None:
        done = restore_training_state(ckpt, model, phases, generators)
        epoch, metrics, hist = done["epoch"], done["metrics"], done["hist"]
        ctx.logger.info("resumed from checkpoint after epoch %d", epoch)
    x_train = data.x_train.to(device)
    y_train = noisy.to(device)
    model.train()
    bar = ctx.progress(total=cfg.epochs, desc=f"deep-net {cfg.method}")
    bar.update(epoch)
    while epoch < cfg.epochs:
        method, rho = cfg.method_at(epoch)
        opt = phases.get(method, rho)
        perm = torch.randperm(n, generator=order).to(device)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            for group in phases.base.param_groups:
                group["lr"] = cfg.lr_at(epoch + i / steps_per_epoch)
            idx = perm[i * bs:(i + 1) * bs]
            xb = x_train[idx]
            if cfg.augment:
                pad, flip = AUGMENT[cfg.dataset]
                xb = random_crop_flip(xb, aug, padding=pad, flip=flip)
            loss_sum += take_step(model, opt, xb, y_train[idx], step=epoch * steps_per_epoch + i)
        epoch += 1
        last = epoch == cfg.epochs
        metrics = epoch_metrics(cfg, model, data, noisy, mask, device, loss_sum / steps_per_epoch,
                                train_set=last or epoch % cfg.train_eval_every == 0,
                                test_set=last or epoch % cfg.eval_every == 0)
        metrics["lr"] = cfg.lr_at(epoch - 1)
        ctx.log_metrics(epoch, metrics)
        if "val_error" in metrics:  # early stopping sees the evaluated epochs only
            hist.append([float(epoch), metrics["val_error"], metrics["test_error"]])
        ctx.save_checkpoint(training_state(model, phases, generators, epoch=epoch, metrics=metrics, hist=hist))
        bar.update(1)
    bar.close()
    final = dict(metrics)
    if hist:  # early stopping on the validation error (the official --model_type best)
        best = min(hist, key=lambda h: h[1] if math.isfinite(h[1]) else math.inf)
        final["best_val_epoch"], final["early_stopped_test_error"] = best[0], best[2]
    if cfg.sharpness:
        final.update(sharpness_metrics(cfg, model, data.x_train.to(device), data.y_train.to(device)))
    if getattr(ctx, "is_main", True):
        atomic_torch_save(ctx.artifact("final.pt"), model.state_dict())
    return final
