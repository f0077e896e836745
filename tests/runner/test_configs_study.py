"""``configs_study``: a study of an explicit list of ``(config, seed)`` runs (the implicit-bias commands')."""

from __future__ import annotations

import pytest

from sharplab.errors import ConfigError
from sharplab.labs.implicit_bias.diag_net import DiagNetConfig
from sharplab.runner.config import configs_study, run_spec


def test_runs_are_the_listed_pairs_once_each_with_a_shared_base() -> None:
    a = DiagNetConfig(method="gd", iters=10)
    b = DiagNetConfig(method="1sam", rho=0.1, then="gd", switch_at=5, iters=10)  # not valid field by field
    study = configs_study("diag-net", "s", [(a, 0), (a, 1), (b, 1), (a, 0)])
    ids = [s.run_id for s in study.runs()]
    assert ids == [run_spec("diag-net", a, 0).run_id, run_spec("diag-net", a, 1).run_id,
                   run_spec("diag-net", b, 1).run_id]
    assert study.base["iters"] == 10 and "method" not in study.base
    with pytest.raises(ConfigError):
        configs_study("diag-net", "s", [])
    with pytest.raises(ConfigError):
        configs_study("diag-net", "../x", [(a, 0)])
