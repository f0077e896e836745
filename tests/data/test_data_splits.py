"""Split helpers, the decorrelated probe splits and the toy generative model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharplab.data import SPLITS, TwoFeatureSplit, list_datasets, load_two_feature
from sharplab.data.core import balanced_pairs, draw_from_pools, pair_table, split_by_fractions
from sharplab.data.toy import ToyOptions
from sharplab.errors import ConfigError, SharplabError


def toy_bayes_error_hard(opt: ToyOptions) -> float:
    """Bayes error of predicting the hard sign from the hard coordinates alone: Phi(-sqrt(h) m / sigma)."""
    snr = float(np.sqrt(opt.hard_dims) * opt.margin_hard / max(opt.sigma_hard, 1e-12))
    return float(0.5 * torch.special.erfc(torch.tensor(snr / np.sqrt(2.0))))


def chi_square_independence(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's chi-square statistic of the contingency table of a and b (0 = exactly independent)."""
    ka, kb = a.max() + 1, b.max() + 1
    table = np.zeros((ka, kb))
    np.add.at(table, (a, b), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_registry_lists_every_contract_name():
    assert set(list_datasets()) >= {"toy", "fmnist-mnist", "cifar-mnist", "celeba", "waterbirds", "pacs", "vlcs",
                                    "officehome"}  # labs may register more once imported
    with pytest.raises(SharplabError, match="unknown data set 'nope'"):
        load_two_feature("nope")


def test_balanced_pairs_exact_counts_from_skewed_labels():
    rng = np.random.default_rng(0)
    easy = rng.integers(0, 3, 3000)
    hard = np.where(rng.random(3000) < 0.8, easy % 2, rng.integers(0, 2, 3000))  # strongly correlated
    assert chi_square_independence(easy, hard) > 100
    idx = balanced_pairs(easy, hard, 3, 2, np.random.default_rng(1))
    assert len(np.unique(idx)) == len(idx)
    counts = {(a, b): int(np.sum((easy[idx] == a) & (hard[idx] == b))) for a in range(3) for b in range(2)}
    smallest = min(int(np.sum((easy == a) & (hard == b))) for a in range(3) for b in range(2))
    assert set(counts.values()) == {smallest}
    assert chi_square_independence(easy[idx], hard[idx]) == pytest.approx(0.0, abs=1e-12)
    assert len(balanced_pairs(easy, hard, 3, 2, np.random.default_rng(1), limit=60)) == 60
    with pytest.raises(ConfigError, match="every \\(easy, hard\\) pair"):
        balanced_pairs(np.zeros(5, int), np.zeros(5, int), 2, 1, np.random.default_rng(0))


def test_pair_table_and_pools():
    rng = np.random.default_rng(0)
    e, h = pair_table(3, 4, 5, rng)
    assert len(e) == 60 and chi_square_independence(e, h) == 0.0
    pool = {0: np.array([10, 11, 12]), 1: np.array([20])}
    labels = np.array([0] * 7 + [1] * 2)
    got = draw_from_pools(labels, pool, rng)
    assert set(got[:7]) == {10, 11, 12} and set(got[7:]) == {20}
    uses = np.bincount(got[:7])[10:13]
    assert uses.max() - uses.min() <= 1  # each member once per pass


def test_split_helpers_are_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 50)
    parts = split_by_fractions(labels, [0.5, 0.1, 0.4], np.random.default_rng(3))
    allidx = np.concatenate(parts)
    assert len(allidx) == 200 and len(np.unique(allidx)) == 200
    assert [np.bincount(labels[p]).tolist() for p in parts] == [[25] * 4, [5] * 4, [20] * 4]


def test_split_validates_dtypes():
    with pytest.raises(ValueError, match="int64"):
        TwoFeatureSplit(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, dtype=torch.long),
                        torch.zeros(3, dtype=torch.long))


def test_toy_splits_follow_the_contract():
    data = load_two_feature("toy", seed=5)
    assert data.name == "toy" and data.input_shape == (10,) and data.num_classes == 2
    assert data.num_easy_classes == data.num_hard_classes == 2
    assert data.meta["easy_dims"] == [0] and data.meta["hard_dims"] == [1]
    for name in SPLITS:
        s = data.splits[name]
        assert s.x.dtype == torch.float32 and s.y.dtype == s.easy.dtype == s.hard.dtype == torch.long
        if name in ("train", "val", "test"):
            assert torch.equal(s.easy, s.y) and torch.equal(s.hard, s.y)
        else:
            counts = s.pair_counts()
            assert set(counts) == {(0, 0), (0, 1), (1, 0), (1, 1)} and len(set(counts.values())) == 1
            assert chi_square_independence(s.easy.numpy(), s.hard.numpy()) == 0.0
            assert torch.equal(s.y, s.hard)


def test_toy_generative_model_statistics():
    """Sample moments of each coordinate group match the documented model (float64 reference)."""
    opt = dict(n_probe_test=40000, easy_dims=2, hard_dims=3, noise_dims=4, margin_easy=1.5, sigma_easy=0.1,
               margin_hard=0.3, sigma_hard=0.2, sigma_noise=0.7)
    s = load_two_feature("toy", seed=0, **opt).splits["probe_test"]
    x = s.x.double()
    se, sh = (2 * s.easy - 1).double()[:, None], (2 * s.hard - 1).double()[:, None]
    tol = 5 / np.sqrt(len(x))  # about five standard errors
    torch.testing.assert_close((x[:, :2] * se).mean(0), torch.full((2,), 1.5, dtype=torch.float64),
                               atol=0.1 * tol, rtol=0)
    torch.testing.assert_close((x[:, 2:5] * sh).mean(0), torch.full((3,), 0.3, dtype=torch.float64),
                               atol=0.2 * tol, rtol=0)
    torch.testing.assert_close((x[:, 2:5] * se).mean(0), torch.zeros(3, dtype=torch.float64), atol=0.4 * tol,
                               rtol=0)  # hard coordinates carry nothing about the easy sign here
    torch.testing.assert_close((x[:, :2] - 1.5 * se).std(0), torch.full((2,), 0.1, dtype=torch.float64),
                               atol=0.01, rtol=0)
    torch.testing.assert_close((x[:, 2:5] - 0.3 * sh).std(0), torch.full((3,), 0.2, dtype=torch.float64),
                               atol=0.01, rtol=0)
    torch.testing.assert_close(x[:, 5:].std(0), torch.full((4,), 0.7, dtype=torch.float64), atol=0.03, rtol=0)
    # one hard coordinate: the error of the sign rule equals the closed form Phi(-m / sigma)
    err = float(((x[:, 2] > 0).long() != s.hard).double().mean())
    assert err == pytest.approx(toy_bayes_error_hard(ToyOptions(**{**opt, "hard_dims": 1})), abs=0.005)


def test_toy_is_seeded_and_validates_options():
    a, b = load_two_feature("toy", seed=1), load_two_feature("toy", seed=1)
    c = load_two_feature("toy", seed=2)
    assert torch.equal(a.splits["train"].x, b.splits["train"].x)
    assert not torch.equal(a.splits["train"].x, c.splits["train"].x)
    with pytest.raises(ConfigError, match="unknown option 'marg'"):
        load_two_feature("toy", marg=1.0)
    with pytest.raises(ConfigError, match="multiple of 4"):
        load_two_feature("toy", n_probe_test=10)
    with pytest.raises(ConfigError, match="n_train"):
        load_two_feature("toy", n_train=0)
