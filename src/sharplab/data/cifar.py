"""Image classification sets for the deep-network studies: CIFAR-10, CIFAR-100, Fashion-MNIST, digits.

Readers use the official on-disk formats (Krizhevsky 2009, python version):

* ``<root>/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``; pickled dicts with
  ``b"data"`` (uint8 [N, 3072], planes R, G, B of 32 x 32, row-major) and ``b"labels"`` (10 classes).
* ``<root>/cifar-100-python/``: ``train`` and ``test``; the same ``b"data"`` layout with ``b"fine_labels"``
  (100 classes, used here) and ``b"coarse_labels"`` (20 super-classes).

Both are unpickled with the allow-list of :mod:`sharplab.data.formats` (numpy arrays and plain containers
only), so a crafted file cannot run code. Offline stand-ins: the full Fashion-MNIST (Debian's
``dataset-fashion-mnist``, 60k/10k, 28 x 28 x 1) and scikit-learn's 8x8 digits (1,797 images; fixed
split of 1,347 train / 450 test as in :mod:`sharplab.labs.digits`).

Validation split as in the official code (``deep_nets/train.py`` of tml-epfl/understanding-sam):
``val = permutation(n_train)[: int(0.1 * n_train)]`` drawn from a seeded generator; the rest is the
training set. Pixels are floats in [0, 1] (``ToTensor`` without normalisation, as the official code).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sharplab.data import sources
from sharplab.data.formats import cifar_arrays, load_cifar_pickle, read_cifar, read_idx_pair
from sharplab.errors import ConfigError, SharplabError

IMAGE_SETS = ("cifar10", "cifar100", "fashion-mnist", "digits")
VAL_FRACTION = 0.1


def read_cifar100_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, 32, 32], int64 fine labels [N]) from CIFAR-100's ``train`` or ``test`` pickle."""
    path = Path(path)
    try:
        data, labels = cifar_arrays(load_cifar_pickle(path), b"fine_labels")
    except FileNotFoundError:
        raise SharplabError(f"{path} is missing; run 'sharplab data download cifar100 --root DIR'") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError, AttributeError,
            RecursionError) as exc:
        raise SharplabError(f"{path} is not a CIFAR-100 python file ({exc}); download it again") from None
    if labels.size and (labels.min() < 0 or labels.max() > 99):
        raise SharplabError(f"{path}: fine labels outside 0..99; the file is damaged, download it again")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar100(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    return read_cifar100_file(Path(folder) / ("train" if part == "train" else "test"))


@dataclass
class ImageSet:
    """float32 images in [0, 1] [N, C, H, W] and int64 labels of the train / val / test parts."""

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def split_validation(n: int, seed: int, fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``val = permutation(n)[: int(fraction n)]`` (official protocol)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(fraction * n)
    val = np.sort(perm[:n_val])
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def _raw(name: str, root: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    if name == "cifar10":
        folder = sources.require_folder("cifar-10-batches-py", root, ("data_batch_1", "test_batch"), "CIFAR-10")
        (xtr, ytr), (xte, yte) = read_cifar(folder, "train"), read_cifar(folder, "test")
        return xtr, ytr, xte, yte, 10
    if name == "cifar100":
        folder = sources.require_folder("cifar-100-python", root, ("train", "test"), "CIFAR-100")
        (xtr, ytr), (xte, yte) = read_cifar100(folder, "train"), read_cifar100(folder, "test")
        return xtr, ytr, xte, yte, 100
    if name == "fashion-mnist":
        folder = sources.require_folder("fashion-mnist", root, ("train-images-idx3-ubyte.gz",), "Fashion-MNIST")
        (xtr, ytr), (xte, yte) = read_idx_pair(folder, "train"), read_idx_pair(folder, "test")
        return xtr[:, None], ytr, xte[:, None], yte, 10
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.RandomState(0).permutation(len(y))  # the split of sharplab.labs.digits
        x = (x[order] * (255.0 / 16.0)).round().astype(np.uint8).reshape(-1, 1, 8, 8)
        y = y[order].astype(np.int64)
        return x[450:], y[450:], x[:450], y[:450], 10
    raise ConfigError(f"unknown image set {name!r}; choose one of: {', '.join(IMAGE_SETS)}")


def load_image_set(name: str, root: str | None = None, seed: int = 0, n_train: int = 0, n_test: int = 0,
                   val_fraction: float = VAL_FRACTION) -> ImageSet:
    """Load ``name`` (see :data:`IMAGE_SETS`) with a seeded held-out validation part.

    ``n_train`` / ``n_test`` > 0 keep a seeded random subset of that many training (after the validation
    split) / test examples, for quick runs; 0 keeps all.
    """
    xtr, ytr, xte, yte, classes = _raw(name, root)
    tr, val = split_validation(len(ytr), seed, val_fraction)
    rng = np.random.default_rng(seed + 1)
    if n_train and n_train < len(tr):
        tr = np.sort(rng.choice(tr, n_train, replace=False))
    te = np.arange(len(yte))
    if n_test and n_test < len(te):
        te = np.sort(rng.choice(te, n_test, replace=False))

    def f(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)

    def i(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).long()

    return ImageSet(name, classes, f(xtr[tr]), i(ytr[tr]), f(xtr[val]), i(ytr[val]), f(xte[te]), i(yte[te]),
                    meta={"train_indices": tr, "val_indices": val})
