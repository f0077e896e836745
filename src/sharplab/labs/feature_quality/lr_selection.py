"""Validation-based selection, as aggregation steps over finished runs' records (never part of training).

Two rules, each one function that a command and the report both call:

* :func:`select_config` -- the feature-probe grid: per optimizer, the (lr, rho) with the lowest mean
  **validation error** over seeds, never one with a run that did not learn or diverged; ties within one
  binomial standard error go to the **largest** rho (the one-standard-error rule), then the lower
  validation loss, then the smaller lr (docs/feature_quality.md, Selection). :func:`select_per_optimizer`
  applies it to every optimizer of a set of records (``sharplab feature-probe``), :func:`selection_rows`
  shows its choices in the report.
* :func:`lr_choices` -- the follow-up protocol's learning-rate pilot: per configuration (``arm``) of one
  study, among the pilot runs at different learning rates, the lr with the lowest final **validation
  loss**; ties go to the smaller lr; a run that diverged or did not learn (``near_chance``) is never chosen.

Records are plain runner records (config + metrics, :func:`.report.runs_to_records`). Probe and test
metrics never enter a choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sharplab.labs.feature_quality.protocol import arm_label, is_diverged, validation_size


def _mean(values: Iterable[Any]) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else math.nan


def _learned(r: dict[str, Any]) -> bool:
    """A run that finished with a finite validation error and learned (``near_chance`` not set)."""
    v = r.get("val_error")
    return (not is_diverged(r) and r.get("near_chance") != 1.0 and v is not None and math.isfinite(float(v)))


def select_config(records: Sequence[dict[str, Any]], n_val: int | None = None) -> tuple[float, float] | None:
    """(lr, rho) that the pre-registered rule picks among one optimizer's records (all its seeds and grid
    points; ``lr`` and ``rho`` read from each record, ``rho`` 0 when absent).

    A configuration with a run that did not learn (``near_chance``), diverged or has no finite validation
    error is never selected. Among the rest the lowest mean validation error wins; the configurations
    within one binomial standard error of it (``n_val`` validation examples; exact ties without it) tie,
    and the tie goes to the largest rho, then the lower mean validation loss, then the smaller lr.
    Returns None when no configuration learned.
    """
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((float(r.get("lr", 0.0)), float(r.get("rho", 0.0))), []).append(r)
    usable = {k: _mean(r["val_error"] for r in rs) for k, rs in groups.items() if all(_learned(r) for r in rs)}
    if not usable:  # nothing learned: nothing is selected (never fall back to one that did not)
        return None
    best = min(usable.values())
    se = math.sqrt(best * (1 - best) / n_val) if n_val else 0.0
    tied = [k for k, err in usable.items() if err <= best + se + 1e-12]

    def key(k: tuple[float, float]) -> tuple[float, float, float]:
        loss = _mean(r.get("val_loss") for r in groups[k])
        return (-k[1], loss if math.isfinite(loss) else math.inf, k[0])

    return min(tied, key=key)


def optimizer_label(record: dict[str, Any]) -> str:
    """The optimizer a configuration is selected within: ``optimizer``, with `` m=M`` for m-sharpness
    (whole-batch SAM and m-SAM are selected apart)."""
    m = int(record.get("m") or 0)
    return f"{record.get('optimizer')} m={m}" if m else str(record.get("optimizer"))


def select_per_optimizer(records: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float] | None]:
    """:func:`select_config` for each optimizer (:func:`optimizer_label`) of ``records``, in order of first
    appearance, with the validation size the trained runs record (``n_val``); the untrained floor is skipped."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("optimizer") != "untrained":
            groups.setdefault(optimizer_label(r), []).append(r)
    n_val = validation_size(records)
    return {opt: select_config(rs, n_val) for opt, rs in groups.items()}


def selection_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Report table: per (study, data set) with an lr or rho grid (an optimizer with two or more
    configurations), each optimizer's selected (lr, rho), its mean validation and hard-probe error and
    the number of configurations it was chosen from. Records with an ``arm`` are left to the protocol's view."""
    studies: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if not r.get("arm"):
            studies.setdefault((str(r.get("study", "")), str(r.get("dataset", ""))), []).append(r)
    rows = []
    for (study, dataset), rs in studies.items():
        configs: dict[str, set[tuple[float, float]]] = {}
        for r in rs:
            if r.get("optimizer") != "untrained":
                configs.setdefault(optimizer_label(r), set()).add((float(r.get("lr", 0.0)), float(r.get("rho", 0.0))))
        if not any(len(c) > 1 for c in configs.values()):
            continue
        for opt, choice in select_per_optimizer(rs).items():
            at = [r for r in rs if optimizer_label(r) == opt and choice is not None
                  and (float(r.get("lr", 0.0)), float(r.get("rho", 0.0))) == choice]
            rows.append({
                "study": study, "dataset": dataset, "optimizer": opt, "configurations": len(configs[opt]),
                "selected lr": "-" if choice is None else f"{choice[0]:g}",
                "selected rho": "none learned" if choice is None else f"{choice[1]:g}",
                "val err %": f"{100 * _mean(r.get('val_error') for r in at):.2f}" if at else "-",
                "hard probe err %": f"{100 * _mean(r.get('probe_error_hard') for r in at):.2f}" if at else "-",
            })  # fmt: skip
    return rows


def lr_choices(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (study, configuration) that ran at two or more learning rates: every lr's final
    validation loss and the chosen lr. Records are plain runner records (config + metrics)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r.get("study", "")), arm_label(r)), []).append(r)
    rows = []
    for (study, arm), rs in groups.items():
        lrs = sorted({float(r["lr"]) for r in rs if r.get("lr") is not None})
        if len(lrs) < 2:
            continue
        loss: dict[float, float] = {}
        for lr in lrs:
            at = [r for r in rs if float(r.get("lr", math.nan)) == lr]
            ok = [float(r["val_loss"]) for r in at if not is_diverged(r) and r.get("near_chance") != 1.0
                  and r.get("val_loss") is not None and math.isfinite(float(r["val_loss"]))]
            loss[lr] = sum(ok) / len(ok) if ok and len(ok) == len(at) else math.inf
        best = min(lrs, key=lambda lr: (loss[lr], lr))
        row: dict[str, Any] = {"study": study, "configuration": arm}
        row.update({f"val loss at lr={lr:g}": (f"{loss[lr]:.4f}" if math.isfinite(loss[lr]) else "not usable")
                    for lr in lrs})
        row["chosen lr"] = f"{best:g}" if math.isfinite(loss[best]) else "none (no usable run)"
        rows.append(row)
    return rows
