"""The one SAM engine: every family member on every path, no silent wrong step (issue 17).

Float64 throughout (conftest). "Same iterates" compares two different drives of the optimizer (closure vs
two-phase loop) to 1e-10: both run identical floating-point operations in the same order except where a
path runs an extra pass whose result is unused, so agreement is to rounding; the tolerance is far below
any variant's effect on the weights (checked: every variant but plain SAM moves them > 1e-6 away).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import Diverged, SharplabError
from sharplab.optim import SAM, available, create
from sharplab.optim.schedules import LRTied

LR, MU, WD = 0.2, 0.9, 5e-4
#: the nine members and the settings that make each one act within a few steps
MEMBERS = {
    "sam": {}, "usam": {}, "asam": {}, "gsam": {"alpha": 0.3}, "fsam": {"sigma": 1.0}, "looksam": {"k": 2},
    "esam": {"beta": 0.5, "seed": 3}, "wsam": {"gamma": 0.8}, "momentum-sam": {"rho": 0.3},
}


def mlp(seed: int = 0, frozen: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    if frozen:
        model[0].bias.requires_grad_(False)
    return model


def data(steps: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(steps)]


def build(name: str, model: torch.nn.Module, **extra) -> SAM:
    kw = {"rho": 0.1, **MEMBERS[name], **extra}
    return create(name, model.parameters(), torch.optim.SGD, lr=LR, momentum=MU, weight_decay=WD, **kw)


def closure_step(opt, model, x, y):
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure)


def two_phase_step(opt, model, x, y):
    """The documented manual loop: backward at w, first_step, backward at w + eps if it perturbed, second_step."""
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    if opt.first_step(zero_grad=True):
        F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_closure_and_two_phase_paths_give_the_same_iterates_and_differ_from_plain_sam(name):
    a, b, c = mlp(), mlp(), mlp()
    opt_a, opt_b = build(name, a), build(name, b)
    opt_c = create("sam", c.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU, weight_decay=WD)
    for x, y in data():
        closure_step(opt_a, a, x, y)
        two_phase_step(opt_b, b, x, y)
        closure_step(opt_c, c, x, y)
    assert opt_a.steps_taken == opt_b.steps_taken == 6
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    gap = max((p - q).abs().max().item() for p, q in zip(a.parameters(), c.parameters()))
    if name == "sam":
        assert gap == 0.0
    else:
        assert gap > 1e-6, f"{name} ran plain SAM"


@pytest.mark.parametrize("name", sorted(MEMBERS))
@pytest.mark.parametrize("path", ["closure", "two-phase"])
def test_frozen_and_unused_parameters_are_never_touched(name, path):
    model = mlp(frozen=True)
    unused = torch.nn.Parameter(torch.ones(4))  # in the optimizer, never in the graph: .grad stays None
    frozen = model[0].bias
    params = [{"params": list(model.parameters()) + [unused]}]
    kw = {"rho": 0.1, **MEMBERS[name]}
    opt = create(name, params, torch.optim.SGD, lr=LR, momentum=MU, weight_decay=WD, **kw)
    before_frozen, before_unused = frozen.detach().clone(), unused.detach().clone()
    step = closure_step if path == "closure" else two_phase_step
    for x, y in data():
        step(opt, model, x, y)
    assert torch.equal(frozen, before_frozen) and torch.equal(unused, before_unused)
    assert unused not in opt.base.state or not opt.base.state[unused]


def _poison_closure(model, x, y, at_call: int):
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        loss = F.cross_entropy(model(x), y)
        if calls["n"] == at_call:
            loss = loss * float("nan")
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_a_nan_at_w_plus_eps_restores_w_and_raises_before_the_base_step(name):
    model = mlp()
    opt = build(name, model)
    for x, y in data(steps=2):
        closure_step(opt, model, x, y)  # momentum, EMA, g_v built up; step 2 ascends (LookSAM k = 2 too)
    before, state = weights(model), {k: v.clone() for k, v in opt.base.state[next(model.parameters())].items()}
    x, y = data(steps=1, seed=9)[0]
    last_pass = 1 if name == "momentum-sam" else 2  # Momentum-SAM's only pass is at w + eps
    with pytest.raises(Diverged, match="at w \\+ eps"):
        opt.step(_poison_closure(model, x, y, last_pass))
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    for k, v in opt.base.state[next(model.parameters())].items():
        assert torch.equal(v, state[k]), f"base state {k} changed"


@pytest.mark.parametrize("name", sorted(MEMBERS))
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_any_pass_leaves_w_as_it_was(name, exc):
    model = mlp()
    opt = build(name, model)
    closure_step(opt, model, *data(steps=1)[0])
    before = weights(model)
    x, y = data(steps=1, seed=5)[0]
    for at in (1, 2):
        calls = {"n": 0}

        def closure(calls=calls, at=at):
            calls["n"] += 1
            if calls["n"] == at:
                raise exc("boom")
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        try:
            opt.step(closure)
        except exc:
            pass
        else:  # the step has fewer passes than `at` (Momentum-SAM, LookSAM between ascents): it completed
            assert calls["n"] < at
            return
        for p, q in zip(model.parameters(), before):
            assert torch.equal(p, q), f"pass {at}: weights left perturbed"
    # the optimizer is usable afterwards
    closure_step(opt, model, x, y)


def test_two_phase_restore_after_a_failed_second_pass():
    model = mlp()
    opt = create("gsam", model.parameters(), torch.optim.SGD, lr=LR)
    before = weights(model)
    x, y = data(steps=1)[0]
    F.cross_entropy(model(x), y).backward()
    assert opt.first_step(zero_grad=True)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    opt.restore()  # the user's second pass raised
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_gsam_rho_follows_the_paper_formula_under_warm_up_and_cosine():
    """Zhuang et al. 2022: rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min), with
    lr_max the peak (the schedulers' ``initial_lr``), not the warm-up's first lr."""
    model = mlp()
    rho_max, rho_min, peak = 0.2, 0.02, 0.4
    opt = create("gsam", model.parameters(), torch.optim.SGD, rho=rho_max, rho_min=rho_min, lr=peak)
    warm = torch.optim.lr_scheduler.LinearLR(opt.base, start_factor=0.1, total_iters=4)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt.base, T_max=6)
    sched = torch.optim.lr_scheduler.SequentialLR(opt.base, [warm, cos], milestones=[4])
    seen = []
    for x, y in data(steps=10):
        lr = opt.param_groups[0]["lr"]
        expected = rho_min + (rho_max - rho_min) * lr / peak
        closure_step(opt, model, x, y)
        seen.append(opt.stats["eps_norm"].item())
        assert math.isclose(seen[-1], expected, rel_tol=1e-9), (lr, seen[-1], expected)
        sched.step()
    assert seen[0] < 0.5 * rho_max  # the warm-up's small lr gives a small radius (not rho_max)


def test_lr_tied_explicit_lr_max_wins():
    assert LRTied(rho_min=0.0, lr_max=1.0)(0, 0.5, 0.5, 0, initial_lr=4.0) == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_bad_rho_is_refused_at_construction_and_in_param_groups(bad):
    model = mlp()
    with pytest.raises(SharplabError, match="rho must be a finite number >= 0"):
        SAM(model.parameters(), torch.optim.SGD, rho=bad, lr=LR)
    for name in MEMBERS:
        with pytest.raises(SharplabError, match="rho"):
            create(name, model.parameters(), torch.optim.SGD, lr=LR, momentum=MU, rho=bad)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=LR)
    opt.param_groups[0]["rho"] = bad  # set mid-run
    before = weights(model)
    with pytest.raises(SharplabError, match="rho of param group 0 must be a finite number >= 0"):
        closure_step(opt, model, *data(steps=1)[0])
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name,field,value", [
    ("gsam", "alpha", float("nan")), ("gsam", "alpha", 2.0), ("gsam", "rho_min", -1.0),
    ("wsam", "gamma", 1.0), ("looksam", "alpha", float("inf")), ("looksam", "k", 0),
    ("fsam", "lmbda", 1.0), ("fsam", "sigma", float("nan")), ("esam", "beta", 0.0), ("esam", "gamma", 1.5),
    ("asam", "eta", -0.01),
])
def test_bad_hyperparameters_name_the_variant_and_the_field(name, field, value):
    with pytest.raises(SharplabError, match=f"^{name}: {field} must be"):
        create(name, mlp().parameters(), torch.optim.SGD, lr=LR, momentum=MU, **{field: value})


def test_momentum_sam_refuses_a_base_without_momentum():
    with pytest.raises(SharplabError, match="momentum-sam: .*momentum=0"):
        create("momentum-sam", mlp().parameters(), torch.optim.SGD, lr=LR)
    create("momentum-sam", mlp().parameters(), torch.optim.AdamW, lr=1e-3)  # exp_avg is its momentum


def test_unknown_keywords_name_the_variant_and_its_keywords():
    with pytest.raises(SharplabError, match="gsam: unknown keyword 'gamma'; gsam takes rho, rho_min, alpha"):
        create("gsam", mlp().parameters(), torch.optim.SGD, gamma=0.9, lr=LR)
    with pytest.raises(SharplabError, match="sam: unknown keyword 'alpha'.*SGD takes"):
        create("sam", mlp().parameters(), torch.optim.SGD, alpha=0.1, lr=LR)
    with pytest.raises(SharplabError, match="SAM: unknown keyword 'gamma'.*nor an argument of SGD"):
        SAM(mlp().parameters(), torch.optim.SGD, gamma=0.9, lr=LR)


def test_defaults_and_names_agree_on_every_path():
    model = mlp()
    for v in available():
        if v["rule"]:
            base = torch.optim.SGD if v["name"] != "momentum-sam" else torch.optim.AdamW
            opt = SAM(model.parameters(), base, rule=v["name"], lr=LR)
            assert opt.defaults["rho"] == v["defaults"]["rho"], v["name"]
        built = create(v["name"], model.parameters(), torch.optim.AdamW, lr=1e-3, model=model)  # lsam needs it
        assert built.defaults["rho"] == v["defaults"]["rho"]
        for alias in [v["name"].upper(), *v["aliases"]]:
            again = create(alias, model.parameters(), torch.optim.AdamW, lr=1e-3, model=model)
            assert type(again.rule) is type(built.rule)
    assert create("look_sam", model.parameters(), lr=LR).schedule.every == 5
    from sharplab.optim import RULES

    assert "u_sam" in RULES and "gsam" not in RULES


def test_create_merges_a_user_schedule_or_refuses():
    from sharplab.optim import Cosine, Schedule

    model = mlp()
    opt = create("looksam", model.parameters(), lr=LR, k=3, schedule=Schedule(start=10, rho=Cosine(steps=50)))
    assert (opt.schedule.every, opt.schedule.start, type(opt.schedule.rho)) == (3, 10, Cosine)
    with pytest.raises(SharplabError, match="looksam: .*conflicts"):
        create("looksam", model.parameters(), lr=LR, k=3, schedule=Schedule(every=4))
    opt = create("gsam", model.parameters(), lr=LR, rho_min=0.01, schedule=Schedule(start=7))
    assert opt.schedule.start == 7 and opt.schedule.rho.rho_min == 0.01
    with pytest.raises(SharplabError, match="gsam: .*rho schedule"):
        create("gsam", model.parameters(), lr=LR, schedule=Schedule(rho=Cosine()))


def test_davda54_surface_adaptive_base_optimizer_and_state():
    """davda54/sam's ASAM step written out: T = |w| (no eta), e = rho T^2 g / ||T g||."""
    a, b = mlp(), mlp()
    opt = SAM(a.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=LR, momentum=MU)
    ref_base = torch.optim.SGD(b.parameters(), lr=LR, momentum=MU)
    for x, y in data(steps=3):
        closure_step(opt, a, x, y)
        ref_base.zero_grad()
        F.cross_entropy(b(x), y).backward()
        ps = list(b.parameters())
        with torch.no_grad():
            tg = [p.abs() * p.grad for p in ps]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tg]))
            eps = [0.5 / (norm + 1e-12) * p.pow(2) * p.grad for p in ps]
            old = [p.clone() for p in ps]
            for p, e in zip(ps, eps):
                p.add_(e)
        ref_base.zero_grad()
        F.cross_entropy(b(x), y).backward()
        with torch.no_grad():
            for p, o in zip(ps, old):
                p.copy_(o)
        ref_base.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert opt.base_optimizer is opt.base
    assert opt.state is opt.base.state and len(opt.state) == 4  # the momentum buffers
    opt.load_state_dict(opt.state_dict())
    assert opt.state is opt.base.state


