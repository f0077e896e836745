"""The standard CIFAR augmentation in torch (no torchvision): padded random crop and horizontal flip.

Equivalent to ``transforms.RandomCrop(32, padding=4)`` + ``transforms.RandomHorizontalFlip()`` as used by
the official code of *Towards Understanding SAM*: each image is zero-padded by ``padding`` pixels on every
side, a window of the original size is cut at an offset drawn uniformly from ``{0, .., 2 padding}`` in each
axis, and the result is mirrored left-right with probability 1/2. All draws come from the ``generator``
passed in, so a run is reproducible and the global RNG is untouched. Batched: one gather for the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
                     ) -> torch.Tensor:
    """Augment a batch ``x`` [N, C, H, W]: zero-pad, random crop back to H x W, random horizontal flip."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
