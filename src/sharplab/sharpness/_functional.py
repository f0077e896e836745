"""Shared plumbing: the mean loss as a function of a parameter dict, evaluated in eval mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in ``eval()`` mode and restore the previous mode afterwards.

    Sharpness is a property of the function w -> L(w), so every measure here evaluates the model in eval
    mode: BatchNorm uses its running statistics (no batch dependence, no buffer updates) and dropout is
    off. This is also what the official ``eval_sharpness.py`` does (``model.eval()``). GroupNorm models
    are unaffected by the mode.
    """
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides. A one-channel image batch permuted from NHWC counts as contiguous but
    keeps channels-last strides; convolutions then return channels-last activations, on which
    ``torch.func``'s forward-mode GroupNorm fails ("view size is not compatible"). A copy costs one pass."""
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    if tuple(reversed(expected)) == x.stride():
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def loss_of(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
            ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``f(params) = loss_fn(model(x; params), y)`` (other parameters and buffers as in ``model``)."""
    x = standard_layout(x)
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update({n: b for n, b in model.named_buffers()})

    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, ({**fixed, **params},), (x,)), y)

    return f


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def unflat(v: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, t in like.items():
        out[n] = v[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out
