"""Shared machinery of the real image sets (CelebA, Waterbirds, DomainBed): options and decoding.

A reader lists the files and labels (cheap); the index of each split is chosen on the labels alone; only
then are the chosen images decoded, each file once even when it appears in two splits. Memory is about
``12 * image_size**2`` bytes per example (float32 RGB): 10,000 examples at 64 x 64 take 0.5 GB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sharplab.data.core import TwoFeatureSplit, check_positive, to_split
from sharplab.data.formats import load_images
from sharplab.errors import ConfigError

NORMS = ("imagenet", "none")


@dataclass(frozen=True)
class ImageOptions:
    """``image_size``: side of the square input; ``limit``: at most this many examples per split (None =
    all); ``norm``: ``"imagenet"`` channel standardisation or ``"none"`` (values in [0, 1])."""

    image_size: int = 64
    limit: int | None = 10000
    norm: str = "imagenet"

    def __post_init__(self) -> None:
        check_positive(self, "image_size")
        check_positive(self, "limit", allow_none=True)
        if self.norm not in NORMS:
            raise ConfigError(f"option norm={self.norm!r} must be one of: {', '.join(NORMS)}")


def cap(index: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """A seeded random subset of at most ``limit`` entries of ``index`` (sorted), or all of it."""
    if limit is None or len(index) <= limit:
        return np.sort(index)
    return np.sort(rng.choice(index, size=limit, replace=False))


def materialise(paths: Sequence[str], y: np.ndarray, easy: np.ndarray, hard: np.ndarray,
                index: dict[str, np.ndarray], opt: ImageOptions) -> dict[str, TwoFeatureSplit]:
    """Decode the images each split needs (each file once) and build the splits."""
    needed = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in index.values()]))
    if len(needed) == 0:
        raise ConfigError("no images selected for any split; check the data folder and options")
    pos = {int(i): j for j, i in enumerate(needed)}
    x = load_images([paths[i] for i in needed], opt.image_size, opt.norm,
                    progress=not os.environ.get("CI") and len(needed) > 500)
    out = {}
    for name, idx in index.items():
        rows = np.array([pos[int(i)] for i in idx], dtype=np.int64)
        out[name] = to_split(x[rows], y[idx], easy[idx], hard[idx])
    return out
