"""The optimizer fields have one set of bounds in every lab, checked when a study loads."""

from __future__ import annotations

import pytest

import sharplab.labs
from sharplab.errors import ConfigError
from sharplab.labs.fields import LR_BOUNDS, MOMENTUM_BOUNDS, RHO_BOUNDS, WEIGHT_DECAY_BOUNDS
from sharplab.runner.config import parse_study
from sharplab.runner.labs import LABS
from sharplab.runner.validation import config_fields

sharplab.labs.load_all()
BOUNDS = {"lr": LR_BOUNDS, "momentum": MOMENTUM_BOUNDS, "weight_decay": WEIGHT_DECAY_BOUNDS, "rho": RHO_BOUNDS}
WITH = sorted((name, field) for name in LABS.names() for field in BOUNDS
              if field in config_fields(LABS.get(name).config_cls))


def test_every_training_lab_has_the_fields():
    labs = {name for name, _ in WITH}
    assert {"digits", "deep-net", "feature-quality", "mechanisms", "diag-net", "relu-1d", "convergence"} <= labs


@pytest.mark.parametrize(("lab", "name"), WITH, ids=[f"{lab}.{name}" for lab, name in WITH])
def test_field_bounds_are_the_shared_ones(lab, name):
    meta = config_fields(LABS.get(lab).config_cls)[name][1].metadata
    assert {k: meta[k] for k in ("min", "gt", "max") if k in meta} == BOUNDS[name]


@pytest.mark.parametrize(("lab", "field", "value"),
                         [(lab, "lr", 0.0) for lab, f in WITH if f == "lr"]
                         + [(lab, "momentum", 1.0) for lab, f in WITH if f == "momentum"])
def test_bad_optimizer_value_fails_at_load_in_one_line(lab, field, value):
    with pytest.raises(ConfigError) as err:
        parse_study({"lab": lab, "config": {field: value}})
    message = str(err.value)
    assert "\n" not in message and f"{field} = {value!r}" in message and "allowed" in message
