"""Per-region pooled read-outs of a convolutional feature map (a diagnostic, never a primary metric).

A global average pool over a two-part image (a dominoes image: digit above, Fashion-MNIST item below)
adds both parts' responses into the same channels, so in the decorrelated probe splits the other part is
structured noise on the read-out. Pooling over the rows of the conv map that *see only one part* gives a
read-out of that part alone:

    z_region(x) = mean_{r in R, c} phi(x)[:, r, c],   R = { r : receptive field of map row r ⊂ part }.

The receptive field of map row ``r`` after a stack of convolutions with kernels ``k_l``, strides ``s_l``
and paddings ``p_l`` is computed exactly (:func:`row_receptive_fields`), so a region's features do not
depend on a single pixel of the other part (tested by changing one half of an image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def feature_map(model: nn.Module) -> nn.Module:
    """The part of ``model.body`` that returns the last conv map: a trailing ``Flatten`` and global pool
    are dropped (``small-cnn`` and ``small-cnn-gap`` share their convolutions, hence this map)."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no sequential .body: region read-outs need one")
    layers = list(body)
    while layers and isinstance(layers[-1], (nn.Flatten, nn.Identity, nn.AdaptiveAvgPool2d)):
        layers.pop()
    return nn.Sequential(*layers)


def conv_layers(body: nn.Module) -> list[nn.Conv2d]:
    """The ``Conv2d`` layers of ``body`` in order (pooling layers other than identity are refused)."""
    convs = []
    for mod in body.modules():
        if isinstance(mod, nn.Conv2d):
            convs.append(mod)
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            raise ValueError(f"{type(mod).__name__} in the feature extractor: region read-outs need an unpooled "
                             "conv map (use the flattened 'small-cnn')")
    if not convs:
        raise ValueError("no Conv2d layer found: region read-outs need a convolutional feature extractor")
    return convs


def row_receptive_fields(convs: Sequence[nn.Conv2d], height: int) -> list[tuple[int, int]]:
    """Input row span ``[lo, hi)`` (clipped to the image) that each output row of ``convs`` depends on."""
    spans = [(r, r + 1) for r in range(height)]
    size = height
    for conv in convs:
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        if isinstance(p, str):
            raise ValueError(f"padding={p!r} is not supported for region read-outs")
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        new = []
        for r in range(out):
            rows = [r * s - p + d * j for j in range(k)]
            inside = [q for q in rows if 0 <= q < size]
            lo = min(spans[q][0] for q in inside)
            hi = max(spans[q][1] for q in inside)
            new.append((lo, hi))
        spans, size = new, out
    return spans


def region_rows(convs: Sequence[nn.Conv2d], height: int, lo: int, hi: int) -> list[int]:
    """Map rows whose receptive field lies inside input rows ``[lo, hi)``."""
    return [r for r, (a, b) in enumerate(row_receptive_fields(convs, height)) if lo <= a and b <= hi]


@torch.no_grad()
def region_features(body: nn.Module, x: torch.Tensor, parts: dict[str, tuple[int, int]], *,
                    batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Channel means over the map rows that see only each part: ``{name: (N, C)}``.

    Args:
        body: the convolutional feature extractor (``model.body`` without pooling), applied in eval mode.
        x: images ``(N, C, H, W)``.
        parts: ``name -> (lo, hi)`` input row ranges, e.g. ``{"top": (0, 28), "bottom": (28, 56)}``.

    Raises:
        ValueError: a part that no map row sees alone (its receptive fields all cross the boundary).
    """
    convs = conv_layers(body)
    rows = {name: region_rows(convs, x.shape[-2], lo, hi) for name, (lo, hi) in parts.items()}
    for name, rs in rows.items():
        if not rs:
            raise ValueError(f"no row of the conv map sees only the {name!r} part {parts[name]}")
    device = next((p.device for p in body.parameters()), torch.device("cpu"))
    was_training = body.training
    body.eval()
    out: dict[str, list[torch.Tensor]] = {name: [] for name in parts}
    try:
        for i in range(0, len(x), batch_size):
            fmap = body(x[i : i + batch_size].to(device))
            if fmap.dim() != 4:
                raise ValueError("the feature extractor must return a (N, C, H, W) map for region read-outs")
            for name, rs in rows.items():
                out[name].append(fmap[:, :, rs, :].mean(dim=(2, 3)).float().cpu())
    finally:
        body.train(was_training)
    return {name: torch.cat(chunks) if chunks else torch.empty(0) for name, chunks in out.items()}
