"""Probe a trained model on a two-feature data set: per-feature probe errors, test and worst-group error.

Protocol (Springer et al., ICLR 2024): the penultimate features ``z = model.features(x)`` of the
decorrelated ``probe_train`` split train one linear probe per feature label (``easy``, ``hard``); each is
scored on the decorrelated ``probe_test`` split. Because the two feature labels are independent and
balanced there, a probe cannot read one feature through the other: a representation that has lost a
feature gives chance error on it. The model's own error is measured on the in-distribution ``test`` split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sharplab.errors import SharplabError
from sharplab.probe.extract import extract_features, predict
from sharplab.probe.linear import DEFAULT_CS, ProbeFit, fit_linear_probe

FEATURES: tuple[str, ...] = ("easy", "hard")


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Misclassification rate of ``argmax model(x)`` against ``y`` (eval mode)."""
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x, batch_size=batch_size) != y.cpu()).double().mean())


def worst_group_error(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> float | None:
    """Largest error over the groups ``(y, group)`` present; None when the groups are just the classes.

    On Waterbirds/CelebA-style test splits the groups (label, second feature) cut across the classes and
    this is the usual worst-group error; where the second feature always agrees with the label (dominoes
    test split) there are no groups beyond the classes and None is returned.
    """
    pairs = torch.stack([y.cpu(), group.cpu()], 1)
    keys = torch.unique(pairs, dim=0)
    if len(keys) <= len(torch.unique(y)):
        return None
    errs = []
    for key in keys:
        mask = (pairs == key).all(1)
        errs.append(float((pred[mask] != y.cpu()[mask]).double().mean()))
    return max(errs)


@dataclass(frozen=True)
class ProbeReport:
    """Probe errors per feature, the model's own test error and (where groups exist) worst-group error."""

    probes: dict[str, ProbeFit]
    test_error: float
    worst_group_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics: ``probe_error_<feature>``, ``probe_chance_<feature>``, ``probe_C_<feature>``,
        ``test_error`` and ``worst_group_error`` (only where groups exist)."""
        out: dict[str, float] = {}
        for name, fit in self.probes.items():
            out[f"probe_error_{name}"] = fit.error
            out[f"probe_chance_{name}"] = fit.chance
            out[f"probe_C_{name}"] = fit.C
        out["test_error"] = self.test_error
        if self.worst_group_error is not None:
            out["worst_group_error"] = self.worst_group_error
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"probes": {k: asdict(v) for k, v in self.probes.items()}, **self.metrics()}


def probe_representation(
    z_train: torch.Tensor,
    labels_train: dict[str, torch.Tensor],
    z_test: torch.Tensor,
    labels_test: dict[str, torch.Tensor],
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
) -> dict[str, ProbeFit]:
    """One linear probe per feature label on fixed representations (see :func:`fit_linear_probe`)."""
    return {
        name: fit_linear_probe(z_train, labels_train[name], z_test, labels_test[name], Cs=Cs, seed=seed)
        for name in labels_train
    }


def _feature_names(split: Any) -> list[str]:
    """Feature labels of ``split`` that vary: a label with one value (DomainBed's probe splits come from
    the single held-out domain, so the domain label is constant there) has nothing to probe."""
    return [name for name in (*FEATURES, "medium")
            if getattr(split, name, None) is not None and len(torch.unique(getattr(split, name))) > 1]


def probe_model(
    model: nn.Module,
    data: Any,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    batch_size: int = 512,
    features: Sequence[str] | None = None,
) -> ProbeReport:
    """Probe ``model`` on a :class:`~sharplab.data.TwoFeatureData`.

    Args:
        model: has ``features(x)``; probed as it is (eval mode during extraction).
        data: ``.splits`` with ``probe_train``, ``probe_test`` and ``test`` (``x, y, easy, hard``).
        Cs: grid of probe regularisation strengths (chosen on a validation part of probe_train).
        seed: seed of that validation part.
        features: feature labels to probe (default: ``easy``, ``hard`` and ``medium`` where present and
            not constant on probe_train).
    """
    splits = data.splits
    for name in ("probe_train", "probe_test", "test"):
        if name not in splits:
            dname = getattr(data, "name", "?")
            raise SharplabError(f"data set {dname!r} has no {name!r} split; probing needs it")
    ptr, pte, test = splits["probe_train"], splits["probe_test"], splits["test"]
    names = list(features) if features is not None else _feature_names(ptr)
    z_tr = extract_features(model, ptr.x, batch_size=batch_size)
    z_te = extract_features(model, pte.x, batch_size=batch_size)
    probes = probe_representation(
        z_tr, {n: getattr(ptr, n) for n in names}, z_te, {n: getattr(pte, n) for n in names}, Cs=Cs, seed=seed
    )
    pred = predict(model, test.x, batch_size=batch_size)
    test_error = float((pred != test.y.cpu()).double().mean()) if len(test.y) else float("nan")
    wge = worst_group_error(pred, test.y, test.hard)
    return ProbeReport(probes=probes, test_error=test_error, worst_group_error=wge)
