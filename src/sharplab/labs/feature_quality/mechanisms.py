"""SAM's two mechanisms along training: importance weighting and learning-rate scaling, and their ablation.

Springer, Nagarajan, Raghunathan (ICLR 2024, arXiv:2405.20439), Sec. 4. With the SAM phantom parameter
``w~ = w + eps`` (``eps = rho g/||g||``; LSAM: last layer only) the SAM gradient factors as
``grad L(w~) = (1/n) sum_i J_i(w~)^T dl/df_i(w~)``, and each factor differs from SGD's:

(a) **importance weighting** -- the per-example loss derivatives ``lambda_i ~ ||dl/df_i||`` at ``w~`` are
    spread more evenly over the batch than at ``w`` (measured here by Lorenz curves and Gini coefficients,
    :mod:`~sharplab.labs.feature_quality.importance`);
(b) **learning-rate scaling** -- through the Jacobian, the update of pathway ``f``'s features is scaled by
    its output weight ``v_f``; at ``w~`` the well-learned easy pathway's weight shrinks relative to the
    hard one's, i.e. ``v_hard / v_easy`` is larger at ``w~`` than at ``w`` (toy PathwayNet only);
(c) **ablation** -- ``iw-only`` (``J(w)^T dl/df(w~)``) and ``lr-only`` (``J(w~)^T dl/df(w)``) are trained
    like SAM, both features are probed, and each mechanism's share of SAM's hard-feature gain is
    ``(err_sgd - err_x) / (err_sgd - err_sam)`` (1 = all of it, 0 = none, undefined when SAM gains nothing).

Every optimizer trains with the lab's loop (:func:`~sharplab.labs.feature_quality.train.train`); a
callback records (a) and (b) every ``record_every`` steps on a fixed, seeded subset of the training split,
at ``w`` and at the phantom ``w~`` that the SAM variant would use at that point (also along SGD's path).

``m > 0`` is m-sharpness (Foret et al., 2021, Sec. 4; Andriushchenko & Flammarion, 2022): every micro-batch
of ``m`` examples ascends on its own gradient, ``eps_j = rho g_j / ||g_j||``; the SAM variant and the
ablations train with ``sam_grad(m=)`` (:attr:`TrainConfig.m`), and the recorder takes the importance weights
of each chunk of ``m`` examples at that chunk's own phantom, the phantom the step uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.check import phantom_norms
from sharplab.labs.feature_quality.importance import (
    ImportanceSnapshot,
    importance_snapshot,
    importance_weights,
    logits_restoring_buffers,
    normalise,
    phantom,
)
from sharplab.labs.feature_quality.toy_model import PathwayNet, pathway_ratio
from sharplab.labs.feature_quality.train import TrainConfig, make_model, step_phantom, train
from sharplab.labs.fields import lr_field, momentum_field, rho_field, weight_decay_field
from sharplab.runner.context import RunContext

#: ``f(model)`` -> the parameters a phantom perturbs (``None`` = all), or ``None`` for no phantom
Perturb = Callable[[nn.Module], Iterable[nn.Parameter] | None] | None

ABLATIONS: tuple[str, ...] = ("iw-only", "lr-only")
VARIANTS: tuple[str, ...] = ("sam", "lsam")  #: SAM variants whose phantom the recorder follows


@dataclass(frozen=True)
class MechanismsConfig:
    """Hyperparameters of the mechanisms study (one seed; the runner passes the seed)."""

    dataset: str = field(default="toy", metadata={"help": "two-feature data set (sharplab data list)"})
    variant: str = field(default="sam", metadata={"choices": list(VARIANTS), "help": "SAM variant studied"})
    phantom: str = field(default="batch", metadata={
        "choices": ["batch", "per-example"], "help": "phantom of the importance weights: batch SAM or 1-SAM"})
    ablation: str = field(default="iw-only,lr-only", metadata={"help": "comma list of mechanism-only runs"})
    rho: float = rho_field(0.3)
    lr: float = lr_field(0.05)
    momentum: float = momentum_field(0.9)
    weight_decay: float = weight_decay_field(5e-4)
    epochs: int = field(default=10, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    record_every: int = field(default=10, metadata={"min": 1, "help": "steps between recordings"})
    weight_batch: int = field(default=512, metadata={"min": 2, "help": "examples for importance weights"})
    root: str = field(default="", metadata={"help": "data root ('' = search $SHARPLAB_DATA, offline sources)"})
    data_seed: int = field(default=0, metadata={"min": 0, "help": "seed of the data split (fixed over runs)"})
    data_options: dict = field(default_factory=dict, metadata={"help": "options of the data set loader"})
    m: int = field(default=0, metadata={
        "min": 0, "help": "m-sharpness micro-batch size, a divisor of batch_size (0 = the whole batch)"})

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown SAM variant {self.variant!r}; the study compares {' or '.join(VARIANTS)}")
        if self.m < 0 or (self.m and self.batch_size % self.m):
            raise ConfigError(f"m={self.m} (--m) must be a divisor of batch_size={self.batch_size} (--batch-size), "
                              "e.g. 1, 16 or 32 for 64; leave it unset (0) for the whole batch")
        if self.m > 1 and self.phantom == "per-example":
            raise ConfigError(f"phantom='per-example' is the 1-SAM phantom but m={self.m}: with m set the recorder "
                              "uses each micro-batch's phantom; drop --phantom per-example (or use m=1)")
        for name in self.ablation_list:
            if name not in ABLATIONS:
                raise ConfigError(f"ablation {name!r} unknown; use a comma list of {', '.join(ABLATIONS)}")

    @property
    def ablation_list(self) -> list[str]:
        return [a.strip() for a in self.ablation.split(",") if a.strip()]

    @property
    def optimizers(self) -> list[str]:
        return ["sgd", self.variant, *self.ablation_list]

    def train_config(self, optimizer: str) -> TrainConfig:
        return TrainConfig(optimizer=optimizer, rho=self.rho, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size, m=self.m)


@dataclass
class Recorder:
    """Training callback: Gini of the importance weights and ``v_hard/v_easy`` at ``w`` and ``w~``."""

    x: torch.Tensor
    y: torch.Tensor
    rho: float
    perturb: Perturb
    every: int
    per_example: bool = False
    m: int = 0  #: > 0: every chunk of m examples at its own phantom (m-sharpness)
    trace: list[dict[str, float]] = field(default_factory=list)

    def measure(self, model: nn.Module, epoch: int, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        snap = snapshot(model, x, y, self.rho, self.perturb, self.per_example, self.m)
        row = {"epoch": float(epoch), "step": float(step), "gini_real": snap.gini_real,
               "gini_phantom": snap.gini_phantom}
        if isinstance(model, PathwayNet) and {"easy", "hard"} <= set(model.names):
            row["ratio_real"] = pathway_ratio(model)
            params = None if self.perturb is None else self.perturb(model)
            n = self.m or len(y)  # with m: the first micro-batch's phantom
            with phantom(model, x[:n], y[:n], self.rho, perturb=params):
                row["ratio_phantom"] = pathway_ratio(model)
        return row

    def __call__(self, epoch: int, step: int, model: nn.Module) -> None:
        if step % self.every == 0 or step == 1:
            self.trace.append(self.measure(model, epoch, step))


def snapshot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, perturb: Perturb,
             per_example: bool = False, m: int = 0) -> ImportanceSnapshot:
    """:func:`~.importance.importance_snapshot`, or with ``m > 0`` the weights of every chunk of ``m``
    examples at that chunk's own phantom ``w + rho g_j / ||g_j||`` (the m-SAM step's phantoms)."""
    if not m:
        return importance_snapshot(model, x, y, rho, perturb, per_example)
    real = importance_weights(logits_restoring_buffers(model, x), y)
    return ImportanceSnapshot(real, normalise(phantom_norms(model, x, y, rho, m, perturb)))


@dataclass
class OptimizerRun:
    """One optimizer's trained model: final metrics, probe errors, trace, final importance snapshot."""

    optimizer: str
    metrics: dict[str, float]
    trace: list[dict[str, float]]
    snapshot: ImportanceSnapshot


