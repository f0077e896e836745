"""Training loop of the ``deep-net`` lab: SGD with momentum and one weight-perturbation method per step.

Per step on a batch B (Andriushchenko & Flammarion, ICML 2022, sec. 2; Foret et al., 2021):

* ``erm``:    g = grad L_B(w)
* ``random``: g = grad L_B(w + eps),  eps = rho z / ||z||,  z ~ N(0, I)   (``sharplab.optim`` rule random)
* ``m-sam``:   g = (1/k) sum_j grad L_{S_j}(w + rho g_j / ||g_j||),  g_j = grad L_{S_j}(w), |S_j| = m
              (``sharplab.optim.sam_grad(m=)``; m = batch is standard SAM, "128-SAM" at batch 128)
* ``usam``:   g = grad L_B(w + rho grad L_B(w))
* ``nsam``:   g = grad L_B(w + rho g'/||g'||),  g' = grad L_{B_prev}(w) on the *previous* batch.

n-SAM maximises the loss of all n training points with one perturbation, which on a deep net would need a
full-batch gradient per step. The official code approximates it by taking the ascent direction from a
different batch than the descent step (``deep_nets/train.py``, option ``--sam_use_prev_batch``, commented
"MaxSum SAM"; the default branch is "closer to SumMax SAM"): the perturbation then no longer depends on
the examples it is applied to, which is what separates n-SAM from m-SAM. ``nsam`` here does the same (the
first step of a run uses its own batch). Then ``w <- SGD-momentum(g)`` with coupled weight decay.

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
from sharplab.errors import Diverged
from sharplab.labs.deep_net.config import DeepNetConfig

EVAL_BATCH = 512
#: m-SAM with at most this many micro-batches per batch uses sam_grad's loop strategy, else its ``auto``
#: (vmap for narrow networks)
LOOP_MAX_MICRO_BATCHES = 2
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


@torch.no_grad()
def error_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
                   ) -> tuple[float, float]:
    """(error, mean cross-entropy) in eval mode; (nan, nan) for no examples."""
    if len(y) == 0:
        return math.nan, math.nan
    was = model.training
    model.eval()
    wrong, loss = 0.0, 0.0
    for i in range(0, len(y), EVAL_BATCH):
        xb, yb = x[i:i + EVAL_BATCH].to(device), y[i:i + EVAL_BATCH].to(device)
        out = model(xb)
        wrong += float((out.argmax(1) != yb).sum())
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
    model.train(was)
    return wrong / len(y), loss / len(y)


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


class Stepper:
    """Fills ``.grad`` for one batch with the configured method; keeps the previous batch for nsam."""

    def __init__(self, model: nn.Module, seed: int, ascent_steps: int = 1) -> None:
        from sharplab.optim import MultiStep, RandomRule

        self.model = model
        self.random_rule = RandomRule(seed=seed + 7919)
        # official perturb_weights_sam: --sam_iters steps of size rho * --sam_step_size_mult (1), projected
        self.rules = {name: name if ascent_steps == 1 else MultiStep(name, ascent_steps, step_size=1.0)
                      for name in ("sam", "usam")}
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, method: str, rho: float, m: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from sharplab.optim import sam_grad

        model = self.model
        if method == "erm" or rho == 0:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        elif method == "m-sam":
            k = len(y) // m if m and m < len(y) else 1  # micro-batches per batch
            # few micro-batches: k plain SAM steps beat the vmap'd per-micro-batch gradients on CPU
            # (width-8 ResNet-18, batch 64: m = 32 loop 56 vs vmap 96 ms; m = 8 loop 179 vs vmap 91 ms)
            loss = sam_grad(model, F.cross_entropy, x, y, rho=rho, m=m if k > 1 else None, rule=self.rules["sam"],
                            strategy="loop" if k <= LOOP_MAX_MICRO_BATCHES else "auto")
        elif method == "usam":
            loss = sam_grad(model, F.cross_entropy, x, y, rho=rho, rule=self.rules["usam"])
        elif method == "random":  # one pass, at w + eps: the loss reported is the loss there
            loss = sam_grad(model, F.cross_entropy, x, y, rho=rho, rule=self.random_rule)
        else:  # nsam
            loss = self._nsam(rho, x, y)
        self.prev = (x, y)
        return loss.detach()

    def _nsam(self, rho: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        xa, ya = self.prev if self.prev is not None else (x, y)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        g = torch.autograd.grad(F.cross_entropy(model(xa), ya), params)
        with torch.no_grad():  # the ascent pass leaves no mark on BatchNorm statistics
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        norm = torch.sqrt(sum((t.double() ** 2).sum() for t in g)).to(params[0].dtype)
        if not torch.isfinite(norm):
            raise Diverged(-1)
        eps = [rho * t / (norm + 1e-12) for t in g]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        try:
            loss = F.cross_entropy(model(x), y)  # reported loss: at w + eps (one pass fewer)
            loss.backward()
        finally:
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
        return loss


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
        out["test_error"], out["test_loss"] = error_and_loss(model, *cap(data.x_test, data.y_test), device)
        out["val_error"], _ = error_and_loss(model, *cap(data.x_val, data.y_val), device)
    if not train_set:
        return out
    xt, yt = cap(data.x_train, noisy)
    mt = mask[: len(yt)]
    out["train_error"], _ = error_and_loss(model, xt, yt, device)
    if cfg.label_noise > 0:
        out["train_error_noisy"], _ = error_and_loss(model, xt[mt], yt[mt], device)
        out["train_error_clean"], _ = error_and_loss(model, xt[~mt], yt[~mt], device)
        out["train_error_noisy_true"], _ = error_and_loss(model, xt[mt], data.y_train[: len(yt)][mt], device)
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
    from sharplab.runner.checkpoint import capture_rng, restore_rng

    device = ctx.device
    torch.manual_seed(ctx.seed)
    np.random.seed(ctx.seed)
    data, noisy, mask = load_data(cfg, ctx.seed)
    n, bs = len(noisy), cfg.batch_size
    if bs > n:
        from sharplab.errors import ConfigError

        raise ConfigError(f"batch_size = {bs} exceeds the {n} training examples; lower it or raise n_train")
    model = build_net(cfg, data.input_shape[0], data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step_fn = Stepper(model, ctx.seed, cfg.ascent_steps)
    order = torch.Generator().manual_seed(ctx.seed)
    aug = torch.Generator().manual_seed(ctx.seed + 1)
    steps_per_epoch = n // bs  # drop_last, as the official training loader
    epoch, metrics, hist = 0, {}, []
    ckpt = ctx.load_checkpoint()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        order.set_state(ckpt["order"])
        aug.set_state(ckpt["aug"])
        step_fn.random_rule.load_state_dict(ckpt["random_rule"])
        restore_rng(ckpt["rng"])
        epoch, metrics, hist = ckpt["epoch"], ckpt["metrics"], ckpt["hist"]
        if ckpt.get("prev") is not None:
            step_fn.prev = tuple(t.to(device) for t in ckpt["prev"])
        ctx.logger.info("resumed from checkpoint after epoch %d", epoch)
    x_train = data.x_train.to(device)
    y_train = noisy.to(device)
    model.train()
    bar = ctx.progress(total=cfg.epochs, desc=f"deep-net {cfg.method}")
    bar.update(epoch)
    while epoch < cfg.epochs:
        method, rho = cfg.method_at(epoch)
        perm = torch.randperm(n, generator=order).to(device)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(epoch + i / steps_per_epoch)
            idx = perm[i * bs:(i + 1) * bs]
            xb = x_train[idx]
            if cfg.augment:
                pad, flip = AUGMENT[cfg.dataset]
                xb = random_crop_flip(xb, aug, padding=pad, flip=flip)
            opt.zero_grad(set_to_none=True)
            loss = step_fn(method, rho, cfg.m, xb, y_train[idx])
            value = float(loss)
            if not math.isfinite(value):
                raise Diverged(epoch * steps_per_epoch + i)
            opt.step()
            loss_sum += value
        epoch += 1
        last = epoch == cfg.epochs
        metrics = epoch_metrics(cfg, model, data, noisy, mask, device, loss_sum / steps_per_epoch,
                                train_set=last or epoch % cfg.train_eval_every == 0,
                                test_set=last or epoch % cfg.eval_every == 0)
        metrics["lr"] = cfg.lr_at(epoch - 1)
        ctx.log_metrics(epoch, metrics)
        if "val_error" in metrics:  # early stopping sees the evaluated epochs only
            hist.append([float(epoch), metrics["val_error"], metrics["test_error"]])
        ctx.save_checkpoint({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "order": order.get_state(),
            "aug": aug.get_state(), "random_rule": step_fn.random_rule.state_dict(), "rng": capture_rng(),
            "epoch": epoch, "metrics": metrics, "hist": hist,
            "prev": None if step_fn.prev is None else [t.detach().cpu() for t in step_fn.prev],
        })
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
