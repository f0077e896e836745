"""Penultimate-layer features of a trained model, extracted in batches (eval mode, no gradient)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract_features(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``model.features(x)`` as a float32 ``(N, D)`` CPU tensor.

    The model is put in eval mode (BatchNorm running statistics, no dropout) for the extraction and
    restored to its previous mode afterwards; inputs go through in chunks of ``batch_size``.

    Raises:
        ValueError: the model has no ``features`` method or ``batch_size < 1``.
    """
    if not callable(getattr(model, "features", None)):
        raise ValueError(f"{type(model).__name__} has no features(x) method; probing needs one")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model.features(x[i : i + batch_size].to(device)).reshape(min(batch_size, len(x) - i), -1).float()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, getattr(model, "feature_dim", 0))
    return torch.cat(chunks).cpu()


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: torch.device | str | None = None
) -> torch.Tensor:
    """Class predictions ``argmax model(x)`` in eval mode, batched; the model's mode is restored."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        preds = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
