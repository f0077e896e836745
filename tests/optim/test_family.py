"""The wider SAM family (GSAM, WSAM, LookSAM, Friendly-SAM, ESAM, Momentum-SAM, schedules) against
references written from the papers' equations with explicit tensors (float64, a tiny MLP)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from optim_reference import batches, mlp
from torch import nn

from sharplab.errors import SharplabError
from sharplab.optim import SAM, Cosine, Linear, Schedule, create, weights_only

LR, MU = 0.2, 0.9


# --- an independent reference: the MLP as a function of a list of tensors --------------------------------
def loss_at(w, x, y, reduction="mean"):
    w1, b1, w2, b2 = w
    return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y, reduction=reduction)


def grad_at(w, x, y):
    leaves = [t.detach().clone().requires_grad_() for t in w]
    return [t.detach() for t in torch.autograd.grad(loss_at(leaves, x, y), leaves)]


def norm(v):
    return math.sqrt(sum(float((t * t).sum()) for t in v))


def dot(a, b):
    return sum(float((s * t).sum()) for s, t in zip(a, b))


def add(a, b, c=1.0):
    return [s + c * t for s, t in zip(a, b)]


def scale(a, c):
    return [c * t for t in a]


class RefSGD:
    """torch.optim.SGD with momentum, written out: buf = mu buf + g (buf = g at first), w -= lr buf."""

    def __init__(self, w):
        self.w, self.buf = [t.detach().clone() for t in w], None

    def step(self, d, lr=LR):
        self.buf = list(d) if self.buf is None else [MU * b + t for b, t in zip(self.buf, d)]
        self.w = add(self.w, self.buf, -lr)


def closure_for(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def run(opt, model, data):
    for x, y in data:
        opt.step(closure_for(opt, model, x, y))
    return [p.detach() for p in model.parameters()]


def assert_same(params, ref, tol=1e-12):
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def sam_eps(g, rho):
    return scale(g, rho / (norm(g) + 1e-12))


# --- the variants ------------------------------------------------------------------------------------------
def test_create_sam_is_bitwise_plain_sam():
    a, b = mlp(), mlp()
    pa = run(SAM(a.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU), a, batches())
    pb = run(create("sam", b.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU), b, batches())
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["sam", "asam", "usam", "gsam", "fsam", "looksam", "esam", "wsam", "momentum-sam"])
def test_rho_zero_is_bitwise_the_base_optimizer(name):
    a, b = mlp(), mlp()
    pa = run(create(name, a.parameters(), torch.optim.SGD, rho=0.0, lr=LR, momentum=MU), a, batches(steps=4))
    pb = run(torch.optim.SGD(b.parameters(), lr=LR, momentum=MU), b, batches(steps=4))
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


def test_gsam_with_rho_tied_to_a_decaying_lr():
    """Zhuang et al. 2022, Alg. 1: d = g_s - alpha (g - (g.g_s/|g_s|^2) g_s), rho_t linear in lr_t."""
    rho, rho_min, alpha = 0.2, 0.05, 0.3
    model = mlp()
    opt = create("gsam", model.parameters(), torch.optim.SGD, rho=rho, rho_min=rho_min, alpha=alpha, lr=LR,
                 momentum=MU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.base, lambda t: 1.0 - 0.15 * t)
    ref = RefSGD(mlp().parameters())
    for t, (x, y) in enumerate(batches()):
        lr = LR * (1.0 - 0.15 * t)
        rho_t = rho_min + (rho - rho_min) * lr / LR
        g = grad_at(ref.w, x, y)
        gs = grad_at(add(ref.w, sam_eps(g, rho_t)), x, y)
        perp = add(g, gs, -dot(g, gs) / dot(gs, gs))
        ref.step(add(gs, perp, -alpha), lr)
        opt.step(closure_for(opt, model, x, y))
        sched.step()
    assert_same(model.parameters(), ref.w)


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam(decouple):
    """Yue et al. 2023: a = gamma/(1-gamma); coupled d = g + a (g_s - g); decoupled base(g) - lr a (g_s - g)."""
    rho, gamma = 0.1, 0.8
    a = gamma / (1 - gamma)
    model = mlp()
    opt = create("wsam", model.parameters(), torch.optim.SGD, rho=rho, gamma=gamma, decouple=decouple, lr=LR,
                 momentum=MU)
    ref = RefSGD(mlp().parameters())
    for x, y in batches():
        g = grad_at(ref.w, x, y)
        gs = grad_at(add(ref.w, sam_eps(g, rho)), x, y)
        if decouple:
            ref.step(g)
            ref.w = add(ref.w, add(gs, g, -1.0), -LR * a)
        else:
            ref.step(add(g, add(gs, g, -1.0), a))
        opt.step(closure_for(opt, model, x, y))
    assert_same(model.parameters(), ref.w)


def test_looksam_reuses_the_orthogonal_part_between_ascents():
    """Liu et al. 2022, Alg. 1 with k = 3: g_v kept every k steps, g + alpha |g|/|g_v| g_v between."""
    rho, k, alpha = 0.1, 3, 0.7
    model = mlp()
    opt = create("looksam", model.parameters(), torch.optim.SGD, rho=rho, k=k, alpha=alpha, lr=LR, momentum=MU)
    ref, gv = RefSGD(mlp().parameters()), None
    passes = 0
    for t, (x, y) in enumerate(batches(steps=7)):
        g = grad_at(ref.w, x, y)
        if t % k == 0:
            gs = grad_at(add(ref.w, sam_eps(g, rho)), x, y)
            cos = dot(g, gs) / (norm(g) * norm(gs))
            gv = add(gs, g, -norm(gs) * cos / norm(g))
            ref.step(gs)
        else:
            ref.step(add(g, gv, alpha * norm(g) / (norm(gv) + 1e-8)))
        calls = []
        base = closure_for(opt, model, x, y)
        opt.step(lambda base=base, calls=calls: calls.append(1) or base())
        passes += len(calls)
    assert_same(model.parameters(), ref.w)
    assert passes == 7 + 3  # one extra pass on steps 0, 3, 6 only


def test_friendly_sam():
    """Li et al. 2024: d = g - sigma m, m <- lmbda m + (1 - lmbda) g, m_0 = g_0; eps = rho d/|d|."""
    rho, sigma, lmbda = 0.1, 0.8, 0.6
    model = mlp()
    opt = create("fsam", model.parameters(), torch.optim.SGD, rho=rho, sigma=sigma, lmbda=lmbda, lr=LR, momentum=MU)
    ref, m = RefSGD(mlp().parameters()), None
    for x, y in batches():
        g = grad_at(ref.w, x, y)
        if m is None:
            m, d = list(g), g
        else:
            d = add(g, m, -sigma)
            m = add(scale(m, lmbda), g, 1 - lmbda)
        ref.step(grad_at(add(ref.w, sam_eps(d, rho)), x, y))
        opt.step(closure_for(opt, model, x, y))
    assert_same(model.parameters(), ref.w)


def test_esam_stochastic_weight_perturbation():
    """Du et al. 2022, sec. 3.1: each tensor kept with prob. beta (own generator), eps = rho/beta Mg/|Mg|."""
    rho, beta, seed = 0.1, 0.5, 3
    model = mlp()
    opt = create("esam", model.parameters(), torch.optim.SGD, rho=rho, beta=beta, seed=seed, lr=LR, momentum=MU)
    gen = torch.Generator().manual_seed(seed)
    ref = RefSGD(mlp().parameters())
    for x, y in batches():
        keep = (torch.rand(4, generator=gen) < beta).tolist()
        if not any(keep):
            keep[int(torch.randint(4, (1,), generator=gen))] = True
        g = [t if k else torch.zeros_like(t) for t, k in zip(grad_at(ref.w, x, y), keep)]
        ref.step(grad_at(add(ref.w, sam_eps(g, rho / beta)), x, y))
        opt.step(closure_for(opt, model, x, y))
    assert_same(model.parameters(), ref.w)


def test_esam_data_selection_descends_on_the_sharpest_examples():
    rho, gamma = 0.3, 0.5
    model = mlp()
    opt = create("esam", model.parameters(), torch.optim.SGD, rho=rho, beta=1.0, gamma=gamma, lr=LR, momentum=MU,
                 model=model, loss_fn=nn.CrossEntropyLoss(reduction="none"))
    ref = RefSGD(mlp().parameters())
    for x, y in batches(n=10):
        g = grad_at(ref.w, x, y)
        wt = add(ref.w, sam_eps(g, rho))
        sharp = (loss_at(wt, x, y, "none") - loss_at(ref.w, x, y, "none")).tolist()
        chosen = sorted(sorted(range(10), key=lambda i: -sharp[i])[:5])
        ref.step(grad_at(wt, x[chosen], y[chosen]))
        opt.step(inputs=x, targets=y)
        assert opt.stats["selected"].tolist() == chosen
    assert_same(model.parameters(), ref.w)


def test_esam_data_selection_needs_per_example_losses_and_the_batch():
    model = mlp()
    opt = create("esam", model.parameters(), torch.optim.SGD, gamma=0.5, lr=LR, model=model, loss_fn=F.cross_entropy)
    x, y = batches(steps=1)[0]
    with pytest.raises(SharplabError, match="per-example losses"):
        opt.step(inputs=x, targets=y)
    with pytest.raises(SharplabError, match="inputs=x, targets=y"):
        opt.step(closure_for(opt, model, x, y))


def test_momentum_sam_matches_the_authors_kept_perturbed_formulation():
    """Becker et al. 2024 (authors' loop): weights kept at w~ = w - rho v/|v|; g at w~; v <- mu v + g;
    w <- w - lr v; w~ <- w - rho v/|v|. One gradient per step."""
    rho = 0.5
    model = mlp()
    opt = create("momentum-sam", model.parameters(), torch.optim.SGD, rho=rho, lr=LR, momentum=MU)
    w = [p.detach().clone() for p in mlp().parameters()]
    v = [torch.zeros_like(t) for t in w]
    inv = 0.0
    wt = list(w)
    passes = 0
    for x, y in batches():
        g = grad_at(wt, x, y)
        w = add(wt, v, rho * inv)  # back to w
        v = [MU * a + b for a, b in zip(v, g)]
        w = add(w, v, -LR)
        inv = 1 / (norm(v) + 1e-12)
        wt = add(w, v, -rho * inv)
        base = closure_for(opt, model, x, y)
        calls = []
        opt.step(lambda base=base, calls=calls: calls.append(1) or base())
        passes += len(calls)
    assert_same(model.parameters(), w)
    assert passes == 6


def test_asam_authors_convention_scales_weights_only():
    rho, eta = 0.5, 0.01
    model = mlp()
    opt = create("asam", model.parameters(), torch.optim.SGD, rho=rho, eta=eta, scaled=weights_only(model), lr=LR)
    ref = RefSGD(mlp().parameters())
    ref.buf = None
    for x, y in batches(steps=3):
        g = grad_at(ref.w, x, y)
        t = [w.abs() + eta if i in (0, 2) else torch.ones_like(w) for i, w in enumerate(ref.w)]
        tg = [a * b for a, b in zip(t, g)]
        eps = [rho * a * b / (norm(tg) + 1e-12) for a, b in zip(t, tg)]
        gs = grad_at(add(ref.w, eps), x, y)
        ref.w = add(ref.w, gs, -LR)
        opt.step(closure_for(opt, model, x, y))
    assert_same(model.parameters(), ref.w)


# --- schedules ---------------------------------------------------------------------------------------------
def test_schedule_every_k_from_step_s_is_sgd_in_between():
    rho = 0.1
    model = mlp()
    opt = create("sam", model.parameters(), torch.optim.SGD, rho=rho, lr=LR, momentum=MU,
                 schedule=Schedule(every=2, start=1, rho=Linear(0.5, 1.0, steps=4)))
    ref = RefSGD(mlp().parameters())
    for t, (x, y) in enumerate(batches(steps=7)):
        g = grad_at(ref.w, x, y)
        if t >= 1 and (t - 1) % 2 == 0:
            rho_t = rho * (0.5 + 0.5 * min(t, 4) / 4)
            g = grad_at(add(ref.w, sam_eps(g, rho_t)), x, y)
        ref.step(g)
        opt.step(closure_for(opt, model, x, y))
    assert_same(model.parameters(), ref.w)


def test_rho_schedules_closed_forms():
    cos = Cosine(1.0, 0.2, steps=10)
    assert cos(0, 0.5, 0.1) == pytest.approx(0.5)
    assert cos(5, 0.5, 0.1) == pytest.approx(0.5 * 0.6)
    assert cos(50, 0.5, 0.1) == pytest.approx(0.5 * 0.2)
    sched = Schedule.from_epoch(3, steps_per_epoch=10, every=2)
    assert [sched.ascend(t) for t in (29, 30, 31, 32)] == [False, True, False, True]
    with pytest.raises(SharplabError):
        Schedule(every=0)


@pytest.mark.parametrize("name", ["looksam", "fsam", "gsam", "esam"])
def test_state_dict_resume_continues_exactly(name):
    data = batches(steps=6)
    a = mlp()
    opt_a = create(name, a.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU, k=2) if name == "looksam" \
        else create(name, a.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU)
    run(opt_a, a, data)
    b = mlp()
    make = (lambda m: create(name, m.parameters(), torch.optim.SGD, rho=0.1, lr=LR, momentum=MU, k=2)) \
        if name == "looksam" else (lambda m: create(name, m.parameters(), torch.optim.SGD, rho=0.1, lr=LR,
                                                     momentum=MU))
    opt_b = make(b)
    run(opt_b, b, data[:3])
    state, weights = copy.deepcopy(opt_b.state_dict()), copy.deepcopy(b.state_dict())
    c = mlp(seed=5)
    c.load_state_dict(weights)
    opt_c = make(c)
    opt_c.load_state_dict(state)
    run(opt_c, c, data[3:])
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_unknown_variant_is_a_one_line_error():
    with pytest.raises(SharplabError, match="choose one of"):
        create("bogus", mlp().parameters())


def test_sam_with_parts_is_the_composed_member():
    from sharplab.optim import GSAM

    a, b = mlp(), mlp()
    opt = SAM(a.parameters(), torch.optim.SGD, rho=0.1, combiner=GSAM(0.3), lr=LR, momentum=MU)
    assert type(opt) is SAM  # one engine: no subclass swapped in
    pa = run(opt, a, batches(steps=3))
    pb = run(create("gsam", b.parameters(), torch.optim.SGD, rho=0.1, rho_min=0.1, alpha=0.3, lr=LR, momentum=MU), b,
             batches(steps=3))
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    assert type(SAM(mlp().parameters(), torch.optim.SGD, lr=LR)) is SAM
