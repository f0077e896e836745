"""The pre-registered protocol's statistics and figures (docs/feature_quality.md, issue 11).

* **Paired differences.** For a configuration X and every seed s shared with SGD,
  ``d_s = err(SGD, s) - err(X, s)``; the 95 % t-interval is ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``
  (sample sd, ddof = 1). "better" only when the interval lies above zero, "worse" below, else
  "no difference detected".
* **Manipulation check.** The flattening ``gini_w - gini_phantom`` at the final checkpoint, mean and
  t-interval over seeds; "on" when the interval is above zero and the mean is at least
  :data:`MIN_FLATTENING`.
* **Near chance.** Runs flagged ``near_chance`` (validation error above half the chance error) are marked
  and never selected.
* **Selection** (secondary view): among configurations of an optimizer without near-chance runs, the
  lowest mean validation error; ties within one binomial standard error go to the **largest** rho (the
  one-standard-error rule).
* **Main figure.** Hard- and easy-feature probe error against in-distribution test error for every run,
  with the untrained (floor) and hard-only (ceiling) means as horizontal lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_FLATTENING = 0.02
FLOOR, CEILING = "untrained", "hard-only"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def t_quantile(q: float, df: int) -> float:
    """Quantile of Student's t distribution (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the t-interval of ``diffs``; NaN bounds with fewer than 2 values."""
    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = t_quantile(0.5 + level / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def verdict(low: float, high: float, better: str = "better", worse: str = "worse") -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "too few seeds"
    if low > 0:
        return better
    if high < 0:
        return worse
    return "no difference detected"


def arm_label(record: dict[str, Any]) -> str:
    """The configuration's name: the ``arm`` string, else ``optimizer`` (+ rho for the SAM variants)."""
    arm = str(record.get("arm") or "").strip()
    if arm:
        return arm
    opt = str(record.get("optimizer", "?"))
    return opt if opt in ("sgd", FLOOR, CEILING) else f"{opt} rho={float(record.get('rho', 0)):g}"


def by_arm(records: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: record}}`` in order of first appearance."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        out.setdefault(arm_label(r), {})[int(r["seed"])] = r
    return out


def _get(r: dict[str, Any], key: str) -> float:
    v = r.get(key)
    return float(v) if v is not None else math.nan


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n > 0 and math.isfinite(p) else math.nan


def paired_rows(records: Sequence[dict[str, Any]], reference: str = "sgd", metric: str = "probe_error_hard",
                probe_test_n: int | None = None) -> list[dict[str, Any]]:
    """One row per configuration: mean errors, the paired difference ``reference - X`` of ``metric`` with
    its 95 % CI and verdict, the manipulation check and the near-chance count. Errors in %."""
    arms = by_arm(records)
    ref = arms.get(reference, {})
    rows = []
    for arm, seeds in arms.items():
        rs = list(seeds.values())
        hard = float(np.nanmean([_get(r, metric) for r in rs]))
        row: dict[str, Any] = {
            "configuration": arm, "seeds": len(rs),
            "hard probe err %": f"{100 * hard:.2f}",
            "easy probe err %": f"{100 * np.nanmean([_get(r, 'probe_error_easy') for r in rs]):.2f}",
            "test err %": f"{100 * np.nanmean([_get(r, 'test_error') for r in rs]):.2f}",
        }
        if probe_test_n:
            row["probe-test s.e. (pts)"] = f"{100 * binomial_se(hard, probe_test_n):.2f}"
        if arm != reference and ref:
            shared = sorted(set(seeds) & set(ref))
            m, lo, hi, n = paired_ci([_get(ref[s], metric) - _get(seeds[s], metric) for s in shared])
            row["SGD − X hard (pts)"] = f"{100 * m:+.2f}" if math.isfinite(m) else "-"
            row["95 % CI"] = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if math.isfinite(lo) else "-"
            ref_line = arm in (FLOOR, CEILING)
            row["verdict"] = "(reference line)" if ref_line else verdict(lo, hi, "X better", "X worse")
        else:
            row["SGD − X hard (pts)"] = row["95 % CI"] = row["verdict"] = ""
        flat = [_get(r, "gini_w") - _get(r, "gini_phantom") for r in rs]
        if any(math.isfinite(f) for f in flat):
            fm, flo, fhi, _ = paired_ci(flat)
            row["gini_w"] = f"{np.nanmean([_get(r, 'gini_w') for r in rs]):.3f}"
            row["gini_phantom"] = f"{np.nanmean([_get(r, 'gini_phantom') for r in rs]):.3f}"
            on = math.isfinite(flo) and flo > 0 and fm >= MIN_FLATTENING
            plain = arm.split()[0] in ("sgd", CEILING)
            row["mechanism"] = "(steps at w)" if plain else ("on" if on else "off")
        chance = 0 if arm == FLOOR else sum(1 for r in rs if _get(r, "near_chance") == 1.0)
        row["did not learn"] = f"{chance} run(s)" if chance else ""
        rows.append(row)
    return rows


def contrast(records: Sequence[dict[str, Any]], a: str, b: str, metric: str = "probe_error_hard"
             ) -> tuple[float, float, float, int]:
    """Paired t-interval of ``err(a) - err(b)`` over the seeds both configurations have."""
    arms = by_arm(records)
    sa, sb = arms.get(a, {}), arms.get(b, {})
    shared = sorted(set(sa) & set(sb))
    return paired_ci([_get(sa[s], metric) - _get(sb[s], metric) for s in shared])


