"""Models used by the labs. Each exposes ``features(x)`` (penultimate representation, ``(B, D)``),
``head`` (the final ``nn.Linear``), ``feature_dim``, and ``forward(x) = head(features(x))``.

``build_model(name, **kwargs)`` builds one by registry name: ``small-cnn``, ``mlp``, ``preact-resnet18``,
``preact-resnet34`` (both with a ``width`` option).
"""

from sharplab.models.mlp import MLP
from sharplab.models.registry import MODELS, build_model
from sharplab.models.resnet import PreActResNet, PreActResNet18, PreActResNet34
from sharplab.models.small_cnn import SmallCNN

__all__ = ["MLP", "MODELS", "PreActResNet", "PreActResNet18", "PreActResNet34", "SmallCNN", "build_model"]
