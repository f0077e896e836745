"""The SAM family with a ``GradScaler`` (float16 training's loss scaling), driven on the CPU in float64.

A power-of-two loss scale is exact, so a scaled run must match the unscaled run of the same variant to
float64 rounding; the tolerance below is that of two float64 computations of the same sums. A step
whose gradient is not finite (in the ascent pass or the descent pass) must be skipped as if its batch
had never been seen: weights, the base optimizer's momentum and each variant's own state (Friendly-SAM's
EMA, LookSAM's kept component, ESAM's generator, the step count that drives the schedules) unchanged,
so the run continues exactly like a run without that batch, and the scaler lowers its scale.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_reference import batches, mlp

from sharplab.optim import create

VARIANTS = {
    "sam": {}, "asam": {}, "usam": {}, "gsam": {"alpha": 0.3}, "fsam": {"sigma": 0.8, "lmbda": 0.7},
    "looksam": {"k": 2}, "esam": {"beta": 0.5, "seed": 3}, "wsam": {"gamma": 0.8}, "momentum-sam": {},
}
TOL = {"rtol": 1e-12, "atol": 1e-14}


def build(name, model):
    return create(name, model.parameters(), torch.optim.SGD, lr=0.2, momentum=0.9, **VARIANTS[name])


def closure_for(opt, model, x, y, scaler=None, inject=None):
    """Forward + backward (scaled with ``scaler``); ``inject(calls)`` says when to poison a gradient."""
    calls = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        calls[0] += 1
        if inject is not None and inject(calls[0]):
            next(model.parameters()).grad[0, 0] = float("inf")
        return loss

    return closure


def snapshot(opt, model):
    """Everything a skipped step must leave alone (copies)."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "base": copy.deepcopy(opt.base.state_dict()),
        "sam": copy.deepcopy(opt.state_dict()["sam"]),
        "steps": opt.steps_taken,
    }


def assert_same(a, b):
    for p, q in zip(a["params"], b["params"]):
        assert torch.equal(p, q)
    assert a["steps"] == b["steps"]
    assert _flat(a["base"]) == _flat(b["base"]) and _flat(a["sam"]) == _flat(b["sam"])


def assert_close_state(a, b):
    """Nested state equal: float tensors to float64 rounding, everything else exactly."""
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        torch.testing.assert_close(a, b, **TOL)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for s, t in zip(a, b):
            assert_close_state(s, t)
    else:
        assert _flat(a) == _flat(b)


