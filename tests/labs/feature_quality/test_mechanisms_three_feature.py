"""The three-feature toy: generative model, decorrelated probe splits, SGD vs SAM on the hard feature."""

from __future__ import annotations

import itertools

import pytest
import torch

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.three_feature import DEFAULT_TRAIN, FEATURES3, make_three_feature, run_three_feature


def test_splits_follow_the_generative_model() -> None:
    data = make_three_feature(seed=3, margins=(1.0, 0.4, 0.2), noise=0.1, dims=4)
    again = make_three_feature(seed=3, margins=(1.0, 0.4, 0.2), noise=0.1, dims=4)
    assert torch.equal(data.splits["train"].x, again.splits["train"].x)
    assert data.input_shape == (12,) and data.meta["hard_dims"] == [8, 9, 10, 11]
    for name in ("train", "val", "test"):
        s = data.splits[name]
        assert torch.equal(s.easy, s.y) and torch.equal(s.medium, s.y) and torch.equal(s.hard, s.y)
    for name in ("probe_train", "probe_test"):
        s = data.splits[name]
        counts = {p: 0 for p in itertools.product((0, 1), repeat=3)}
        for e, m, h in zip(s.easy.tolist(), s.medium.tolist(), s.hard.tolist()):
            counts[(e, m, h)] += 1
        assert set(counts.values()) == {len(s.y) // 8}  # all 8 sign patterns exactly equally often
    # signal: coordinate 0 of block k has mean s_k * margin_k and std = noise; the other coordinates are noise
    s = data.splits["probe_test"]
    x = s.x.reshape(len(s.y), 3, 4)
    for k, (feat, margin) in enumerate(zip(FEATURES3, (1.0, 0.4, 0.2))):
        sign = 2.0 * getattr(s, feat).float() - 1.0
        resid = x[:, k, 0] - sign * margin
        assert resid.mean().abs() < 0.01 and abs(resid.std() - 0.1) < 0.01
        assert (x[:, k, 1:].mean(0).abs() < 0.01).all()


def test_bad_options_raise() -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        make_three_feature(sizes={"probe_test": 12})
    with pytest.raises(ConfigError):
        make_three_feature(margins=(1.0, 0.5))


def test_sam_learns_the_hard_feature_better_than_sgd() -> None:
    """Seeded, as in the study: with three redundant features, SAM's hard-feature probe error is below
    SGD's on every seed, while both read the easy and medium features perfectly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = run_three_feature(seeds=(0, 1, 2), cfg=DEFAULT_TRAIN.replace(epochs=3))  # 5 epochs: same margins
    finally:
        torch.set_num_threads(before)
    sgd = {r["seed"]: r for r in rows if r["optimizer"] == "sgd"}
    sam = {r["seed"]: r for r in rows if r["optimizer"] == "sam"}
    for seed in (0, 1, 2):
        assert sam[seed]["probe_error_hard"] < sgd[seed]["probe_error_hard"], (seed, sgd[seed], sam[seed])
        assert sgd[seed]["probe_error_easy"] < 0.01 and sam[seed]["probe_error_easy"] < 0.01
    gap = sum(sgd[s]["probe_error_hard"] - sam[s]["probe_error_hard"] for s in (0, 1, 2)) / 3
    assert gap > 0.01
