"""The official 1-D ReLU protocol: the notebook's initialisation, the loss scaling, and the vectorised
trainer (seeds x methods in one batch) against the notebook's own per-seed autograd loop in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharplab.labs.implicit_bias.relu1d import (
    X_POINTS,
    Y_POINTS,
    Relu1dConfig,
    blanc_init,
    make_network,
    train_relu_batch,
)
from sharplab.labs.implicit_bias.relu1d_batch import loss_and_grads


class NotebookNet(torch.nn.Module):
    """The ``Net`` class of ``one_layer_relu_nets/1d_nn.ipynb`` (init_scale 1), transcribed."""

    def __init__(self, n_hidden: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(1, n_hidden, bias=True)
        self.hidden.weight.data = torch.rand_like(self.hidden.weight)
        self.hidden.weight.data = 2.5 * (-1 + 2 * torch.round(self.hidden.weight.data))
        self.hidden.bias.data = torch.randn_like(self.hidden.bias)
        self.hidden.bias.data = self.hidden.bias.data * 2.5
        self.predict = torch.nn.Linear(n_hidden, 1, bias=False)
        self.predict.weight.data = torch.randn_like(self.predict.weight)
        self.predict.weight.data = self.predict.weight.data * 4.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.predict(F.relu(self.hidden(z)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_init_is_the_notebooks_for_each_seed_and_leaves_the_global_generator(seed: int) -> None:
    before = torch.random.get_rng_state()
    w, b, a = blanc_init(100, seed)
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = NotebookNet(100)  # float32, as in the notebook
    # the very same draws, widened to float64: bitwise
    np.testing.assert_array_equal(w, net.hidden.weight.detach().double().numpy()[:, 0])
    np.testing.assert_array_equal(b, net.hidden.bias.detach().double().numpy())
    np.testing.assert_array_equal(a, net.predict.weight.detach().double().numpy()[0])


def test_init_distribution() -> None:
    w, b, a = blanc_init(20_000, seed=7)
    assert set(np.unique(w)) == {-2.5, 2.5}
    n = w.size  # 4-sigma bands of the sample statistics
    assert abs((w > 0).mean() - 0.5) < 4 * 0.5 / math.sqrt(n)
    assert abs(b.mean()) < 4 * 2.5 / math.sqrt(n) and abs(b.std() - 2.5) < 4 * 2.5 / math.sqrt(2 * n)
    assert abs(a.mean()) < 4 * 4.0 / math.sqrt(n) and abs(a.std() - 4.0) < 4 * 4.0 / math.sqrt(2 * n)
    net = make_network(100, seed=0, init="blanc", output_bias=False)
    assert net[2].bias is None and net[0].weight.dtype == torch.float64


@pytest.mark.parametrize("output_bias", [False, True])
def test_loss_scaling_and_hand_written_gradient_against_autograd(output_bias: bool) -> None:
    x, y = torch.from_numpy(X_POINTS), torch.from_numpy(Y_POINTS)
    for loss_name, scale in (("half-sum", 0.5), ("mean", 1 / 12)):
        cfg = Relu1dConfig(loss=loss_name, output_bias=output_bias)
        assert cfg.loss_scale == scale
        nets = [make_network(30, s, "blanc" if s else "normal", output_bias) for s in (0, 1)]
        if output_bias:
            with torch.no_grad():
                nets[1][2].bias.fill_(0.3)
        W = np.stack([n[0].weight.detach().numpy()[:, 0] for n in nets])
        B = np.stack([n[0].bias.detach().numpy() for n in nets])
        A = np.stack([n[2].weight.detach().numpy()[0] for n in nets])
        c = np.array([float(n[2].bias.detach()) for n in nets]) if output_bias else None
        losses, grads = loss_and_grads(X_POINTS, Y_POINTS, W, B, A, c, scale)
        for k, net in enumerate(nets):
            net.zero_grad()
            r = net(x.reshape(-1, 1))[:, 0] - y
            ref = 0.5 * (r**2).sum() if loss_name == "half-sum" else (r**2).mean()
            ref.backward()
            assert losses[k] == pytest.approx(float(ref.detach()), rel=1e-13)
            np.testing.assert_allclose(grads[0][k], net[0].weight.grad[:, 0].numpy(), rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(grads[1][k], net[0].bias.grad.numpy(), rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(grads[2][k], net[2].weight.grad[0].numpy(), rtol=1e-11, atol=1e-11)
            if output_bias:
                assert grads[3][k] == pytest.approx(float(net[2].bias.grad), rel=1e-11, abs=1e-11)


def notebook_loop(seed: int, rho: float, lr_max: float, iter_max: int, tol: float, decay: bool):
    """The training cell of the notebook, transcribed in float64 (full batch, so no index shuffling):
    returns the final parameters, the number of steps and the losses the loop checked."""
    w, b, a = blanc_init(100, seed)
    params = [torch.tensor(v, requires_grad=True) for v in (w, b, a)]
    x, y = torch.from_numpy(X_POINTS), torch.from_numpy(Y_POINTS)
    optimizer = torch.optim.SGD(params, lr=lr_max)

    def loss_fn() -> torch.Tensor:
        pred = F.relu(x[:, None] * params[0][None, :] + params[1][None, :]) @ params[2]
        return 0.5 * ((pred - y) ** 2).sum()

    loss, n_iterations, checked = torch.tensor(math.inf), 0, []
    while n_iterations < iter_max and loss > tol:
        n_iterations += 1
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        if rho > 0.0:
            orig = [p.detach().clone() for p in params]
            optimizer.param_groups[0]["lr"] = -rho
            with torch.no_grad():
                norm = sum((p.grad**2).sum() for p in params) ** 0.5
                for p in params:
                    p.grad /= norm
            optimizer.step()
            optimizer.param_groups[0]["lr"] = lr_max * (1 - n_iterations / iter_max) if decay else lr_max
            loss = loss_fn()
            optimizer.zero_grad()
            loss.backward()
            for p, o in zip(params, orig):
                p.data = o
        elif decay:  # the notebook decays only in its SAM branch; lr_decay="linear" decays GD too
            optimizer.param_groups[0]["lr"] = lr_max * (1 - n_iterations / iter_max)
        optimizer.step()
        checked.append(float(loss.detach()))
    return [p.detach().numpy() for p in params], n_iterations, checked


def test_vectorised_trainer_equals_the_notebook_loop_per_seed() -> None:
    steps, lr = 120, 1e-4
    # a tolerance that stops GD on seed 0 part-way (between its checked losses at steps 60 and 61)
    _, _, checked = notebook_loop(0, 0.0, lr, 61, 0.0, False)
    assert checked[60] < checked[59]
    tol = 0.5 * (checked[59] + checked[60])
    cfgs = [Relu1dConfig(method="gd", lr=lr, steps=steps, tol=tol, record_every=50),
            Relu1dConfig(method="sam", lr=lr, rho=0.3, steps=steps, tol=tol, record_every=50),
            Relu1dConfig(method="gd", lr=lr, steps=steps, tol=tol, lr_decay="linear")]
    results = train_relu_batch(cfgs, seeds=[0, 1])
    stopped_early = 0
    for res in results:
        cfg = res.config
        rho = cfg.rho if cfg.method == "sam" else 0.0
        ref, n_ref, check = notebook_loop(res.seed, rho, lr, steps, tol, cfg.decays)
        assert res.steps_run == n_ref, (cfg.method, res.seed)
        stopped_early += n_ref < steps
        got = (res.net[0].weight.detach().numpy()[:, 0], res.net[0].bias.detach().numpy(),
               res.net[2].weight.detach().numpy()[0])
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)
        assert res.stop_loss == pytest.approx(check[-1], rel=1e-10)
    assert stopped_early >= 1  # rows leave the batch at different steps without disturbing the others
    assert results[0].steps_run == 61 and results[2].steps_run == steps


def test_decay_and_stopping_settings() -> None:
    assert Relu1dConfig(method="sam").decays and not Relu1dConfig(method="gd").decays
    assert Relu1dConfig(method="gd", lr_decay="linear").decays
    assert not Relu1dConfig(method="sam", lr_decay="none").decays
    assert not Relu1dConfig(method="sam", rho=0.0).perturbs
    # the initial loss is below tol: one step, then stop (the loop checks the loss of the step it ran)
    (res,) = train_relu_batch([Relu1dConfig(method="gd", width=10, steps=50, tol=1e9)], [0])
    assert res.steps_run == 1 and res.fits
