"""The PreAct ResNet's initialisation against the official ``deep_nets/models.py`` (``init_weights_he``).

Reference values are closed forms: Kaiming-normal with mode fan_out and the ReLU gain gives every conv weight
N(0, 2 / fan_out), fan_out = out_channels * k_h * k_w; PyTorch's default (Kaiming-uniform, a = sqrt(5)) gives
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1 / sqrt(3 fan_in). For N i.i.d. normal draws the sample std has a
relative standard error of 1 / sqrt(2 N) and the sample kurtosis a standard error of sqrt(24 / N): the tests
allow 5 of those (a false alarm about once in 10^6 layers), the smallest layer checked having 432 weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharplab.models import build_model


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", ["preact-resnet18", "preact-resnet34"])
def test_official_init_convs_are_kaiming_normal_fan_out(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width=16, norm="gn")  # init="official" is the default
    pooled = []
    for conv in _convs(model):
        w = conv.weight.detach().double().flatten()
        n = w.numel()
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        want = math.sqrt(2.0 / fan_out)
        assert abs(w.std().item() / want - 1) < 5 / math.sqrt(2 * n), (conv, w.std().item(), want)
        assert abs(w.mean().item()) < 5 * want / math.sqrt(n)
        pooled.append(w / want)
    z = torch.cat(pooled)
    kurtosis = (z ** 4).mean().item() / (z ** 2).mean().item() ** 2
    assert abs(kurtosis - 3.0) < 5 * math.sqrt(24 / z.numel())  # normal (3), not uniform (1.8)


def test_official_init_zero_linear_bias_and_unit_norm_layers():
    torch.manual_seed(0)
    for norm, cls in (("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)):
        model = build_model("preact-resnet18", num_classes=10, width=8, norm=norm)
        assert torch.equal(model.head.bias, torch.zeros(10))
        # the head's weight keeps PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert model.head.weight.abs().max() <= 1 / math.sqrt(model.head.in_features)
        layers = [m for m in model.modules() if isinstance(m, cls)]
        assert layers and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in layers)
        assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in layers)


def test_torch_init_keeps_pytorch_defaults():
    torch.manual_seed(0)
    model = build_model("preact-resnet18", num_classes=10, width=16, norm="gn", init="torch")
    for conv in _convs(model):
        w = conv.weight.detach().double().flatten()
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert abs(w.std().item() * math.sqrt(3 * fan_in) - 1) < 5 / math.sqrt(2 * w.numel())
    assert bool(model.head.bias.ne(0).any())
    with pytest.raises(ValueError, match="unknown init"):
        build_model("preact-resnet18", init="xavier")
