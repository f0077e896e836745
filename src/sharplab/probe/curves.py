"""Probe learning curves: probe error against the number of probe-train examples.

A linear probe on a wide representation (e.g. the 3,584-d flattened conv map of the feature-quality
study's network) reaches the same error on an untrained and a trained network once it sees enough
examples: with 10,000 probe examples floor and ceiling meet and no optimizer can differ. Feature
*quality* is how few examples a read-out needs, so the probe is fitted on class-balanced subsamples of
probe-train of several sizes ``n``, ``R`` subsamples each, and scored on the whole probe-test split:

    err(n) = (1/R) sum_r err( probe fitted on S_{n,r} ),   S_{n,r} ⊂ probe-train,  |S_{n,r}| = n,

each subsample fixed by ``(seed, n, r)`` and the labels alone, so two models probed with the same seed
see the same subsamples (paired comparisons across optimizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sharplab.probe.linear import DEFAULT_CS, ProbeFit, fit_linear_probe

MAX_SIZES = 32  # at most this many curve points: each is a probe fit per repeat


@dataclass(frozen=True)
class CurvePoint:
    """The probe at one probe-train size, averaged over its repeats."""

    size: int
    errors: tuple[float, ...]  # one per repeat

    @property
    def error(self) -> float:
        return float(np.mean(self.errors))


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"32,100,1000"`` -> ``(32, 100, 1000)``: increasing, positive, at most :data:`MAX_SIZES` sizes."""
    try:
        sizes = tuple(int(float(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"probe sizes {text!r} must be a comma list of integers, e.g. '32,100,1000'") from None
    if any(s < 2 for s in sizes) or list(sizes) != sorted(set(sizes)) or len(sizes) > MAX_SIZES:
        raise ValueError(f"probe sizes {text!r} must be increasing integers >= 2, at most {MAX_SIZES} of them")
    return sizes


def subsample_indices(y: np.ndarray | torch.Tensor, size: int, repeat: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced random subsample of ``size`` labels ``y`` (sorted).

    Every class present gets ``size // K`` examples and the first ``size % K`` classes (in a random order)
    one more; a class with fewer examples than its share gives all it has. The draw depends only on
    ``(seed, size, repeat)`` and ``y``.
    """
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if size < 2:
        raise ValueError(f"subsample size must be >= 2, got {size}")
    rng = np.random.default_rng([int(seed), int(size), int(repeat)])
    classes = np.unique(y)
    extra = set(rng.permutation(classes)[: size % len(classes)].tolist())
    picks = []
    for c in classes:
        members = np.flatnonzero(y == c)
        k = min(len(members), size // len(classes) + (1 if c in extra else 0))
        picks.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picks))


def learning_curve(
    z_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    z_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    sizes: Sequence[int],
    *,
    repeats: int = 3,
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    full_error: float | None = None,
) -> list[CurvePoint]:
    """Probe error on ``z_test`` after fitting on subsamples of ``z_train`` of each size.

    Sizes at or above ``len(y_train)`` use the whole probe-train split once (every repeat would be the
    same fit; ``full_error``, when given, is that fit's known error — the caller's probe on the whole
    split with the same ``seed`` and ``Cs`` — and is used instead of refitting). Each fit is
    :func:`~sharplab.probe.linear.fit_linear_probe` (C chosen on a stratified part of the subsample); a
    subsample too small to hold out a validation part uses the middle of ``Cs``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    y_np = y_train.cpu().numpy() if isinstance(y_train, torch.Tensor) else np.asarray(y_train)
    z_np = z_train.cpu().numpy() if isinstance(z_train, torch.Tensor) else np.asarray(z_train)
    points = []
    for size in sizes:
        if size >= len(y_np):
            if full_error is None:
                full_error = fit_linear_probe(z_np, y_np, z_test, y_test, Cs=Cs, seed=seed).error
            points.append(CurvePoint(int(len(y_np)), (float(full_error),)))
            break  # every larger size is the same point
        errors = []
        for r in range(repeats):
            idx = subsample_indices(y_np, size, r, seed)
            errors.append(_fit_small(z_np[idx], y_np[idx], z_test, y_test, Cs, seed).error)
        points.append(CurvePoint(int(size), tuple(errors)))
    return points


def _fit_small(z, y, z_test, y_test, Cs: Sequence[float], seed: int) -> ProbeFit:
    """Probe fit on a subsample; C from the grid unless every class is too small to hold one out."""
    counts = np.bincount(y.astype(np.int64))
    if len(Cs) > 1 and counts[counts > 0].min() < 5:
        Cs = (sorted(Cs)[len(Cs) // 2],)
    return fit_linear_probe(z, y, z_test, y_test, Cs=Cs, seed=seed)


def curve_metrics(points: Sequence[CurvePoint], feature: str) -> dict[str, float]:
    """Flat metrics ``curve_error_<feature>_n<size>`` (mean over repeats) for the runner's store."""
    return {curve_key(feature, p.size): p.error for p in points}


def curve_key(feature: str, size: int) -> str:
    """The metric name of one curve point: ``curve_error_hard_n100``."""
    return f"curve_error_{feature}_n{int(size)}"
