"""Symmetric label noise (official protocol) and the padded-crop / flip augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharplab.data import symmetric_label_noise
from sharplab.data.augment import random_crop_flip
from sharplab.errors import SharplabError


@pytest.mark.parametrize("n,p,c", [(1000, 0.6, 10), (777, 0.35, 100), (10, 1.0, 2), (50, 0.0, 3)])
def test_exact_count_and_always_another_class(n, p, c):
    y = torch.arange(n) % c
    noisy, mask = symmetric_label_noise(y, p, c, seed=1)
    assert int(mask.sum()) == math.floor(p * n)
    assert bool((noisy[mask] != y[mask]).all()) and bool((noisy[~mask] == y[~mask]).all())
    assert int(noisy.min()) >= 0 and int(noisy.max()) < c


def test_seeded_and_uniform_over_other_classes():
    y = torch.zeros(20000, dtype=torch.long)
    a, ma = symmetric_label_noise(y, 0.5, 5, seed=3)
    b, mb = symmetric_label_noise(y, 0.5, 5, seed=3)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert not torch.equal(symmetric_label_noise(y, 0.5, 5, seed=4)[1], ma)
    counts = np.bincount(a[ma].numpy(), minlength=5)
    assert counts[0] == 0
    expected = 10000 / 4  # each of the 4 other classes: binomial sd ~ 43
    assert np.all(np.abs(counts[1:] - expected) < 5 * math.sqrt(expected * 0.75))


def test_label_noise_bad_input():
    with pytest.raises(SharplabError, match=r"\[0, 1\]"):
        symmetric_label_noise(torch.zeros(3, dtype=torch.long), 1.5, 10, 0)
    with pytest.raises(SharplabError, match="must lie in"):
        symmetric_label_noise(torch.tensor([0, 10]), 0.5, 10, 0)


def _reference(img: torch.Tensor, out: torch.Tensor, pad: int) -> set[tuple[int, int, bool]]:
    """All (dy, dx, flipped) whose crop of the zero-padded image equals ``out`` (loop, no gather)."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = img
    hits = set()
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, out):
                    hits.add((dy, dx, flipped))
    return hits


def test_crop_flip_is_a_window_of_the_padded_image():
    x = torch.rand(64, 3, 8, 8) + 0.1  # no zero pixels: every window is distinguishable
    gen = torch.Generator().manual_seed(0)
    state = torch.get_rng_state()
    out = random_crop_flip(x, gen, padding=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert out.shape == x.shape
    found = [_reference(x[i], out[i], 2) for i in range(64)]
    assert all(len(h) == 1 for h in found)
    offsets = {(dy, dx) for h in found for dy, dx, _ in h}
    flips = sum(f for h in found for _, _, f in h)
    assert len(offsets) > 10 and 16 < flips < 48  # offsets spread over 25 cells; p(flip) = 1/2
    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


def test_no_padding_no_flip_is_identity():
    x = torch.rand(5, 1, 6, 6)
    assert torch.equal(random_crop_flip(x, torch.Generator(), padding=0, flip=False), x)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        random_crop_flip(x[0], torch.Generator())
