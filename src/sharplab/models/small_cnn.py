"""The small CNN of *SAM Enhances Feature Quality via Balanced Learning* (Springer et al., ICLR 2024).

Conv2d(c,32,5,s2,p2)-ReLU-Conv2d(32,64,3,s2,p1)-ReLU-Conv2d(64,128,3,s2,p1)-ReLU-Flatten-Linear.
The penultimate representation is the flattened conv output (``128 * ceil(H/8) * ceil(W/8)`` values:
2048 for 32x32, 3584 for 56x28). ``pool=True`` (registered as ``small-cnn-gap``) global-average-pools it
to 128 values instead: a low-dimensional representation on which random features probe poorly, so a
probe measures what training adds (on the flattened map random features already probe well).
"""

from __future__ import annotations

import torch
from torch import nn

from sharplab.models.base import FeatureModel
from sharplab.models.registry import MODELS


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@MODELS.register("small-cnn")
class SmallCNN(FeatureModel):
    """Three strided convolutions and a linear head.

    Args:
        in_channels: image channels (3 for CIFAR, 1 for MNIST-style dominoes).
        num_classes: outputs of the head.
        input_size: ``(H, W)`` of the input, which fixes the head's input width.
        pool: global-average-pool the conv output (128 features) instead of flattening it.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: tuple[int, int] = (32, 32),
                 pool: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1) if pool else nn.Identity(),
            nn.Flatten(),
        )
        h, w = (1, 1) if pool else input_size
        for k, p in ((5, 2), (3, 1), (3, 1)) if not pool else ():
            h, w = _conv_out(h, k, 2, p), _conv_out(w, k, 2, p)
        self.head = nn.Linear(128 * h * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@MODELS.register("small-cnn-gap")
def small_cnn_gap(in_channels: int = 3, num_classes: int = 10, input_size: tuple[int, int] = (32, 32)) -> SmallCNN:
    """The small CNN with a global-average-pooled 128-d penultimate layer."""
    return SmallCNN(in_channels, num_classes, input_size, pool=True)
