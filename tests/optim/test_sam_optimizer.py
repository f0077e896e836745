"""The SAM optimizer class: closure protocol, base-optimizer composition, BatchNorm, state, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_reference import batches, mlp, ref_sam_grad
from torch import nn

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import SAM, sam_grad


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def data(n=8, seed=1, steps=1):
    return batches(n, steps, seed)


def make_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def test_closure_step_equals_sgd_momentum_on_reference_sam_gradient():
    model, ref = mlp(), mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    for x, y in data(steps=3):
        loss = opt.step(make_closure(opt, model, x, y))
        torch.testing.assert_close(loss, F.cross_entropy(ref(x), y).detach())
        for p, g in zip(ref.parameters(), ref_sam_grad(ref, F.cross_entropy, x, y, 0.1)):
            p.grad = g
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["closure", "closure+model", "sam_grad"])
def test_rho_zero_reproduces_the_base_optimizer_exactly(mode):
    model, ref = bn_net(), bn_net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.1, momentum=0.9, weight_decay=1e-3,
              model=model if mode == "closure+model" else None)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for x, y in data(steps=4):
        if mode == "sam_grad":
            opt.zero_grad()
            sam_grad(model, F.cross_entropy, x, y, rho=0.0)
            opt.base.step()
        else:
            opt.step(make_closure(opt, model, x, y))
        make_closure(ref_opt, ref, x, y)()
        ref_opt.step()
    for (k, v), (_, w) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, w), k  # parameters and BatchNorm buffers alike


@pytest.mark.parametrize("with_model", [False, True])
@pytest.mark.parametrize("policy", ["once", "every"])
def test_batchnorm_policy_closure(policy, with_model):
    model = bn_net()
    probe = copy.deepcopy(model)
    (x, y), = data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, bn_policy=policy,
              model=model if with_model else None)
    opt.step(make_closure(opt, model, x, y))
    probe(x)  # one forward pass at w
    bn, bn_probe = model[1], probe[1]
    expected_count = 1 if policy == "once" else 2
    assert bn.num_batches_tracked.item() == expected_count
    if policy == "once":
        assert torch.equal(bn.running_mean, bn_probe.running_mean)
        assert torch.equal(bn.running_var, bn_probe.running_var)
    else:
        assert not torch.equal(bn.running_mean, bn_probe.running_mean)


@pytest.mark.parametrize("m", [None, 4])
def test_batchnorm_policy_sam_grad(m):
    model = bn_net()
    probe = copy.deepcopy(model)
    (x, y), = data()
    sam_grad(model, F.cross_entropy, x, y, rho=0.5, m=m)
    probe(x)
    assert model[1].num_batches_tracked.item() == 1
    torch.testing.assert_close(model[1].running_mean, probe[1].running_mean)
    torch.testing.assert_close(model[1].running_var, probe[1].running_var)


def test_state_dict_round_trip_resumes_identically():
    batches = data(steps=6)

    def build():
        model = mlp()
        return model, SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)

    model, opt = build()
    for x, y in batches[:3]:
        opt.step(make_closure(opt, model, x, y))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(saved_opt) == {"state", "param_groups", "sam"}
    assert all(set(s) == {"momentum_buffer"} for s in saved_opt["state"].values())  # no temporary copies
    for x, y in batches[3:]:
        opt.step(make_closure(opt, model, x, y))

    resumed, opt2 = build()
    resumed.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups is opt2.base.param_groups
    for x, y in batches[3:]:
        opt2.step(make_closure(opt2, resumed, x, y))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt2.steps_taken == 6


def test_scheduler_on_base_optimizer_drives_sam_learning_rate():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt.base, step_size=1, gamma=0.5)
    (x, y), = data()
    for _ in range(2):
        opt.step(make_closure(opt, model, x, y))
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.25
    opt.load_state_dict(opt.state_dict())
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.125


def test_per_group_rho_and_unperturbed_group():
    """A rho = 0 group is not perturbed and does not enter the norm: this is last-layer SAM."""
    model, ref = mlp(), mlp()
    opt = SAM([{"params": model[0].parameters(), "rho": 0.0}, {"params": model[2].parameters()}],
              torch.optim.SGD, rho=0.3, lr=0.1)
    (x, y), = data()
    opt.step(make_closure(opt, model, x, y))
    for p, g in zip(ref.parameters(), ref_sam_grad(ref, F.cross_entropy, x, y, 0.3, perturb={"2.weight", "2.bias"})):
        with torch.no_grad():
            p -= 0.1 * g
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_perturb_option_equals_zero_rho_groups():
    a, b = mlp(), mlp()
    (x, y), = data()
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, perturb=a[2].parameters())
    opt_b = SAM([{"params": b[0].parameters(), "rho": 0.0}, {"params": b[2].parameters()}],
                torch.optim.SGD, rho=0.3, lr=0.1)
    opt_a.step(make_closure(opt_a, a, x, y))
    opt_b.step(make_closure(opt_b, b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_weight_decay_is_the_base_optimizers_business():
    """AdamW's decoupled decay never enters the ascent gradient: same eps with and without decay."""
    a, b = mlp(), mlp()
    (x, y), = data()
    opt_a = SAM(a.parameters(), torch.optim.AdamW, rho=0.2, lr=0.01, weight_decay=0.5)
    opt_b = SAM(b.parameters(), torch.optim.AdamW, rho=0.2, lr=0.01, weight_decay=0.0)
    opt_a.step(make_closure(opt_a, a, x, y))
    opt_b.step(make_closure(opt_b, b, x, y))
    for p, q, p0 in zip(a.parameters(), b.parameters(), mlp().parameters()):
        torch.testing.assert_close(p, q - 0.01 * 0.5 * p0)  # decoupled: w <- w - lr*wd*w + adam(g_SAM)


