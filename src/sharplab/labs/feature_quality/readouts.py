"""Read-outs beyond the single probe: probe learning curves and the per-half diagnostic.

* **Learning curves** (:func:`sharplab.probe.curves.learning_curve`): hard- and easy-probe error of the
  flattened penultimate features against the probe-train size, on class-balanced subsamples of the hard
  (resp. easy) label, scored on all of probe-test. A wide representation probes at the ceiling with
  enough examples whether it was trained or not; the curve shows where floor and ceiling are apart.
* **Per-half diagnostic** (dominoes only, :mod:`sharplab.probe.regions`): each feature probed on the
  channel means of the conv-map rows that see only the easy part (digit) or only the hard part of the
  image. It tells a worse hard read-out caused by digit channels mixed into a global pool from a worse
  representation of the hard part itself. It is a diagnostic, never the study's primary metric.

Metric names: ``curve_error_<feature>_n<size>`` and ``region_error_<feature>_<part>half``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sharplab.probe import DEFAULT_CS, extract_features, probe_representation
from sharplab.probe.curves import curve_metrics, learning_curve
from sharplab.probe.regions import feature_map, region_features

FEATURES = ("easy", "hard")


def curve_readout(model: nn.Module, data: Any, sizes: Sequence[int], *, repeats: int, seed: int,
                  Cs: Sequence[float] | None = None, probed: dict[str, float] | None = None) -> dict[str, float]:
    """``curve_error_<feature>_n<size>`` for both features (the same subsamples for every model).

    ``probed``: the run's probe metrics (``probe_error_<feature>``, fitted on the whole probe-train split
    with the same seed and C grid), reused as the curve's full-size point instead of a second fit.
    """
    ptr, pte = data.splits["probe_train"], data.splits["probe_test"]
    z_tr, z_te = extract_features(model, ptr.x), extract_features(model, pte.x)
    out: dict[str, float] = {}
    for feat in _varying(ptr):
        full = (probed or {}).get(f"probe_error_{feat}")
        points = learning_curve(z_tr, getattr(ptr, feat), z_te, getattr(pte, feat), sizes, repeats=repeats,
                                seed=seed, Cs=Cs or DEFAULT_CS, full_error=full)
        out.update(curve_metrics(points, feat))
    return out


def _varying(split: Any) -> list[str]:
    """The features of :data:`FEATURES` whose labels take more than one value on ``split``."""
    return [f for f in FEATURES if len(torch.unique(getattr(split, f))) > 1]


def half_parts(data: Any) -> dict[str, tuple[int, int]] | None:
    """``{"easy": rows, "hard": rows}`` of a dominoes image (``meta["easy_rows"]``), else None."""
    rows = data.meta.get("easy_rows")
    if rows is None:
        return None
    lo, hi = (int(v) for v in rows)
    height = int(data.input_shape[-2])
    if lo == 0:
        return {"easy": (0, hi), "hard": (hi, height)}
    return {"easy": (lo, hi), "hard": (0, lo)}


def region_readout(model: nn.Module, data: Any, *, seed: int, Cs: Sequence[float] | None = None
                   ) -> dict[str, float]:
    """``region_error_<feature>_<part>half``: each feature probed on each half's pooled channels.

    Returns an empty dict for data without two stacked halves or a model without a conv body.
    """
    parts = half_parts(data)
    if parts is None or not isinstance(getattr(model, "body", None), nn.Sequential):
        return {}
    body = feature_map(model)
    ptr, pte = data.splits["probe_train"], data.splits["probe_test"]
    z_tr, z_te = region_features(body, ptr.x, parts), region_features(body, pte.x, parts)
    out: dict[str, float] = {}
    for part in parts:
        feats = _varying(ptr)
        fits = probe_representation(z_tr[part], {f: getattr(ptr, f) for f in feats}, z_te[part],
                                    {f: getattr(pte, f) for f in feats}, Cs=Cs or DEFAULT_CS, seed=seed)
        out.update({f"region_error_{feat}_{part}half": fit.error for feat, fit in fits.items()})
    return out
