"""Perturbation rules: how the ascent step eps is computed from the gradient g at w.

A rule maps the gradients of the perturbed tensors to a perturbation of the same shapes. Norms are
global over all perturbed tensors (one L2 norm across the whole model, as in Foret et al.), and each
tensor uses the ``rho`` of its parameter group.

=========  ===========================================================  ==============================
name       eps                                                          reference
=========  ===========================================================  ==============================
``sam``    rho * g / ||g||                                              Foret et al. 2021, eq. (2)
``usam``   rho * g                                                      Andriushchenko & Flammarion 2022
``asam``   rho * T^2 g / ||T g||,  T = |w| + eta (elementwise)          Kwon et al. 2021, eq. (9)
``random`` rho * z / ||z||,  z ~ N(0, I) (one pass, at w + eps)         random-perturbation baseline
=========  ===========================================================  ==============================

:class:`MultiStep` composes any rule into k projected ascent steps
``eps_{j+1} = Proj_{||eps|| <= rho}(eps_j + rule(g(w + eps_j); rho / k))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from sharplab.optim.registry import Variant, check_int, check_number, register

Tensors = Sequence[torch.Tensor]

#: Added to norms before dividing, so a zero gradient gives a zero perturbation instead of NaN.
NORM_EPS = 1e-12


class Normed(list):
    """A list of tensors that carries its global norm: :func:`global_norm` returns ``norm`` instead of
    computing it again (SAM takes ||g|| for its diagnostics and the finiteness check, and hands the
    gradients to the rule with it)."""

    def __init__(self, tensors: Iterable[torch.Tensor], norm: torch.Tensor) -> None:
        super().__init__(tensors)
        self.norm = norm


def _fusable(tensors: Tensors) -> bool:
    """Plain tensors (no ``torch.func`` wrapper: vmap has no batching rule for ``_foreach_*``)."""
    return not any(_is_wrapped(t) for t in tensors)


_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_HALF = (torch.float16, torch.bfloat16)


def global_norm(tensors: Tensors) -> torch.Tensor:
    """sqrt(sum_i ||t_i||^2), accumulated in float32 or wider; works under ``torch.func.vmap``.

    A :class:`Normed` list returns the norm it carries.
    """
    if isinstance(tensors, Normed):
        return tensors.norm
    if not tensors:
        return torch.zeros(())
    wide = [t.float() if t.dtype in _HALF else t for t in tensors]
    norms = torch._foreach_norm(wide) if _fusable(wide) else [torch.linalg.vector_norm(t) for t in wide]
    return torch.linalg.vector_norm(torch.stack(norms))


class PerturbationRule:
    """Base class. ``perturbation(grads, params, rhos)`` returns eps for each perturbed tensor."""

    name: str = "rule"
    #: Number of ascent steps (gradient evaluations before the descent gradient).
    steps: int = 1
    #: False for rules whose eps needs no gradient at w (Momentum-SAM): SAM then runs one pass per step.
    needs_grad: bool = True
    #: True for rules that keep per-step state (an EMA): not usable inside vectorised m-sharpness.
    stateful: bool = False

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Called by SAM with its base optimizer (rules that read optimizer state keep it)."""

    def select(self, params: Tensors) -> list[bool] | None:
        """Which perturbed tensors need a gradient in the next ascent pass (``None``: all)."""
        return None

    def perturbation(self, grads: Tensors, params: Tensors, rhos: Sequence[float]) -> list[torch.Tensor]:
        raise NotImplementedError

    def update(
        self, eps: list[torch.Tensor] | None, grads: Tensors, params: Tensors, rhos: Sequence[float]
    ) -> list[torch.Tensor]:
        """One ascent step from the current perturbation (``None`` at the start)."""
        return self.perturbation(grads, params, rhos)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def scale_to_rho(tensors: Tensors, rhos: Sequence[float], denom: torch.Tensor, of_norm: bool = False
                 ) -> list[torch.Tensor]:
    """``rho_i / (denom + NORM_EPS) * t_i``: one factor per distinct rho, one fused multiply per factor.

    ``of_norm=True`` says ``denom`` is ``global_norm(tensors)``; with one rho the result is then
    :class:`Normed` with its norm in closed form, ``rho denom / (denom + NORM_EPS)`` (no second pass).
    """
    if not tensors:
        return []
    first = tensors[0]
    if not (_fusable(tensors) and all(t.device == first.device and t.dtype == first.dtype for t in tensors)):
        return [t * (rho / (denom.to(t.device) + NORM_EPS)).to(t.dtype) for t, rho in zip(tensors, rhos)]
    denom = denom.to(first.device)
    shifted = denom + NORM_EPS
    distinct = list(dict.fromkeys(rhos))
    if len(distinct) == 1:
        factor = distinct[0] / shifted
        out = torch._foreach_mul(list(tensors), factor.to(first.dtype))
        return Normed(out, factor * denom) if of_norm else out
    out = [first] * len(tensors)
    for rho in distinct:
        idx = [i for i, r in enumerate(rhos) if r == rho]
        for i, t in zip(idx, torch._foreach_mul([tensors[i] for i in idx], (rho / shifted).to(first.dtype))):
            out[i] = t
    return out


