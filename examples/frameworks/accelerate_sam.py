"""SAM with Hugging Face Accelerate, with a closure or with the two passes written out.

* ``closure``: ``opt.step(closure)`` with ``accelerator.backward(loss)`` in the closure. In fp16,
  ``AcceleratedOptimizer.step`` calls ``scaler.step(sam, closure)``; SAM takes the step over from the
  scaler (unscales each pass, skips non-finite steps). ``GradScaler.step`` insists on one ``scale()``
  call first, which a closure has not made before the very first step: hence ``scale(ones)`` once.
* ``two_pass``: backward at w, ``first_step(scaler=)``, backward at w + eps, then ``opt.step()``, which
  SAM finishes as its second step (through the scaler in fp16).

Run: ``python examples/frameworks/accelerate_sam.py [--mixed-precision bf16] [--two-pass]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharplab.optim import SAM


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def train(mixed_precision: str = "no", two_pass: bool = False, epochs: int = 2,
          accelerator: Accelerator | None = None) -> nn.Module:
    """Train on 32 random examples (batches of 16) and return the (unwrapped) network."""
    accelerator = accelerator or Accelerator(mixed_precision=mixed_precision, cpu=True)
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loader = DataLoader(make_data(), batch_size=16)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    sam = opt.optimizer  # the SAM inside Accelerate's wrapper
    if accelerator.scaler is not None and not two_pass:
        accelerator.scaler.scale(torch.ones((), device=accelerator.device))  # GradScaler.step needs a scale
    for _ in range(epochs):
        for x, y in loader:
            if two_pass:
                accelerator.backward(F.cross_entropy(model(x), y))
                sam.first_step(zero_grad=True, scaler=accelerator.scaler)
                accelerator.backward(F.cross_entropy(model(x), y))
                opt.step()  # SAM's second step: restore w, base step
            else:

                def closure(x=x, y=y):
                    loss = F.cross_entropy(model(x), y)
                    accelerator.backward(loss)
                    return loss

                opt.step(closure)
            opt.zero_grad()
    return accelerator.unwrap_model(model)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--two-pass", action="store_true")
    args = parser.parse_args()
    net = train(args.mixed_precision, args.two_pass)
    x, y = make_data().tensors
    print(f"final loss {F.cross_entropy(net(x), y).item():.4f}")
