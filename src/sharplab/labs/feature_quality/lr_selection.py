"""The follow-up protocol's learning-rate pilot, as a report step (docs/feature_quality.md).

Per configuration (``arm``) of one study, among the pilot runs at different learning rates, the lr with
the lowest final **validation loss** is chosen; ties go to the smaller lr; a run that diverged or did not
learn (``near_chance``) is never chosen. Probe and test metrics never enter the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sharplab.labs.feature_quality.protocol import arm_label, is_diverged


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
