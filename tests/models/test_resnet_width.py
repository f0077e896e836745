"""PreAct ResNet-18/34: shapes, width option, GroupNorm groups of the official code."""

from __future__ import annotations

import torch
from torch import nn

from sharplab.models import build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected(blocks: tuple[int, ...], w: int, c_in: int, classes: int) -> int:
    """Parameters counted by hand: 3x3 convs, 1x1 projection shortcuts, two norms per block (GN/BN affine)."""
    total, in_planes = 9 * c_in * w, w
    for mult, count in zip((1, 2, 4, 8), blocks):
        planes = mult * w
        for i in range(count):
            total += 9 * in_planes * planes + 9 * planes * planes + 2 * in_planes + 2 * planes
            if in_planes != planes or (i == 0 and mult > 1):
                total += in_planes * planes
            in_planes = planes
    return total + 2 * in_planes + in_planes * classes + classes


def test_resnet18_and_34_shapes_and_parameter_counts():
    for name, blocks, classes in (("preact-resnet18", (2, 2, 2, 2), 10), ("preact-resnet34", (3, 4, 6, 3), 100)):
        for w, c_in, side in ((4, 3, 32), (6, 1, 28)):
            model = build_model(name, num_classes=classes, in_channels=c_in, width=w, norm="gn")
            assert model(torch.randn(2, c_in, side, side)).shape == (2, classes)
            assert model.feature_dim == 8 * w
            assert _count(model) == _expected(blocks, w, c_in, classes)
    assert _count(build_model("preact-resnet18", norm="bn")) == _expected((2, 2, 2, 2), 64, 3, 10)


def test_groupnorm_groups_follow_the_official_width_rule():
    for w in (8, 64):
        groups = {m.num_groups for m in build_model("preact-resnet18", width=w, norm="gn").modules()
                  if isinstance(m, nn.GroupNorm)}
        assert groups == {w // 2}
