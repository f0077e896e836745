"""PreAct ResNet-18 for 32x32 inputs (He et al., *Identity Mappings in Deep Residual Networks*, 2016).

The CIFAR variant: a 3x3 stem, four stages of two pre-activation basic blocks (64, 128, 256, 512 channels,
strides 1, 2, 2, 2), a final norm + ReLU, global average pooling (the 512-d penultimate features) and a
linear head. ``norm="gn"`` uses GroupNorm (32 groups) instead of BatchNorm, which has no running
statistics and works per example under ``vmap`` (1-SAM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sharplab.models.base import FeatureModel
from sharplab.models.registry import MODELS


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; use 'bn' (BatchNorm) or 'gn' (GroupNorm)")


class PreActBlock(nn.Module):
    """``out = conv2(relu(n2(conv1(relu(n1(x)))))) + shortcut(relu(n1(x)))``."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.n1 = _norm(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.n2 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.n2(out)))
        return out + shortcut


@MODELS.register("preact-resnet18")
class PreActResNet18(FeatureModel):
    """PreAct ResNet-18; ``features(x)`` is the 512-d globally pooled representation."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, norm: str = "bn"):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for s in (stride, 1):
                blocks.append(PreActBlock(in_planes, planes, s, norm))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = _norm(norm, 512)
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        out = F.relu(self.final_norm(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
