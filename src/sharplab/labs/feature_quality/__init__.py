"""Feature-quality lab: SAM learns the hard feature that SGD neglects (Springer et al., ICLR 2024).

Registers the runner lab ``feature-quality``: one run trains one model (or leaves it untrained, the
baseline) with one optimizer and probes its penultimate representation for each feature on the
decorrelated probe splits. Study files: ``examples/feature_quality_*.toml``; the CLI equivalent with
validation-based selection of lr and rho is ``sharplab feature-probe`` (:mod:`.experiment`).

Modules: :mod:`.train` (the shared training loop), :mod:`.toy_model` (PathwayNet), :mod:`.experiment`
(the protocol), :mod:`.report` (tables, figures); :mod:`.importance` and :mod:`.mechanisms` (SAM's two
mechanisms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sharplab.labs.feature_quality.experiment import DATASETS, UNTRAINED, load_data, parse_options, run_one
from sharplab.labs.feature_quality.report import report
from sharplab.labs.feature_quality.train import OPTIMIZERS, TrainConfig, make_model, train
from sharplab.labs.registry import Lab, register_lab
from sharplab.runner.context import RunContext

__all__ = ["FeatureQualityConfig", "TrainConfig", "make_model", "run", "train"]


# metrics a run returns to the runner, besides probe_error_<feature> (the CLI's JSON has more)
RUN_METRICS = ("test_error", "worst_group_error", "val_error", "val_loss", "train_loss", "v_hard_over_v_easy")


@dataclass(frozen=True)
class FeatureQualityConfig:
    """One feature-quality run (the seed comes from the runner)."""

    dataset: str = field(default="toy", metadata={"choices": list(DATASETS), "help": "two-feature data set"})
    optimizer: str = field(
        default="sgd", metadata={"choices": [*OPTIMIZERS, UNTRAINED], "help": "untrained = baseline"}
    )
    rho: float = field(default=0.05, metadata={"min": 0.0, "help": "SAM radius"})
    lr: float = field(default=0.05, metadata={"min": 1e-8, "help": "SGD learning rate"})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 0.999})
    weight_decay: float = field(default=5e-4, metadata={"min": 0.0})
    epochs: int = field(default=10, metadata={"min": 0})
    batch_size: int = field(default=128, metadata={"min": 1})
    model: str = field(default="auto", metadata={
        "choices": ["auto", "pathway", "small-cnn", "small-cnn-gap", "mlp", "preact-resnet18"]})
    data_seed: int = field(default=0, metadata={"min": 0, "help": "seed of the data split (fixed over runs)"})
    root: str = field(default="", metadata={"help": "data root ('' = $SHARPLAB_DATA / offline sources)"})
    data_options: str = field(
        default="", metadata={"help": "data set loader options, e.g. 'hard_dims=16,margin_hard=0.05'"}
    )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            optimizer=self.optimizer, rho=self.rho, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size, model=self.model,
        )  # fmt: skip


def run(cfg: FeatureQualityConfig, ctx: RunContext) -> dict[str, float]:
    """Train with ``cfg`` (or not, for ``optimizer = "untrained"``), then probe both features."""
    data = load_data(
        cfg.dataset, root=cfg.root or None, data_seed=cfg.data_seed, options=parse_options(cfg.data_options)
    )
    train_cfg = None if cfg.optimizer == UNTRAINED else cfg.train_config()
    metrics = run_one(data, train_cfg, seed=ctx.seed, ctx=ctx)
    final = {k: v for k, v in metrics.items() if k in RUN_METRICS or k.startswith("probe_error_")}
    ctx.log_metrics(cfg.epochs + 1, {k: v for k, v in final.items() if k.startswith("probe_error_")})
    return final


register_lab(
    Lab(
        "feature-quality",
        FeatureQualityConfig,
        run,
        report=report,
        description="SGD vs SAM/LSAM/IW-only/LR-only: linear-probe error of the easy and the hard feature",
    )
)

from sharplab.labs.feature_quality import mechanisms_lab as _mechanisms_lab  # noqa: E402,F401  (registers "mechanisms")
