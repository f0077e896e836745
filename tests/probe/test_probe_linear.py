"""Linear probes on hand-built representations: a lost feature gives chance error, a kept one low error."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from sharplab.errors import SharplabError
from sharplab.probe import fit_linear_probe, probe_model, probe_representation, worst_group_error


def _labels(n: int, k_easy: int, k_hard: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent, balanced feature labels (every (easy, hard) pair equally often)."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.arange(n) % (k_easy * k_hard)
    pairs = pairs[torch.randperm(n, generator=g)]
    return pairs // k_hard, pairs % k_hard


def _representation(easy, hard, *, keep: tuple[str, ...], noise_dims: int = 8, seed: int = 0):
    """One-hot codes of the kept features (+ Gaussian noise) and pure-noise coordinates."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for name, lab in (("easy", easy), ("hard", hard)):
        if name in keep:
            parts.append(nn.functional.one_hot(lab).double() * 2.0)
    parts.append(torch.zeros(len(easy), noise_dims, dtype=torch.float64))
    z = torch.cat(parts, 1)
    return z + 0.5 * torch.randn(z.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(("k_easy", "k_hard"), [(2, 2), (5, 5)])
def test_probe_on_one_feature_gives_chance_on_the_other(k_easy, k_hard):
    e_tr, h_tr = _labels(2000, k_easy, k_hard, seed=1)
    e_te, h_te = _labels(2000, k_easy, k_hard, seed=2)
    z_tr = _representation(e_tr, h_tr, keep=("easy",), seed=3)
    z_te = _representation(e_te, h_te, keep=("easy",), seed=4)
    fits = probe_representation(z_tr, {"easy": e_tr, "hard": h_tr}, z_te, {"easy": e_te, "hard": h_te})
    chance = 1.0 - 1.0 / k_hard
    # binomial sampling error of a chance-level classifier on 2000 test points, 4 standard deviations
    tol = 4 * math.sqrt(chance * (1 - chance) / 2000) + 0.01
    assert abs(fits["hard"].error - chance) < tol
    assert fits["hard"].chance == pytest.approx(chance)
    assert fits["easy"].error < 0.02


def test_probe_on_both_features_gives_low_error_on_both():
    e_tr, h_tr = _labels(1500, 3, 2, seed=5)
    e_te, h_te = _labels(1500, 3, 2, seed=6)
    z_tr = _representation(e_tr, h_tr, keep=("easy", "hard"), seed=7)
    z_te = _representation(e_te, h_te, keep=("easy", "hard"), seed=8)
    fits = probe_representation(z_tr, {"easy": e_tr, "hard": h_tr}, z_te, {"easy": e_te, "hard": h_te})
    assert fits["easy"].error < 0.02 and fits["hard"].error < 0.02


def test_probe_is_invariant_to_coordinate_scales():
    """Features are standardised before the fit, so rescaling a coordinate changes nothing."""
    e_tr, h_tr = _labels(600, 2, 2, seed=9)
    e_te, h_te = _labels(600, 2, 2, seed=10)
    z_tr = _representation(e_tr, h_tr, keep=("hard",), seed=11)
    z_te = _representation(e_te, h_te, keep=("hard",), seed=12)
    scale = torch.logspace(-3, 3, z_tr.shape[1], dtype=torch.float64)
    a = fit_linear_probe(z_tr, h_tr, z_te, h_te, Cs=(0.1,))
    b = fit_linear_probe(z_tr * scale, h_tr, z_te * scale, h_te, Cs=(0.1,))
    assert a.error == pytest.approx(b.error, abs=1.0 / 600)


def test_regularisation_is_chosen_on_validation_not_test():
    """C is chosen on a part of probe-train: flipping the test labels flips the error, never C."""
    e_tr, h_tr = _labels(400, 2, 2, seed=13)
    e_te, h_te = _labels(400, 2, 2, seed=14)
    z_tr = _representation(e_tr, h_tr, keep=("easy",), seed=15)
    z_te = _representation(e_te, h_te, keep=("easy",), seed=16)
    a = fit_linear_probe(z_tr, e_tr, z_te, e_te)
    b = fit_linear_probe(z_tr, e_tr, z_te, 1 - e_te)  # flipped test labels
    assert a.C == b.C and a.val_error == b.val_error
    assert a.error + b.error == pytest.approx(1.0)


def test_probe_rejects_single_class():
    z = torch.randn(10, 3)
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(z, torch.zeros(10, dtype=torch.long), z, torch.zeros(10, dtype=torch.long))


def test_worst_group_error_by_hand():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    g = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    pred = torch.tensor([0, 0, 1, 0, 1, 1, 0, 0])
    # groups: (0,0): 0/2 wrong, (0,1): 1/2, (1,1): 0/2, (1,0): 2/2
    assert worst_group_error(pred, y, g) == pytest.approx(1.0)
    assert worst_group_error(pred, y, y) is None  # second feature agrees with the label: no groups


class _Slice(nn.Module):
    """A 'model' whose representation is a fixed slice of the input; head on top of it."""

    def __init__(self, dims: list[int], num_classes: int):
        super().__init__()
        self.dims = dims
        self.head = nn.Linear(len(dims), num_classes)

    def features(self, x):
        return x[:, self.dims]

    def forward(self, x):
        return self.head(self.features(x))


def _split(n: int, seed: int, decorrelated: bool):
    g = torch.Generator().manual_seed(seed)
    easy, hard = _labels(n, 2, 2, seed)
    if not decorrelated:
        hard = easy.clone()
    x = torch.randn(n, 6, generator=g)
    x[:, 0] += 3 * (2 * easy - 1)
    x[:, 1] += 3 * (2 * hard - 1)
    return SimpleNamespace(x=x, y=easy.clone(), easy=easy, hard=hard)


def _data():
    splits = {
        "probe_train": _split(1000, 1, True),
        "probe_test": _split(1000, 2, True),
        "test": _split(500, 3, False),
    }
    return SimpleNamespace(name="fake", splits=splits)


def test_probe_model_end_to_end_on_a_one_feature_representation():
    torch.manual_seed(0)
    data = _data()
    model = _Slice([0, 2, 3], 2)  # sees the easy coordinate and noise only
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[1, 0], model.head.weight[0, 0] = 1.0, -1.0
        model.head.bias.zero_()
    rep = probe_model(model, data)
    m = rep.metrics()
    assert m["probe_error_easy"] < 0.02
    assert abs(m["probe_error_hard"] - 0.5) < 4 * math.sqrt(0.25 / 1000) + 0.01
    # the head is the sign of coordinate 0: its test error is the Gaussian tail P(N(0,1) > 3)
    expected = 0.5 * math.erfc(3 / math.sqrt(2))
    assert abs(m["test_error"] - expected) < 4 * math.sqrt(expected / 500) + 1e-3
    assert "worst_group_error" not in m  # test split: features agree with the label


def test_probe_model_needs_probe_splits():
    data = _data()
    del data.splits["probe_test"]
    with pytest.raises(SharplabError, match="probe_test"):
        probe_model(_Slice([0], 2), data)


def test_chance_level_of_an_unbalanced_test_set():
    z = np.random.default_rng(0).normal(size=(40, 2))
    y = np.array([0] * 20 + [1] * 20)
    y_te = np.array([0] * 30 + [1] * 10)
    fit = fit_linear_probe(z, y, z, y_te, Cs=(1.0,))
    assert fit.chance == pytest.approx(0.25)
