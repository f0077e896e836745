"""Training rules for diagonal linear networks, as data for one shared vectorised kernel.

Every rule of the study is an instance of one update (Andriushchenko & Flammarion, ICML 2022,
arXiv:2206.06232, Sec. 3 and App. D). With ``beta = u * v``, residuals ``r = X beta - y`` and
``L = ||X beta - y||^2 / (2n)``, a step perturbs each example ``k`` to

    u~_k = u + s * a_k * v,    v~_k = v + s * a_k * u,    a_k = sum_{j in B(k)} r_j x_j,

where ``B(k)`` is the micro-batch of ``k``, and descends along

    g_u = sum_k w_k r~_k x_k * J_u(k),     g_v = sum_k w_k r~_k x_k * J_v(k),

with ``r~_k = x_k . (u~_k * v~_k) - y_k``, example weights ``w_k`` (``1/n``, or a one-hot for SGD) and
Jacobian factors ``J_u(k) = v~_k`` (full SAM) or ``v`` (importance-weighting only). A
:class:`MethodSpec` gives ``s``, the micro-batch size and these switches; the registry maps names to specs.

**The 2x factor convention.** n-SAM ascends along ``rho * grad L`` with ``L = sum r^2/(2n)``, i.e.
``s = rho/n`` over the whole batch. m-SAM (and 1-SAM, as in the study) ascends along ``rho * grad l_B``
with the micro-batch loss ``l_B = (1/m) sum_{k in B} r_k^2`` (squared error *without* the 1/2), i.e.
``s = 2 rho/m``. Hence ``m-sam`` with ``m = n`` and radius ``rho`` equals ``nsam`` with radius ``2 rho``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sharplab.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """One training rule of the kernel.

    Attributes:
        name: registry name (``gd``, ``sgd``, ``nsam``, ``1sam``, ``m-sam``, ``iw1sam``).
        scale: ``scale(rho, n, m) -> s``, the ascent coefficient of ``a_k`` above.
        group: ``group(n, m) -> size`` of the micro-batches ``B(k)`` (consecutive examples).
        full_jacobian: the descent gradient is taken at the perturbed point (False: only the residual
            is perturbed, the Jacobian stays at ``(u, v)`` -- the importance-weighting-only variant).
        stochastic: one example drawn uniformly per step (weight 1) instead of all with weight ``1/n``.
        uses_rho: whether ``rho`` changes anything.
        description: one line for ``--help``.
    """

    name: str
    scale: Callable[[float, int, int], float]
    group: Callable[[int, int], int]
    full_jacobian: bool = True
    stochastic: bool = False
    uses_rho: bool = True
    description: str = ""


METHODS: Registry[MethodSpec] = Registry("diagonal-network method")


def _add(spec: MethodSpec) -> None:
    METHODS.add(spec.name, spec)


_add(MethodSpec("gd", lambda rho, n, m: 0.0, lambda n, m: 1, uses_rho=False,
                description="full-batch gradient descent"))
_add(MethodSpec("sgd", lambda rho, n, m: 0.0, lambda n, m: 1, stochastic=True, uses_rho=False,
                description="SGD, batch size 1: gradient r_i x_i * (v, u) of example i ~ U{1..n}"))
_add(MethodSpec("nsam", lambda rho, n, m: rho / n, lambda n, m: n,
                description="n-SAM: unnormalised full-batch ascent w + rho grad L"))
_add(MethodSpec("1sam", lambda rho, n, m: 2.0 * rho, lambda n, m: 1,
                description="1-SAM: per-example ascent w + 2 rho r_k x_k * (v, u)"))
_add(MethodSpec("m-sam", lambda rho, n, m: 2.0 * rho / m, lambda n, m: m,
                description="m-SAM: per-micro-batch ascent w + rho grad (1/m) sum_B r_k^2"))
_add(MethodSpec("iw1sam", lambda rho, n, m: 2.0 * rho, lambda n, m: 1, full_jacobian=False,
                description="1-SAM, importance weighting only: residual at w~_k, Jacobian at w"))


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name`` (:class:`~sharplab.errors.SharplabError` listing the known ones)."""
    return METHODS.get(name)
