"""The deep-net lab against facts of the official code (tml-epfl/understanding-sam, ``deep_nets/``), issue 20.

* interpolation (``eval_loss_surface.py``): the 61-point grid on [-1, 2] and BatchNorm statistics re-estimated
  at every point (``utils_train.bn_update``) -- against the grid written out and against per-channel
  means / unbiased variances of each BatchNorm layer's inputs computed by hand on the same batches;
* sharpness after label-noise training on the clean labels (``eval_sharpness.py``'s loaders have no noise);
* multi-step ascent (``--sam_iters``, ``sam.weight_ascent_step``) against a hand loop;
* ``eval_every`` / ``eval_n`` / bounds of the new options.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharplab.errors import ConfigError, SharplabError
from sharplab.labs.deep_net.analysis import (
    ALPHAS,
    analysis_device,
    bn_images,
    interpolate,
    reestimate_bn,
    sharpness_of_run,
)
from sharplab.labs.deep_net.config import DeepNetConfig
from sharplab.labs.deep_net.train import Phases, build_net, load_data, run
from sharplab.labs.training import evaluate, take_step
from sharplab.runner.context import RunContext
from sharplab.runner.validation import validate_config

TINY = {"dataset": "digits", "width": 4, "n_train": 128, "n_test": 64, "batch_size": 32, "epochs": 2,
        "lr": 0.05}


def test_interpolation_grid_is_the_official_61_points():
    official = np.concatenate([np.arange(-1.0, 0.0, 0.05), np.arange(0.0, 2.0 + 0.05, 0.05)])  # as written there
    assert len(ALPHAS) == 61 and ALPHAS[0] == -1.0 and ALPHAS[-1] == 2.0 and 0.0 in ALPHAS and 1.0 in ALPHAS
    np.testing.assert_allclose(ALPHAS, official, atol=1e-12)
    np.testing.assert_allclose(np.diff(ALPHAS), 0.05, atol=1e-12)


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).double()


def _inputs_of_each_bn(model: nn.Module, batches: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The inputs every BatchNorm layer sees on each batch (train mode: they do not depend on running stats)."""
    probe = copy.deepcopy(model).train()
    layers = [m for m in probe.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    for i, m in enumerate(layers):
        m.register_forward_pre_hook(lambda mod, args, i=i: seen[i].append(args[0].detach().clone()))
    with torch.no_grad():
        for xb in batches:
            probe(xb)
    return seen


def test_bn_reestimation_is_the_size_weighted_average_of_batch_statistics():
    model = _bn_net().eval()
    for m in model.modules():  # stale statistics that must not survive
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(9.0)
    x = torch.randn(10, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batches = [x[0:4], x[4:8], x[8:10]]  # batch 4: sizes 4, 4, 2
    inputs = _inputs_of_each_bn(model, batches)
    assert reestimate_bn(model, x, batch_size=4)
    assert not model.training
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # the first layer's inputs by hand: the first convolution of each batch
    conv = model[0]
    for xb, got in zip(batches, inputs[0]):
        torch.testing.assert_close(got, F.conv2d(xb, conv.weight, conv.bias, padding=1))
    for layer, per_batch in zip(layers, inputs):
        sizes = torch.tensor([t.shape[0] for t in per_batch], dtype=torch.float64)
        means = torch.stack([t.mean(dim=(0, 2, 3)) for t in per_batch])
        var_unbiased = torch.stack([t.transpose(0, 1).reshape(t.shape[1], -1).var(dim=1, unbiased=True)
                                    for t in per_batch])
        w = sizes / sizes.sum()
        torch.testing.assert_close(layer.running_mean, (w[:, None] * means).sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, (w[:, None] * var_unbiased).sum(0), rtol=1e-12, atol=1e-12)
        assert layer.momentum == 0.1  # restored


def test_bn_reestimation_on_equal_batches_is_pytorchs_cumulative_average():
    model = _bn_net()
    ref = copy.deepcopy(model)
    x = torch.randn(12, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reestimate_bn(model, x, batch_size=4)
    ref.train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    with torch.no_grad():
        for i in range(0, 12, 4):
            ref(x[i:i + 4])
    for a, b in zip(model.modules(), ref.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-12, atol=1e-12)
    assert not reestimate_bn(nn.Sequential(nn.Linear(2, 2)), torch.zeros(3, 2))  # no BatchNorm: nothing to do


def test_interpolation_reestimates_bn_at_every_point_on_augmented_training_images(tmp_path):
    cfg = DeepNetConfig(**{**TINY, "norm": "bn"})
    data, _, _ = load_data(cfg, seed=0)
    shape = (data.input_shape[0], data.num_classes)
    torch.manual_seed(0)
    a, b = build_net(cfg, *shape), build_net(cfg, *shape)
    for model in (a, b):  # give each its own (different) running statistics
        model.train()
        with torch.no_grad():
            model(torch.rand(16, *data.input_shape))
    for name, model in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        torch.save(model.state_dict(), tmp_path / name / "final.pt")
    rows = interpolate(cfg, tmp_path / "a", tmp_path / "b", seed=0, alphas=np.array([0.0, 0.5, 1.5]))
    x_bn = bn_images(cfg, data.x_train, seed=0)
    assert len(x_bn) == 128 and not torch.equal(x_bn, data.x_train)  # all 128 images, augmented
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for row in rows:
        alpha = row["alpha"]
        ref = build_net(cfg, *shape)
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_((1 - alpha) * pa[name] + alpha * pb[name])
        ref.train()
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = 1.0  # one batch of 128: the statistics of that batch
        with torch.no_grad():
            ref(x_bn)
        tl, te = evaluate(ref, data.x_test, data.y_test)
        trl, tre = evaluate(ref, data.x_train, data.y_train)
        assert row["test_error"] == te and row["train_error"] == tre
        assert row["test_loss"] == pytest.approx(tl, rel=1e-5) and row["train_loss"] == pytest.approx(trl, rel=1e-5)


def test_analyses_follow_the_runs_device():
    assert analysis_device(DeepNetConfig(device="cpu")) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert analysis_device(DeepNetConfig(device="auto")).type == want
    if not torch.cuda.is_available():
        with pytest.raises(SharplabError, match="no CUDA GPU"):
            analysis_device(DeepNetConfig(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_interpolation_runs_on_cuda(tmp_path):
    cfg = DeepNetConfig(**{**TINY, "norm": "bn", "device": "cuda"})
    data, _, _ = load_data(cfg, seed=0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        torch.save(build_net(cfg, data.input_shape[0], data.num_classes).state_dict(), tmp_path / name / "final.pt")
    cpu = interpolate(cfg, tmp_path / "a", tmp_path / "b", 0, np.array([0.5]), device="cpu")
    gpu = interpolate(cfg, tmp_path / "a", tmp_path / "b", 0, np.array([0.5]))
    assert gpu[0]["test_loss"] == pytest.approx(cpu[0]["test_loss"], rel=1e-4)


def test_sharpness_after_label_noise_is_measured_on_the_clean_labels(tmp_path):
    from sharplab.sharpness import m_sharpness

    cfg = DeepNetConfig(**{**TINY, "epochs": 1, "label_noise": 0.5, "sharpness": True, "sharpness_n": 64,
                           "sharpness_m": 32})
    final = run(cfg, RunContext(tmp_path, seed=0, quiet=True))
    data, noisy, mask = load_data(cfg, seed=0)
    assert bool((noisy[:64] != data.y_train[:64]).any())
    model = build_net(cfg, data.input_shape[0], data.num_classes)
    model.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    x = data.x_train[:64]
    clean = m_sharpness(model, F.cross_entropy, x, data.y_train[:64], rho=0.1, m=32, steps=20, chunk_size=1)
    on_noisy = m_sharpness(model, F.cross_entropy, x, noisy[:64], rho=0.1, m=32, steps=20, chunk_size=1)
    assert final["m_sharpness"] == pytest.approx(clean, rel=1e-6)
    assert abs(clean - on_noisy) > 1e-3  # the two label sets give different numbers
    assert sharpness_of_run(cfg, tmp_path, seed=0)["m_sharpness"] == pytest.approx(clean, rel=1e-6)


@pytest.mark.parametrize("method,rule_normalised", [("m-sam", True), ("usam", False)])
def test_multi_step_ascent_is_the_official_projected_loop(method, rule_normalised):
    """``sam.weight_ascent_step`` k times: delta += rho g/||g|| (usam: rho g), projected onto ||delta|| <= rho."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    rho, k = 0.5, 3
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = DeepNetConfig(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=8, method=method, ascent_steps=k)
    take_step(model, Phases(cfg, model, seed=0).get(method, rho), x, y, step=0)
    got = [w[n] - p.detach() for n, p in model.named_parameters()]  # lr 1, plain SGD: the gradient applied
    delta = {n: torch.zeros_like(t) for n, t in w.items()}

    def grad_at(d):
        pts = {n: (w[n] + d[n]).requires_grad_() for n in w}
        loss = F.cross_entropy(torch.func.functional_call(model, pts, (x,)), y)
        return dict(zip(pts, torch.autograd.grad(loss, list(pts.values()))))

    for _ in range(k):
        g = grad_at(delta)
        gn = torch.sqrt(sum((t ** 2).sum() for t in g.values()))
        delta = {n: delta[n] + (rho / (gn + 1e-12) if rule_normalised else rho) * g[n] for n in w}
        dn = torch.sqrt(sum((t ** 2).sum() for t in delta.values()))
        if dn > rho:
            delta = {n: t * rho / dn for n, t in delta.items()}
    want = grad_at(delta)
    for a, n in zip(got, w):
        torch.testing.assert_close(a, want[n], rtol=1e-9, atol=1e-11)


def test_new_options_are_bounded_at_load_with_one_line_errors():
    for key, value in (("ascent_steps", 0), ("ascent_steps", 101), ("eval_every", 0), ("eval_n", -1),
                       ("train_eval_every", 0)):
        with pytest.raises(ConfigError) as err:
            validate_config(DeepNetConfig, {key: value, "method": "m-sam"})
        assert key in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="ascent_steps = 2 needs method or then_method m-sam or usam"):
        validate_config(DeepNetConfig, {"ascent_steps": 2, "method": "random"})
    validate_config(DeepNetConfig, {"ascent_steps": 2, "method": "erm", "then_method": "m-sam", "switch_epoch": 5})


def test_eval_every_and_eval_n(tmp_path):
    cfg = DeepNetConfig(**{**TINY, "epochs": 5, "eval_every": 2, "train_eval_every": 3, "eval_n": 10})
    ctx = RunContext(tmp_path, seed=0, quiet=True)
    final = run(cfg, ctx)
    assert [e for e, m in ctx.history if "test_error" in m] == [2, 4, 5]
    assert [e for e, m in ctx.history if "val_error" in m] == [2, 4, 5]
    assert [e for e, m in ctx.history if "train_error" in m] == [3, 5]
    assert all("train_loss" in m for _, m in ctx.history)
    assert final["best_val_epoch"] in (2, 4, 5)
    data, noisy, _ = load_data(cfg, seed=0)
    model = build_net(cfg, data.input_shape[0], data.num_classes)
    model.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    assert final["test_error"] == evaluate(model, data.x_test[:10], data.y_test[:10])[1]
    assert final["train_error"] == evaluate(model, data.x_train[:10], noisy[:10])[1]


ROOT = Path(__file__).resolve().parents[3]


def _specs(name: str):
    from sharplab.labs import load_all
    from sharplab.runner.config import load_study

    load_all()
    return load_study(ROOT / "examples" / name).runs()


def test_shipped_m_sharpness_file_has_erm_and_the_studys_radii():
    specs = _specs("deep_net_m_sharpness.toml")
    rhos = {}
    for s in specs:
        rhos.setdefault(s.config["method"], set()).add(s.config["rho"])
    assert set(rhos) == {"erm", "random", "nsam", "m-sam"} and len(rhos["erm"]) == 1
    assert min(rhos["random"]) <= 0.4 and max(rhos["random"]) >= 50
    assert max(rhos["nsam"]) >= 3 and max(rhos["m-sam"]) >= 0.4
    assert all(s.config["init"] == "official" for s in specs)


def test_shipped_label_noise_file_is_1000_epochs_with_drops_at_500_and_750():
    specs = _specs("deep_net_label_noise.toml")
    cfg = DeepNetConfig(**specs[0].config)
    assert cfg.epochs == 1000 and cfg.label_noise == 0.6
    assert [cfg.lr_at(t) for t in (0, 499.99, 500, 749.99, 750)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_shipped_finetune_file_has_a_plain_erm_baseline_and_no_sam_to_sam(tmp_path):
    """1,000 + 100 epochs; plain ERM of the same length, ERM -> SAM, SAM -> ERM; the interpolation finds its
    pairs, checked end to end on a tiny copy of the file's grids (`analyse_folder`, as its comment says)."""
    from sharplab.labs.deep_net.studies import analyse_folder, finetune_pairs, summarise
    from sharplab.runner.config import _toml_loads, parse_study
    from sharplab.runner.execute import run_study
    from sharplab.runner.store import open_store

    specs = _specs("deep_net_finetune.toml")
    assert {(s.config["method"], s.config["then_method"]) for s in specs} == {
        ("erm", ""), ("erm", "m-sam"), ("m-sam", "erm")}
    assert {(s.config["epochs"], s.config["switch_epoch"]) for s in specs} == {(1100, 1000)}
    doc = _toml_loads((ROOT / "examples" / "deep_net_finetune.toml").read_text())
    doc["config"] = {**TINY, "epochs": 2, "switch_epoch": 1, "rho": 0.05}
    for table in doc["grid"]:
        table["seed"] = [0]
    assert sum(run_study(parse_study(doc), tmp_path).values()) == 3
    with open_store(tmp_path, create=False) as store:
        records = store.runs()
    assert len(finetune_pairs(records)) == 1
    assert any(r["setting"] == "ERM" for r in summarise(records))
    (curve,) = analyse_folder("finetune", tmp_path).values()
    assert len(curve) == 61 and (tmp_path / "finetune.json").exists()


def test_docs_protocol_table_quotes_what_the_code_and_files_hold():
    from sharplab.labs.deep_net.analysis import BN_BATCH, BN_IMAGES

    text = (ROOT / "docs" / "deep_net.md").read_text()
    table = text[text.index("### Protocol: the official code against sharplab"):text.index("### Results")]
    assert f"the same {len(ALPHAS)} points" in table
    assert f"{BN_IMAGES:,} images (all when fewer), batch {BN_BATCH}" in table
    rhos: dict[str, list[float]] = {}
    for s in _specs("deep_net_m_sharpness.toml"):
        rhos.setdefault(s.config["method"], []).append(s.config["rho"])
    for method, label in (("random", "random"), ("nsam", "n-SAM"), ("m-sam", "128-SAM")):
        assert f"{label} rho {min(rhos[method]):g}-{max(rhos[method]):g}" in table, method
    (ln,) = {DeepNetConfig(**s.config).epochs for s in _specs("deep_net_label_noise.toml")}
    assert f"`examples/deep_net_label_noise.toml`: {ln:,} epochs" in table
    ft = {(s.config["epochs"], s.config["switch_epoch"]) for s in _specs("deep_net_finetune.toml")}
    assert ft == {(1100, 1000)} and "one run of 1,100 epochs, `switch_epoch = 1000`" in table
    assert "200 epochs for Figure 1, 1,000 for label noise, 1,000 + 100 for fine-tuning" in text
