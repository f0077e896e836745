"""Any ``sharplab.optim`` family member trains in the deep-net lab and equals a hand-written loop around
``create(...)``: same data order, learning-rate schedule and batches, so the same computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import ConfigError
from sharplab.labs import load_all
from sharplab.labs.deep_net.config import DeepNetConfig
from sharplab.labs.deep_net.train import build_net, load_data
from sharplab.optim import create

TINY = {"dataset": "digits", "width": 4, "n_train": 96, "n_test": 32, "batch_size": 32, "epochs": 2, "lr": 0.05,
        "augment": False}


def _hand_loop(cfg: DeepNetConfig, name: str, options: dict, seed: int) -> dict[str, torch.Tensor]:
    """The lab's protocol written out: seeded weights, SGD-momentum base, per-step piecewise lr, a fresh
    permutation per epoch from a generator seeded with the run seed, full batches only."""
    torch.manual_seed(seed)
    data, labels, _ = load_data(cfg, seed)
    model = build_net(cfg, data.input_shape[0], data.num_classes)
    opt = create(name, model.parameters(), torch.optim.SGD, rho=cfg.rho, lr=cfg.lr, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay, model=model, loss_fn=F.cross_entropy, **options)
    order = torch.Generator().manual_seed(seed)
    n, bs = len(labels), cfg.batch_size
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(n // bs):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(epoch + i / (n // bs))
            idx = perm[i * bs:(i + 1) * bs]
            opt.step(inputs=data.x_train[idx], targets=labels[idx])
    return model.state_dict()


@pytest.mark.parametrize("name,options", [("gsam", {"alpha": 0.3}), ("looksam", {"k": 2, "alpha": 0.5})])
def test_family_member_trains_in_the_lab_as_a_hand_written_create_loop(tmp_path, name, options):
    from sharplab.runner.config import parse_study
    from sharplab.runner.execute import run_study
    from sharplab.runner.store import open_store

    load_all()
    config = {**TINY, "method": name, "rho": 0.05, "optimizer_options": options}
    study = parse_study({"lab": "deep-net", "name": "family", "config": config, "grid": {"seed": [3]}})
    assert run_study(study, tmp_path) == {"done": 1}
    with open_store(tmp_path, create=False) as store:
        (run,) = store.runs()
    got = torch.load(tmp_path / "runs" / run.run_id / "final.pt", weights_only=True)
    want = _hand_loop(DeepNetConfig(**config), name, options, seed=3)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)
    baseline = _hand_loop(DeepNetConfig(**{**config, "method": "m-sam", "optimizer_options": {}}), "sam", {}, 3)
    assert any(not torch.allclose(baseline[k], want[k]) for k in want)  # the member is not plain SAM here


def test_options_are_checked_at_load():
    with pytest.raises(ConfigError, match="'gamma' is not a keyword of gsam"):
        DeepNetConfig(method="gsam", optimizer_options={"gamma": 0.5})
    with pytest.raises(ConfigError, match="alpha"):
        DeepNetConfig(method="gsam", optimizer_options={"alpha": 5.0})
    cfg = DeepNetConfig(method="erm", then_method="gsam", switch_epoch=5, optimizer_options={"alpha": 0.2})
    assert cfg.optimizer_options == {"alpha": 0.2}
