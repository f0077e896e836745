"""The digits lab's configuration: one frozen dataclass, bounds in field metadata (checked by the runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sharplab.data.image_classification import DIGITS_TEST as N_TEST
from sharplab.data.image_classification import DIGITS_TOTAL as N_TOTAL
from sharplab.labs.fields import lr_field, momentum_field, rho_field, weight_decay_field

N_TRAIN = N_TOTAL - N_TEST


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class DigitsConfig:
    optimizer: str = _f("sam", "sgd or sam (SAM wrapping the same SGD)", choices=["sgd", "sam"])
    rule: str = _f("sam", "SAM perturbation rule", choices=["sam", "usam", "asam", "random"])
    rho: float = rho_field(0.05, "SAM neighbourhood radius rho")
    lr: float = lr_field(0.1)
    momentum: float = momentum_field(0.9)
    weight_decay: float = weight_decay_field(5e-4)
    batch_size: int = _f(64, "global batch size", min=1, max=N_TRAIN)
    epochs: int = _f(10, "passes over the training set", min=1)
    width: int = _f(128, "hidden units per layer", min=1)
    depth: int = _f(2, "hidden layers", min=1, max=8)
    train_size: int = _f(0, "use only the first N training images (0 = all 1,347)", min=0, max=N_TRAIN)
    val_size: int = _f(0, "hold out the last N training images as a validation split (0 = none)", min=0,
                       max=N_TRAIN - 1)
    checkpoint_every: int = _f(0, "also checkpoint every N steps (0 = after each epoch only)", min=0)
    sync_ascent: bool = _f(False, "DDP: average the ascent gradient over ranks (else m-sharpness per rank)")
    dtype: str = _f("float32", "parameter and data precision", choices=["float32", "float64"])
    device: str = _f("cpu", "cpu, cuda, or auto (cuda when available)", choices=["cpu", "cuda", "auto"])

    def __post_init__(self) -> None:
        n = (self.train_size or N_TRAIN - self.val_size)
        if self.train_size and self.train_size > N_TRAIN - self.val_size:
            raise ValueError(f"train_size = {self.train_size} + val_size = {self.val_size} exceed the {N_TRAIN} "
                             "training images; lower one")
        if self.batch_size > n:
            raise ValueError(f"batch_size = {self.batch_size} exceeds the {n} training images; lower it")
