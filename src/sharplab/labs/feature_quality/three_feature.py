"""A three-feature toy (easy, medium, hard) and SGD vs SAM probed on each feature.

One of the open questions of Springer et al. (ICLR 2024, arXiv:2405.20439, Sec. 7): does SAM's balancing
extend beyond two features? Here every example carries three redundant features of decreasing margin.

Generative model (all numbers are arguments of :func:`make_three_feature`). Label ``y in {0, 1}``,
``s = 2y - 1``. Feature ``k in {easy, medium, hard}`` owns a block of ``dims`` input coordinates:

.. math::  x_k = s_k \\, m_k \\, e_1 + \\sigma \\, \\xi_k, \\qquad \\xi_k \\sim N(0, I_{dims}),

so feature ``k`` is linearly decodable from its block with Bayes error ``Phi(-m_k / sigma)`` and its
signal direction ``e_1`` is hidden among ``dims - 1`` noise coordinates (a random read-out aligns with it
only by ``1/sqrt(dims)``: training has to find it). In ``train``/``val``/``test`` all three signs equal
``s``; in ``probe_train``/``probe_test`` the three signs are independent and every one of the 8 sign
patterns occurs equally often, so a probe cannot read one feature through another.

:func:`run_three_feature` trains the lab's :class:`~sharplab.labs.feature_quality.toy_model.PathwayNet`
(one tanh unit per feature, ``h_k = tanh(w_k . x_k + b_k)``, linear head on ``(h_easy, h_medium, h_hard)``)
with the lab's training loop, and probes its penultimate layer for each feature.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.toy_model import pathway_ratio
from sharplab.labs.feature_quality.train import TrainConfig, make_model, train

FEATURES3: tuple[str, ...] = ("easy", "medium", "hard")
SPLIT_SIZES: dict[str, int] = {"train": 2000, "val": 400, "test": 1000, "probe_train": 1600, "probe_test": 1600}


@dataclass(frozen=True)
class ThreeFeatureSplit:
    """Inputs, training label and the three feature labels (0/1) of one split."""

    x: Tensor
    y: Tensor
    easy: Tensor
    medium: Tensor
    hard: Tensor


@dataclass(frozen=True)
class ThreeFeatureData:
    """Splits keyed by name; ``meta["<feature>_dims"]`` lists each feature's input coordinates."""

    splits: dict[str, ThreeFeatureSplit]
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = "toy3"
    num_classes: int = 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])


def _signs(n: int, decorrelated: bool, g: torch.Generator) -> Tensor:
    """``(n, 3)`` labels in {0, 1}: equal columns, or the 8 patterns in exactly equal counts (shuffled)."""
    if not decorrelated:
        y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
        return y[:, None].expand(n, 3).clone()
    if n % 8:
        raise ConfigError(f"probe split size must be a multiple of 8 (got {n}) so all sign patterns balance")
    patterns = torch.tensor(list(itertools.product((0, 1), repeat=3)))
    return patterns.repeat(n // 8, 1)[torch.randperm(n, generator=g)]


def make_three_feature(
    seed: int = 0,
    margins: Sequence[float] = (1.0, 0.4, 0.2),
    noise: float = 0.1,
    dims: int = 32,
    sizes: dict[str, int] | None = None,
) -> ThreeFeatureData:
    """Generate the three-feature toy (see the module docstring). Deterministic in ``seed``."""
    if len(margins) != 3 or min(margins) <= 0 or noise <= 0 or dims < 1:
        raise ConfigError("three-feature toy needs 3 positive margins, noise > 0 and dims >= 1")
    g = torch.Generator().manual_seed(seed)
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    m = torch.tensor(margins, dtype=torch.float32)
    splits = {}
    for name, n in sizes.items():
        labels = _signs(n, name.startswith("probe"), g)
        s = 2.0 * labels.float() - 1.0  # (n, 3)
        x = noise * torch.randn(n, 3, dims, generator=g)
        x[:, :, 0] += s * m
        splits[name] = ThreeFeatureSplit(
            x=x.reshape(n, 3 * dims), y=labels[:, 0].clone(), easy=labels[:, 0].clone(),
            medium=labels[:, 1].clone(), hard=labels[:, 2].clone(),
        )
    meta: dict[str, Any] = {f"{f}_dims": list(range(k * dims, (k + 1) * dims)) for k, f in enumerate(FEATURES3)}
    return ThreeFeatureData(splits=splits, meta={**meta, "margins": list(margins), "noise": noise})


DEFAULT_TRAIN = TrainConfig(rho=0.3, lr=0.05, momentum=0.9, weight_decay=0.0, epochs=20, batch_size=64)


def run_three_feature(
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence[str] = ("sgd", "sam"),
    cfg: TrainConfig = DEFAULT_TRAIN,
    **data_options: Any,
) -> list[dict[str, Any]]:
    """Train each optimizer per seed and probe each of the three features on the decorrelated splits.

    ``data_options`` go to :func:`make_three_feature`. Returns one row per (optimizer, seed):
    ``probe_error_{easy,medium,hard}``, ``test_error``, ``v_ratio`` (``||v_hard|| / ||v_easy||``) and the
    configuration.
    """
    from sharplab.probe import probe_model

    rows = []
    for seed in seeds:
        data = make_three_feature(seed=seed, **data_options)
        for opt in optimizers:
            model = make_model(data, "auto", seed)
            metrics = train(model, data, cfg.replace(optimizer=opt), seed=seed)
            report = probe_model(model, data, features=list(FEATURES3), seed=seed)
            row: dict[str, Any] = {"dataset": "toy3", "optimizer": opt, "seed": seed,
                                   "rho": cfg.rho if opt != "sgd" else 0.0}
            row.update({f"probe_error_{f}": report.probes[f].error for f in FEATURES3})
            row["test_error"] = metrics["test_error"]
            row["v_ratio"] = pathway_ratio(model, "hard", "easy")
            rows.append(row)
    return rows
