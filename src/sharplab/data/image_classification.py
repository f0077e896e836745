"""Image-classification sets of the deep-network studies: CIFAR-10, CIFAR-100, Fashion-MNIST, digits.

One label per image (the sets with two labelled features are in :mod:`sharplab.data.core`). Each set is
registered in :data:`IMAGE_SETS` and read from its official on-disk format (:mod:`sharplab.data.formats`;
:mod:`sharplab.data.sources` says where a folder is looked for):

* ``cifar10``: ``<root>/cifar-10-batches-py/``, 50,000 train / 10,000 test, 3 x 32 x 32, 10 classes;
* ``cifar100``: ``<root>/cifar-100-python/``, the same sizes, 100 fine classes;
* ``fashion-mnist``: ``<root>/fashion-mnist/`` or Debian's ``dataset-fashion-mnist`` (offline),
  60,000 / 10,000, 1 x 28 x 28, 10 classes;
* ``digits``: scikit-learn's bundled 8 x 8 digits (offline), 1,797 images split once by
  :func:`digits_split` into 1,347 train / 450 test, the split the ``digits`` lab trains on.

Validation split as in the official code (``deep_nets/train.py`` of tml-epfl/understanding-sam):
``val = permutation(n_train)[: int(0.1 * n_train)]`` drawn from a seeded generator; the rest is the
training set. Pixels are floats in [0, 1] (``ToTensor`` without normalisation, as the official code).
``sharplab data info NAME`` prints the splits without converting a pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sharplab.data import sources
from sharplab.data.formats import read_cifar, read_cifar100, read_idx_pair
from sharplab.registry import Registry

VAL_FRACTION = 0.1


@dataclass(frozen=True)
class RawImages:
    """The official train and test parts as stored: uint8 images [N, C, H, W], int64 labels [N]; ``source``
    says where they were read."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


@dataclass(frozen=True)
class ImageSetEntry:
    """Registry record: ``read(root)`` returns the set's :class:`RawImages`."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    summary: str
    read: Callable[[str | None], RawImages]


IMAGE_SETS: Registry[ImageSetEntry] = Registry("image set")


def register_image_set(name: str, num_classes: int, input_shape: Sequence[int], summary: str):
    """Decorator: register ``read(root) -> RawImages`` as the image set ``name``."""

    def deco(fn: Callable[[str | None], RawImages]) -> Callable[[str | None], RawImages]:
        IMAGE_SETS.add(name, ImageSetEntry(name, num_classes, tuple(input_shape), summary, fn))
        return fn

    return deco


@register_image_set("cifar10", 10, (3, 32, 32),
                    "image classification: CIFAR-10, 10 classes, 3x32x32, 50,000 train / 10,000 test")
def read_cifar10_set(root: str | None) -> RawImages:
    folder = sources.require_folder("cifar-10-batches-py", root, ("data_batch_1", "test_batch"), "CIFAR-10")
    (xtr, ytr), (xte, yte) = read_cifar(folder, "train"), read_cifar(folder, "test")
    return RawImages(xtr, ytr, xte, yte, str(folder))


@register_image_set("cifar100", 100, (3, 32, 32),
                    "image classification: CIFAR-100, 100 fine classes, 3x32x32, 50,000 train / 10,000 test")
def read_cifar100_set(root: str | None) -> RawImages:
    folder = sources.require_folder("cifar-100-python", root, ("train", "test"), "CIFAR-100")
    (xtr, ytr), (xte, yte) = read_cifar100(folder, "train"), read_cifar100(folder, "test")
    return RawImages(xtr, ytr, xte, yte, str(folder))


@register_image_set("fashion-mnist", 10, (1, 28, 28),
                    "image classification: Fashion-MNIST, 10 classes, 1x28x28, 60,000 train / 10,000 test [offline]")
def read_fashion_mnist_set(root: str | None) -> RawImages:
    folder = sources.require_folder("fashion-mnist", root, ("train-images-idx3-ubyte.gz",), "Fashion-MNIST")
    (xtr, ytr), (xte, yte) = read_idx_pair(folder, "train"), read_idx_pair(folder, "test")
    return RawImages(xtr[:, None], ytr, xte[:, None], yte, str(folder))


#: scikit-learn's digits: 1,797 images, of which the first 450 of :func:`digits_split`'s order are the test part
DIGITS_TOTAL, DIGITS_TEST = 1797, 450


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's 8x8 digits, split once: the images in the
    order of a fixed permutation (``RandomState(0)``), the first :data:`DIGITS_TEST` for test. ``x`` holds
    the stored pixel values (float64 [N, 64], integers 0..16); each user scales them its own way."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[DIGITS_TEST:], y[DIGITS_TEST:], x[:DIGITS_TEST], y[:DIGITS_TEST]


@register_image_set("digits", 10, (1, 8, 8),
                    "image classification: scikit-learn's 8x8 digits, 10 classes, 1x8x8, 1,347 train / 450 test "
                    "[offline]")
def read_digits_set(root: str | None) -> RawImages:
    def images(x: np.ndarray) -> np.ndarray:  # 0..16 -> 0..255, as an 8-bit image file would hold them
        return (x * (255.0 / 16.0)).round().astype(np.uint8).reshape(-1, 1, 8, 8)

    xtr, ytr, xte, yte = digits_split()
    return RawImages(images(xtr), ytr.astype(np.int64), images(xte), yte.astype(np.int64),
                     "scikit-learn (sklearn.datasets.load_digits, bundled)")


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


def split_indices(n_train_part: int, n_test_part: int, seed: int, n_train: int = 0, n_test: int = 0,
                  val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices into the official train and test parts: the seeded validation split,
    then seeded random subsets of ``n_train`` training / ``n_test`` test examples (0 keeps all)."""
    tr, val = split_validation(n_train_part, seed, val_fraction)
    rng = np.random.default_rng(seed + 1)
    if n_train and n_train < len(tr):
        tr = np.sort(rng.choice(tr, n_train, replace=False))
    te = np.arange(n_test_part)
    if n_test and n_test < len(te):
        te = np.sort(rng.choice(te, n_test, replace=False))
    return tr, val, te


