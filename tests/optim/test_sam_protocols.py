"""How real training loops drive SAM: closures that do not zero gradients, the manual two-pass path,
torch.compile, the GradScaler protocols of frameworks (scaler.step(opt, closure), Lightning's
closure-first plugin, step() after first_step()), and the small contracts (stats, errors, restore)."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from optim_reference import ref_sam_grad
from torch import nn

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import SAM


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def batches(n=8, seed=1, steps=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))
            for _ in range(steps)]


def closure_for(model, x, y, zero=None, scaler=None):
    def closure():
        if zero is not None:
            zero.zero_grad()
        loss = F.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss

    return closure


def davda54_step(model, opt_base, x, y, rho):
    """davda54/sam's step, written out: backward at w, w += rho g/(||g|| + 1e-12), zero, backward, restore, step."""
    F.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
    old = []
    with torch.no_grad():
        for p in params:
            old.append(p.data.clone())
            p.add_(p.grad * (rho / (norm + 1e-12)).to(p))
    opt_base.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, o in zip(params, old):
            p.data = o
    opt_base.step()
    opt_base.zero_grad()


# --- item 3: SAM zeroes gradients itself --------------------------------------------------------------
def test_closure_without_zero_grad_gives_the_davda54_step_bitwise():
    """The closure of the Lightning recipe never zeroes; the result is still plain SAM (bitwise davda54)."""
    model, ref, ref2 = mlp(), mlp(), mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    opt_zeroing = SAM(ref2.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    for x, y in batches(steps=5):
        opt.step(closure_for(model, x, y))
        opt_zeroing.step(closure_for(ref2, x, y, zero=opt_zeroing))
        davda54_step(ref, ref_opt, x, y, 0.1)
    for p, q, r in zip(model.parameters(), ref.parameters(), ref2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(p, r)


def test_rho_zero_closure_without_zero_grad_is_bitwise_sgd():
    model, ref = mlp(), mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.2, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    for x, y in batches(steps=4):
        opt.step(closure_for(model, x, y))
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_gradients_computed_outside_the_closure_are_refused_not_dropped():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    (x, y), = batches()
    opt.step(closure_for(model, x, y))
    opt.step(closure_for(model, x, y))  # the descent gradient the last step left is not "outside"
    F.cross_entropy(model(x), y).backward()  # e.g. a framework accumulating micro-batches
    with pytest.raises(SharplabError, match="outside the closure"):
        opt.step(closure_for(model, x, y))
    opt.zero_grad(set_to_none=False)  # zeros are harmless
    opt.step(closure_for(model, x, y))


def test_gradient_accumulation_inside_the_closure_equals_the_whole_batch():
    model, ref = mlp(), mlp()
    (x, y), = batches()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)

    def accumulating():
        total = 0.0
        for xb, yb in zip(x.chunk(2), y.chunk(2)):
            loss = F.cross_entropy(model(xb), yb) / 2
            loss.backward()
            total = total + loss.detach()
        return total

    opt.step(accumulating)
    ref_opt.step(closure_for(ref, x, y))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# --- item 4: the BatchNorm policy on every path ------------------------------------------------------
def one_forward_probe(model, x):
    probe = copy.deepcopy(model)
    probe(x)
    return probe


@pytest.mark.parametrize("with_model", [False, True])
def test_batchnorm_once_on_the_manual_path(with_model):
    model = bn_net()
    (x, y), = batches()
    probe = one_forward_probe(model, x)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=model if with_model else None)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    assert model[1].num_batches_tracked.item() == 1
    assert torch.equal(model[1].running_mean, probe[1].running_mean)
    assert torch.equal(model[1].running_var, probe[1].running_var)
    model(x)  # after second_step the statistics move again
    assert model[1].num_batches_tracked.item() == 2


@pytest.mark.parametrize("with_model", [False, True])
def test_batchnorm_once_with_torch_compile(with_model):
    torch._dynamo.reset()
    model = bn_net()
    (x, y), = batches()
    initial = copy.deepcopy(model.state_dict())
    probe = one_forward_probe(model, x)
    compiled = torch.compile(model, backend="eager")
    compiled(x)  # compile first: compiled code runs no module hooks inside
    model.load_state_dict(initial)
    opt = SAM(compiled.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=compiled if with_model else None)
    opt.step(closure_for(compiled, x, y))
    assert model[1].num_batches_tracked.item() == 1
    assert torch.equal(model[1].running_mean, probe[1].running_mean)  # the same eager-vs-compiled forward?
    torch.testing.assert_close(model[1].running_var, probe[1].running_var, rtol=1e-14, atol=0)


