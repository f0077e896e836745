"""The shared training loop and PathwayNet: exact SGD reference, resume, divergence, callbacks, models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import ConfigError, Diverged, SharplabError
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathway_ratio, pathway_weights, pathways_from_meta
from sharplab.labs.feature_quality.train import TrainConfig, make_model, train
from sharplab.labs.training import evaluate
from sharplab.runner.context import RunContext


def _split(n: int, seed: int, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    x[:, 0] += 2 * y - 1
    x[:, 1:3] += 0.3 * (2 * y[:, None] - 1)
    return SimpleNamespace(x=x, y=y, easy=y, hard=y)


def _data(n: int = 40):
    splits = {"train": _split(n, 1), "val": _split(20, 2), "test": _split(20, 3)}
    return SimpleNamespace(
        name="tiny", splits=splits, num_classes=2, input_shape=(5,),
        meta={"easy_dims": [0], "hard_dims": [1, 2], "noise_dims": [3, 4]},
    )  # fmt: skip


def _reference_sgd(model, data, cfg, seed):
    """Hand-written loop: same data order (torch.randperm with a generator seeded by ``seed``),
    heavy-ball momentum and coupled L2 written out: b <- mu b + (g + wd w); w <- w - lr b."""
    params = list(model.parameters())
    bufs = [None] * len(params)
    x, y = data.splits["train"].x, data.splits["train"].y
    order = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=order)
        for s in range(0, len(y), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    d = g + cfg.weight_decay * p
                    bufs[i] = d.clone() if bufs[i] is None else cfg.momentum * bufs[i] + d
                    p -= cfg.lr * bufs[i]


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "lsam", "iw-only", "lr-only"])
def test_rho_zero_reproduces_the_hand_written_sgd_loop(optimizer):
    data = _data()
    cfg = TrainConfig(optimizer=optimizer, rho=0.0, lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=16)
    model = make_model(data, "pathway", seed=3).double()
    ref = make_model(data, "pathway", seed=3).double()
    train(model, data, cfg, seed=7)
    _reference_sgd(ref, data, cfg, seed=7)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_sam_differs_from_sgd_when_rho_positive():
    data = _data()
    a, b = (make_model(data, "pathway", seed=0).double() for _ in range(2))
    train(a, data, TrainConfig(optimizer="sgd", epochs=1, batch_size=8), seed=0)
    train(b, data, TrainConfig(optimizer="sam", rho=0.5, epochs=1, batch_size=8), seed=0)
    assert not torch.allclose(a.head.weight, b.head.weight)


def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(tmp_path):
    data = _data()
    cfg = TrainConfig(optimizer="sam", rho=0.1, epochs=4, batch_size=8)
    full = make_model(data, "pathway", seed=1).double()
    m_full = train(full, data, cfg, seed=5, ctx=RunContext(tmp_path / "full", quiet=True))

    ctx = RunContext(tmp_path / "cut", quiet=True)
    part = make_model(data, "pathway", seed=1).double()
    train(part, data, cfg.replace(epochs=2), seed=5, ctx=ctx)  # "killed" after epoch 2
    assert ctx.load_checkpoint()["epoch"] == 2
    resumed = make_model(data, "pathway", seed=1).double()  # fresh process: new model object
    m_res = train(resumed, data, cfg, seed=5, ctx=ctx)
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert m_res["steps"] == m_full["steps"] == 4 * math.ceil(40 / 8)
    assert [s for s, _ in ctx.history] == [1, 2, 3, 4]


def test_callback_after_every_step_and_metrics():
    data = _data()
    calls = []
    metrics = train(
        make_model(data, "pathway", seed=0).double(), data, TrainConfig(epochs=2, batch_size=16), seed=0,
        callback=lambda epoch, step, model: calls.append((epoch, step)),
    )  # fmt: skip
    per_epoch = math.ceil(40 / 16)
    assert calls == [(e, e * per_epoch + k + 1) for e in range(2) for k in range(per_epoch)]
    assert set(metrics) >= {"train_loss", "val_loss", "val_error", "test_error"}


def test_non_finite_loss_raises_diverged():
    data = _data()
    data.splits["train"].x[5, 0] = float("nan")
    with pytest.raises(Diverged) as info:
        train(make_model(data, "pathway", seed=0).double(), data, TrainConfig(epochs=1, batch_size=40), seed=0)
    assert info.value.step == 1


def test_evaluate_by_hand():
    data = _data()
    model = make_model(data, "pathway", seed=0).double()
    x, y = data.splits["val"].x, data.splits["val"].y
    loss, err = evaluate(model, x, y, batch_size=7)
    out = model(x).detach()
    assert loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-12)
    assert err == pytest.approx(float((out.argmax(1) != y).double().mean()))


def test_pathway_net_features_and_weights_by_hand():
    net = PathwayNet({"easy": [0], "hard": [1, 2]}, num_classes=2, width=1).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    pe, ph = net.pathways["easy"], net.pathways["hard"]
    ref = torch.cat([torch.tanh(x[:, :1] @ pe.weight.T + pe.bias), torch.tanh(x[:, 1:3] @ ph.weight.T + ph.bias)], 1)
    torch.testing.assert_close(net.features(x), ref)
    torch.testing.assert_close(net(x), ref @ net.head.weight.T + net.head.bias)
    w = pathway_weights(net)
    torch.testing.assert_close(w["easy"], net.head.weight[:, :1])
    torch.testing.assert_close(w["hard"], net.head.weight[:, 1:2])
    v = net.head.weight.detach()
    assert pathway_ratio(net) == pytest.approx(float(v[:, 1].norm() / v[:, 0].norm()))
    # the input coordinates outside a pathway never reach it
    x2 = x.clone()
    x2[:, 3:] += 100.0
    torch.testing.assert_close(net(x2), net(x))


def test_pathways_from_meta_skips_noise():
    assert pathways_from_meta({"easy_dims": [0], "hard_dims": (1, 2), "noise_dims": [3], "seed": 0}) == {
        "easy": [0], "hard": [1, 2],
    }  # fmt: skip


def test_make_model_picks_by_data_and_is_seeded():
    data = _data()
    a, b = make_model(data, seed=4), make_model(data, seed=4)
    assert isinstance(a, PathwayNet)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    state = torch.get_rng_state()
    make_model(data, seed=9)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    images = SimpleNamespace(name="img", num_classes=5, input_shape=(1, 56, 28), meta={})
    cnn = make_model(images)
    assert type(cnn).__name__ == "SmallCNN" and cnn(torch.zeros(2, 1, 56, 28)).shape == (2, 5)
    with pytest.raises(ConfigError, match="pathway"):
        make_model(images, "pathway")
    with pytest.raises(ConfigError, match="unknown model"):
        make_model(images, "vgg")


def test_train_config_validation():
    with pytest.raises(SharplabError, match="unknown optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
