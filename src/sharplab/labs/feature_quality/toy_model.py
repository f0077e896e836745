"""PathwayNet: a two-layer network with one identifiable pathway per labelled feature (toy data set).

The toy data set (``load_two_feature("toy")``) lists in ``meta["easy_dims"]`` and ``meta["hard_dims"]``
the input coordinates that carry each feature. PathwayNet reads each group of coordinates through its
own hidden unit(s) and adds the pathways in the head, the minimal setting of Springer et al. (ICLR 2024,
Sec. 4) in which "how much the model uses a feature" has a name:

.. math::

    h_f(x) = \\tanh(W_f x_{D_f} + b_f) \\in \\mathbb{R}^{k},\\qquad
    f(x) = \\sum_f V_f\\, h_f(x) + c,\\qquad f \\in \\{\\text{easy}, \\text{hard}, \\dots\\}

``features(x) = [h_easy(x), h_hard(x), ...]`` (the penultimate representation a probe reads), ``head`` is
the linear map with blocks ``V_f``. :func:`pathway_weights` returns the blocks, so the ratio
``v_hard / v_easy = ||V_hard|| / ||V_easy||`` of output weights on the two pathways is defined at any
parameter (the real ``w`` or SAM's phantom ``w + eps``). ``tanh`` keeps every unit alive (no dead ReLU) and
bounds each pathway's contribution, so the output weight measures how much the model relies on it.
Any other ``*_dims`` key in ``meta`` (e.g. a third feature) gets its own pathway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sharplab.models.base import FeatureModel


def pathways_from_meta(meta: Mapping[str, object]) -> dict[str, list[int]]:
    """``{"easy": [...], "hard": [...], ...}`` from the ``<name>_dims`` entries of a data set's meta.

    ``noise_dims`` (coordinates carrying no feature) gets no pathway.
    """
    out: dict[str, list[int]] = {}
    for key, value in meta.items():
        if key.endswith("_dims") and key != "noise_dims" and not isinstance(value, str | bytes):
            out[key[: -len("_dims")]] = [int(i) for i in value]  # type: ignore[attr-defined]
    return out


class PathwayNet(FeatureModel):
    """One ``tanh`` pathway per feature, summed by a linear head (see the module docstring).

    Args:
        pathways: feature name -> input coordinates read by that pathway (disjoint index lists).
        num_classes: outputs of the head.
        width: hidden units per pathway (``k``); 1 makes each pathway a single identifiable unit.
    """

    def __init__(self, pathways: Mapping[str, Sequence[int]], num_classes: int, width: int = 1):
        super().__init__()
        if not pathways or any(len(d) == 0 for d in pathways.values()):
            raise ValueError("PathwayNet needs at least one pathway, each with at least one input coordinate")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.names = list(pathways)
        self.width = width
        for name, dims in pathways.items():
            idx = torch.as_tensor(list(dims), dtype=torch.long)
            self.register_buffer(f"dims_{name}", idx, persistent=False)
        self.pathways = nn.ModuleDict({name: nn.Linear(len(d), width) for name, d in pathways.items()})
        self.head = nn.Linear(width * len(pathways), num_classes)

    def dims(self, name: str) -> torch.Tensor:
        return getattr(self, f"dims_{name}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        return torch.cat([torch.tanh(self.pathways[n](x[:, self.dims(n)])) for n in self.names], 1)

    def block(self, name: str) -> slice:
        """Columns of ``head.weight`` that read pathway ``name``."""
        i = self.names.index(name)
        return slice(i * self.width, (i + 1) * self.width)


def pathway_weights(model: PathwayNet) -> dict[str, torch.Tensor]:
    """Output-weight block ``V_f`` (a view of ``head.weight``, shape ``(classes, width)``) per pathway."""
    return {name: model.head.weight[:, model.block(name)] for name in model.names}


def pathway_ratio(model: PathwayNet, num: str = "hard", den: str = "easy") -> float:
    """``||V_num||_F / ||V_den||_F`` — e.g. ``v_hard / v_easy``, how much the head relies on each pathway."""
    w = pathway_weights(model)
    return float(w[num].detach().norm() / w[den].detach().norm())
