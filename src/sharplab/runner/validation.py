"""Typed validation of configuration values against a lab's frozen config dataclass.

Every value of a study file (and of ``--set KEY=VALUE``) is coerced to its field's type (int -> float,
list -> tuple) and checked against the field's ``metadata`` (``min``, ``gt`` (exclusive), ``max``,
``choices``, ``allow_inf``) before anything runs; a bad one raises a one-line :class:`~sharplab.errors.ConfigError`
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from sharplab.errors import ConfigError

#: the largest integer a config value (a seed, a count) may hold: what SQLite and JSON readers keep exactly
MAX_INT = 2**63 - 1


def config_fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """``name -> (resolved type, field)`` of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def validate_config(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build ``cls(**values)`` after checking every key, type and range; raise one-line ConfigError."""
    fields = config_fields(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"[{where}] unknown key {key!r}{hint}; allowed keys: {', '.join(fields) or 'none'}"
            )
        typ, field = fields[key]
        kwargs[key] = check_value(f"[{where}] {key}", value, typ, field.metadata)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{where}] {exc}".splitlines()[0]) from None


def describe_type(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    if origin in (tuple, list):
        args = typing.get_args(typ)
        inner = describe_type(args[0]) if args else "value"
        return f"list of {inner}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(typ) if a is not type(None))
    return getattr(typ, "__name__", str(typ))


def allowed(typ: Any, meta: Any) -> str:
    """Human description of what a field accepts (used in messages and ``sharplab labs NAME``)."""
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    kind = describe_type(typ)
    if "gt" in meta:
        return f"{kind} > {meta['gt']}" + (f" and <= {meta['max']}" if "max" in meta else "")
    if "min" in meta and "max" in meta:
        return f"{kind} in [{meta['min']}, {meta['max']}]"
    if "min" in meta:
        return f"{kind} >= {meta['min']}"
    if "max" in meta:
        return f"{kind} <= {meta['max']}"
    return kind


def check_value(name: str, value: Any, typ: Any, meta: Any) -> Any:
    """Coerce ``value`` to ``typ`` (int -> float, list -> tuple) and check ``meta`` ranges, or raise."""
    try:
        out = _coerce(value, typ)
    except TypeError:
        raise ConfigError(f"{name} = {value!r} has the wrong type; allowed: {allowed(typ, meta)}") from None
    if "choices" in meta and out not in meta["choices"]:
        raise ConfigError(f"{name} = {value!r} is not allowed; allowed: {allowed(typ, meta)}")
    items = out if isinstance(out, tuple) else (out,)
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if item != item:  # NaN
                raise ConfigError(f"{name} = {value!r} is not a number; allowed: {allowed(typ, meta)}")
            if isinstance(item, float) and abs(item) == float("inf") and not meta.get("allow_inf"):
                raise ConfigError(f"{name} = {value!r} is not finite; allowed: {allowed(typ, meta)}")
            if (("min" in meta and item < meta["min"]) or ("max" in meta and item > meta["max"])
                    or ("gt" in meta and not item > meta["gt"])):
                raise ConfigError(f"{name} = {value!r} is out of range; allowed: {allowed(typ, meta)}")
            if isinstance(item, int) and abs(item) > MAX_INT:
                raise ConfigError(f"{name} = {value!r} is too large; allowed: {allowed(typ, meta)}")
    return out


def _coerce(value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is typing.Literal:
        if value in typing.get_args(typ) and type(value) in {type(a) for a in typing.get_args(typ)}:
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(typ)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            items = [_coerce(v, args[0]) if args else v for v in value]
        return tuple(items) if origin is tuple else items
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if typ is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(typ, type) and isinstance(value, typ):
        return value
    raise TypeError