class SAMRule(PerturbationRule):
    """Normalised ascent, eps = rho * g / ||g||_2 (Foret et al., 2021, eq. 2)."""

    name = "sam"

    def perturbation(self, grads, params, rhos):
        return scale_to_rho(grads, rhos, global_norm(grads), of_norm=True)


class USAMRule(PerturbationRule):
    """Unnormalised ascent, eps = rho * g (Andriushchenko & Flammarion, 2022, eq. 3)."""

    name = "usam"

    def perturbation(self, grads, params, rhos):
        return [g * rho for g, rho in zip(grads, rhos)]


class ASAMRule(PerturbationRule):
    """Adaptive SAM, eps = rho * T^2 g / ||T g||_2 with T = |w| + eta (Kwon et al., 2021, eq. 9).

    Two conventions are in use, both available:

    * default (``scaled=None``): T = |w| + eta on every perturbed tensor, weights and biases alike;
      with ``eta=0`` this is exactly davda54/sam and pytorch_optimizer (``adaptive=True``, no eta);
    * the ASAM authors' code (SamsungLabs/ASAM): T = |w| + eta only on tensors whose name contains
      ``"weight"``, T = 1 on the others (biases): ``ASAMRule(eta=0.01, scaled=weights_only(model))``.

    ASAM's normalised radius is measured in the scaled metric, so it needs a larger rho than SAM
    (Kwon et al. use rho = 0.5 - 1.0 on CIFAR where SAM uses 0.05 - 0.1).

    Args:
        eta: offset keeping T positive for zero weights (0.01 as in Kwon et al.).
        scaled: the tensors that get T = |w| + eta (``None``: all); the others get T = 1.
    """

    name = "asam"

    def __init__(self, eta: float = 0.01, scaled: Iterable[torch.Tensor] | None = None) -> None:
        self.eta = check_number("asam", "eta", eta, 0)
        self._scaled = None if scaled is None else {id(p) for p in scaled}

    def perturbation(self, grads, params, rhos):
        scales = [p.detach().abs() + self.eta if self._scaled is None or id(p) in self._scaled else None
                  for p in params]
        scaled = [g if s is None else s * g for s, g in zip(scales, grads)]
        return scale_to_rho([tg if s is None else s * tg for s, tg in zip(scales, scaled)], rhos, global_norm(scaled))


