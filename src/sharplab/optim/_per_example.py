"""Vectorised m-sharpness from per-example gradient formulas, without ``torch.func``.

For micro-batches S_1..S_k of size m, m-sharpness needs (Foret et al., 2021, sec. 4; Andriushchenko &
Flammarion, 2022, eq. 5)

    g = (1/k) sum_j grad L_{S_j}(w + eps_j),    eps_j = rule(grad L_{S_j}(w)).

Both passes run the model once on the whole batch, with the layers of known form replaced by their
per-micro-batch versions:

* **Ascent (per-micro-batch gradients).** One batched forward at w and one backward to the layer
  *outputs* only (no weight gradients). For a linear layer y = W a + b the micro-batch gradients follow
  in closed form, grad_W L_{S_j} = sum_{i in S_j} dL/dy_i a_i^T (an outer product; for a convolution the
  same with a_i unfolded into patches, as in Goodfellow, 2015, "Efficient per-example gradient
  computations"), and for a normalisation layer y = gamma * xhat + beta, grad_gamma = sum_i dL/dy_i xhat_i.
* **Descent (only the sum).** With eps_j held constant (SAM's stop-gradient),

      d/dw sum_j L_{S_j}(w + eps_j) = sum_j grad L_{S_j}(w + eps_j),

  so the second pass needs no per-micro-batch gradients: the per-micro-batch weights W_j = w + eps_j
  appear in the forward (one batched matrix product per layer) and in the backward to the layer inputs,
  while the weight gradient is the ordinary batched one, sum_i dL/dy_i a_i^T, computed by the stock
  convolution / matrix-product kernel over the whole batch.

* **Factored layers.** Where a micro-batch has few rows R (examples x output positions) compared with
  the layer's width, R (C_in k_h k_w + C_out) < C_in k_h k_w C_out (deep convolutions at low
  resolution, linear heads), the gradient g_j = G_j A_j^T (A_j: the R input patches, G_j: the R output
  gradients) is never formed: its norm comes from R x R Gram matrices, ||g_j||^2 = sum((A_j^T A_j) *
  (G_j^T G_j)) (Li et al., ICLR 2022, "ghost norm"), and with eps_j = c_j g_j (``sam``, ``usam``) the
  descent pass adds c_j G_j (A_j^T U_j) to the shared layer's output for the rows U_j at w + eps_j.

The per-micro-batch gradients are held only for the micro-batches of one chunk, and are turned into
W_j in place, so a chunk holds at most one copy of the perturbed parameters per micro-batch. BatchNorm in
training mode normalises each micro-batch with its own statistics (the semantics of the ``torch.func``
path and of the loop); the running statistics are left alone here (``sam_grad`` updates them once per
step from the whole batch at w). Supported layers: ``nn.Linear``, ``nn.Conv2d`` (one group, numeric
padding, zero padding mode), ``nn.BatchNorm1d/2d/3d``, ``nn.GroupNorm``, ``nn.LayerNorm``; any other
module holding a trainable parameter sends ``sam_grad`` to the ``torch.func`` path (:func:`unsupported`).
Every supported layer must see the examples along dim 0, in batch order (``N x ...`` or ``N*T x ...``
with each example's rows together); a layer whose input's dim 0 is not a multiple of the number of
micro-batches raises :class:`Unsupported` before any gradient is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharplab.optim._per_example_ops import (
    PerturbedConv2d,
    PerturbedLinear,
    affine_view,
    from_cols,
    normalise_per_microbatch,
    per_microbatch,
    shared_view,
    to_cols,
    unfold_patches,
)

_LINEAR_FORWARDS = {nn.Linear.forward}
_CONV_FORWARDS = {nn.Conv2d.forward}
_NORM_FORWARDS = {nn.BatchNorm1d.forward, nn.BatchNorm2d.forward, nn.BatchNorm3d.forward, nn.GroupNorm.forward,
                  nn.LayerNorm.forward}


def _kind(mod: nn.Module) -> str | None:
    fwd = type(mod).forward
    if fwd in _LINEAR_FORWARDS:
        return "linear"
    if fwd in _CONV_FORWARDS:
        ok = mod.groups == 1 and mod.padding_mode == "zeros" and not isinstance(mod.padding, str)
        return "conv" if ok else None
    if fwd in _NORM_FORWARDS:
        return "norm"
    return None


def unsupported(core: nn.Module, trainable: Sequence[torch.Tensor]) -> str | None:
    """Why the per-example formulas cannot run this model (``None``: they can)."""
    ids = {id(p) for p in trainable}
    for name, mod in core.named_modules():
        own = [p for p in mod.parameters(recurse=False) if id(p) in ids]
        if own and _kind(mod) is None:
            return f"layer {name or type(mod).__name__} ({type(mod).__name__}) has no per-example formula"
        if isinstance(mod, _BatchNorm) and _kind(mod) is None:
            return f"layer {name} ({type(mod).__name__}) normalises across the batch in its own way"
    return None


class Passes:
    """Runs ``core`` with its supported layers replaced, recording what the per-example formulas need.

    ``ascent(x)`` runs at w and records (layer input or xhat, output) for every layer holding a
    perturbed parameter; ``per_example(losses, k)`` then returns each perturbed parameter's k
    micro-batch gradients. ``descent(x, w_k, eps_k)`` runs at w + eps_j: ``w_k`` maps a perturbed
    linear/convolution weight to its k x shape micro-batch weights w + eps_j, ``eps_k`` maps any other
    perturbed parameter (biases, affine norms) to its k x shape eps_j.
    """

    def __init__(self, core: nn.Module, pert: Sequence[torch.Tensor]) -> None:
        self.core = core
        self.pert = {id(p) for p in pert}
        self.layers = [(mod, kind) for mod in core.modules() if (kind := _kind(mod)) is not None]
        #: ids of the layers holding a perturbed parameter (computed once, not on every pass)
        self.perturbed_layers = {id(mod) for mod, _ in self.layers
                                 if any(id(p) in self.pert for p in mod.parameters(recurse=False))}
        #: ids of the perturbed linear / convolution weights (their micro-batch copies are w + eps_j)
        self.matrix_weights = {id(mod.weight) for mod, kind in self.layers
                               if kind in ("linear", "conv") and id(mod.weight) in self.pert}
        self.records: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []

    def _run(self, x: torch.Tensor, k: int, fwd: Callable) -> torch.Tensor:
        patched = []
        try:
            for mod, kind in self.layers:
                if kind == "norm" or id(mod) in self.perturbed_layers:
                    mod.forward = (lambda inp, mod=mod, kind=kind: fwd(mod, kind, inp, k))
                    patched.append(mod)
            return self.core(x)
        finally:
            for mod in patched:
                del mod.forward

    # -- ascent ---------------------------------------------------------------------------------------
    def ascent(self, x: torch.Tensor, k: int) -> torch.Tensor:
        self.records = []
        return self._run(x, k, self._ascent_layer)

    def _ascent_layer(self, mod, kind, inp, k):
        per_microbatch(inp, k, mod)
        if kind == "linear":
            out = F.linear(inp, mod.weight, mod.bias)
            saved = inp
        elif kind == "conv":
            out = F.conv2d(inp, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation)
            saved = inp
        else:
            saved = normalise_per_microbatch(mod, inp, k)
            out = saved
            if mod.weight is not None:
                out = out * shared_view(mod.weight, mod, inp)
            if mod.bias is not None:
                out = out + shared_view(mod.bias, mod, inp)
        if id(mod) in self.perturbed_layers:
            self.records.append((mod, kind, saved.detach(), out))
        return out

    def per_example(self, total_loss: torch.Tensor, k: int, factored: bool = False):
        """The k micro-batch gradients of every perturbed parameter (summed over the layer's uses).

        Returns ``(grads, factors, sq)``: ``grads`` maps id(param) to its k x param.shape gradients;
        with ``factored``, a linear / convolution weight used once whose R rows per micro-batch (examples
        x positions) satisfy R (C_in k_h k_w + C_out) < C_in k_h k_w C_out is kept as its factors instead,
        ``factors[id(w)] = (A, G)`` with g_j = G_j A_j^T (A_j: the R input rows or patches, G_j: the R
        output gradients), and ``sq`` holds the k squared Frobenius norms of those gradients,
        ||G_j A_j^T||^2 = sum((A_j^T A_j) * (G_j^T G_j)) (the "ghost norm" of Li et al., ICLR 2022).
        """
        outs = [r[3] for r in self.records]
        gouts = torch.autograd.grad(total_loss, outs, allow_unused=True)
        uses: dict[int, int] = {}
        for mod, kind, _, _ in self.records:
            if kind != "norm":
                uses[id(mod.weight)] = uses.get(id(mod.weight), 0) + 1
        grads: dict[int, torch.Tensor] = {}
        factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        sq = None

        def add(p: torch.Tensor | None, g: Callable[[], torch.Tensor]) -> None:
            if p is None or id(p) not in self.pert:
                return
            value = g()
            grads[id(p)] = value if id(p) not in grads else grads[id(p)].add_(value)

        def keep(w: torch.Tensor, cols_in: torch.Tensor, cols_out: torch.Tensor) -> bool:
            """Keep g_j = cols_out_j cols_in_j^T factored (cols: k x features x R)?"""
            nonlocal sq
            r, fin, fout = cols_in.shape[2], cols_in.shape[1], cols_out.shape[1]
            if not (factored and id(w) in self.pert and uses[id(w)] == 1 and r * (fin + fout) < fin * fout):
                return False
            gram = torch.bmm(cols_in.transpose(1, 2), cols_in).mul_(torch.bmm(cols_out.transpose(1, 2), cols_out))
            part = gram.sum((1, 2))
            sq = part if sq is None else sq + part
            factors[id(w)] = (cols_in, cols_out)
            return True

        for (mod, kind, saved, out), go in zip(self.records, gouts):
            if go is None:
                go = torch.zeros_like(out)
            if kind == "linear":
                a = saved.reshape(k, -1, saved.shape[-1])  # k x R x in (rows: examples x positions)
                g = go.reshape(k, -1, go.shape[-1])  # k x R x out
                if not keep(mod.weight, a.transpose(1, 2), g.transpose(1, 2)):
                    add(mod.weight, lambda g=g, a=a: torch.bmm(g.transpose(1, 2), a))
                add(mod.bias, lambda g=g: g.sum(1))
            elif kind == "conv":
                cols = to_cols(unfold_patches(saved, mod.kernel_size, mod.dilation, mod.padding, mod.stride), k)
                g = to_cols(go.reshape(go.shape[0], go.shape[1], -1), k)  # k x C_out x R
                if not keep(mod.weight, cols, g):
                    shape = mod.weight.shape
                    add(mod.weight,
                        lambda g=g, cols=cols, shape=shape: torch.bmm(g, cols.transpose(1, 2)).view(k, *shape))
                add(mod.bias, lambda g=g: g.sum(2))
            else:
                g = per_microbatch(go, k, mod)
                xh = per_microbatch(saved, k, mod)
                pdim = (mod.weight if mod.weight is not None else mod.bias).dim()
                if isinstance(mod, nn.LayerNorm):
                    dims = tuple(range(1, go.dim() - pdim + 1))
                else:
                    dims = (1, *range(3, go.dim() + 1))
                add(mod.weight, lambda g=g, xh=xh, dims=dims: (g * xh).sum(dims))
                add(mod.bias, lambda g=g, dims=dims: g.sum(dims))
        self.records = []
        return grads, factors, sq

    # -- descent --------------------------------------------------------------------------------------
    def descent(self, x: torch.Tensor, k: int, w_k: dict[int, torch.Tensor], eps_k: dict[int, torch.Tensor],
                factors: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        self.w_k, self.eps_k, self.factors = w_k, eps_k, factors or {}
        try:
            return self._run(x, k, self._descent_layer)
        finally:
            self.w_k, self.eps_k, self.factors = {}, {}, {}

    def _bias(self, mod, out, inp, k):
        b = mod.bias
        if b is None:
            return out
        if id(b) in self.eps_k:
            bk = b.unsqueeze(0) + self.eps_k[id(b)]  # differentiable in b, eps constant
            view = bk.view(k, 1, bk.shape[1], *[1] * (out.dim() - 2))
            return (per_microbatch(out, k, mod) + view).view(out.shape)
        return out + b.view(b.shape[0], *[1] * (out.dim() - 2))

    def _descent_layer(self, mod, kind, inp, k):
        per_microbatch(inp, k, mod)
        if kind in ("linear", "conv"):
            wk = self.w_k.get(id(mod.weight))
            fac = self.factors.get(id(mod.weight))
            if fac is not None:  # eps_j = G_j A_j^T applied to the rows U_j: G_j (A_j^T U_j), U_j at w + eps
                a, g = fac
                if kind == "linear":
                    rows = inp.reshape(k, -1, inp.shape[-1])
                    corr = torch.bmm(torch.bmm(rows, a), g.transpose(1, 2))
                    out = F.linear(inp, mod.weight) + corr.view(*inp.shape[:-1], g.shape[1])
                    return self._linear_bias(mod, out, k)
                out = F.conv2d(inp, mod.weight, None, mod.stride, mod.padding, mod.dilation)
                u = to_cols(F.unfold(inp, mod.kernel_size, mod.dilation, mod.padding, mod.stride), k)
                corr = from_cols(torch.bmm(g, torch.bmm(a.transpose(1, 2), u)), inp.shape[0])
                return self._bias(mod, out + corr.view(out.shape), inp, k)
            if kind == "linear":
                if wk is None:
                    out = F.linear(inp, mod.weight)
                else:
                    out = PerturbedLinear.apply(inp, mod.weight, wk)
                return self._linear_bias(mod, out, k)
            if wk is None:
                out = F.conv2d(inp, mod.weight, None, mod.stride, mod.padding, mod.dilation)
            else:
                out = PerturbedConv2d.apply(inp, mod.weight, wk, inp.shape[0] // k, mod.stride, mod.padding,
                                             mod.dilation)
            return self._bias(mod, out, inp, k)
        out = normalise_per_microbatch(mod, inp, k)
        for p, plus in ((mod.weight, False), (mod.bias, True)):
            if p is None:
                continue
            if id(p) in self.eps_k:
                pk = p.unsqueeze(0) + self.eps_k[id(p)]
                om = per_microbatch(out, k, mod)
                v = affine_view(pk, mod, out, k)
                out = (om + v if plus else om * v).view(out.shape)
            else:
                v = shared_view(p, mod, out)
                out = out + v if plus else out * v
        return out

    def _linear_bias(self, mod, out, k):
        b = mod.bias
        if b is None:
            return out
        if id(b) in self.eps_k:
            bk = b.unsqueeze(0) + self.eps_k[id(b)]
            om = out.reshape(k, -1, out.shape[-1])
            return (om + bk.unsqueeze(1)).view(out.shape)
        return out + b
