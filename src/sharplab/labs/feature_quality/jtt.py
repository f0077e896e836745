"""Example reweighting (JTT) and the hard-feature-only ceiling.

**JTT** (Liu et al., *Just Train Twice*, ICML 2021): an identification run of plain ERM for ``T`` epochs;
the training examples it misclassifies form the error set ``E``; the final model is trained from scratch
with the loss of every example of ``E`` weighted by ``lambda_up`` (JTT upsamples ``E`` by ``lambda_up``;
a weighted loss ``sum_i u_i l_i / sum_i u_i`` has the same expectation and keeps the epoch length).
Combined with SAM (``sam`` + ``jtt_epochs``) the weighted loss is the one SAM ascends and descends on.

**Hard-only ceiling**: the training and validation splits with the easy feature shuffled across examples
(dominoes: the digit rows, ``meta["easy_rows"]``; the toy: its easy coordinates, ``meta["easy_dims"]``), so
only the hard feature predicts the label; a network trained on it shows how well this architecture can
learn the hard feature at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.train import TrainConfig, make_model, train


def shuffle_easy(data: Any, seed: int = 0) -> Any:
    """A copy of ``data`` whose ``train`` and ``val`` inputs carry the easy feature of a random other example."""
    meta = getattr(data, "meta", {}) or {}
    g = torch.Generator().manual_seed(30_000 + seed)
    splits = dict(data.splits)
    for name in ("train", "val"):
        sp = splits[name]
        x = sp.x.clone()
        perm = torch.randperm(len(sp.y), generator=g)
        if "easy_rows" in meta:
            a, b = meta["easy_rows"]
            x[:, :, a:b] = sp.x[perm][:, :, a:b]
        elif "easy_dims" in meta:
            dims = torch.as_tensor(list(meta["easy_dims"]), dtype=torch.long)
            x[:, dims] = sp.x[perm][:, dims]
        else:
            raise ConfigError(f"data set {data.name!r} does not say where its easy feature is "
                              "(meta easy_rows / easy_dims); the hard-only ceiling needs it")
        splits[name] = dataclasses.replace(sp, x=x, easy=sp.easy[perm])
    return dataclasses.replace(data, splits=splits)


def error_set_weights(data: Any, cfg: TrainConfig, epochs: int, upweight: float, *, seed: int
                      ) -> tuple[torch.Tensor, int]:
    """JTT weights: ``upweight`` for the training examples an SGD run of ``epochs`` misclassifies, else 1.

    The identification run uses the same seed (initialisation and data order) as the final run.
    """
    ident = dataclasses.replace(cfg, optimizer="sgd", epochs=epochs, m=0, sam_start_epoch=0)
    model = make_model(data, cfg.model, seed=seed)
    train(model, data, ident, seed=seed)
    from sharplab.probe import predict

    tr = data.splits["train"]
    wrong = predict(model, tr.x) != tr.y
    weights = torch.ones(len(tr.y))
    weights[wrong] = float(upweight)
    return weights, int(wrong.sum())
