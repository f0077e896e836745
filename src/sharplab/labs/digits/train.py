"""Training of the digits lab: data, optimizer, the epoch loop with checkpoints, evaluation.

Each epoch draws a fresh permutation from a private generator and uses ``n_train // batch_size`` full
batches (the last partial batch is dropped, so every step sees exactly ``batch_size`` examples).
Metrics per epoch: ``train_loss`` (mean mini-batch loss at w), ``test_loss``, ``test_error``; with
``val_size = N`` the last N training images are held out as a validation split (``val_loss``,
``val_error``), the split to tune on (``examples/sweep.toml``) so the test images never choose a setting.

Resume: a checkpoint after every epoch (and every ``checkpoint_every`` steps) holds model, optimizer
(SAM's base state), all RNG states, the data-order generator, the epoch's permutation and the position
in it, so a resumed run on CPU ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sharplab.data.image_classification import digits_split
from sharplab.errors import ConfigError, Diverged
from sharplab.io import atomic_torch_save
from sharplab.labs.digits.config import DigitsConfig
from sharplab.runner.checkpoint import capture_rng, restore_rng
from sharplab.runner.context import RunContext


def load_digits_tensors(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: pixels / 16 (in [0, 1]) of the fixed split
    :func:`sharplab.data.image_classification.digits_split`, flattened to 64 inputs."""
    x_train, y_train, x_test, y_test = digits_split()
    return (torch.as_tensor(x_train / 16.0, dtype=dtype), torch.as_tensor(y_train, dtype=torch.long),
            torch.as_tensor(x_test / 16.0, dtype=dtype), torch.as_tensor(y_test, dtype=torch.long))


def build_optimizer(cfg: DigitsConfig, model: torch.nn.Module, net: torch.nn.Module) -> torch.optim.Optimizer:
    sgd = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **sgd)
    from sharplab.optim import SAM

    ddp = {"model": net, "sync_ascent": cfg.sync_ascent} if net is not model else {}
    return SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, rule=cfg.rule, **ddp, **sgd)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, split: str = "test") -> dict[str, float]:
    """``{split}_loss`` and ``{split}_error`` (a fraction) of the model on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        out = {f"{split}_loss": F.cross_entropy(logits, y).item(),
               f"{split}_error": (logits.argmax(1) != y).double().mean().item()}
    model.train()
    return out


def run(cfg: DigitsConfig, ctx: RunContext) -> dict[str, float]:
    """Train, logging metrics each epoch and checkpointing; resume from ``ctx``'s checkpoint if present."""
    from sharplab.models import MLP

    dtype = getattr(torch, cfg.dtype)
    world, rank = ctx.world_size, ctx.rank
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size = {cfg.batch_size} must divide by the {world} processes of --nproc")
    torch.manual_seed(ctx.seed)
    np.random.seed(ctx.seed)
    x_train, y_train, x_test, y_test = (t.to(ctx.device) for t in load_digits_tensors(dtype))
    x_val = y_val = None
    if cfg.val_size:
        x_train, x_val = x_train[: -cfg.val_size], x_train[-cfg.val_size :]
        y_train, y_val = y_train[: -cfg.val_size], y_train[-cfg.val_size :]
    if cfg.train_size:
        x_train, y_train = x_train[: cfg.train_size], y_train[: cfg.train_size]
    model = MLP(64, 10, hidden=(cfg.width,) * cfg.depth).to(device=ctx.device, dtype=dtype)
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    opt = build_optimizer(cfg, model, net)
    order = torch.Generator().manual_seed(ctx.seed)
    n, bs = len(y_train), cfg.batch_size
    steps_per_epoch = n // bs
    epoch, pos, step, perm, loss_sum = 0, 0, 0, None, 0.0
    metrics: dict[str, float] = {}

    ckpt = ctx.load_checkpoint()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        order.set_state(ckpt["order"])
        restore_rng(ckpt["rng"])
        epoch, pos, step, perm = ckpt["epoch"], ckpt["pos"], ckpt["step"], ckpt["perm"]
        loss_sum = ckpt["loss_sum"]
        metrics = ckpt["metrics"]
        ctx.logger.info("resumed from checkpoint at epoch %d, step %d", epoch, step)

    def save() -> None:
        ctx.save_checkpoint({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "order": order.get_state(),
            "rng": capture_rng(), "epoch": epoch, "pos": pos, "step": step, "perm": perm,
            "loss_sum": loss_sum, "metrics": metrics,
        })

    model.train()
    bar = ctx.progress(total=cfg.epochs * steps_per_epoch, desc="digits")
    bar.update(epoch * steps_per_epoch + pos)
    while epoch < cfg.epochs:
        if perm is None:
            perm = torch.randperm(n, generator=order)
        while pos < steps_per_epoch:
            idx = perm[pos * bs : (pos + 1) * bs].tensor_split(world)[rank].to(ctx.device)
            loss = _train_step(cfg, net, opt, x_train[idx], y_train[idx])
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss)
                loss /= world
            value = loss.item()
            if not np.isfinite(value):
                raise Diverged(step)
            loss_sum += value
            pos, step = pos + 1, step + 1
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and pos < steps_per_epoch:
                save()
        metrics = {"train_loss": loss_sum / steps_per_epoch, **evaluate(model, x_test, y_test)}
        if x_val is not None:
            metrics.update(evaluate(model, x_val, y_val, "val"))
        ctx.log_metrics(epoch + 1, metrics)
        epoch, pos, perm, loss_sum = epoch + 1, 0, None, 0.0
        save()
    bar.close()
    if ctx.is_main:
        atomic_torch_save(ctx.artifact("model.pt"), model.state_dict())
    return metrics


def _train_step(cfg: DigitsConfig, net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    """One update; returns the (local) mini-batch loss at w, detached."""

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    if cfg.optimizer == "sgd":
        loss = closure()
        opt.step()
    else:
        loss = opt.step(closure)
    return loss.detach().clone()


