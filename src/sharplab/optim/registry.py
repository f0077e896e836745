"""The SAM family's one registry: each variant is declared once, next to its code (timm-style).

A :class:`Variant` names the member, its aliases, its paper, its keywords with the paper's defaults, the
forward/backward passes a step costs and the ways it can be driven. ``create(name)``, ``SAM(rule=name)``,
:func:`available`, ``sharplab optim list``, the table in ``docs/optim.md`` and the tests all read it, so a
new variant is one file (its rule or combiner) plus one :func:`register` call there.

Names are case-insensitive and ignore ``-`` and ``_`` (``"look_sam"``, ``"LookSAM"`` and ``"looksam"`` are
one variant). The registry is complete once ``sharplab.optim`` is imported (its ``__init__`` imports every
module that declares a variant; Python runs it before any submodule, this one included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sharplab.errors import SharplabError

#: The ways to drive a SAM optimizer: ``step(closure)``; ``first_step()`` / ``second_step()``;
#: ``step(inputs=, targets=)`` (batch mode, needs ``model=`` and ``loss_fn=``).
PATHS = ("closure", "two-phase", "batch")


@dataclass(frozen=True)
class Variant:
    """One SAM-family member.

    Args:
        name: canonical name (``create(name)``).
        paper: the reference, e.g. ``"Foret et al., ICLR 2021"``.
        summary: the update in one line (the docs table shows it).
        build: ``build(keywords, schedule)`` -> the :class:`~sharplab.optim.SAM` parts (``rule``, ``combiner``,
            ``schedule``, ``selection``) for the variant's keywords (defaults filled in) and the user's
            ``schedule=`` (or ``None``); it merges the two or refuses.
        defaults: the variant's own keywords with the paper's defaults; ``rho`` always among them.
        aliases: other accepted names.
        passes: forward/backward passes per step, as text (``"2"``, ``"1 + 1/k"``).
        paths: the ways it can be driven (a subset of :data:`PATHS`).
        rule: ``True`` when ``SAM(rule=name)`` accepts it (the variant is a perturbation rule alone).
    """

    name: str
    paper: str
    summary: str
    build: Callable[[dict[str, Any], Any], dict[str, Any]]
    defaults: Mapping[str, Any]
    aliases: tuple[str, ...] = ()
    passes: str = "2"
    paths: tuple[str, ...] = PATHS
    rule: bool = False
    notes: str = field(default="")

    def describe(self) -> dict[str, Any]:
        """The entry as plain data (what :func:`available` returns)."""
        return {"name": self.name, "aliases": list(self.aliases), "paper": self.paper, "summary": self.summary,
                "defaults": dict(self.defaults), "passes": self.passes, "paths": list(self.paths),
                "rule": self.rule}


def normalise(name: str) -> str:
    """The registry key of a name: lower case, without ``-``, ``_`` or spaces."""
    return "".join(ch for ch in str(name).strip().lower() if ch not in "-_ ")


_VARIANTS: dict[str, Variant] = {}
_KEYS: dict[str, str] = {}  # normalised name or alias -> canonical name


def register(variant: Variant) -> Variant:
    """Add a variant (called once, next to its code). A name or alias taken twice is an error."""
    if "rho" not in variant.defaults:
        raise ValueError(f"variant {variant.name!r} must declare a default rho")
    keys = {normalise(key): key for key in (variant.name, *variant.aliases)}
    for k, key in keys.items():
        if k in _KEYS:
            raise ValueError(f"SAM variant name {key!r} is already registered (by {_KEYS[k]!r})")
    _KEYS.update(dict.fromkeys(keys, variant.name))
    _VARIANTS[variant.name] = variant
    return variant


#: names that mean different methods in the SAM literature, refused with what to write instead
AMBIGUOUS = {"msam": "'msam' is ambiguous: Momentum-SAM (Becker et al. 2024) is 'momentum-sam'; m-sharpness SAM "
                     "(each micro-batch of m its own ascent) is SAM(..., m=M) here and method 'm-sam' in the labs"}


def get(name: str) -> Variant:
    """The variant called ``name`` (or an alias); an unknown name lists the known ones, an ambiguous one
    (:data:`AMBIGUOUS`) says which names to use."""
    key = normalise(name) if isinstance(name, str) else ""
    if key in AMBIGUOUS:
        raise SharplabError(AMBIGUOUS[key])
    if key not in _KEYS:
        raise SharplabError(f"unknown SAM variant {name!r}; choose one of: {', '.join(names())} "
                            "(see sharplab.optim.available() or `sharplab optim list`)")
    return _VARIANTS[_KEYS[key]]


def names() -> list[str]:
    """Canonical names, in registration order."""
    return list(_VARIANTS)


def available() -> list[dict[str, Any]]:
    """Every variant as plain data: name, aliases, paper, summary, defaults, passes, paths, rule.

    Example:
        >>> from sharplab.optim import available
        >>> [v["name"] for v in available()][:3]
        ['sam', 'usam', 'asam']
    """
    return [v.describe() for v in _VARIANTS.values()]


def default_rho(rule_name: str) -> float:
    """The paper's default radius of the variant a rule is named after (0.05 when it names none)."""
    key = normalise(rule_name.split("-x")[0])  # a MultiStep rule is named "<inner>-x<k>"
    return float(_VARIANTS[_KEYS[key]].defaults["rho"]) if key in _KEYS else 0.05


# --- validation shared by every variant's constructor ------------------------------------------------------
def check_number(variant: str, name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float, finite and inside the interval, or a one-line error naming variant and field.

    Example: ``check_number("gsam", "alpha", 0.4, 0, 1)`` checks 0 <= alpha <= 1.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise SharplabError(f"{variant}: {name} must be a finite number in {span}, got {value!r}")
    return float(value)


def check_int(variant: str, name: str, value: Any, lo: int = 1) -> int:
    """``value`` as an int >= ``lo``, or a one-line error naming variant and field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SharplabError(f"{variant}: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_rho(value: Any, where: str = "rho") -> float:
    """A radius: finite and >= 0 (``where`` names it in the error, e.g. ``"rho of param group 1"``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)) \
        and float(value) >= 0
    if not ok:
        raise SharplabError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


def markdown_table() -> str:
    """The registry as the table in ``docs/optim.md`` (a test keeps the two equal)."""
    rows = ["| name | aliases | keywords (paper defaults) | update | passes per step | paths | paper |",
            "|---|---|---|---|---|---|---|"]
    for v in _VARIANTS.values():
        defaults = ", ".join(f"{k}={val!r}" for k, val in v.defaults.items())
        paths = ", ".join(v.paths) + (f" ({v.notes})" if v.notes else "")
        aliases = ", ".join(f"`{a}`" for a in v.aliases) or "-"
        summary = v.summary.replace("||", "‖").replace("|", "\\|")  # no bare "|" inside a table cell
        rows.append(f"| `{v.name}` | {aliases} | {defaults} | {summary} | {v.passes} | {paths} | {v.paper} |")
    return "\n".join(rows)
