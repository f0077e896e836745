"""sam_grad against independent references: closed forms, plain autograd, explicit Jacobians, loops."""

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_reference import ref_mechanism_grad, ref_msam_grad, ref_sam_grad, sam_eps
from torch import nn
from torch.func import vmap

from sharplab.errors import Diverged, SharplabError
from sharplab.models import SmallCNN
from sharplab.optim import RandomRule, last_layer_params, sam_grad


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(7, 3)).double()


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


def close(a, b, tol=1e-10):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("rule", ["sam", "usam", "asam"])
def test_quadratic_closed_form(rule):
    """L(w) = 1/2 w^T A w: g = A w, eps by the rule's formula, SAM gradient = A (w + eps)."""
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    w = torch.tensor([1.0, -2.0])
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w)
    eye = torch.eye(2)
    loss = lambda out, _: 0.5 * out.squeeze(-1) @ a @ out.squeeze(-1)  # noqa: E731  (out = w)
    sam_grad(model, loss, eye, None, rho=0.3, rule=rule)
    g = a @ w
    if rule == "sam":
        eps = 0.3 * g / g.norm()
    elif rule == "usam":
        eps = 0.3 * g
    else:
        t = w.abs() + 0.01
        eps = 0.3 * t * t * g / (t * g).norm()
    torch.testing.assert_close(model.weight.grad.squeeze(0), a @ (w + eps))


@pytest.mark.parametrize("rule", ["sam", "usam", "asam"])
def test_matches_plain_autograd_on_mlp(rule):
    model = mlp()
    x, y = batch()
    expected = ref_sam_grad(model, F.cross_entropy, x, y, 0.1, rule)
    loss = sam_grad(model, F.cross_entropy, x, y, rho=0.1, rule=rule)
    close(grads_of(model), expected)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_parameters_are_untouched_and_grads_accumulate():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    x, y = batch()
    sam_grad(model, F.cross_entropy, x, y, rho=0.1)
    first = grads_of(model)
    sam_grad(model, F.cross_entropy, x, y, rho=0.1)
    close(grads_of(model), [2 * g for g in first])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_gradient_accumulation_equals_sum_of_micro_batch_sam_gradients():
    model = mlp()
    x, y = batch(8)
    sam_grad(model, F.cross_entropy, x[:4], y[:4], rho=0.1)
    sam_grad(model, F.cross_entropy, x[4:], y[4:], rho=0.1)
    expected = ref_msam_grad(model, F.cross_entropy, x, y, 0.1, m=4)
    close(grads_of(model), [2 * g for g in expected])


@pytest.mark.parametrize("mechanism", ["iw_only", "lr_only"])
def test_mechanisms_match_explicit_jacobians(mechanism):
    model = mlp()
    x, y = batch(6)
    expected = ref_mechanism_grad(model, F.cross_entropy, x, y, 0.2, mechanism)
    sam_grad(model, F.cross_entropy, x, y, rho=0.2, mechanism=mechanism)
    close(grads_of(model), expected)


