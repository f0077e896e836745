"""SAM with the Hugging Face ``Trainer``: a small subclass.

``SAMTrainer.training_step`` runs the pass at w (the stock ``training_step``: forward, backward),
``first_step`` to w + eps, and the pass at w + eps with the same dropout masks; the Trainer then clips
the gradient (``max_grad_norm``, so clipping acts on the descent gradient) and calls
``optimizer.step()``, which SAM finishes as its second step. fp16 goes through the Trainer's scaler.
Gradient accumulation would perturb each micro-batch with the gradient of the micro-batches so far,
so it is refused: raise the batch size instead.

Run: ``python examples/frameworks/hf_trainer_sam.py [--bf16]``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from sharplab.errors import SharplabError
from sharplab.optim import SAM


class TinyClassifier(nn.Module):
    """Returns ``{"loss", "logits"}`` as Trainer expects."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"logits": logits, "loss": None if labels is None else F.cross_entropy(logits, labels)}


class ExamplesDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class SAMTrainer(Trainer):
    """``Trainer`` whose optimizer is a ``SAM``: two passes per step in ``training_step``."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.gradient_accumulation_steps != 1:
            raise SharplabError("SAMTrainer needs gradient_accumulation_steps=1 (each micro-batch would be "
                                "perturbed with a partial gradient); raise the batch size instead")
        sam = getattr(self.optimizer, "optimizer", self.optimizer)  # inside Accelerate's wrapper
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        loss = super().training_step(model, inputs, num_items_in_batch)  # backward at w
        sam.first_step(zero_grad=True, scaler=self.accelerator.scaler)
        torch.set_rng_state(cpu_rng)  # the same dropout masks in the pass at w + eps
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        super().training_step(model, inputs, num_items_in_batch)  # backward at w + eps
        return loss  # the loss at w; Trainer clips, then optimizer.step() -> SAM's second step


def train(bf16: bool = False, epochs: int = 2, max_grad_norm: float = 1.0, batch_size: int = 16,
          trainer_cls: type[SAMTrainer] = SAMTrainer) -> nn.Module:
    model = TinyClassifier()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            lr_scheduler_type="constant", max_grad_norm=max_grad_norm, bf16=bf16, use_cpu=True,
            report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
            dataloader_drop_last=False,
        )
        trainer = trainer_cls(model=model, args=args, train_dataset=ExamplesDataset(), optimizers=(opt, None))
        trainer.train()
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    model = train(args.bf16)
    data = ExamplesDataset()
    print(f"final loss {F.cross_entropy(model.net(data.x), data.y).item():.4f}")
