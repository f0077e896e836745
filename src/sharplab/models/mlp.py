"""A multi-layer perceptron with ReLU activations; inputs of any shape are flattened."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sharplab.models.base import FeatureModel
from sharplab.models.registry import MODELS


@MODELS.register("mlp")
class MLP(FeatureModel):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes``; features = last hidden layer.

    Args:
        in_features: flattened input size.
        num_classes: outputs of the head.
        hidden: widths of the hidden layers (at least one).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer (hidden=(width, ...))")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
