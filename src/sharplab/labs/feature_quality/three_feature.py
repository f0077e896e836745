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

:func:`run_one` (the runner lab ``three-feature``: one optimizer, one seed) trains the lab's
:class:`~sharplab.labs.feature_quality.toy_model.PathwayNet` (one tanh unit per feature,
``h_k = tanh(w_k . x_k + b_k)``, linear head on ``(h_easy, h_medium, h_hard)``) with the lab's training
loop, and probes its penultimate layer for each feature.
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
from sharplab.labs.feature_quality.train import OPTIMIZERS, TrainConfig, make_model, train
from sharplab.labs.fields import lr_field, momentum_field, rho_field, weight_decay_field

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


@dataclass(frozen=True)
class ThreeFeatureConfig:
    """One run of the three-feature toy: an optimizer trained on it and probed on each feature (runner lab
    ``three-feature``; the seed, from the runner, draws the data and the weights)."""

    optimizer: str = field(default="sgd", metadata={"choices": list(OPTIMIZERS),
                                                    "help": "sgd or a sharplab.optim family member"})
    rho: float = rho_field(0.3)
    lr: float = lr_field(0.05, "SGD learning rate")
    momentum: float = momentum_field(0.9)
    weight_decay: float = weight_decay_field(0.0)
    epochs: int = field(default=20, metadata={"min": 0, "max": 100_000})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 100_000})
    m: int = field(default=0, metadata={"min": 0, "help": "m-sharpness micro-batch (0 = whole batch)"})
    data_options: dict = field(default_factory=dict, metadata={
        "omit_default": True, "help": "make_three_feature options: margins (3 numbers), noise, dims"})

    def __post_init__(self) -> None:
        self.train_config  # noqa: B018  (validates the optimizer part in one line)
        unknown = set(self.data_options) - {"margins", "noise", "dims", "sizes"}
        if unknown:
            raise ConfigError(f"data_options: unknown {', '.join(sorted(unknown))}; the three-feature toy takes "
                              "margins, noise, dims, sizes")

    @property
    def train_config(self) -> TrainConfig:
        """The lab's training configuration of this run."""
        return TrainConfig(optimizer=self.optimizer, rho=self.rho, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size, m=self.m)


DEFAULT_TRAIN = ThreeFeatureConfig().train_config


def run_one(cfg: ThreeFeatureConfig, seed: int, ctx: Any = None) -> dict[str, float]:
    """Train ``cfg.optimizer`` on the toy drawn from ``seed`` (checkpointed through ``ctx`` when given) and probe
    its penultimate layer for each feature: ``probe_error_{easy,medium,hard}``, ``test_error``, ``v_ratio``
    (``||v_hard|| / ||v_easy||``)."""
    from sharplab.probe import probe_model

    data = make_three_feature(seed=seed, **cfg.data_options)
    model = make_model(data, "auto", seed)
    metrics = train(model, data, cfg.train_config, seed=seed, ctx=ctx)
    report = probe_model(model, data, features=list(FEATURES3), seed=seed)
    out = {f"probe_error_{f}": float(report.probes[f].error) for f in FEATURES3}
    out["test_error"] = float(metrics["test_error"])
    out["v_ratio"] = float(pathway_ratio(model, "hard", "easy"))
    return out


def run_three_feature(
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence[str] = ("sgd", "sam"),
    cfg: TrainConfig = DEFAULT_TRAIN,
    **data_options: Any,
) -> list[dict[str, Any]]:
    """Train each optimizer per seed and probe each of the three features (:func:`run_one`); one row per
    (optimizer, seed) with the configuration. ``data_options`` go to :func:`make_three_feature`."""
    rows = []
    for seed in seeds:
        for opt in optimizers:
            run = ThreeFeatureConfig(optimizer=opt, rho=cfg.rho, lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                     m=cfg.m, data_options=dict(data_options))
            row: dict[str, Any] = {"dataset": "toy3", "optimizer": opt, "seed": seed,
                                   "rho": cfg.rho if opt != "sgd" else 0.0}
            row.update(run_one(run, seed))
            rows.append(row)
    return rows
