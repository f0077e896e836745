"""Any SAM-family member trains in the feature-quality lab, and equals a hand-written loop over ``create``.

Float64 data and model: the lab drives ``create(...)`` in batch mode (``step(inputs=, targets=)``), the
reference drives its own ``create(...)`` with ``step(closure)``; both run the same passes in the same order,
so the weights agree to rounding (1e-12, far below the 1e-3 the members move away from SGD here).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.train import TrainConfig, make_model, step_phantom, train
from sharplab.optim import create


def _data(n: int = 40):
    """A tiny two-feature set in float64 (easy coordinate 0, hard 1-2, noise 3-4)."""
    def split(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        x[:, 0] += 2 * y - 1
        x[:, 1:3] += 0.3 * (2 * y[:, None] - 1)
        return SimpleNamespace(x=x, y=y, easy=y, hard=y)

    return SimpleNamespace(name="tiny", splits={"train": split(n, 1), "val": split(20, 2), "test": split(20, 3)},
                           num_classes=2, input_shape=(5,),
                           meta={"easy_dims": [0], "hard_dims": [1, 2], "noise_dims": [3, 4]})

MEMBERS = [("gsam", {"alpha": 0.1}), ("asam", {"eta": 0.0}), ("looksam", {"k": 2, "alpha": 0.5})]


def _reference(model, data, cfg: TrainConfig, seed: int) -> None:
    """The loop written out: the lab's data order, ``create`` with the lab's SGD base, one closure step per batch."""
    x, y = data.splits["train"].x, data.splits["train"].y
    opt = create(cfg.optimizer, model.parameters(), torch.optim.SGD, rho=cfg.rho, lr=cfg.lr, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay, **cfg.optimizer_options)
    order = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=order)
        for s in range(0, len(y), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]

            def closure(idx=idx):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                return loss

            opt.step(closure)


@pytest.mark.parametrize(("name", "options"), MEMBERS)
def test_a_family_member_equals_the_hand_written_create_loop(name, options):
    data = _data()
    cfg = TrainConfig(optimizer=name, rho=0.2, lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=16,
                      optimizer_options=options)
    model, ref, sgd = (make_model(data, "pathway", seed=3).double() for _ in range(3))
    train(model, data, cfg, seed=7)
    _reference(ref, data, cfg, seed=7)
    train(sgd, data, cfg.replace(optimizer="sgd", optimizer_options={}), seed=7)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), sgd.parameters())) > 1e-3


def test_member_keywords_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="gsam: unknown keyword 'gamma'"):
        TrainConfig(optimizer="gsam", optimizer_options={"gamma": 0.5})
    with pytest.raises(ConfigError, match="looksam: k must be an integer >= 1"):
        TrainConfig(optimizer="looksam", optimizer_options={"k": 0})
    with pytest.raises(ConfigError, match="sgd takes no optimizer options"):
        TrainConfig(optimizer="sgd", optimizer_options={"alpha": 0.1})
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="m-sharpness"):
        TrainConfig(optimizer="gsam", m=8)


def test_the_phantom_the_check_reads_comes_from_the_registry():
    model = make_model(_data(), "pathway", seed=0)
    assert step_phantom("sgd") is None
    assert step_phantom("sam")(model) is None and step_phantom("iw-only")(model) is None
    assert step_phantom("lsam")(model) == list(model.head.parameters())
