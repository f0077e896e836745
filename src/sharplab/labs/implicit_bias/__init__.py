"""Implicit-bias lab (issue 5): SAM on diagonal linear networks, 1-D ReLU networks, convergence."""

from sharplab.labs.implicit_bias.diag_net import (
    DiagNetConfig,
    DiagNetData,
    DiagNetResult,
    diag_net,
    expand_grid,
    make_data,
    run_grid,
)
from sharplab.labs.implicit_bias.methods import METHODS, MethodSpec, get_method

__all__ = [
    "DiagNetConfig", "DiagNetData", "DiagNetResult", "METHODS", "MethodSpec", "diag_net", "expand_grid",
    "get_method", "make_data", "run_grid",
]
