"""Post-hoc analyses on finished ``deep-net`` runs: sharpness of saved weights, weight interpolation.

Both run on the device the runs' config names (``device = "auto"``: CUDA when visible), not on the CPU only.

Interpolation follows the official ``deep_nets/eval_loss_surface.py``: the *parameters* are interpolated,
w(alpha) = (1 - alpha) w_a + alpha w_b, on the grid alpha = -1, -0.95, ..., 2 (step 0.05, 61 points:
``np.concatenate([np.arange(-1, 0, 0.05), np.arange(0, 2.05, 0.05)])``), and at every point the BatchNorm
running statistics are re-estimated on augmented training images (``utils_train.bn_update`` over
``train_batches_for_bn``: 5,000 training images, batches of 128, ``data_augm=True``, the statistics reset and
then averaged over the batches weighted by their size, ``momentum = b / (n + b)``), instead of blending the
two models' buffers. Training error along the path is on the clean labels (the official evaluation loaders
carry no label noise). GroupNorm networks have no statistics to re-estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharplab.errors import SharplabError
from sharplab.labs.deep_net.config import DeepNetConfig
from sharplab.labs.deep_net.train import AUGMENT, EVAL_BATCH, build_net, load_data, sharpness_metrics
from sharplab.labs.training import evaluate

#: the official interpolation grid: [-1, 2] in steps of 0.05, both ends included (61 points)
ALPHAS = np.round(np.arange(-20, 41) * 0.05, 2)
#: training images (augmented) and batch size of the BatchNorm re-estimation (official train_batches_for_bn)
BN_IMAGES, BN_BATCH = 5000, 128


def analysis_device(cfg: DeepNetConfig) -> torch.device:
    """The device of the run's config: ``cuda``, ``auto`` (CUDA when visible) or ``cpu``."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SharplabError("the runs ask for device = 'cuda' but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")


def load_final(cfg: DeepNetConfig, run_dir: Path, in_channels: int, num_classes: int,
               device: torch.device | str = "cpu") -> nn.Module:
    path = Path(run_dir) / "final.pt"
    if not path.exists():
        raise SharplabError(f"{path} is missing; finish the run first (sharplab run / sharplab deep-net ...)")
    model = build_net(cfg, in_channels, num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device)


def sharpness_of_run(cfg: DeepNetConfig, run_dir: Path, seed: int) -> dict[str, float]:
    """m-sharpness, top Hessian eigenvalue and trace of a run's final weights on its training images with the
    clean labels (as the official ``eval_sharpness.py``, also after label-noise training)."""
    data, _, _ = load_data(cfg, seed)
    device = analysis_device(cfg)
    model = load_final(cfg, run_dir, data.input_shape[0], data.num_classes, device)
    return sharpness_metrics(cfg, model, data.x_train.to(device), data.y_train.to(device))


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = BN_BATCH,
                  augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
    """Recompute every BatchNorm layer's running mean and variance from the images ``x``, in batches.

    The official ``bn_update``: statistics reset, the model in training mode, and before each batch of b the
    momentum set to b / (n + b) (n images seen so far), so the result is the average of the per-batch
    statistics weighted by batch size (the batch variance unbiased, as PyTorch keeps it); with equal batches
    it is PyTorch's cumulative average (``momentum=None``). Momenta and the train/eval mode are restored.
    Returns whether the model has BatchNorm statistics at all.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return False
    device = next(model.parameters()).device
    momenta, was = [m.momentum for m in layers], model.training
    for m in layers:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            if augment is not None:
                xb = augment(xb)
            for m in layers:
                m.momentum = len(xb) / (seen + len(xb))
            model(xb)
            seen += len(xb)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was)
    return True


def bn_images(cfg: DeepNetConfig, x_train: torch.Tensor, seed: int, n: int = BN_IMAGES) -> torch.Tensor:
    """``n`` training images drawn without replacement (seeded), augmented as the run trained (the same
    images and augmentations at every point of an interpolation, so the curve carries no resampling noise)."""
    gen = torch.Generator().manual_seed(seed + 31)
    x = x_train[torch.randperm(len(x_train), generator=gen)[:n]]
    if cfg.augment:
        from sharplab.data.augment import random_crop_flip

        pad, flip = AUGMENT[cfg.dataset]
        x = random_crop_flip(x, gen, padding=pad, flip=flip)
    return x


def interpolate(cfg: DeepNetConfig, run_a: Path, run_b: Path, seed: int, alphas: np.ndarray = ALPHAS,
                device: torch.device | str | None = None) -> list[dict[str, float]]:
    """Test / training error and loss along w(alpha) = (1 - alpha) w_a + alpha w_b (parameters), with the
    BatchNorm statistics re-estimated at every alpha (see the module docstring); on the runs' device."""
    data, _, _ = load_data(cfg, seed)
    device = analysis_device(cfg) if device is None else torch.device(device)
    shape = (data.input_shape[0], data.num_classes)
    a, b = load_final(cfg, run_a, *shape, device), load_final(cfg, run_b, *shape, device)
    model = load_final(cfg, run_a, *shape, device)  # a's buffers, replaced by the re-estimated ones below
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    x_bn = bn_images(cfg, data.x_train, seed) if batchnorm_layers(model) else None
    rows = []
    for alpha in alphas:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_((1 - float(alpha)) * pa[name] + float(alpha) * pb[name])
        if x_bn is not None:
            reestimate_bn(model, x_bn)
        tl, te = evaluate(model, data.x_test, data.y_test, EVAL_BATCH)
        trl, tre = evaluate(model, data.x_train, data.y_train, EVAL_BATCH)
        rows.append({"alpha": float(alpha), "test_error": te, "test_loss": tl, "train_error": tre,
                     "train_loss": trl})
    return rows
