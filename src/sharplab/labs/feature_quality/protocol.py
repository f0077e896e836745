"""The pre-registered protocol's statistics and figures (docs/feature_quality.md, issue 11).

* **Paired differences.** For a configuration X and every seed s shared with SGD,
  ``d_s = err(SGD, s) - err(X, s)``; the 95 % t-interval is ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``
  (sample sd, ddof = 1). "better" only when the interval lies above zero, "worse" below, else
  "no difference detected".
* **Manipulation check.** The flattening ``gini_w - gini_phantom`` at the final checkpoint, mean and
  t-interval over seeds; "on" when the interval is above zero and the mean is at least
  :data:`MIN_FLATTENING`.
* **Near chance.** Runs flagged ``near_chance`` (validation error above half the chance error) are marked
  and never selected; a comparison involving such a run gets no verdict ("not interpreted"), and neither
  does one with fewer than :data:`MIN_SEEDS_FOR_VERDICT` paired seeds.
* **Selection** (secondary view): among configurations of an optimizer without near-chance runs, the
  lowest mean validation error; ties within one binomial standard error go to the **largest** rho (the
  one-standard-error rule).
* **Main figure.** Hard- and easy-feature probe error against in-distribution test error for every run,
  with the untrained (floor) and hard-only (ceiling) means as horizontal lines.
* **Sections.** Runs are compared only within one *section*: the same study, data set and every config
  field other than the configuration's name (``arm``; ``optimizer`` and ``rho`` for studies without arms)
  and the seed (:func:`sections`). Pairing by seed and the floor/ceiling lines never cross sections.
* **Diverged runs** (non-finite loss) have no metrics: they are counted, shown as "diverged", never
  paired and never selected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MIN_FLATTENING = 0.02
MIN_SEEDS_FOR_VERDICT = 3  # fewer paired seeds give an interval, never a verdict
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
    """The configuration's name: the ``arm`` string, else ``optimizer`` (+ rho for the SAM variants).

    An ``lr=`` token in the arm string is the arm's *training* setting (a per-arm lr chosen by a pilot), not
    part of its name: ``"sam rho=0.1 lr=0.05"`` is labelled ``"sam rho=0.1"``, so the references
    (``sgd``, floor, ceiling) keep their names. Two arms that differ only in lr within one section then
    share a label and :func:`by_arm` refuses to pair them.
    """
    arm = " ".join(t for t in str(record.get("arm") or "").split() if not t.startswith("lr="))
    if arm:
        return arm
    opt = str(record.get("optimizer", "?"))
    return opt if opt in ("sgd", FLOOR, CEILING) else f"{opt} rho={float(record.get('rho', 0)):g}"


#: config fields that name a configuration within a section (studies without ``arm``)
LABEL_FIELDS = ("optimizer", "rho")


def arm_fields(arm: str) -> set[str]:
    """The config fields an arm string sets: ``optimizer`` (and its ``optimizer_options``) and every ``key=``
    (none for no arm)."""
    if not arm.strip():
        return set()
    return {"optimizer", "optimizer_options", *(t.partition("=")[0] for t in arm.split()[1:])}


def section_key(study: str, config: Mapping[str, Any], arm_set: Iterable[str] = ()
                ) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """``(study, dataset, other config)``: runs that may be paired by seed share this key.

    "Other config" is every field except ``seed``, ``dataset`` and what names the configuration: ``arm`` and
    ``arm_set``, the fields the study's arms set (:func:`arm_fields`; :func:`sections` collects them per
    study, since an arm's own fields differ from its siblings'), or, for a run without an arm,
    ``optimizer`` and ``rho`` (as :func:`arm_label` does).
    """
    named = bool(str(config.get("arm") or "").strip())
    skip = {"seed", "dataset", "arm", *(arm_set if named else LABEL_FIELDS)}
    rest = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in config.items() if k not in skip))
    return str(study or ""), str(config.get("dataset", "?")), rest


def sections(runs: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """Runner records split by :func:`section_key`, in order of first appearance, each with a heading
    naming its study and data set (plus the config fields that tell sections of one study apart)."""
    arm_set: dict[str, set[str]] = {}
    for r in runs:
        arm_set.setdefault(str(getattr(r, "study", "") or ""), set()).update(
            arm_fields(str(r.config.get("arm") or "")))
    groups: dict[tuple, list[Any]] = {}
    for r in runs:
        study = getattr(r, "study", "")
        groups.setdefault(section_key(study, r.config, arm_set[str(study or "")]), []).append(r)
    out = []
    for key, rs in groups.items():
        study, dataset, rest = key
        siblings = [k[2] for k in groups if k[:2] == key[:2]]
        differ = [f"{k}={v}" for k, v in rest if any(dict(o).get(k) != v for o in siblings)]
        title = f"study {study or '(unnamed)'}, dataset {dataset}" + (f" ({', '.join(differ)})" if differ else "")
        out.append((title, rs))
    return out


def is_diverged(record: Mapping[str, Any]) -> bool:
    """A run that stopped on a non-finite loss or features (runner status, or the CLI's row flag)."""
    return record.get("status") == "diverged" or record.get("diverged") is True


def by_arm(records: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: record}}`` in order of first appearance.

    Raises:
        ValueError: two records of one configuration share a seed: they come from different sections
            (studies, data sets, other config) and must be split with :func:`sections` first.
    """
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        seeds = out.setdefault(arm_label(r), {})
        seed = int(r["seed"])
        if seed in seeds:
            raise ValueError(f"two {arm_label(r)!r} records with seed {seed} (studies "
                             f"{seeds[seed].get('study', '?')!r}, {r.get('study', '?')!r}); pair within one "
                             "section (protocol.sections), never across studies or data sets")
        seeds[seed] = r
    return out


def _get(r: dict[str, Any], key: str) -> float:
    v = r.get(key)
    return float(v) if v is not None else math.nan


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (no warning) when there are none."""
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n > 0 and math.isfinite(p) else math.nan


