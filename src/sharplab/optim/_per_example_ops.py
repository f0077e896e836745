"""The layer operations behind :mod:`sharplab.optim._per_example`, one micro-batch at a time.

* :class:`PerturbedLinear`, :class:`PerturbedConv2d` -- y_i = W_{j(i)} a_i with micro-batch weights W_j held
  constant, the weight gradient the shared one, sum_i dL/dy_i a_i^T, from the stock kernel;
* :func:`unfold_patches`, :func:`to_cols`, :func:`from_cols` -- convolution patches as one strided copy, and
  each micro-batch's columns side by side;
* :func:`normalise_per_microbatch`, :func:`affine_view`, :func:`shared_view` -- normalisation layers with
  BatchNorm statistics per micro-batch, and the views that broadcast their affine parameters;
* :func:`per_microbatch` -- a batch viewed as k micro-batches (:class:`Unsupported` when it does not split).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Unsupported(Exception):
    """The model has a layer the per-example formulas do not cover (the ``torch.func`` path does)."""


class PerturbedConv2d(torch.autograd.Function):
    """y_i = W_{j(i)} * a_i (convolution) for micro-batch weights W_j held constant; the weight gradient
    is the shared one, sum_i dL/dy_i * a_i, from the stock kernel on the whole batch."""

    @staticmethod
    def forward(ctx, x, w, wk, m, stride, padding, dilation):  # type: ignore[override]
        n, _, h, wd = x.shape
        k = wk.shape[0]
        cols = unfold_patches(x, w.shape[2:], dilation, padding, stride)  # N x (C kh kw) x L
        out = torch.matmul(wk.view(k, 1, w.shape[0], -1), cols.view(k, n // k, *cols.shape[1:]))
        ho = (h + 2 * padding[0] - dilation[0] * (w.shape[2] - 1) - 1) // stride[0] + 1
        wo = (wd + 2 * padding[1] - dilation[1] * (w.shape[3] - 1) - 1) // stride[1] + 1
        ctx.save_for_backward(x, w, wk)
        ctx.conf = (m, stride, padding, dilation)
        return out.view(n, w.shape[0], ho, wo)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w, wk = ctx.saved_tensors
        m, stride, padding, dilation = ctx.conf
        n, k = x.shape[0], wk.shape[0]
        gx = gw = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            go = grad_out.view(k, n // k, w.shape[0], -1)
            cols = torch.matmul(wk.view(k, 1, w.shape[0], -1).transpose(-1, -2), go)
            gx = F.fold(cols.view(n, cols.shape[-2], -1), x.shape[2:], w.shape[2:], dilation, padding, stride)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(grad_out, x, w, None, stride, padding, dilation, False,
                                                     [0, 0], 1, [False, True, False])[1]
        return gx, gw, None, None, None, None, None


class PerturbedLinear(torch.autograd.Function):
    """y_i = W_{j(i)} a_i for micro-batch weights W_j held constant; shared weight gradient sum_i dL/dy_i a_i^T."""

    @staticmethod
    def forward(ctx, x, w, wk):  # type: ignore[override]
        k = wk.shape[0]
        out = torch.bmm(x.reshape(k, -1, x.shape[-1]), wk.transpose(1, 2))
        ctx.save_for_backward(x, wk)
        return out.view(*x.shape[:-1], wk.shape[1])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, wk = ctx.saved_tensors
        k = wk.shape[0]
        gx = gw = None
        go = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(go.view(k, -1, go.shape[-1]), wk).view_as(x)
        if ctx.needs_input_grad[1]:
            gw = go.t().mm(x.reshape(-1, x.shape[-1]))
        return gx, gw, None


def per_microbatch(t: torch.Tensor, k: int, mod: nn.Module) -> torch.Tensor:
    if t.shape[0] % k:
        raise Unsupported(f"{type(mod).__name__} input has {t.shape[0]} rows, not a multiple of {k} micro-batches")
    return t.view(k, t.shape[0] // k, *t.shape[1:])


def unfold_patches(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """``F.unfold`` (N x (C kh kw) x L patches) as one strided copy: CPU ``im2col`` runs a parallel region per
    example, which is slow when few threads are free (a loaded machine)."""
    kh, kw = kernel
    if padding[0] or padding[1]:
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    x = x.contiguous()
    n, c, h, w = x.shape
    ho = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = x.stride()
    strides = (sn, sc, dilation[0] * sh, dilation[1] * sw, stride[0] * sh, stride[1] * sw)
    win = x.as_strided((n, c, kh, kw, ho, wo), strides)
    return win.reshape(n, c * kh * kw, ho * wo)


def to_cols(t: torch.Tensor, k: int) -> torch.Tensor:
    """N x C x L -> k x C x (m L): each micro-batch's columns side by side (a view when m = 1)."""
    n, c, length = t.shape
    if n == k:
        return t
    return t.view(k, n // k, c, length).transpose(1, 2).reshape(k, c, (n // k) * length)


def from_cols(t: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`to_cols`."""
    k, c, r = t.shape
    if n == k:
        return t
    return t.view(k, c, n // k, r // (n // k)).transpose(1, 2).reshape(n, c, r // (n // k))


def normalise_per_microbatch(mod: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """xhat: the layer's normalisation without the affine part, BatchNorm statistics per micro-batch."""
    if isinstance(mod, nn.GroupNorm):
        return F.group_norm(x, mod.num_groups, None, None, mod.eps)
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, None, None, mod.eps)
    if not mod.training and mod.running_mean is not None:
        return F.batch_norm(x, mod.running_mean, mod.running_var, None, None, False, 0.0, mod.eps)
    xm = per_microbatch(x, k, mod)  # k x m x C x ...: statistics of each micro-batch
    flat = xm.transpose(0, 1).reshape(xm.shape[1], k * x.shape[1], *x.shape[2:])
    xhat = F.batch_norm(flat, None, None, None, None, True, 0.0, mod.eps)
    return xhat.view(xm.shape[1], k, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def affine_view(p: torch.Tensor, mod: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Micro-batch parameters k x P viewed to broadcast against x viewed as k x (N/k) x ..."""
    if isinstance(mod, nn.LayerNorm):
        return p.view(k, *[1] * (x.dim() - p.dim() + 1), *p.shape[1:])
    return p.view(k, 1, p.shape[1], *[1] * (x.dim() - 2))


def shared_view(p: torch.Tensor, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.LayerNorm):
        return p
    return p.view(p.shape[0], *[1] * (x.dim() - 2))