def weight_subset(data: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of ``n`` training examples on which importance weights are measured."""
    tr = data.splits["train"]
    idx = torch.randperm(len(tr.y), generator=torch.Generator().manual_seed(10_000 + seed))[:n]
    return tr.x[idx], tr.y[idx]


def train_and_record(
    data: Any, cfg: MechanismsConfig, optimizer: str, seed: int, ctx: RunContext | None = None
) -> OptimizerRun:
    """Train ``optimizer`` from the seed's initialisation, recording the mechanisms; probe both features."""
    from sharplab.probe import probe_model

    x, y = weight_subset(data, cfg.weight_batch, seed)
    perturb = step_phantom(cfg.variant)
    per_example = cfg.phantom == "per-example"
    rec = Recorder(x, y, cfg.rho, perturb, cfg.record_every, per_example, cfg.m)
    model = make_model(data, "auto", seed)
    metrics = train(model, data, cfg.train_config(optimizer), seed=seed, ctx=ctx, callback=rec)
    if not rec.trace or rec.trace[-1]["step"] != metrics["steps"]:  # always end on the final checkpoint
        rec.trace.append(rec.measure(model, cfg.epochs, int(metrics["steps"])))
    report = probe_model(model, data, seed=seed)
    metrics = {**metrics, **{k: v for k, v in report.metrics().items() if k.startswith("probe_error")}}
    device = next(model.parameters()).device
    snap = snapshot(model, x.to(device), y.to(device), cfg.rho, perturb, per_example, cfg.m)
    return OptimizerRun(optimizer, metrics, rec.trace, ImportanceSnapshot(snap.real.cpu(), snap.phantom.cpu()))


MIN_GAIN = 0.005  # SAM's hard-feature gain over SGD below which no recovered share is reported


def recovered_fraction(err_sgd: float, err_sam: float, err_x: float) -> float:
    """Share of SAM's hard-feature gain recovered by ``x``: ``(err_sgd - err_x) / (err_sgd - err_sam)``.

    NaN when SAM's gain is below :data:`MIN_GAIN` (half a point of error): a share of no gain (or of a
    gain inside the noise of any probe here) is meaningless, e.g. -100 % for a 0.05-point "gain".
    """
    gain = err_sgd - err_sam
    if not gain >= MIN_GAIN:
        return float("nan")
    return (err_sgd - err_x) / gain


def summary_metrics(runs: dict[str, OptimizerRun], variant: str) -> dict[str, float]:
    """Flat metrics of one seed: ``<metric>_<optimizer>``, Gini and ratios, recovered shares."""
    out: dict[str, float] = {}
    for opt, run in runs.items():
        key = opt.replace("-", "_")
        for name in ("probe_error_easy", "probe_error_hard", "test_error"):
            out[f"{name}_{key}"] = float(run.metrics.get(name, float("nan")))
        out[f"gini_real_{key}"] = run.snapshot.gini_real
        out[f"gini_phantom_{key}"] = run.snapshot.gini_phantom
        for q in ("gini_real", "gini_phantom", "ratio_real", "ratio_phantom"):
            vals = [r[q] for r in run.trace if q in r]
            if vals:
                out[f"{q}_mean_{key}"] = sum(vals) / len(vals)
    sam_key = variant.replace("-", "_")
    for abl in (o for o in runs if o in ABLATIONS):
        out[f"recovered_{abl.replace('-', '_')}"] = recovered_fraction(
            out["probe_error_hard_sgd"], out[f"probe_error_hard_{sam_key}"],
            out[f"probe_error_hard_{abl.replace('-', '_')}"],
        )
    return out


@dataclass
class MechanismsResult:
    """Everything one seed of the study produced (JSON-serialisable through :meth:`to_json`)."""

    config: MechanismsConfig
    seed: int
    runs: dict[str, OptimizerRun]
    metrics: dict[str, float]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config), "seed": self.seed, "metrics": self.metrics, "seconds": self.seconds,
            "traces": {o: r.trace for o, r in self.runs.items()},
            "weights": {o: {"real": r.snapshot.real.tolist(), "phantom": r.snapshot.phantom.tolist()}
                        for o, r in self.runs.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MechanismsResult:
        """The result :meth:`to_json` wrote (a runner run's ``mechanisms.json``); the optimizers' own
        metrics are not saved there, only the seed's summary ``metrics``."""
        cfg = MechanismsConfig(**d["config"])
        runs = {o: _run_from_json({"optimizer": o, "metrics": {}, "trace": d["traces"][o], **d["weights"][o]})
                for o in cfg.optimizers}  # the study's order (the file's keys may be sorted)
        return cls(cfg, int(d["seed"]), runs, d["metrics"], float(d["seconds"]))


def load_data(cfg: MechanismsConfig) -> Any:
    """The data set with the lab's defaults (shared with ``feature-probe``) and ``cfg.data_options``."""
    from sharplab.labs.feature_quality.experiment import load_data as lab_load_data

    return lab_load_data(cfg.dataset, root=cfg.root or None, data_seed=cfg.data_seed,
                         options=dict(cfg.data_options))


def run_mechanisms(
    cfg: MechanismsConfig, seed: int = 0, ctx: RunContext | None = None, data: Any = None
) -> MechanismsResult:
    """Run the study for one seed: SGD, the SAM variant and the ablation runs, each recorded and probed.

    With ``ctx`` each optimizer checkpoints into its own sub-folder (``ctx.run_dir/<optimizer>``) and a
    finished optimizer's result is kept in ``<optimizer>/result.json``, so a resumed study redoes only
    the unfinished ones (the trace of an interrupted run restarts at the resumed epoch).
    """
    t0 = time.perf_counter()
    data = data if data is not None else load_data(cfg)
    runs: dict[str, OptimizerRun] = {}
    for opt in cfg.optimizers:
        sub = None
        if ctx is not None:
            sub = RunContext(ctx.run_dir / opt, seed=seed, device=ctx.device, quiet=ctx.quiet)
            done = sub.run_dir / "result.json"
            if done.exists():
                runs[opt] = _run_from_json(json.loads(done.read_text()))
                continue
        runs[opt] = train_and_record(data, cfg, opt, seed, sub)
        if sub is not None:
            from sharplab.io import atomic_write_json

            atomic_write_json(sub.run_dir / "result.json", _run_to_json(runs[opt]))
    return MechanismsResult(cfg, seed, runs, summary_metrics(runs, cfg.variant), time.perf_counter() - t0)


def _run_to_json(run: OptimizerRun) -> dict[str, Any]:
    return {"optimizer": run.optimizer, "metrics": run.metrics, "trace": run.trace,
            "real": run.snapshot.real.tolist(), "phantom": run.snapshot.phantom.tolist()}


def _run_from_json(d: dict[str, Any]) -> OptimizerRun:
    snap = ImportanceSnapshot(torch.tensor(d["real"], dtype=torch.float64),
                              torch.tensor(d["phantom"], dtype=torch.float64))
    return OptimizerRun(d["optimizer"], d["metrics"], d["trace"], snap)


# --- the runner lab ----------------------------------------------------------------------------------
def trace_history(result: MechanismsResult) -> dict[int, dict[str, float]]:
    """The recorded traces merged per step: ``{step: {"<quantity>_<optimizer>": value}}``."""
    hist: dict[int, dict[str, float]] = {}
    for opt, run in result.runs.items():
        key = opt.replace("-", "_")
        for row in run.trace:
            entry = hist.setdefault(int(row["step"]), {})
            entry.update({f"{q}_{key}": v for q, v in row.items() if q not in ("step", "epoch")})
    return dict(sorted(hist.items()))