def weights_only(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors the ASAM authors' code scales: parameters whose name contains ``"weight"``."""
    return [p for n, p in model.named_parameters() if "weight" in n]


class RandomRule(PerturbationRule):
    """Random direction of norm rho: eps = rho * z / ||z||, z ~ N(0, I). Ignores the gradient.

    It needs no gradient at w (``needs_grad = False``), so a step is one forward/backward, at w + eps:
    ``SAM(rule="random").step(closure)`` and :func:`~sharplab.optim.sam_grad` run only that pass and
    return the loss there (there is no pass at w), and that pass updates BatchNorm statistics as a plain
    step's would. The noise is drawn on each parameter's device, from a generator on that device (one per
    device, each seeded with ``seed`` and saved in ``state_dict``): no host-side draw and no copy, and
    the global RNG that drives data order and dropout is neither used nor disturbed.
    """

    name = "random"
    needs_grad = False

    def __init__(self, seed: int | None = None) -> None:
        self.seed = int(torch.initial_seed() + 7919 if seed is None else seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator the noise for tensors on ``device`` is drawn from (created and seeded on first use)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def perturbation(self, grads, params, rhos):
        z = [torch.randn(p.shape, generator=self.generator(p.device), device=p.device,
                         dtype=torch.float32).to(p.dtype) for p in params]
        return scale_to_rho(z, rhos, global_norm(z), of_norm=True)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        states = dict(state.get("generators", {}))
        if "generator" in state:  # saved before generators followed the device: the CPU one
            states["cpu"] = state["generator"]
        self._generators = {}
        for key, value in states.items():
            if torch.device(key).type == "cuda" and not torch.cuda.is_available():
                continue  # resumed without that GPU: a fresh generator is seeded when it is first needed
            self.generator(key).set_state(value)


class MultiStep(PerturbationRule):
    """k projected ascent steps of an inner rule (a PGD-style inner maximisation).

    ``eps_1 = rule(g(w); a)``, ``eps_{j+1} = Proj_rho(eps_j + rule(g(w + eps_j); a))``, with step radius
    ``a = rho / k`` by default (``step_size`` scales it: ``a = step_size * rho``) and ``Proj_rho`` the
    projection on the global L2 ball whose radius is the largest group rho. With ``steps = 1`` it is the inner rule.
    """

    def __init__(self, inner: PerturbationRule | str = "sam", steps: int = 2, step_size: float | None = None):
        self.inner = make_rule(inner)
        if not self.inner.needs_grad:
            from sharplab.errors import SharplabError

            raise SharplabError(f"ascent_steps > 1 needs a gradient rule; {self.inner.name!r} takes no ascent step")
        self.steps = check_int("multi-step ascent", "ascent_steps", steps, 1)
        self.step_size = 1.0 / steps if step_size is None else check_number(
            "multi-step ascent", "step_size", step_size, 0, lo_open=True)
        self.name = f"{self.inner.name}-x{steps}"

    def update(self, eps, grads, params, rhos):
        if self.steps == 1:
            return self.inner.perturbation(grads, params, rhos)
        step = self.inner.perturbation(grads, params, [r * self.step_size for r in rhos])
        new = step if eps is None else [e + s for e, s in zip(eps, step)]
        return _project(new, rhos)

    def perturbation(self, grads, params, rhos):
        return self.inner.perturbation(grads, params, rhos)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def _project(eps: list[torch.Tensor], rhos: Sequence[float]) -> list[torch.Tensor]:
    """Scale eps back onto the global L2 ball ||eps|| <= max(rho) when it lies outside."""
    radius = max(rhos) if rhos else 0.0
    norm = global_norm(eps)
    factor = torch.clamp(radius / (norm + NORM_EPS), max=1.0)
    return [e * factor.to(e.device, e.dtype) for e in eps]


def make_rule(rule: PerturbationRule | str, ascent_steps: int = 1) -> PerturbationRule:
    """A rule object from a variant name that is a rule alone (``"sam"``, ``"usam"``, ``"asam"``, ``"random"``,
    ``"fsam"``, ``"esam"``, ``"momentum-sam"``; aliases accepted), with the paper's defaults, or an instance.

    ``ascent_steps > 1`` wraps it in :class:`MultiStep`.
    """
    from sharplab.errors import SharplabError
    from sharplab.optim import registry

    if isinstance(rule, str):
        variant = registry.get(rule)
        if not variant.rule:
            raise SharplabError(f"{variant.name!r} is not a perturbation rule (it changes the descent or the "
                                f"schedule): use sharplab.optim.create({variant.name!r}, ...)")
        obj = variant.build(dict(variant.defaults), None)["rule"]
    else:
        obj = rule
    if not isinstance(obj, PerturbationRule):
        raise SharplabError(f"rule must be a variant name or a PerturbationRule, got {type(rule).__name__}")
    check_int("multi-step ascent", "ascent_steps", ascent_steps, 1)
    return MultiStep(obj, ascent_steps) if ascent_steps > 1 else obj


def build_rule_only(make):
    """A ``Variant.build`` for a variant that is a rule and nothing else (the user's schedule kept)."""
    return lambda kw, schedule: {"rule": make(kw), "schedule": schedule}


register(Variant("sam", "Foret et al., ICLR 2021, eq. 2", "eps = rho g / ||g||",
                 build_rule_only(lambda kw: SAMRule()), {"rho": 0.05}, rule=True))
register(Variant("usam", "Andriushchenko & Flammarion, ICML 2022, eq. 3", "eps = rho g (unnormalised)",
                 build_rule_only(lambda kw: USAMRule()), {"rho": 0.05}, rule=True))
register(Variant("asam", "Kwon et al., ICML 2021, eq. 9", "eps = rho T^2 g / ||T g||, T = |w| + eta",
                 build_rule_only(lambda kw: ASAMRule(eta=kw["eta"], scaled=kw["scaled"])),
                 {"rho": 0.5, "eta": 0.01, "scaled": None}, aliases=("adaptive-sam",), rule=True))
register(Variant("random", "random-perturbation baseline (Andriushchenko & Flammarion, ICML 2022)",
                 "eps = rho z / ||z||, z ~ N(0, I) (own generator on the parameters' device; no ascent pass)",
                 build_rule_only(lambda kw: RandomRule(seed=kw["seed"])), {"rho": 0.05, "seed": None},
                 aliases=("rsam",), passes="1", rule=True))


class _RuleNames:
    """The names ``SAM(rule=...)`` accepts: a read-only view of the variants that are a rule alone."""

    def names(self) -> list[str]:
        from sharplab.optim import registry

        return [n for n in registry.names() if registry.get(n).rule]

    def __contains__(self, name: object) -> bool:
        from sharplab.errors import SharplabError
        from sharplab.optim import registry

        try:
            return isinstance(name, str) and registry.get(name).rule
        except SharplabError:
            return False

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


#: The rule names (aliases accepted by ``in``): ``"u_sam" in RULES``.
RULES = _RuleNames()
