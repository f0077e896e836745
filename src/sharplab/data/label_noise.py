"""Symmetric label noise as in *Towards Understanding SAM* (Andriushchenko & Flammarion, ICML 2022).

The official code (``deep_nets/data.py``, ``get_loaders``) draws ``int(n * p)`` distinct indices by a
random permutation and replaces each chosen label by a class drawn uniformly among the *other*
``num_classes - 1`` classes, keeping a boolean mask of the changed examples. Here the same distribution
comes from a private generator: ``idx = permutation(n)[: floor(p n)]``, ``y'_i = (y_i + s_i) mod C`` with
``s_i`` uniform on ``{1, .., C - 1}`` (uniform over the classes other than ``y_i``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sharplab.errors import SharplabError


def symmetric_label_noise(labels: torch.Tensor | np.ndarray, p: float, num_classes: int, seed: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Change exactly ``floor(p * n)`` labels, each to a different class; returns ``(noisy, mask)``.

    Args:
        labels: int labels in ``[0, num_classes)`` (1-D tensor or array).
        p: fraction of labels to change, ``0 <= p <= 1``.
        num_classes: number of classes C >= 2.
        seed: seed of the private generator (the same seed gives the same noise).

    Returns:
        ``noisy_labels`` (int64 tensor, same length) and ``noisy_mask`` (bool tensor, True where changed).
    """
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long().flatten()
    if not 0.0 <= p <= 1.0:
        raise SharplabError(f"label-noise fraction p={p} must lie in [0, 1]")
    if num_classes < 2:
        raise SharplabError(f"num_classes={num_classes}: symmetric label noise needs at least 2 classes")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise SharplabError(f"labels must lie in [0, {num_classes}); got {int(y.min())}..{int(y.max())}")
    n = y.numel()
    k = math.floor(p * n + 1e-9)
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.permutation(n)[:k]).long()
    shift = torch.from_numpy(rng.integers(1, num_classes, size=k)).long()
    noisy = y.clone()
    noisy[idx] = (y[idx] + shift) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return noisy, mask
