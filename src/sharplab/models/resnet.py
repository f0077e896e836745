"""PreAct ResNet-18/34 for 32x32 inputs (He et al., *Identity Mappings in Deep Residual Networks*, 2016).

The CIFAR variant: a 3x3 stem, four stages of pre-activation basic blocks (2, 2, 2, 2 blocks for ResNet-18;
3, 4, 6, 3 for ResNet-34) with ``w, 2w, 4w, 8w`` channels (``width`` w = 64 by default, as the official
code's ``--model_width``), strides 1, 2, 2, 2, a final norm + ReLU, global average pooling (the 8w-d
penultimate features) and a linear head. ``norm="gn"`` uses GroupNorm with ``w // 2`` groups in every
layer (32 at width 64, as the official ``resnet18_gn``) instead of BatchNorm, which has no running
statistics and works per example under ``vmap`` (1-SAM). Any input side >= 8 works (the pooling is
adaptive), e.g. 28 x 28 Fashion-MNIST with ``in_channels=1``.

``init="official"`` (the default) is the official ``models.init_weights`` (``init_weights_he``, "from Rice
et al.", which ``train.py`` applies to every model but the linear one): every convolution Kaiming-normal
with ``mode="fan_out"`` and ``nonlinearity="relu"``, i.e. N(0, 2 / (out_channels k_h k_w)); the linear
head keeps PyTorch's weights and gets a zero bias; BatchNorm / GroupNorm weight 1, bias 0.
``init="torch"`` keeps PyTorch's defaults (Kaiming-uniform with a = sqrt(5): std 1 / sqrt(3 fan_in) for a
convolution, about 2.45x smaller than the official std when fan_in = fan_out, so the same rho is a larger
relative perturbation; the linear bias uniform).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sharplab.models.base import FeatureModel
from sharplab.models.registry import MODELS

INITS = ("official", "torch")


def official_init(model: nn.Module) -> nn.Module:
    """The official initialisation (``deep_nets/models.py``, ``init_weights_he``), in place; returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)  # the weight keeps PyTorch's default, as in the official code
    return model


def _norm(kind: str, channels: int, groups: int = 32) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}; use 'bn' (BatchNorm) or 'gn' (GroupNorm)")


class PreActBlock(nn.Module):
    """``out = conv2(relu(n2(conv1(relu(n1(x)))))) + shortcut(relu(n1(x)))``."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, groups: int = 32):
        super().__init__()
        self.n1 = _norm(norm, in_planes, groups)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.n2 = _norm(norm, planes, groups)
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


class PreActResNet(FeatureModel):
    """PreAct ResNet with ``blocks`` basic blocks per stage; ``features(x)`` is the pooled 8w-d vector."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3,
                 norm: str = "bn", width: int = 64, init: str = "official"):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; use 'official' (the study's Kaiming-normal fan-out) or 'torch'")
        groups = max(1, width // 2)  # official: model_width // 2 groups in every layer (32 at width 64)
        self.stem = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = width
        for mult, stride, count in zip((1, 2, 4, 8), (1, 2, 2, 2), blocks):
            planes = mult * width
            for i in range(count):
                layers.append(PreActBlock(in_planes, planes, stride if i == 0 else 1, norm, groups))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.final_norm = _norm(norm, in_planes, groups)
        self.head = nn.Linear(in_planes, num_classes)
        if init == "official":
            official_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        out = F.relu(self.final_norm(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@MODELS.register("preact-resnet18")
class PreActResNet18(PreActResNet):
    """PreAct ResNet-18 (2, 2, 2, 2 blocks); 11.2 M parameters at width 64 with 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, norm: str = "bn", width: int = 64,
                 init: str = "official"):
        super().__init__((2, 2, 2, 2), num_classes, in_channels, norm, width, init)


@MODELS.register("preact-resnet34")
class PreActResNet34(PreActResNet):
    """PreAct ResNet-34 (3, 4, 6, 3 blocks), the CIFAR-100 model of the study; 21.3 M parameters at width 64."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, norm: str = "bn", width: int = 64,
                 init: str = "official"):
        super().__init__((3, 4, 6, 3), num_classes, in_channels, norm, width, init)
