"""Implicit-bias lab: what SAM prefers, on models small enough to see it.

Reproduces and extends the small-model studies of Andriushchenko & Flammarion, *Towards Understanding
Sharpness-Aware Minimization* (ICML 2022, arXiv:2206.06232):

* :mod:`.diag_net` -- diagonal linear networks ``beta = u * v``: GD, SGD, n-SAM, 1-SAM, m-SAM, the
  importance-weighting-only 1-SAM and switching, whole grids in one vectorised float64 computation;
* :mod:`.relu1d` -- a 1-100-1 ReLU network on twelve points (the official notebook's protocol): GD vs SAM
  and the number of linear pieces, seeds x methods vectorised in :mod:`.relu1d_batch`;
* :mod:`.interpolation` -- losses along the straight line between two diagonal-network solutions in (u, v);
* :mod:`.convergence` -- SGD / SAM / USAM with stochastic gradients, constant vs decaying rho and step size.

Notebook use::

    from sharplab.labs.implicit_bias import expand_grid, run_grid
    results = run_grid(expand_grid(["gd", "nsam", "1sam"], rhos=[0, 0.05, 0.1], alphas=[0.01, 0.1]))

Importing this package registers the labs ``diag-net``, ``relu-1d`` and ``convergence`` with the runner.
"""

from sharplab.labs.implicit_bias import lab as _lab  # noqa: F401  (registers the labs)
from sharplab.labs.implicit_bias.convergence import (
    ConvergenceConfig,
    ConvergenceResult,
    default_study,
    make_problem,
    run_convergence,
)
from sharplab.labs.implicit_bias.diag_net import (
    DiagNetConfig,
    DiagNetData,
    DiagNetResult,
    expand_grid,
    log_steps,
    make_data,
    run_grid,
    train_diag_net,
)
from sharplab.labs.implicit_bias.interpolation import InterpolationCurve, interpolate
from sharplab.labs.implicit_bias.methods import METHODS, MethodSpec, get_method
from sharplab.labs.implicit_bias.relu1d import (
    LEGACY,
    X_POINTS,
    Y_POINTS,
    Relu1dConfig,
    Relu1dResult,
    blanc_init,
    compare,
    count_kinks,
    make_network,
    train_relu_1d,
    train_relu_batch,
)

__all__ = [
    "METHODS", "X_POINTS", "Y_POINTS", "ConvergenceConfig", "ConvergenceResult", "DiagNetConfig",
    "DiagNetData", "DiagNetResult", "MethodSpec", "Relu1dConfig", "Relu1dResult", "compare", "count_kinks",
    "default_study", "train_diag_net", "expand_grid", "get_method", "make_data", "make_network", "make_problem",
    "run_convergence", "run_grid", "train_relu_1d", "LEGACY", "InterpolationCurve", "blanc_init", "interpolate",
    "log_steps", "train_relu_batch",
]