def _flat(obj):
    """A comparable form of nested state (tensors by value)."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", tuple(obj.shape), obj.flatten().tolist())
    if isinstance(obj, dict):
        return tuple(sorted((str(k), _flat(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(_flat(v) for v in obj)
    return obj


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_scaled_run_matches_the_unscaled_run(name):
    """opt.step(closure, scaler=) with the closure scaling its loss = the same variant without a scaler."""
    a, b = mlp(), mlp()
    opt_a, opt_b = build(name, a), build(name, b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in batches(steps=7):
        la = opt_a.step(closure_for(opt_a, a, x, y, scaler), scaler=scaler)
        scaler.update()
        lb = opt_b.step(closure_for(opt_b, b, x, y))
        torch.testing.assert_close(la, lb, **TOL)
    assert opt_a.skipped_steps == 0 and opt_a.steps_taken == opt_b.steps_taken == 7
    assert scaler.get_scale() == 2.0**10
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOL)
    assert_close_state(opt_a.state_dict(), opt_b.state_dict())


def _passes(name):
    """Which passes a step of this variant can poison: 1 = at w, 2 = at w + eps."""
    return [1] if name == "momentum-sam" else [1, 2]


@pytest.mark.parametrize("name,poisoned", [(n, k) for n in sorted(VARIANTS) for k in _passes(n)])
def test_a_non_finite_gradient_skips_the_step_and_leaves_all_state(name, poisoned):
    """Steps 0-3 train (building EMA, LookSAM's g_v, momentum), step 4's pass ``poisoned`` gets an inf:
    nothing changes, the scale halves; the run then continues exactly as a run that never saw batch 4."""
    a, b = mlp(), mlp()
    opt_a, opt_b = build(name, a), build(name, b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = batches(steps=7)
    for i, (x, y) in enumerate(data):
        if i == 4:
            before = snapshot(opt_a, a)
            opt_a.step(closure_for(opt_a, a, x, y, scaler, inject=lambda c: c == poisoned), scaler=scaler)
            scaler.update()
            assert opt_a.skipped_steps == 1 and scaler.get_scale() == 2.0**9
            assert_same(snapshot(opt_a, a), before)
            continue
        opt_a.step(closure_for(opt_a, a, x, y, scaler), scaler=scaler)
        scaler.update()
        opt_b.step(closure_for(opt_b, b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOL)


def test_looksam_skips_a_poisoned_step_between_ascents():
    """LookSAM (k = 2) at step 1 runs one pass and reuses g_v: an inf there is skipped too, g_v kept."""
    a = mlp()
    opt = build("looksam", a)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    (x0, y0), (x1, y1) = batches(steps=2)
    opt.step(closure_for(opt, a, x0, y0, scaler), scaler=scaler)
    scaler.update()
    before = snapshot(opt, a)
    assert before["sam"]["combiner"]  # g_v is kept after the ascent step
    opt.step(closure_for(opt, a, x1, y1, scaler, inject=lambda c: True), scaler=scaler)
    scaler.update()
    assert opt.skipped_steps == 1
    assert_same(snapshot(opt, a), before)


def test_scaler_step_hands_a_family_step_over():
    """``scaler.step(opt, closure)`` (Accelerate's fp16) on a composed variant = ``opt.step(closure, scaler=)``."""
    a, b = mlp(), mlp()
    opt_a, opt_b = build("gsam", a), build("gsam", b)
    sa, sb = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
    sa.scale(torch.ones(()))  # GradScaler.step needs a scale() first: the first closure has not run yet
    for x, y in batches(steps=3):
        sa.step(opt_a, closure_for(opt_a, a, x, y, sa))
        sa.update()
        opt_b.step(closure_for(opt_b, b, x, y, sb), scaler=sb)
        sb.update()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOL)


def test_esam_data_selection_with_a_scaler():
    """ESAM's batch mode (sharpest fraction) scales its own backward passes; = the unscaled run."""
    a, b = mlp(), mlp()
    kw = {"model": None, "loss_fn": torch.nn.CrossEntropyLoss(reduction="none"), "gamma": 0.5, "seed": 1}
    opt_a = create("esam", a.parameters(), torch.optim.SGD, lr=0.2, momentum=0.9, **{**kw, "model": a})
    opt_b = create("esam", b.parameters(), torch.optim.SGD, lr=0.2, momentum=0.9, **{**kw, "model": b})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in batches(steps=4):
        opt_a.step(inputs=x, targets=y, scaler=scaler)
        scaler.update()
        opt_b.step(inputs=x, targets=y)
        assert torch.equal(opt_a.stats["selected"], opt_b.stats["selected"])
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOL)


def lightning_like_step(opt, closure, scaler):
    """Lightning's ``MixedPrecision.optimizer_step`` (16-mixed): the closure (pass at w) first, then
    ``scaler.step(optimizer)`` without it."""
    closure_result = closure()  # noqa: F841 -- SAM reads it from this frame, as from Lightning's
    return scaler.step(opt)


@pytest.mark.parametrize("name", ["gsam", "looksam", "fsam"])
def test_closure_first_protocol_on_a_family_member(name):
    """Lightning's closure-first protocol on composed (gsam, looksam) and plain-path (fsam) members =
    ``opt.step(closure, scaler=)``; no gradient is left behind for the framework's next pass."""
    a, b = mlp(), mlp()
    opt_a, opt_b = build(name, a), build(name, b)
    sa, sb = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
    for x, y in batches(steps=4):
        lightning_like_step(opt_a, closure_for(opt_a, a, x, y, sa), sa)
        sa.update()
        assert all(p.grad is None for p in a.parameters())
        opt_b.step(closure_for(opt_b, b, x, y, sb), scaler=sb)
        sb.update()
    assert opt_a.steps_taken == opt_b.steps_taken == 4
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOL)
