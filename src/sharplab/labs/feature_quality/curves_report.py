"""Report view of the probe learning curves (follow-up protocol, docs/feature_quality.md).

**Primary probe size, fixed by a rule that never looks at a SAM arm.** With ``F(n)``, ``C(n)``, ``S(n)``
the mean hard-probe error over seeds of the floor (untrained), the ceiling (hard-only) and SGD at
probe-train size ``n``, the primary size is

    n* = max { n : F(n) - C(n) >= MIN_RANGE  and  S(n) - C(n) >= MIN_HEADROOM },

the largest size at which the instrument separates no feature learning from full hard-feature learning
by at least :data:`MIN_RANGE` and leaves SGD at least :data:`MIN_HEADROOM` of room to be beaten. When no
size qualifies there is no primary size and no verdict. The paired SGD − X table is then read at ``n*``
with the same decision rule as the first study (:func:`.protocol.paired_rows`).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from sharplab.labs.feature_quality import protocol
from sharplab.probe.curves import curve_key
from sharplab.runner.report import pyplot

MIN_RANGE = 0.05  # floor - ceiling, 5 points
MIN_HEADROOM = 0.02  # SGD - ceiling, 2 points
_KEY = re.compile(r"^curve_error_(?P<feature>[a-z]+)_n(?P<size>\d+)$")


def curve_sizes(records: Sequence[dict[str, Any]], feature: str = "hard") -> list[int]:
    """Probe-train sizes with a curve point for ``feature`` in any record, ascending."""
    sizes = {int(m["size"]) for r in records for k in r if (m := _KEY.match(k)) and m["feature"] == feature}
    return sorted(sizes)


def _mean_at(rs: Sequence[dict[str, Any]], feature: str, size: int) -> float:
    vals = [float(r[k]) for r in rs if (k := curve_key(feature, size)) in r and r[k] is not None]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def primary_size(records: Sequence[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]]]:
    """``(n*, rows)``: the pre-registered primary size (None when none qualifies) and, per size, the
    floor, ceiling and SGD means the rule used (in %)."""
    arms = protocol.by_arm(records)
    floor, ceil, sgd = (list(arms.get(a, {}).values()) for a in (protocol.FLOOR, protocol.CEILING, "sgd"))
    chosen, rows = None, []
    for n in curve_sizes(records):
        f, c, s = (_mean_at(rs, "hard", n) for rs in (floor, ceil, sgd))
        ok = (f - c) >= MIN_RANGE - 1e-12 and (s - c) >= MIN_HEADROOM - 1e-12
        rows.append({"probe-train size": n, "floor %": _pct(f), "ceiling %": _pct(c), "SGD %": _pct(s),
                     "floor − ceiling (pts)": _pct(f - c), "SGD − ceiling (pts)": _pct(s - c),
                     "qualifies": "yes" if ok else "no"})
        if ok:
            chosen = n
    return chosen, rows


def _pct(v: float) -> str:
    return f"{100 * v:.2f}" if math.isfinite(v) else "-"


def curve_table(records: Sequence[dict[str, Any]], feature: str) -> list[dict[str, Any]]:
    """Mean ``feature`` probe error (%) per configuration (rows) and probe-train size (columns)."""
    out = []
    for arm, seeds in protocol.by_arm(records).items():
        rs = list(seeds.values())
        out.append({"configuration": arm, "seeds": len(rs),
                    **{f"n={n}": _pct(_mean_at(rs, feature, n)) for n in curve_sizes(records, feature)}})
    return out


def plot_curves(records: Sequence[dict[str, Any]], n_star: int | None, title: str = "") -> Any:
    """Hard (left) and easy (right) probe error against probe-train size, one line per configuration
    (mean over seeds, band = ± sd); floor and ceiling dashed; the primary size as a vertical line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = protocol.by_arm(records)
    for ax, feature in zip(axes, ("hard", "easy"), strict=True):
        sizes = curve_sizes(records, feature)
        ax.set_title(f"{feature} feature", fontsize=10)
        if not sizes:
            ax.text(0.5, 0.5, f"no {feature}-feature curve recorded", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for arm, seeds in arms.items():
            rs = list(seeds.values())
            per_seed = np.array([[float(r.get(curve_key(feature, n), math.nan)) for n in sizes] for r in rs])
            with np.errstate(all="ignore"):
                mean, sd = np.nanmean(per_seed, 0), np.nanstd(per_seed, 0)
            ref = arm in (protocol.FLOOR, protocol.CEILING)
            style = dict(ls="--", color="black" if arm == protocol.FLOOR else "grey", lw=1.5) if ref else {}
            line, = ax.plot(sizes, 100 * mean, marker="o", ms=3, label=arm, **style)
            if not ref:
                ax.fill_between(sizes, 100 * (mean - sd), 100 * (mean + sd), color=line.get_color(), alpha=0.12)
        if n_star is not None and feature == "hard":
            ax.axvline(n_star, color="red", lw=0.8, ls=":", label=f"primary size n*={n_star}")
        ax.set_xscale("log")
        ax.set_xlabel("probe-train examples")
        ax.set_ylabel(f"{feature}-feature probe error (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "probe learning curves (floor = untrained, ceiling = hard-only)", fontsize=10)
    fig.tight_layout()
    return fig


def _curve(rs: Sequence[dict[str, Any]], feature: str, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    per_seed = np.array([[float(r.get(curve_key(feature, n), math.nan)) for n in sizes] for r in rs])
    with np.errstate(all="ignore"):
        return 100 * np.nanmean(per_seed, 0), 100 * np.nanstd(per_seed, 0)


def plot_curves_per_arm(records: Sequence[dict[str, Any]], n_star: int | None, title: str = "",
                        feature: str = "hard") -> Any:
    """One panel per trained configuration other than SGD: its ``feature`` probe learning curve (mean over
    seeds, band = ± sd) beside SGD's, with the floor (untrained) and ceiling (hard-only) dashed and the
    primary size dotted, so each arm is read against the instrument's own range."""
    plt = pyplot()
    arms = protocol.by_arm(records)
    sizes = curve_sizes(records, feature)
    refs = (protocol.FLOOR, protocol.CEILING, "sgd")
    shown = [a for a in arms if a not in refs]
    if not sizes or not shown:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, f"no {feature}-feature curve of a configuration other than the references",
                ha="center", transform=ax.transAxes, fontsize=8)
        ax.set_axis_off()
        return fig
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    # at least 6.4 in wide: with one or two panels the legend and the title would be clipped otherwise
    width = max(6.4, 3.2 * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.9 * rows + 0.6), sharex=True, squeeze=False)
    styles = {protocol.FLOOR: dict(ls="--", color="black"), protocol.CEILING: dict(ls="--", color="grey"),
              "sgd": dict(color="tab:blue")}
    for ax, arm in zip(axes.flat, shown, strict=False):
        for ref in refs:
            if ref in arms:
                mean, _ = _curve(list(arms[ref].values()), feature, sizes)
                ax.plot(sizes, mean, lw=1.2, label=ref, **styles[ref])
        rs = list(arms[arm].values())
        mean, sd = _curve(rs, feature, sizes)
        ax.plot(sizes, mean, color="tab:red", marker="o", ms=3, lw=1.5, label=arm)
        ax.fill_between(sizes, mean - sd, mean + sd, color="tab:red", alpha=0.15)
        if n_star is not None:
            ax.axvline(n_star, color="red", lw=0.8, ls=":")
        ax.set_title(f"{arm} ({len(rs)} seeds)", fontsize=9)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(shown):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{feature} probe error (%)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("probe-train examples", fontsize=8)
    handles = [plt.Line2D([], [], lw=1.2, **styles[r]) for r in refs if r in arms]
    handles.append(plt.Line2D([], [], color="tab:red", marker="o", ms=3))
    labels = [r for r in refs if r in arms] + ["the panel's configuration"]
    if n_star is not None:
        handles.append(plt.Line2D([], [], color="red", lw=0.8, ls=":"))
        labels.append(f"primary size n*={n_star}")
    ncol = len(labels) if width >= 9 else min(3, len(labels))
    legend_rows = math.ceil(len(labels) / ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    heading = textwrap.fill(title or f"{feature}-feature probe learning curve per configuration",
                            width=int(11 * width))  # about 11 characters per inch at 10 pt
    fig.suptitle(heading, fontsize=10)
    top = 0.95 - 0.05 * heading.count("\n") / rows
    fig.tight_layout(rect=(0, 0.045 * legend_rows / rows + 0.02, 1, top))
    return fig


def add_curve_sections(records: list[dict[str, Any]], builder: Any, title: str) -> None:
    """Learning-curve figure, the primary-size rule's table and the paired table at ``n*``."""
    n_star, rule_rows = primary_size(records)
    builder.add_figure(f"{title}: probe learning curves per configuration (floor = untrained, ceiling = "
                       "hard-only, band = ± sd over seeds)",
                       plot_curves(records, n_star, f"{title}: probe error vs probe-train size"))
    builder.add_figure(f"{title}: hard-feature probe learning curve of each configuration against SGD, floor "
                       "(untrained) and ceiling (hard-only) (band = ± sd over seeds)",
                       plot_curves_per_arm(records, n_star, f"{title}: hard-feature probe error vs probe-train "
                                                            "size, per configuration"))
    builder.add_table(f"{title}: primary probe size rule (largest n with floor − ceiling ≥ "
                      f"{100 * MIN_RANGE:g} pts and SGD − ceiling ≥ {100 * MIN_HEADROOM:g} pts; "
                      "hard feature, means over seeds, %)", rule_rows)
    builder.add_table(f"{title}: hard-feature probe error (%) per probe-train size", curve_table(records, "hard"))
    if n_star is None:
        builder.add_text(f"{title}: no probe-train size meets the rule, so the study has no primary size and "
                         "no verdict (the instrument cannot show the effect here).")
        return
    builder.add_table(
        f"{title}: at the primary size n*={n_star}, paired SGD − X of the hard-probe error (positive = X learned "
        "more of the hard feature; 95 % t-interval over seeds) and the manipulation check",
        protocol.paired_rows(records, metric=curve_key("hard", n_star)))


def region_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, mean probe error (%) of each feature read from each half's pooled channels
    (the per-half diagnostic); empty when no record has it."""
    keys = sorted({k for r in records for k in r if k.startswith("region_error_")})
    if not keys:
        return []
    out = []
    for arm, seeds in protocol.by_arm(records).items():
        rs = list(seeds.values())
        row: dict[str, Any] = {"configuration": arm, "seeds": len(rs)}
        for k in keys:
            feat, part = k[len("region_error_"):].split("_", 1)
            vals = [float(r[k]) for r in rs if r.get(k) is not None and math.isfinite(float(r[k]))]
            row[f"{feat} probe on {part.removesuffix('half')} half %"] = _pct(float(np.mean(vals))) if vals else "-"
        out.append(row)
    return out


def add_readout_sections(records: list[dict[str, Any]], builder: Any, title: str) -> None:
    """Whatever extra read-outs the records carry: learning curves and the per-half diagnostic."""
    if curve_sizes(records):
        add_curve_sections(records, builder, title)
    regions = region_table(records)
    if regions:
        builder.add_table(f"{title} (diagnostic, never the primary metric): each feature probed on the pooled "
                          "channels of the conv-map rows that see only one half of the image", regions)
