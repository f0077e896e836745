"""Arms: the configurations a feature-quality study compares, as TOML tables (or, in older files, strings).

.. code-block:: toml

    [grid]
    arm = [
        "untrained",
        {optimizer = "sgd", lr = 0.02},
        {optimizer = "sam", rho = 0.1, lr = 0.05},
        {optimizer = "gsam", rho = 0.05, alpha = 0.1},
    ]

A table names an ``optimizer`` (``sgd``, ``untrained``, ``hard-only`` or any ``sharplab.optim`` family member)
and sets config fields (every one but ``arm`` and ``dataset``); any other key must be one of the family
member's own keywords (``sharplab optim list``) and goes to ``optimizer_options``, which the arm replaces as
a whole. A string says the same on one line, ``"OPTIMIZER key=value ..."`` (``"sam rho=0.1 lr=0.05"``), the
form of the finished studies' files. Every value is checked when the study is loaded, against the field's
type and range or by building the optimizer; a bad one is one line naming the arm and the key.

The arm's **name** is its string; a table is written in that form, keys in table order
(``{optimizer = "sam", rho = 0.1}`` is ``"sam rho=0.1"``). The name labels the run in reports
(:func:`.protocol.arm_label` drops ``lr=`` tokens); it is not part of the run's identity (the config field
``arm`` is a label): ``arm = "sam rho=0.1"``, ``arm = {optimizer = "sam", rho = 0.1}`` and
``optimizer = "sam", rho = 0.1`` are one run.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sharplab.errors import ConfigError
from sharplab.optim import registry

NOT_SET = ("arm", "dataset")  #: fields an arm cannot set


def arm_name(arm: str | dict[str, Any]) -> str:
    """The arm as a string: a string stripped, a table as ``"OPTIMIZER key=value ..."`` in table order."""
    if isinstance(arm, str):
        return arm.strip()
    where = table_text(arm)
    if "optimizer" not in arm or not isinstance(arm["optimizer"], str):
        raise ConfigError(f'arm {where}: a table arm needs optimizer = "<name>", e.g. {{optimizer = "sam", rho = 0.1}}')
    tokens = [arm["optimizer"]] + [f"{k}={_token(where, k, v)}" for k, v in arm.items() if k != "optimizer"]
    return " ".join(tokens)


def arm_changes(arm: str, fields: dict[str, tuple[Any, Any]], names: tuple[str, ...],
                where: str = "") -> dict[str, Any]:
    """The config fields an arm string sets, every value checked; ``{}`` for no arm.

    Args:
        arm: the arm's string (:func:`arm_name`).
        fields: ``name -> (type, metadata)`` of the lab's config fields.
        names: the optimizer names the lab accepts.
        where: how messages name the arm (default: ``arm '<the string>'``).
    """
    from sharplab.labs.feature_quality.experiment import parse_value
    from sharplab.runner.validation import check_value

    if not arm.strip():
        return {}
    where = where or f"arm {arm!r}"
    settable = [f for f in fields if f not in (*NOT_SET, "optimizer", "optimizer_options")]
    first, *rest = arm.split()
    if first not in names:
        raise ConfigError(f"{where}: unknown optimizer {first!r}; choose one of: {', '.join(names)}")
    own = registry.get(first).defaults if first in registry.names() else {}
    changes: dict[str, Any] = {"optimizer": first, "optimizer_options": {}}
    for item in rest:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: {item!r} is not key=value; write e.g. 'sam rho=0.2 m=16'")
        if key in changes or key in changes["optimizer_options"]:
            raise ConfigError(f"{where}: {key} is given twice")
        value = parse_value(text)
        if key in settable:
            typ, meta = fields[key]
            changes[key] = check_value(f"{where}: {key}", value, typ, meta)
        elif key in own and key != "rho":
            changes["optimizer_options"][key] = _keyword(where, first, key, value, own[key])
        else:
            extra = f"; {first} also takes {', '.join(k for k in own if k != 'rho')}" if len(own) > 1 else ""
            raise ConfigError(f"{where}: unknown key {key!r}; an arm sets the fields {', '.join(settable)}{extra}")
    return changes


def _keyword(where: str, optimizer: str, key: str, value: Any, default: Any) -> Any:
    """A family member's keyword, in its default's type (an integer given for a float default becomes one)."""
    if isinstance(default, bool) or default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; {optimizer}'s {key} is a "
                          f"{type(default).__name__} (default {default!r})")
    return value


def _token(where: str, key: str, value: Any) -> str:
    """A table value written as an arm-string token that reads back as the same value."""
    from sharplab.labs.feature_quality.experiment import parse_value

    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and math.isfinite(value):
        text = repr(value)
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = ""
    back = parse_value(text)
    if not text or any(c.isspace() for c in text) or back != value or type(back) is not type(value):
        raise ConfigError(f"arm {where}: {key} = {json.dumps(value)} cannot name an arm (write a number, true/false "
                          "or a word without spaces; or set it in [config])")
    return text


def table_text(arm: dict[str, Any]) -> str:
    """A table arm as TOML writes it inline (for messages)."""
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in arm.items()) + "}"
