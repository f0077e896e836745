"""Model registry: name -> factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sharplab.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``build_model("small-cnn", in_channels=1, num_classes=5)``."""
    return MODELS.get(name)(**kwargs)