def select_one_se(rows: Sequence[dict[str, Any]], n_val: int | None = None) -> dict[str, Any] | None:
    """The one-standard-error choice among configuration summaries ``{rho, val_error, near_chance}``.

    Configurations with a near-chance run are excluded; of the rest, every one whose mean validation
    error is within one binomial s.e. of the best (``n_val`` validation examples; exact ties without it)
    is a candidate, and the largest rho among them wins.
    """
    ok = [r for r in rows if not r.get("near_chance")]
    if not ok:
        return None
    best = min(r["val_error"] for r in ok)
    se = binomial_se(best, n_val) if n_val else 0.0
    cands = [r for r in ok if r["val_error"] <= best + (se if math.isfinite(se) else 0.0) + 1e-12]
    return max(cands, key=lambda r: (r["rho"], -r["val_error"]))


def plot_tradeoff(records: Sequence[dict[str, Any]], title: str = "") -> Any:
    """Hard- (left) and easy-feature (right) probe error vs in-distribution test error, every run;
    floor (untrained) and ceiling (hard-only) as horizontal lines."""
    plt = _pyplot()
    arms = by_arm(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, feat in zip(axes, ("hard", "easy")):
        key = f"probe_error_{feat}"
        for i, (arm, seeds) in enumerate(arms.items()):
            rs = list(seeds.values())
            ys = [100 * _get(r, key) for r in rs]
            if arm in (FLOOR, CEILING):
                ax.axhline(float(np.nanmean(ys)), color="k" if arm == FLOOR else "tab:green",
                           ls="--" if arm == FLOOR else ":", lw=1.2,
                           label=f"{'floor' if arm == FLOOR else 'ceiling'}: {arm}")
                continue
            xs = [100 * _get(r, "test_error") for r in rs]
            flagged = [_get(r, "near_chance") == 1.0 for r in rs]
            ax.scatter([x for x, f in zip(xs, flagged) if not f], [y for y, f in zip(ys, flagged) if not f],
                       color=f"C{i % 10}", marker="o" if arm == "sgd" else "^", s=28, label=arm)
            if any(flagged):
                ax.scatter([x for x, f in zip(xs, flagged) if f], [y for y, f in zip(ys, flagged) if f],
                           color=f"C{i % 10}", marker="x", s=40)
        ax.set_xlabel("in-distribution test error (%)")
        ax.set_ylabel(f"{feat}-feature probe error (%)")
        ax.set_xscale("symlog", linthresh=1.0)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title or "probe error vs test error, every configuration and seed (x = did not learn)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_check(runs: Sequence[Any], title: str = "") -> Any | None:
    """Manipulation check along training: mean ``gini_w`` (solid) and ``gini_phantom`` (dashed) per arm."""
    series: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for r in runs:
        rec = {**getattr(r, "config", {}), "seed": getattr(r, "seed", 0)}
        for step, m in (getattr(r, "history", None) or {}).items():
            if "gini_w" in m and "gini_phantom" in m:
                series.setdefault(arm_label(rec), {}).setdefault(int(step), []).append(
                    (m["gini_w"], m["gini_phantom"]))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (arm, per_epoch) in enumerate(series.items()):
        ep = sorted(per_epoch)
        gw = [np.mean([a for a, _ in per_epoch[e]]) for e in ep]
        gp = [np.mean([b for _, b in per_epoch[e]]) for e in ep]
        ax.plot(ep, gw, "-", color=f"C{i % 10}", label=f"{arm}: w")
        ax.plot(ep, gp, "--", color=f"C{i % 10}", label=f"{arm}: phantom")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gini of importance weights")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title or "manipulation check: Gini at w (solid) and at the step's phantom (dashed)", fontsize=9)
    fig.tight_layout()
    return fig


def selected_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Secondary view: per optimizer (first word of the configuration), the configuration that
    :func:`select_one_se` picks on mean validation error (the probe splits never enter)."""
    arms = by_arm(records)
    per_opt: dict[str, list[dict[str, Any]]] = {}
    for arm, seeds in arms.items():
        opt = arm.split()[0]
        if opt in (FLOOR, CEILING):
            continue
        rs = list(seeds.values())
        rho = next((float(t.split("=")[1]) for t in arm.split()[1:] if t.startswith("rho=")),
                   float(rs[0].get("rho", 0.0)) if opt != "sgd" else 0.0)
        per_opt.setdefault(opt, []).append({
            "configuration": arm, "rho": rho,
            "val_error": float(np.nanmean([_get(r, "val_error") for r in rs])),
            "near_chance": any(_get(r, "near_chance") == 1.0 for r in rs),
            "hard": float(np.nanmean([_get(r, "probe_error_hard") for r in rs])),
        })
    out = []
    for opt, rows in per_opt.items():
        best = select_one_se(rows)
        if best is not None:
            out.append({"optimizer": opt, "selected": best["configuration"],
                        "val err %": f"{100 * best['val_error']:.2f}", "hard probe err %": f"{100 * best['hard']:.2f}",
                        "candidates": len(rows)})
    return out