def test_sparse_gradients_are_refused_in_one_line():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = SAM(emb.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure():
        loss = emb(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with pytest.raises(SharplabError, match="sparse gradients"):
        opt.step(closure)


def test_gsam_inner_products_conjugate_complex_parameters():
    """A complex tensor is a real vector of twice the size: GSAM on it equals GSAM on its real view."""
    from sharplab.optim import GSAM

    g = [torch.tensor([1 + 2j, -0.5 + 1j])]
    gs = [torch.tensor([0.3 - 1j, 2 + 0.5j])]
    real_g, real_gs = [torch.view_as_real(g[0]).clone()], [torch.view_as_real(gs[0]).clone()]
    GSAM(0.4).combine(g, gs, g)
    GSAM(0.4).combine(real_g, real_gs, real_g)
    torch.testing.assert_close(torch.view_as_real(gs[0]), real_gs[0], rtol=1e-12, atol=1e-14)


def test_diverged_names_the_step_once():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR)
    x, y = data(steps=1)[0]
    with pytest.raises(Diverged) as info:
        opt.step(_poison_closure(model, x, y, 1))
    assert str(info.value).count("at step") == 1


def test_add_param_group_keeps_friendly_sams_average_and_looksams_kept_part():
    model = mlp()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    fsam = create("fsam", first, torch.optim.SGD, lr=LR)
    look = create("looksam", [p for p in first], torch.optim.SGD, lr=LR, k=2)
    for opt in (fsam, look):
        model.zero_grad(set_to_none=True)  # two optimizers on one model: each step's gradients are its own
        closure_step(opt, model, *data(steps=1)[0])
    ema = {id(p): fsam.rule.ema[id(p)].clone() for p in first}
    gv = {id(p): look.combiner.gv[id(p)].clone() for p in first}
    fsam.add_param_group({"params": second})
    look.add_param_group({"params": second})
    assert all(torch.equal(fsam.rule.ema[k], v) for k, v in ema.items())
    assert all(torch.equal(look.combiner.gv[k], v) for k, v in gv.items())
    state = look.state_dict()
    look.load_state_dict(state)
    assert all(torch.equal(look.combiner.gv[k], v) for k, v in gv.items())
    model.zero_grad(set_to_none=True)
    closure_step(look, model, *data(steps=2)[1])  # a reuse step over old and new tensors runs
    assert look.steps_taken == 2


def test_docs_table_is_the_registry():
    from pathlib import Path

    from sharplab.optim.registry import markdown_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "optim.md").read_text()
    assert markdown_table() in text, "docs/optim.md's registry table is stale: paste registry.markdown_table()"


def test_optim_list_prints_the_registry(capsys):
    import json

    from sharplab.cli import main

    assert main(["optim", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == [v["name"] for v in available()]
    assert next(r for r in rows if r["name"] == "asam")["defaults"]["rho"] == 0.5


def test_esam_data_selection_refuses_the_two_phase_path_naming_why():
    model = mlp()
    opt = create("esam", model.parameters(), torch.optim.SGD, gamma=0.5, lr=LR, model=model,
                 loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    x, y = data(steps=1)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(SharplabError, match="esam with gamma < 1 .* batch mode"):
        opt.first_step()
    opt.zero_grad()
    opt.step(inputs=x, targets=y)  # the batch path runs it
    assert opt.steps_taken == 1 and len(opt.stats["selected"]) == 8


def test_momentum_sam_two_phase_needs_no_gradient_before_first_step():
    a, b = mlp(), mlp()
    opt_a, opt_b = build("momentum-sam", a), build("momentum-sam", b)
    for x, y in data(steps=4):
        closure_step(opt_a, a, x, y)
        opt_b.first_step()  # eps from the momentum buffer: no pass at w
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt_b.second_step(zero_grad=True)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