def test_batch_mode_matches_sam_grad_with_m_and_mechanism():
    a, b = mlp(), mlp()
    (x, y), = data()
    opt = SAM(a.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, model=a, loss_fn=F.cross_entropy, m=2,
              mechanism="iw_only")
    opt.step(inputs=x, targets=y)
    sam_grad(b, F.cross_entropy, x, y, rho=0.2, m=2, mechanism="iw_only")
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_multi_step_closure_matches_sam_grad():
    a, b = mlp(), mlp()
    (x, y), = data()
    opt = SAM(a.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, ascent_steps=3)
    opt.step(make_closure(opt, a, x, y))
    sam_grad(b, F.cross_entropy, x, y, rho=0.3, ascent_steps=3)
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_manual_passes_with_gradient_clipping_on_the_descent_gradient():
    model, ref = mlp(), mlp()
    (x, y), = data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    make_closure(opt, model, x, y)()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    opt.second_step()
    g = ref_sam_grad(ref, F.cross_entropy, x, y, 0.3)
    norm = sum((t**2).sum() for t in g).sqrt()
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p -= 0.1 * t * 0.05 / (norm + 1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_parameter_without_grad_is_restored():
    model = mlp()
    frozen_before = model[0].bias.detach().clone()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    (x, y), = data()
    make_closure(opt, model, x, y)()
    model[0].bias.grad = None
    opt.first_step()
    opt.second_step()
    assert torch.equal(model[0].bias, frozen_before)


def test_bfloat16_autocast_on_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)).float()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = torch.randn(16, 5, dtype=torch.float32), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(20):
        def closure():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        losses.append(opt.step(closure).item())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


def test_errors():
    model = mlp()
    with pytest.raises(SharplabError, match="rho must be a finite number >= 0"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    with pytest.raises(SharplabError, match="closure returned None"):
        opt.step(lambda: None)
    (x, y), = data()
    opt.step(make_closure(opt, model, x, y))
    x[0, 0] = float("inf")
    with pytest.raises(Diverged, match="at step 1"):
        opt.step(make_closure(opt, model, x, y))
    with pytest.raises(SharplabError, match="need the batch"):
        SAM(model.parameters(), torch.optim.SGD, m=2, lr=0.1).step(lambda: torch.tensor(0.0))


def test_step_diagnostics_match_their_definitions():
    model, ref = mlp(), mlp()
    (x, y), = data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.4, lr=0.1)
    opt.step(make_closure(opt, model, x, y))
    g = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    norm = sum((t**2).sum() for t in g).sqrt()
    torch.testing.assert_close(opt.stats["grad_norm"], norm)
    torch.testing.assert_close(opt.stats["eps_norm"], torch.tensor(0.4))
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p += 0.4 * t / norm
    torch.testing.assert_close(opt.stats["perturbed_loss"], F.cross_entropy(ref(x), y))
    torch.testing.assert_close(opt.stats["sharpness"], opt.stats["perturbed_loss"] - opt.stats["loss"])
    assert opt.stats["sharpness"] > 0


def scaled_closure(opt, model, x, y, scaler):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        return loss

    return closure


def test_grad_scaler_step_equals_the_unscaled_step():
    """A power-of-two loss scale is exact in float32: the scaled SAM step equals the plain one bitwise."""
    a, b = mlp().float(), mlp().float()
    (x, y), = data()
    x = x.float()
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    opt_b = SAM(b.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        opt_a.step(scaled_closure(opt_a, a, x, y, scaler), scaler=scaler)
        scaler.update()
        opt_b.step(make_closure(opt_b, b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_overflow_skips_the_step_and_lowers_the_scale():
    torch.manual_seed(0)
    model = nn.Linear(5, 3).float()
    before = [p.detach().clone() for p in model.parameters()]
    (x, y), = data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the scaled float32 gradients overflow
    opt.step(scaled_closure(opt, model, 1e4 * x.float(), y, scaler), scaler=scaler)
    scaler.update()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert scaler.get_scale() == 2.0**126