def load_image_set(name: str, root: str | None = None, seed: int = 0, n_train: int = 0, n_test: int = 0,
                   val_fraction: float = VAL_FRACTION) -> ImageSet:
    """Load ``name`` (see :data:`IMAGE_SETS`) with a seeded held-out validation part.

    ``n_train`` / ``n_test`` > 0 keep a seeded random subset of that many training (after the validation
    split) / test examples, for quick runs; 0 keeps all.
    """
    entry = IMAGE_SETS.get(name)
    raw = entry.read(root)
    tr, val, te = split_indices(len(raw.y_train), len(raw.y_test), seed, n_train, n_test, val_fraction)

    def f(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)

    def i(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).long()

    xtr, ytr, xte, yte = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    return ImageSet(name, entry.num_classes, f(xtr[tr]), i(ytr[tr]), f(xtr[val]), i(ytr[val]), f(xte[te]),
                    i(yte[te]), meta={"train_indices": tr, "val_indices": val})


def split_records(name: str, root: str | None = None, seed: int = 0, val_fraction: float = VAL_FRACTION
                  ) -> tuple[RawImages, list[dict[str, Any]]]:
    """The raw parts and, per split (``train``, ``val``, ``test``), ``{"split", "n", "shape",
    "class_counts"}`` (``shape`` of the split's images [N, C, H, W], ``class_counts[c]`` examples of class c)
    as :func:`load_image_set` would split them with ``seed``; no pixel is converted."""
    entry = IMAGE_SETS.get(name)
    raw = entry.read(root)
    tr, val, te = split_indices(len(raw.y_train), len(raw.y_test), seed, val_fraction=val_fraction)
    records = []
    for split, x, y, idx in (("train", raw.x_train, raw.y_train, tr), ("val", raw.x_train, raw.y_train, val),
                             ("test", raw.x_test, raw.y_test, te)):
        counts = np.bincount(y[idx], minlength=entry.num_classes)
        records.append({"split": split, "n": int(len(idx)), "shape": [int(len(idx)), *map(int, x.shape[1:])],
                        "class_counts": [int(c) for c in counts]})
    return raw, records
