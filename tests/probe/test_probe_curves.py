"""Probe learning curves and per-region read-outs, against fits and convolutions done by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharplab.models import SmallCNN
from sharplab.probe import fit_linear_probe
from sharplab.probe.curves import curve_metrics, learning_curve, parse_sizes, subsample_indices
from sharplab.probe.regions import feature_map, region_features, region_rows, row_receptive_fields


def _data(n: int, seed: int, d: int = 6, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    z = rng.normal(size=(n, d))
    z[:, 0] += signal * y
    return z, y


def test_subsample_is_class_balanced_and_reproducible():
    y = np.repeat(np.arange(4), 50)
    idx = subsample_indices(y, 22, repeat=1, seed=3)
    counts = np.bincount(y[idx], minlength=4)
    assert len(idx) == 22 and len(set(idx.tolist())) == 22
    assert sorted(counts.tolist()) == [5, 5, 6, 6]
    assert np.array_equal(idx, subsample_indices(y, 22, repeat=1, seed=3))
    assert not np.array_equal(idx, subsample_indices(y, 22, repeat=2, seed=3))


def test_curve_point_equals_probe_fitted_by_hand_on_the_same_subsample():
    z_tr, y_tr = _data(600, 0)
    z_te, y_te = _data(300, 1)
    points = learning_curve(z_tr, y_tr, z_te, y_te, sizes=(60, 240), repeats=2, seed=5, Cs=(0.01, 1.0))
    for point in points:
        by_hand = []
        for r in range(2):
            idx = subsample_indices(y_tr, point.size, r, seed=5)
            by_hand.append(fit_linear_probe(z_tr[idx], y_tr[idx], z_te, y_te, Cs=(0.01, 1.0), seed=5).error)
        assert point.errors == tuple(by_hand)
        assert point.error == pytest.approx(np.mean(by_hand), abs=1e-15)


def test_curve_falls_with_probe_size_and_full_size_is_one_fit():
    z_tr, y_tr = _data(3000, 2, d=40, signal=0.6)
    z_te, y_te = _data(2000, 3, d=40, signal=0.6)
    small, full = learning_curve(z_tr, y_tr, z_te, y_te, sizes=(12, 10_000), repeats=4, seed=0)
    assert full.size == 3000 and len(full.errors) == 1
    assert full.error == fit_linear_probe(z_tr, y_tr, z_te, y_te, seed=0).error
    assert small.error > full.error + 0.05  # 12 examples in 40 dimensions: the read-out needs more data
    assert curve_metrics([small, full], "hard") == {"curve_error_hard_n12": small.error,
                                                     "curve_error_hard_n3000": full.error}


@pytest.mark.parametrize("text", ["10,5", "1,10", "a,b", ",".join(str(2 + i) for i in range(40))])
def test_bad_probe_sizes_are_refused(text):
    with pytest.raises(ValueError, match="probe sizes"):
        parse_sizes(text)


def test_receptive_fields_of_the_paper_network_by_hand():
    convs = [m for m in SmallCNN(1, 5, (56, 28)).body if isinstance(m, nn.Conv2d)]
    spans = row_receptive_fields(convs, 56)
    assert len(spans) == 7
    # out row r of conv3 <- conv2 rows 2r-1..2r+1 <- conv1 rows 4r-3..4r+3 <- input rows 8r-8..8r+8
    for r, (lo, hi) in enumerate(spans):
        assert (lo, hi) == (max(0, 8 * r - 8), min(56, 8 * r + 9))
    assert region_rows(convs, 56, 0, 28) == [0, 1, 2]
    assert region_rows(convs, 56, 28, 56) == [5, 6]


@pytest.mark.parametrize("pool", [False, True])
def test_region_features_see_only_their_half(pool):
    torch.manual_seed(0)
    model = SmallCNN(1, 5, (56, 28), pool=pool).double()
    body = feature_map(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 56, 28, generator=g, dtype=torch.float64)
    x_top_changed = x.clone()
    x_top_changed[:, :, :28] = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64)
    parts = {"top": (0, 28), "bottom": (28, 56)}
    a = region_features(body, x, parts)
    b = region_features(body, x_top_changed, parts)
    torch.testing.assert_close(a["bottom"], b["bottom"], rtol=0, atol=1e-12)  # float64, same arithmetic
    assert (a["top"] - b["top"]).abs().max() > 1e-3
    # the bottom read-out equals the channel mean over map rows 5-6 computed from the full map by hand
    fmap = body(x)
    torch.testing.assert_close(a["bottom"], fmap[:, :, 5:7, :].mean(dim=(2, 3)).float(), rtol=1e-6, atol=1e-6)


def test_region_features_refuse_a_part_no_row_sees_alone():
    body = feature_map(SmallCNN(1, 5, (56, 28)))
    with pytest.raises(ValueError, match="no row of the conv map"):
        region_features(body, torch.zeros(2, 1, 56, 28), {"middle": (20, 36)})