class SideBN(nn.Module):
    """Calls a BatchNorm layer kept outside its module tree (a plain attribute, as EMA teachers are kept)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.out = nn.Linear(5, 6).double(), nn.Linear(6, 3).double()
        self.__dict__["side"] = nn.BatchNorm1d(6).double()

    def forward(self, x):
        return self.out(torch.relu(self.side(self.lin(x))))


def written_out_sam_step(model, bns, x, y, rho, lr):
    """SAM by hand: the pass at w moves the BatchNorm statistics, the pass at w + eps runs with every
    BatchNorm buffer saved before and put back after, w is restored, plain SGD step."""
    params = list(model.parameters())
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in params]
    norm = sum((t * t).sum() for t in g).sqrt()
    saved = [[b.clone() for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)] for bn in bns]
    with torch.no_grad():
        old = [p.clone() for p in params]
        for p, t in zip(params, g):
            p.add_(rho * t / (norm + 1e-12))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for bn, (mean, var, count) in zip(bns, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        for p, o in zip(params, old):
            p.copy_(o - lr * p.grad)
    model.zero_grad()


@pytest.mark.parametrize("make", ["tree", "side"])
def test_batchnorm_once_over_many_steps_matches_the_written_out_step(make):
    """From the second step on the guard lifts its global hook while a top-level module runs, if the first
    step showed every module running inside its tree: the statistics and weights still follow SAM written
    out by hand, for a layer outside the tree too (the first step sees it, and the hook stays on)."""
    model = bn_net() if make == "tree" else SideBN()
    ref = copy.deepcopy(model)
    bn_of = (lambda m: [m[1]]) if make == "tree" else (lambda m: [m.side])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    for x, y in batches(n=16, steps=4):
        opt.step(closure_for(model, x, y))
        written_out_sam_step(ref, bn_of(ref), x, y, rho=0.3, lr=0.1)
    assert opt._nesting.nested is (make == "tree")
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    (bn,), (bn_ref,) = bn_of(model), bn_of(ref)
    assert bn.num_batches_tracked.item() == bn_ref.num_batches_tracked.item() == 4
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-12, atol=1e-14)


# --- item 5: the GradScaler protocols ------------------------------------------------------------------
def fp32_pair(lr=0.1):
    a, b = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    return (a, SAM(a.parameters(), torch.optim.SGD, rho=0.2, lr=lr, momentum=0.9),
            b, SAM(b.parameters(), torch.optim.SGD, rho=0.2, lr=lr, momentum=0.9))


def test_scaler_step_with_closure_is_the_scaled_sam_step():
    """``scaler.step(opt, closure)`` (Accelerate's fp16) = ``opt.step(closure, scaler=)`` = the unscaled step,
    bitwise: a power-of-two loss scale is exact in float32."""
    a, opt_a, b, opt_b = fp32_pair()
    c = mlp(dtype=torch.float32)
    opt_c = SAM(c.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    sa, sc = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
    sa.scale(torch.ones(()))  # GradScaler.step needs a scale() first: the first closure has not run yet
    for x, y in batches(steps=3, dtype=torch.float32):
        sa.step(opt_a, closure_for(a, x, y, scaler=sa))
        sa.update()
        opt_c.step(closure_for(c, x, y, scaler=sc), scaler=sc)
        sc.update()
        opt_b.step(closure_for(b, x, y))
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(p, r)
    assert opt_a.steps_taken == 3 and opt_a.skipped_steps == 0


def lightning_like_optimizer_step(scaler, optimizer, closure):
    """What Lightning's MixedPrecision.optimizer_step does with a scaler: the closure first (the pass at
    w), then ``scaler.step(optimizer)`` without it, then ``update()``."""
    closure_result = closure()
    step_output = scaler.step(optimizer)
    scaler.update()
    return step_output if closure_result is not None else None


def test_closure_first_protocol_equals_the_unscaled_step():
    a, opt_a, b, opt_b = fp32_pair()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in batches(steps=3, dtype=torch.float32):
        lightning_like_optimizer_step(scaler, opt_a, closure_for(a, x, y, zero=opt_a, scaler=scaler))
        opt_b.step(closure_for(b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_step_without_closure_after_first_step_finishes_the_step():
    """The protocol of trainers that call ``optimizer.step()`` themselves (Hugging Face Trainer)."""
    a, opt_a, b, opt_b = fp32_pair()
    for x, y in batches(steps=2, dtype=torch.float32):
        closure_for(a, x, y, zero=opt_a)()
        opt_a.first_step(zero_grad=True)
        closure_for(a, x, y)()
        assert opt_a.step() is None
        opt_a.zero_grad()
        opt_b.step(closure_for(b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def overflowing():
    """A linear model and a batch whose float32 gradients overflow once scaled by 2**127."""
    torch.manual_seed(0)
    (x, y), = batches(dtype=torch.float32)
    return nn.Linear(5, 3, dtype=torch.float32), 1e4 * x, y


@pytest.mark.parametrize("protocol", ["scaler=", "scaler.step", "closure-first", "manual"])
def test_float16_overflow_skips_the_step_on_every_protocol(protocol):
    model, x, y = overflowing()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    scaler.scale(torch.ones(()))  # GradScaler.step needs a scale() first: the first closure has not run yet
    closure = closure_for(model, x, y, scaler=scaler)
    if protocol == "scaler=":
        opt.step(closure, scaler=scaler)
        scaler.update()
    elif protocol == "scaler.step":
        scaler.step(opt, closure)
        scaler.update()
    elif protocol == "closure-first":
        lightning_like_optimizer_step(scaler, opt, closure)
    else:
        closure()
        opt.first_step(zero_grad=True, scaler=scaler)  # no Diverged: an overflow is the scaler's business
        closure()
        opt.second_step(zero_grad=True, scaler=scaler)
        scaler.update()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert scaler.get_scale() == 2.0**126
    assert (opt.steps_taken, opt.skipped_steps) == (0, 1)
    assert "sharpness" not in opt.stats


def test_manual_float16_path_with_unscaled_clipping_matches_the_reference():
    model, ref = mlp(dtype=torch.float32), mlp(dtype=torch.float64)
    (x, y), = batches(dtype=torch.float32)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    closure_for(model, x, y, scaler=scaler)()
    opt.first_step(zero_grad=True, scaler=scaler)
    closure_for(model, x, y, scaler=scaler)()
    scaler.unscale_(opt.base)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    opt.second_step(zero_grad=True, scaler=scaler)
    scaler.update()
    g = ref_sam_grad(ref, F.cross_entropy, x.double(), y, 0.3)
    norm = sum((t**2).sum() for t in g).sqrt()
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p -= 0.1 * t * 0.05 / (norm + 1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-6)  # float32 vs float64


# --- item 6: the smaller contracts -----------------------------------------------------------------
def test_diverged_in_a_later_ascent_step_restores_the_weights():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, ascent_steps=3)
    (x, y), = batches()
    calls = []

    def closure():
        calls.append(1)
        loss = F.cross_entropy(model(x), y) * (float("inf") if len(calls) == 2 else 1.0)
        loss.backward()
        return loss

    with pytest.raises(Diverged):
        opt.step(closure)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all("old_p" not in s for s in opt.state.values())


def test_an_exception_in_the_perturbed_pass_restores_the_weights():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    (x, y), = batches()
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return closure_for(model, x, y)()

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_diverged_message_names_the_step_once():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    (x, y), = batches()
    x[0, 0] = float("inf")
    with pytest.raises(Diverged) as info:
        opt.step(closure_for(model, x, y))
    assert re.fullmatch(r"non-finite ascent gradient norm \((nan|inf)\) at step 0", str(info.value))


def test_stats_of_a_rho_zero_step_hold_only_its_loss():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    (x, y), = batches()
    opt.step(closure_for(model, x, y))
    assert "sharpness" in opt.stats
    opt.param_groups[0]["rho"] = 0.0
    loss = opt.step(closure_for(model, x, y))
    assert opt.stats == {"loss": loss}


def test_params_with_a_built_optimizer_must_match():
    model, other = mlp(), mlp(1)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    SAM(model.parameters(), base)  # the same parameters: fine
    SAM(None, base)
    with pytest.raises(SharplabError, match="params differ"):
        SAM(other.parameters(), base)
