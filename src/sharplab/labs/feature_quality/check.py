"""Manipulation check: is SAM's importance weighting switched on in this run?

Springer, Nagarajan & Raghunathan (ICLR 2024, arXiv:2405.20439), Sec. 4: SAM's gradient is taken at the
phantom ``w~ = w + rho g / ||g||`` where the per-example loss derivatives ``||dl/df_i||`` are spread more
evenly than at ``w``. A run can only test the study's claim when its phantom really flattens them. On a
fixed probe batch of training examples we therefore record, after every epoch,

* ``gini_w``: the Gini coefficient of the importance weights ``lambda_i = ||dl/df_i(w)|| / sum_j ...``;
* ``gini_phantom``: the same at the phantom **the step uses**: the probe batch is cut into chunks of the
  training batch size (whole-batch SAM / LSAM, one phantom per chunk; LSAM perturbs the head only) or of
  ``m`` (m-SAM, one phantom per micro-batch); for SGD, and for SAM before ``sam_start_epoch``, the step
  uses ``w`` itself, so ``gini_phantom = gini_w``. For family members whose eps is not ``rho g / ||g||``
  (ASAM, F-SAM, ...) it is taken at the plain SAM phantom, a reference point (:func:`.train.step_phantom`);
* ``v_hard_over_v_easy`` at ``w`` and at the (first chunk's) phantom where the model exposes pathways.

``flattening = gini_w - gini_phantom`` > 0 means the mechanism is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sharplab.labs.feature_quality.importance import gini, logit_grad_norms, logits_restoring_buffers, phantom
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathway_ratio
from sharplab.labs.feature_quality.train import TrainConfig, step_phantom


def check_batch(data: Any, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of ``n`` training examples (the same for every run of a data set)."""
    tr = data.splits["train"]
    idx = torch.randperm(len(tr.y), generator=torch.Generator().manual_seed(20_000 + seed))[:n]
    return tr.x[idx], tr.y[idx]


def phantom_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, chunk: int,
                  perturb=None) -> torch.Tensor:
    """``||dl/df_i||`` with every chunk of ``chunk`` consecutive examples at its own phantom."""
    parts = []
    for i in range(0, len(y), chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        params = None if perturb is None else perturb(model)
        with phantom(model, xs, ys, rho, perturb=params):
            parts.append(logit_grad_norms(logits_restoring_buffers(model, xs), ys))
    return torch.cat(parts)


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """The check at the current parameters for a run trained with ``cfg`` (``epoch`` counts from 0)."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    real = logit_grad_norms(logits_restoring_buffers(model, x), y)
    out = {"gini_w": gini(real)}
    perturb = step_phantom(cfg.optimizer)
    on = perturb is not None and cfg.rho > 0 and epoch >= cfg.sam_start_epoch
    if on:
        chunk = cfg.m if cfg.m else cfg.batch_size
        out["gini_phantom"] = gini(phantom_norms(model, x, y, cfg.rho, chunk, perturb))
    else:
        out["gini_phantom"] = out["gini_w"]
    if isinstance(model, PathwayNet) and {"easy", "hard"} <= set(model.names):
        out["v_hard_over_v_easy"] = pathway_ratio(model)
        if on:
            chunk = cfg.m if cfg.m else cfg.batch_size
            params = None if perturb is None else perturb(model)
            with phantom(model, x[:chunk], y[:chunk], cfg.rho, perturb=params):
                out["v_hard_over_v_easy_phantom"] = pathway_ratio(model)
        else:
            out["v_hard_over_v_easy_phantom"] = out["v_hard_over_v_easy"]
    return out


@dataclass
class EpochCheck:
    """``train(on_epoch=)`` hook: runs :func:`measure` at the end of every epoch."""

    x: torch.Tensor
    y: torch.Tensor
    cfg: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, epoch: int, model: nn.Module) -> None:
        self.history.append({"epoch": float(epoch + 1), **measure(model, self.x, self.y, self.cfg, epoch)})