def test_mechanisms_on_linear_model_with_squared_loss_closed_form():
    """f = X w, l = mean (f - y)^2 / 2: J = X everywhere, so iw_only = X^T (X w~ - y)/n (= full SAM)
    and lr_only = X^T (X w - y)/n (= plain gradient)."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.randn(10)
    model = nn.Linear(4, 1, bias=False)
    loss = lambda out, t: 0.5 * ((out.squeeze(-1) - t) ** 2).mean()  # noqa: E731
    w = model.weight.detach().squeeze(0).clone()
    g = x.T @ (x @ w - y) / 10
    w_t = w + 0.5 * g / g.norm()
    g_t = x.T @ (x @ w_t - y) / 10
    for mechanism, expected in [("iw_only", g_t), ("lr_only", g), ("full", g_t)]:
        model.zero_grad()
        sam_grad(model, loss, x, y, rho=0.5, mechanism=mechanism)
        torch.testing.assert_close(model.weight.grad.squeeze(0), expected)


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("rule", ["sam", "usam"])
def test_m_sharpness_matches_loop(m, rule):
    model = mlp()
    x, y = batch(8)
    expected = ref_msam_grad(model, F.cross_entropy, x, y, 0.1, m, rule)
    loss = sam_grad(model, F.cross_entropy, x, y, rho=0.1, m=m, rule=rule)
    close(grads_of(model), expected)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_one_sam_on_small_cnn_matches_loop_to_1e5():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=3, input_size=(12, 12)).double()
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 3, (6,))
    expected = ref_msam_grad(model, F.cross_entropy, x, y, 0.05, 1)
    sam_grad(model, F.cross_entropy, x, y, rho=0.05, m=1, chunk_size=4)
    close(grads_of(model), expected, tol=1e-5)


@pytest.mark.parametrize("mechanism", ["iw_only", "lr_only"])
def test_mechanisms_with_m_match_loop_of_mechanisms(mechanism):
    model = mlp()
    x, y = batch(6)
    parts = [ref_mechanism_grad(model, F.cross_entropy, x[i : i + 2], y[i : i + 2], 0.2, mechanism) for i in (0, 2, 4)]
    expected = [sum(t) / 3 for t in zip(*parts)]
    sam_grad(model, F.cross_entropy, x, y, rho=0.2, m=2, mechanism=mechanism)
    close(grads_of(model), expected)


def test_last_layer_sam_perturbs_only_the_head():
    model = mlp()
    x, y = batch()
    expected = ref_sam_grad(model, F.cross_entropy, x, y, 0.3, perturb={"2.weight", "2.bias"})
    sam_grad(model, F.cross_entropy, x, y, rho=0.3, perturb=last_layer_params(model))
    close(grads_of(model), expected)


def test_multi_step_ascent_matches_projected_loop():
    model = mlp()
    x, y = batch()
    rho, k = 0.3, 3
    eps = None
    params = list(model.parameters())
    for _ in range(k):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for p, e in zip(shifted.parameters(), eps or [torch.zeros_like(p) for p in params]):
                p.add_(e)
        g = torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters()))
        step = sam_eps(list(g), rho / k)
        eps = step if eps is None else [a + b for a, b in zip(eps, step)]
        norm = sum((e**2).sum() for e in eps).sqrt()
        eps = [e * min(1.0, rho / norm) for e in eps]
    final = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(final.parameters(), eps):
            p.add_(e)
    expected = torch.autograd.grad(F.cross_entropy(final(x), y), list(final.parameters()))
    sam_grad(model, F.cross_entropy, x, y, rho=rho, ascent_steps=k)
    close(grads_of(model), list(expected))


def test_random_rule_has_norm_rho_and_differs_per_micro_batch():
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.randn(4, 3), torch.randn(4)
    loss = lambda out, t: ((out.squeeze(-1) - t) ** 2).mean()  # noqa: E731
    sam_grad(model, loss, x, y, rho=0.5, rule="random")
    # the linear model's SAM gradient is H (w + eps) - 2 X^T y / n with H = 2 X^T X / n: recover eps
    w = model.weight.detach().squeeze(0)
    h = 2 * x.T @ x / 4
    eps = torch.linalg.solve(h, model.weight.grad.squeeze(0) + 2 * x.T @ y / 4) - w
    torch.testing.assert_close(eps.norm(), torch.tensor(0.5))
    rule = RandomRule(seed=0)
    draws = vmap(lambda g: rule.perturbation([g], [g], [1.0])[0], randomness="different")(torch.zeros(4, 3))
    torch.testing.assert_close(draws.norm(dim=1), torch.ones(4))
    assert torch.linalg.matrix_rank(draws) == 3  # four distinct random directions in R^3


def test_rho_zero_is_one_plain_backward():
    model = mlp()
    x, y = batch()
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    sam_grad(model, F.cross_entropy, x, y, rho=0.0)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_dropout_sees_the_same_mask_in_both_passes():
    model = mlp(dropout=0.5)
    x, y = batch()
    torch.manual_seed(123)
    sam_grad(model, F.cross_entropy, x, y, rho=0.1)
    after = torch.get_rng_state()
    # reference: both passes replay the same seed
    torch.manual_seed(123)
    out = model(x)
    torch.manual_seed(123)
    state0 = torch.get_rng_state()
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    after_one = torch.get_rng_state()
    eps = sam_eps(list(g), 0.1)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(shifted.parameters(), eps):
            p.add_(e)
    torch.set_rng_state(state0)
    expected = torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters()))
    del out
    close(grads_of(model), list(expected))
    assert torch.equal(after, after_one)  # the RNG stream advanced as by a single pass


def test_errors_are_one_line_and_specific():
    model = mlp()
    x, y = batch(8)
    with pytest.raises(SharplabError, match="rho must be a finite number >= 0"):
        sam_grad(model, F.cross_entropy, x, y, rho=-0.1)
    with pytest.raises(SharplabError, match="m=3 must be a positive divisor of the batch size 8"):
        sam_grad(model, F.cross_entropy, x, y, m=3)
    with pytest.raises(SharplabError, match="unknown mechanism"):
        sam_grad(model, F.cross_entropy, x, y, mechanism="both")
    with pytest.raises(SharplabError, match="unknown SAM variant"):
        sam_grad(model, F.cross_entropy, x, y, rule="adam")
    x_bad = x.clone()
    x_bad[0, 0] = float("nan")
    with pytest.raises(Diverged, match="at step 7"):
        sam_grad(model, F.cross_entropy, x_bad, y, step=7)
