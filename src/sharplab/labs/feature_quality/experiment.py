"""The feature-probe experiment: train (or not) one model, probe both features; the lab's data loading.

Protocol (Springer, Nagarajan & Raghunathan, ICLR 2024, Sec. 3; arXiv:2405.20439):

1. For every optimizer and every (lr, rho) of a small grid, train one model per seed on the ``train``
   split, where the easy and the hard feature both predict the label (one run of the runner lab
   ``feature-quality`` each; ``sharplab feature-probe`` builds the grid, :mod:`.probe_study`).
2. Per optimizer, select the (lr, rho) with the lowest mean **validation error** over seeds, never one with
   a run that did not learn; ties within one binomial standard error go to the **largest** rho (the
   one-standard-error rule, :func:`.lr_selection.select_config`, over the finished runs' records). The
   probe splits never enter the selection.
3. Probe the penultimate representation of every model for each feature on the decorrelated splits
   (:func:`sharplab.probe.probe_model`) and report probe errors, the model's test error and, as the
   baseline that random features already reach, the same probes on the **untrained** network of each seed.

The data split is fixed by ``data_seed``; the seeds vary the initialisation and the data order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathway_ratio
from sharplab.labs.feature_quality.train import TrainConfig, make_model, train
from sharplab.labs.training import evaluate
from sharplab.runner.context import RunContext

UNTRAINED = "untrained"
DATASETS: tuple[str, ...] = (
    "toy", "toy-hetero", "fmnist-mnist", "cifar-mnist", "celeba", "waterbirds", "pacs", "vlcs", "officehome",
)  # fmt: skip

# Data-set options the lab uses unless the user overrides them. The toy's hard feature is spread over 16
# noisy coordinates (per-coordinate margin/sigma = 0.5, Bayes error 2.3 % along the best direction): with a
# single hard coordinate any monotone unit reads it optimally and no optimizer could make a difference.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {"toy": {"hard_dims": 16, "margin_hard": 0.05},
                                             "toy-hetero": {"hard_dims": 16, "margin_hard": 0.05}}

_CACHE: dict[str, Any] = {}


def parse_value(text: str) -> Any:
    """``"16"`` -> 16, ``"0.1"`` -> 0.1, ``"true"`` -> True, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.strip().lower(), text.strip())


def parse_options(text: str) -> dict[str, Any]:
    """``"hard_dims=16,margin_hard=0.05"`` -> ``{"hard_dims": 16, "margin_hard": 0.05}``."""
    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"data option {item!r} is not KEY=VALUE; write e.g. 'hard_dims=16,margin_hard=0.05'")
        out[key.strip()] = parse_value(value)
    return out


def load_data(dataset: str, *, root: str | None = None, data_seed: int = 0, options: dict | None = None):
    """``load_two_feature`` with the lab's defaults (:data:`DATA_DEFAULTS`); the last load is cached."""
    from sharplab.data import load_two_feature
    from sharplab.labs.feature_quality import hetero_toy  # noqa: F401  (registers "toy-hetero")

    opts = {**DATA_DEFAULTS.get(dataset, {}), **(options or {})}
    key = json.dumps([dataset, root, data_seed, opts], sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_two_feature(dataset, root=root or None, seed=data_seed, **opts)
    return _CACHE[key]


def probe_trained(model: Any, data: Any, *, seed: int, Cs: Sequence[float] | None = None) -> dict[str, float]:
    """Probe metrics of ``model`` plus ``v_hard/v_easy`` for a PathwayNet."""
    from sharplab.probe import DEFAULT_CS, probe_model

    out = probe_model(model, data, seed=seed, Cs=Cs or DEFAULT_CS).metrics()
    if isinstance(model, PathwayNet) and {"easy", "hard"} <= set(model.names):
        out["v_hard_over_v_easy"] = pathway_ratio(model)
    return out


def run_one(data: Any, cfg: TrainConfig | None, *, seed: int, ctx: RunContext | None = None,
            model_name: str = "auto", check: Any = None, weights: Any = None,
            probe_cs: Sequence[float] | None = None,
            readouts: Callable[[Any, Any, int, dict[str, float]], dict[str, float]] | None = None
            ) -> dict[str, float]:
    """Train (``cfg`` None: leave untrained) and probe one model; metrics include val/test error.

    The untrained network is built with ``model_name`` (callers pass the trained rows' ``cfg.model``, so the
    floor has the same architecture); ``check`` is an ``on_epoch`` hook (the manipulation check) and
    ``weights`` per-example training-loss weights (JTT); ``readouts(model, data, seed, metrics)`` adds
    further metrics of the final model (learning curves, per-half probes: :mod:`.readouts`).
    """
    t0 = time.perf_counter()
    model = make_model(data, cfg.model if cfg else model_name, seed=seed)
    if cfg is None:
        val_loss, val_error = evaluate(model, data.splits["val"].x, data.splits["val"].y)
        metrics: dict[str, float] = {"val_loss": val_loss, "val_error": val_error}
    else:
        metrics = train(model, data, cfg, seed=seed, ctx=ctx, on_epoch=check, weights=weights)
    metrics.update(probe_trained(model, data, seed=seed, Cs=probe_cs))
    if readouts is not None:
        metrics.update(readouts(model, data, seed, metrics))
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
