"""SAM with PyTorch Lightning, automatic and manual optimisation.

* Automatic: ``configure_optimizers`` returns a ``SAM``; Lightning calls ``optimizer.step(closure)`` and
  SAM runs its closure (training_step + backward) twice, at w and at w + eps.
* Manual (``automatic_optimization = False``): the closure calls ``self.manual_backward(loss)`` and
  ``opt.step(closure)`` goes through Lightning's precision plugin to SAM.

Both work in ``"32-true"`` and ``"bf16-mixed"``; in ``"16-mixed"`` (CUDA) Lightning's plugin runs the
closure itself and then calls ``scaler.step(optimizer)``, which SAM completes with the same closure.

Run: ``python examples/frameworks/lightning_sam.py [--precision bf16-mixed] [--manual]``.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharplab.optim import SAM


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


class AutoSAM(L.LightningModule):
    """Automatic optimisation: nothing SAM-specific but the optimizer."""

    def __init__(self, rho: float = 0.05, lr: float = 0.1) -> None:
        super().__init__()
        self.net, self.rho, self.lr = make_model(), rho, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=self.rho, lr=self.lr, momentum=0.9)


class ManualSAM(AutoSAM):
    """Manual optimisation: a closure with ``manual_backward`` (no zero_grad needed: SAM zeroes)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()

        def closure():
            loss = F.cross_entropy(self.net(x), y)
            self.manual_backward(loss)
            return loss

        return opt.step(closure)


def train(precision: str = "32-true", manual: bool = False, epochs: int = 2, plugins=None) -> nn.Module:
    """Train on 32 random examples (batches of 16) and return the network."""
    module = (ManualSAM if manual else AutoSAM)()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        **({"plugins": plugins} if plugins else {"precision": precision}),
    )
    trainer.fit(module, DataLoader(make_data(), batch_size=16))
    return module.net


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--manual", action="store_true")
    args = parser.parse_args()
    net = train(args.precision, args.manual)
    x, y = make_data().tensors
    print(f"final loss {F.cross_entropy(net(x), y).item():.4f}")
