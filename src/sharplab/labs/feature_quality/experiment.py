"""The feature-probe experiment: train each optimizer, pick lr/rho on validation, probe both features.

Protocol (Springer, Nagarajan & Raghunathan, ICLR 2024, Sec. 3; arXiv:2405.20439):

1. For every optimizer and every (lr, rho) of a small grid, train one model per seed on the ``train``
   split, where the easy and the hard feature both predict the label.
2. Per optimizer, select the (lr, rho) with the lowest mean **validation error** over seeds, never one with
   a run that did not learn; ties within one binomial standard error go to the **largest** rho (the
   one-standard-error rule, :func:`select_config`). The probe splits never enter the selection.
3. Probe the penultimate representation of every model for each feature on the decorrelated splits
   (:func:`sharplab.probe.probe_model`) and report probe errors, the model's test error and, as the
   baseline that random features already reach, the same probes on the **untrained** network of each seed.

The data split is fixed by ``data_seed``; the seeds vary the initialisation and the data order.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sharplab.errors import ConfigError, Diverged
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathway_ratio
from sharplab.labs.feature_quality.train import OPTIMIZERS, TrainConfig, evaluate, make_model, train
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


@dataclass
class ProbeRow:
    """One trained (or untrained) model: its configuration and metrics."""

    dataset: str
    optimizer: str
    lr: float
    rho: float
    seed: int
    metrics: dict[str, float]
    selected: bool = False

    @property
    def diverged(self) -> bool:
        """Training (or the probe's features) became non-finite: the row has no probe errors."""
        return "diverged_step" in self.metrics

    def record(self) -> dict[str, Any]:
        """Config, seed, ``status`` (``"done"`` | ``"diverged"``), ``diverged`` (bool) and the metrics."""
        return {
            "dataset": self.dataset, "optimizer": self.optimizer, "rho": self.rho, "lr": self.lr,
            "seed": self.seed, "status": "diverged" if self.diverged else "done", "diverged": self.diverged,
            **self.metrics,
        }  # fmt: skip


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


@dataclass
class FeatureProbeResult:
    """All rows of an experiment; ``selected`` rows are the validation-chosen config of each optimizer."""

    dataset: str
    rows: list[ProbeRow] = field(default_factory=list)
    seconds: float = 0.0
    unlearned: list[str] = field(default_factory=list)  # optimizers none of whose configurations learned

    def selected(self) -> list[ProbeRow]:
        return [r for r in self.rows if r.selected]

    def optimizers(self) -> list[str]:
        return list(dict.fromkeys(r.optimizer for r in self.rows))


def _mean(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def select_config(rows: Sequence[ProbeRow], n_val: int | None = None, num_classes: int | None = None
                  ) -> tuple[float, float] | None:
    """(lr, rho) of the pre-registered selection rule (docs/feature_quality.md).

    Configurations with a run that did not learn (validation error above half the chance error, when
    ``num_classes`` is given) are never selected. Among the rest, the lowest mean validation error wins; the
    configurations within one binomial standard error of it (``n_val`` validation examples; exact ties
    without it) tie, and the tie goes to the **largest** rho (the one-standard-error rule: the most
    regularised setting validation cannot tell from the best), then the lower validation loss and lr.
    Returns None when no configuration learned (every one has a near-chance or diverged run).
    """
    groups: dict[tuple[float, float], list[ProbeRow]] = {}
    for r in rows:
        groups.setdefault((r.lr, r.rho), []).append(r)
    limit = 0.5 * (1.0 - 1.0 / num_classes) if num_classes else math.inf

    def err(rs: list[ProbeRow]) -> float:
        e = _mean(r.metrics.get("val_error", math.nan) for r in rs)
        return e if math.isfinite(e) else math.inf

    def ok(rs: list[ProbeRow]) -> bool:
        return all(r.metrics.get("val_error", math.nan) <= limit for r in rs) and math.isfinite(err(rs))

    usable = {k: v for k, v in groups.items() if ok(v)}
    if not usable:  # no configuration learned: nothing is selected (never fall back to one that did not)
        return None
    best = min(err(v) for v in usable.values())
    se = math.sqrt(best * (1 - best) / n_val) if n_val and math.isfinite(best) else 0.0
    tied = {k: v for k, v in usable.items() if err(v) <= best + se + 1e-12}

    def key(item: tuple[tuple[float, float], list[ProbeRow]]) -> tuple[float, float, float]:
        (lr, rho), rs = item
        loss = _mean(r.metrics.get("val_loss", math.nan) for r in rs)
        return (-rho, loss if math.isfinite(loss) else math.inf, lr)

    return min(tied.items(), key=key)[0]


CHECK_BATCH = 512  # examples of the manipulation check in feature-probe rows (as the runner lab's default)


def _check_hook(data: Any, cfg: TrainConfig | None, data_seed: int) -> Any:
    """The manipulation check (:mod:`.check`) for a trained row: Gini at w and at the step's phantom,
    measured after every epoch on a fixed batch of training examples."""
    if cfg is None:
        return None
    from sharplab.labs.feature_quality.check import EpochCheck, check_batch

    x, y = check_batch(data, CHECK_BATCH, data_seed)
    return EpochCheck(x, y, cfg)


def run_feature_probe(
    dataset: str,
    optimizers: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    lrs: Sequence[float] = (0.05,),
    rhos: Sequence[float] = (0.05,),
    base: TrainConfig | None = None,
    root: str | None = None,
    data_seed: int = 0,
    data_options: dict[str, Any] | None = None,
    include_untrained: bool = True,
    quiet: bool = True,
    on_row: Callable[[ProbeRow], None] | None = None,
    ms: Sequence[int] = (0,),
) -> FeatureProbeResult:
    """Run the protocol of the module docstring and return every row.

    Args:
        dataset: a two-feature data set name (:data:`DATASETS`).
        optimizers: names from :data:`~sharplab.labs.feature_quality.train.OPTIMIZERS`.
        seeds: training seeds (initialisation and data order).
        lrs, rhos: the grid searched per optimizer on validation error (``sgd`` ignores ``rhos``).
        base: the other hyperparameters (epochs, batch size, momentum, weight decay, model).
        include_untrained: add the untrained-network baseline row for each seed (same model as the rest).
        ms: m-sharpness micro-batch sizes for the SAM variants (0 = whole batch); a row with ``m > 0`` is
            named ``"<optimizer> m=<m>"``.
        on_row: called with each finished row (progress, streaming output).

    A diverged run (non-finite loss) is kept as a row with ``val_error = 1`` so the grid never selects it.
    Every trained row carries the manipulation check at its final epoch: ``gini_w``, ``gini_phantom`` and
    ``flattening = gini_w - gini_phantom`` (0 for SGD, whose step is taken at w).
    """
    base = base or TrainConfig()
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if not seeds:
        raise ConfigError("--seeds must be at least 1")
    t0 = time.perf_counter()
    data = load_data(dataset, root=root, data_seed=data_seed, options=data_options)
    result = FeatureProbeResult(dataset=data.name)
    jobs: list[tuple[str, float, float, int]] = []
    if include_untrained:
        jobs.append((UNTRAINED, 0.0, 0.0, 0))
    for name in optimizers:
        for m in (0,) if name == "sgd" else ms:
            for lr in lrs:
                for rho in (0.0,) if name == "sgd" else rhos:
                    jobs.append((name, float(lr), float(rho), int(m)))
    from sharplab.progress import progress

    with progress(total=len(jobs) * len(seeds), disable=quiet, desc=dataset) as bar:
        for name, lr, rho, m in jobs:
            cfg = None if name == UNTRAINED else base.replace(optimizer=name, lr=lr, rho=rho, m=m)
            for seed in seeds:
                bar.set_postfix_str(f"{name} lr={lr:g} rho={rho:g} seed={seed}")
                hook = _check_hook(data, cfg, data_seed)
                try:
                    metrics = run_one(data, cfg, seed=seed, model_name=base.model, check=hook)
                    if hook is not None and hook.history:
                        last = hook.history[-1]
                        metrics.update({k: v for k, v in last.items() if k != "epoch"})
                        metrics["flattening"] = last["gini_w"] - last["gini_phantom"]
                except Diverged as exc:
                    # step None: training finished but its features are not finite (caught by the probe)
                    metrics = {"val_error": 1.0, "diverged_step": -1.0 if exc.step is None else float(exc.step)}
                row = ProbeRow(data.name, f"{name} m={m}" if m else name, lr, rho, int(seed), metrics)
                result.rows.append(row)
                if on_row is not None:
                    on_row(row)
                bar.update(1)
    for name in result.optimizers():
        rows = [r for r in result.rows if r.optimizer == name]
        choice = select_config(rows, n_val=len(data.splits["val"].y), num_classes=int(data.num_classes))
        if choice is None and name != UNTRAINED:
            result.unlearned.append(name)
        for r in rows:
            r.selected = name == UNTRAINED or (choice is not None and (r.lr, r.rho) == choice)
    result.seconds = time.perf_counter() - t0
    return result
