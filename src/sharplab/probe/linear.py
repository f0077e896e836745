"""Linear probes: multinomial logistic regression on standardised features, C chosen on validation.

A probe for feature label ``c`` on a representation ``z = phi(x)`` is

    p(c | z) = softmax(W s(z) + b),   s(z) = (z - mu) / sigma   (per coordinate, fitted on probe-train),

fitted by L2-regularised maximum likelihood, ``min_W  ||W||^2 / 2 + C * sum_i -log p(c_i | z_i)``
(scikit-learn ``LogisticRegression``). ``C`` is picked from a grid by the error on a held-out, stratified
part of the probe-train split; the probe is then refitted on the whole probe-train split and its error is
measured on probe-test. This is the linear-probing protocol of Springer et al. (ICLR 2024, Sec. 3) and of
Kirichenko et al. (2022) for feature quality: a feature is "learned" when a linear read-out recovers it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sharplab.errors import Diverged

DEFAULT_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)


@dataclass(frozen=True)
class ProbeFit:
    """Result of one probe.

    Attributes:
        error: misclassification rate on the test features.
        chance: error of always predicting the most frequent test label (the no-information level).
        C: the chosen inverse regularisation strength.
        val_error: validation error of the chosen C (on the held-out part of probe-train).
    """

    error: float
    chance: float
    C: float
    val_error: float


def _to_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _make(C: float, max_iter: int, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, warm_start=warm_start)


def _quiet_fit(clf, z: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(z, y)


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``fraction`` of each class (at least one example) goes to validation."""
    rng = np.random.default_rng(seed)
    fit_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        val_idx.append(idx[:k])
        fit_idx.append(idx[k:])
    return np.concatenate(fit_idx), np.concatenate(val_idx)


def fit_linear_probe(
    z_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    z_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> ProbeFit:
    """Fit a linear probe for labels ``y`` on features ``z``; return its test error.

    Args:
        z_train, y_train: probe-train features ``(N, D)`` and labels ``(N,)``.
        z_test, y_test: probe-test features and labels.
        Cs: grid of inverse L2 strengths; the one with the lowest validation error wins (ties: smaller C,
            i.e. the simpler probe).
        val_fraction: stratified share of probe-train held out to choose ``C``.
        seed: seed of the validation split.
        max_iter: L-BFGS iterations per fit; the grid is fitted as a warm-started path (ascending C).

    Raises:
        Diverged: non-finite features (NaN/inf, e.g. from a diverged model).
        ValueError: fewer than two classes in ``y_train``, empty inputs, or a bad ``val_fraction``/``Cs``.
    """
    zt, yt, zs, ys = (_to_numpy(a) for a in (z_train, y_train, z_test, y_test))
    zt, zs = zt.reshape(len(zt), -1).astype(np.float64), zs.reshape(len(zs), -1).astype(np.float64)
    if len(zt) == 0 or len(zs) == 0:
        raise ValueError("probe needs non-empty train and test features")
    if not (np.isfinite(zt).all() and np.isfinite(zs).all()):  # e.g. a diverged model: no scikit-learn traceback
        raise Diverged(None, what="features (NaN/inf) given to the linear probe: the model diverged; lower lr or rho")
    if len(np.unique(yt)) < 2:
        raise ValueError("probe needs at least two classes in the probe-train labels")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not Cs or any(c <= 0 for c in Cs):
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {list(Cs)}")

    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    best_C, best_val = float(Cs[0]), float("nan")
    with threadpool_limits(limits=1):  # small problems: BLAS threads only spin (badly so on a busy machine)
        if len(Cs) > 1:
            fit_idx, val_idx = _stratified_split(yt, val_fraction, seed)
            scaler = StandardScaler().fit(zt[fit_idx])
            z_fit, z_val = scaler.transform(zt[fit_idx]), scaler.transform(zt[val_idx])
            clf = _make(Cs[0], max_iter, warm_start=True)  # regularisation path, strongest first
            best_val = float("inf")
            for C in sorted(Cs):
                _quiet_fit(clf.set_params(C=C), z_fit, yt[fit_idx])
                val_err = float(np.mean(clf.predict(z_val) != yt[val_idx]))
                if val_err < best_val:
                    best_C, best_val = float(C), val_err
        scaler = StandardScaler().fit(zt)
        clf = _quiet_fit(_make(best_C, max_iter), scaler.transform(zt), yt)
        error = float(np.mean(clf.predict(scaler.transform(zs)) != ys))
    counts = np.bincount(ys.astype(np.int64))
    chance = 1.0 - counts.max() / counts.sum()
    return ProbeFit(error=error, chance=float(chance), C=best_C, val_error=best_val)
