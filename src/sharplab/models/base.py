"""Shared shape of every sharplab model: a feature extractor followed by a linear head."""

from __future__ import annotations

import torch
from torch import nn


class FeatureModel(nn.Module):
    """``forward(x) = head(features(x))``; subclasses set ``self.head`` and implement ``features``."""

    head: nn.Linear

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