def _mean_pct(rs: Sequence[dict[str, Any]], key: str) -> str:
    """Mean of ``key`` over the runs that have it, in %; "diverged" when every run diverged."""
    vals = [v for v in (_get(r, key) for r in rs) if math.isfinite(v)]
    if vals:
        return f"{100 * float(np.mean(vals)):.2f}"
    return "diverged" if rs and all(is_diverged(r) for r in rs) else "-"


def paired_rows(records: Sequence[dict[str, Any]], reference: str = "sgd", metric: str = "probe_error_hard",
                probe_test_n: int | None = None) -> list[dict[str, Any]]:
    """One row per configuration: mean errors, the paired difference ``reference - X`` of ``metric`` with
    its 95 % CI and verdict, the manipulation check and the near-chance count. Errors in %.

    ``records`` must come from one section (:func:`sections`). Diverged runs have no metrics: their
    seeds drop out of the pairing, a configuration whose runs all diverged reads "diverged", and a
    ``diverged`` column counts them (present when any run diverged).
    """
    arms = by_arm(records)
    ref = arms.get(reference, {})
    any_diverged = any(is_diverged(r) for r in records)
    rows = []
    for arm, seeds in arms.items():
        rs = list(seeds.values())
        div = sum(is_diverged(r) for r in rs)
        row: dict[str, Any] = {
            "configuration": arm, "seeds": len(rs),
            "hard probe err %": _mean_pct(rs, metric),
            "easy probe err %": _mean_pct(rs, "probe_error_easy"),
            "test err %": _mean_pct(rs, "test_error"),
        }
        if probe_test_n:
            hard = [v for v in (_get(r, metric) for r in rs) if math.isfinite(v)]
            se = binomial_se(float(np.mean(hard)), probe_test_n) if hard else math.nan
            row["probe-test s.e. (pts)"] = f"{100 * se:.2f}" if math.isfinite(se) else "-"
        if arm != reference and ref:
            shared = sorted(set(seeds) & set(ref))
            m, lo, hi, n = paired_ci([_get(ref[s], metric) - _get(seeds[s], metric) for s in shared])
            lost = any(is_diverged(seeds[s]) or is_diverged(ref[s]) for s in shared)
            row["SGD − X hard (pts)"] = f"{100 * m:+.2f}" if math.isfinite(m) else ("diverged" if lost else "-")
            row["95 % CI"] = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if math.isfinite(lo) else "-"
            ref_line = arm in (FLOOR, CEILING)
            unlearned = any(_get(r, "near_chance") == 1.0 for r in [*rs, *ref.values()])
            if ref_line:
                row["verdict"] = "(reference line)"
            elif unlearned:  # pre-registered: a configuration with a run that did not learn is not interpreted
                row["verdict"] = "not interpreted (a run did not learn)"
            elif n < MIN_SEEDS_FOR_VERDICT:
                row["verdict"] = f"no verdict ({n} paired seeds; the protocol needs {MIN_SEEDS_FOR_VERDICT}+)"
            else:
                row["verdict"] = verdict(lo, hi, "X better", "X worse")
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
        if any_diverged:
            row["diverged"] = f"{div} run(s)" if div else ""
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
    ok = [r for r in rows if not r.get("near_chance") and math.isfinite(r.get("val_error", math.nan))]
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
            rs = [r for r in seeds.values() if not is_diverged(r)]
            if not rs:
                continue
            ys = [100 * _get(r, key) for r in rs]
            if arm in (FLOOR, CEILING):
                ax.axhline(_nanmean(ys), color="k" if arm == FLOOR else "tab:green",
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
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (arm, per_epoch) in enumerate(series.items()):
        ep = sorted(per_epoch)
        gw = [np.mean([a for a, _ in per_epoch[e]]) for e in ep]
        gp = [np.mean([b for _, b in per_epoch[e]]) for e in ep]
        ax.plot(ep, gw, "-", color=f"C{i % 10}", label=f"{arm}: w")
        ax.plot(ep, gp, "--", color=f"C{i % 10}", label=f"{arm}: phantom")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gini of importance weights")
    ax.legend(fontsize=6, ncol=2)
    import textwrap

    text = title or "manipulation check: Gini at w (solid) and at the step's phantom (dashed)"
    ax.set_title("\n".join(textwrap.wrap(text, 80)), fontsize=9)
    fig.tight_layout()
    return fig


def check_table(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Manipulation check per configuration and epoch: the flattening ``gini_w - gini_phantom``, mean over
    seeds with its 95 % t-interval, marked "on" where the pre-registered rule holds at that epoch (interval
    above zero, mean at least :data:`MIN_FLATTENING`). Configurations whose step is taken at w are left out."""
    per: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        rec = {**getattr(r, "config", {}), "seed": getattr(r, "seed", 0)}
        arm = arm_label(rec)
        if arm.split()[0] in ("sgd", FLOOR, CEILING):
            continue
        for step, m in (getattr(r, "history", None) or {}).items():
            if "gini_w" in m and "gini_phantom" in m:
                per.setdefault(arm, {}).setdefault(int(step), []).append(m["gini_w"] - m["gini_phantom"])
    rows = []
    for arm, epochs in per.items():
        row: dict[str, Any] = {"configuration": arm}
        for e in sorted(epochs):
            m, lo, hi, n = paired_ci(epochs[e])
            on = math.isfinite(lo) and lo > 0 and m >= MIN_FLATTENING
            row[f"epoch {e}"] = (f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else f"{m:+.3f}") + (
                " on" if on else "")
        rows.append(row)
    return rows


def validation_size(records: Sequence[dict[str, Any]]) -> int | None:
    """The validation size the trained runs share (the untrained floor and runs made before ``n_val`` was
    recorded carry none and are skipped); ``None`` when no run records one or two runs differ."""
    sizes = {_get(r, "n_val") for r in records if arm_label(r) != FLOOR and r.get("n_val") is not None}
    return int(sizes.pop()) if len(sizes) == 1 and math.isfinite(next(iter(sizes))) else None


def selected_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Secondary view: per optimizer (first word of the configuration, with its ``m=`` token when it has one:
    whole-batch SAM and m-sharpness are selected apart, as the follow-up protocol's primary comparison is
    among whole-batch arms), the configuration that :func:`select_one_se` picks on mean validation error
    (the probe splits never enter); a configuration with a diverged run counts as one that did not learn.
    The standard error uses the runs' ``n_val`` (validation examples) when every record has the same one;
    records without it (runs made before it was recorded) get exact ties."""
    arms = by_arm(records)
    per_opt: dict[str, list[dict[str, Any]]] = {}
    for arm, seeds in arms.items():
        opt = " ".join([arm.split()[0], *(t for t in arm.split()[1:] if t.startswith("m="))])
        if opt in (FLOOR, CEILING):
            continue
        rs = list(seeds.values())
        rho = next((float(t.split("=")[1]) for t in arm.split()[1:] if t.startswith("rho=")),
                   float(rs[0].get("rho", 0.0)) if opt != "sgd" else 0.0)
        per_opt.setdefault(opt, []).append({
            "configuration": arm, "rho": rho,
            "val_error": _nanmean([_get(r, "val_error") for r in rs]),
            "near_chance": any(_get(r, "near_chance") == 1.0 or is_diverged(r) for r in rs),
            "hard": _nanmean([_get(r, "probe_error_hard") for r in rs]),
        })
    n_val = validation_size(records)
    out = []
    for opt, rows in per_opt.items():
        best = select_one_se(rows, n_val)
        if best is not None:
            out.append({"optimizer": opt, "selected": best["configuration"],
                        "val err %": f"{100 * best['val_error']:.2f}", "hard probe err %": f"{100 * best['hard']:.2f}",
                        "candidates": len(rows)})
    return out
