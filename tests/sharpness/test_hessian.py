"""Hessian measures on the inputs real readers produce."""

from __future__ import annotations

import math

import pytest
import torch


def test_hessian_of_a_groupnorm_resnet_on_channels_last_strided_images():
    """A one-channel batch permuted from NHWC (how image readers often build it) is 'contiguous' with
    channels-last strides; torch.func's forward-mode GroupNorm failed on the activations it gives."""
    import torch.nn.functional as F

    from sharplab.models import build_model
    from sharplab.sharpness import hessian_eigenvalues, hessian_trace

    torch.manual_seed(0)
    model = build_model("preact-resnet18", num_classes=10, in_channels=1, norm="gn", width=4).double()
    nhwc = torch.rand(4, 12, 12, 1, dtype=torch.float64)
    strided, plain = nhwc.permute(0, 3, 1, 2), nhwc.permute(0, 3, 1, 2).reshape(4, 1, 12, 12).clone()
    assert strided.is_contiguous() and strided.stride() != plain.stride()
    y = torch.randint(0, 10, (4,))
    top = hessian_eigenvalues(model, F.cross_entropy, strided, y, k=1, iters=3)
    assert top == pytest.approx(hessian_eigenvalues(model, F.cross_entropy, plain, y, k=1, iters=3), rel=1e-9)
    assert math.isfinite(hessian_trace(model, F.cross_entropy, strided, y, samples=1)[0])
