"""Feature-quality lab: SAM learns the hard feature that SGD neglects (Springer et al., ICLR 2024).

Registers the runner lab ``feature-quality``: one run trains one model (or leaves it untrained, the
baseline) with one optimizer and probes its penultimate representation for each feature on the
decorrelated probe splits. Study files: ``examples/feature_quality_*.toml``; ``sharplab feature-probe``
builds a grid study of this lab (:mod:`.probe_study`) and selects lr and rho on validation error over its
records (:mod:`.lr_selection`).

Modules: :mod:`.train` (the shared training loop), :mod:`.toy_model` (PathwayNet), :mod:`.experiment`
(one run: train and probe), :mod:`.probe_study` (the command's grid study), :mod:`.lr_selection`
(validation-based selection over records), :mod:`.report` (tables, figures); :mod:`.importance` and
:mod:`.mechanisms` (SAM's two mechanisms).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sharplab.data.core import register_preset
from sharplab.errors import ConfigError
from sharplab.labs.feature_quality import (
    arms,
    hetero_toy,  # noqa: F401  (registers the "toy-hetero" data set)
)
from sharplab.labs.feature_quality.experiment import (
    DATA_DEFAULTS,
    DATASETS,
    UNTRAINED,
    load_data,
    parse_options,
    run_one,
)
from sharplab.labs.feature_quality.report import report
from sharplab.labs.feature_quality.train import OPTIMIZERS, TrainConfig, make_model, train
from sharplab.labs.fields import lr_field, momentum_field, rho_field, weight_decay_field
from sharplab.runner.context import RunContext
from sharplab.runner.labs import Lab, register_lab
from sharplab.runner.validation import config_fields

__all__ = ["FeatureQualityConfig", "TrainConfig", "make_model", "run", "train"]

HARD_ONLY = "hard-only"  # the ceiling: SGD on data whose easy feature is shuffled across examples
NAMES = (*OPTIMIZERS, UNTRAINED, HARD_ONLY)  #: every optimizer name of a run

# metrics a run returns to the runner: these, and per feature the probe's error, chosen C and chance error
READOUT_PREFIXES = ("probe_error_", "probe_C_", "probe_chance_", "curve_error_", "region_error_")
RUN_METRICS = ("test_error", "worst_group_error", "val_error", "val_loss", "train_loss", "v_hard_over_v_easy",
               "gini_w", "gini_phantom", "v_hard_over_v_easy_phantom", "near_chance", "jtt_error_set",
               "digit_reuse_train", "n_val", "epochs", "steps")


@dataclass(frozen=True)
class FeatureQualityConfig:
    """One feature-quality run (the seed comes from the runner)."""

    dataset: str = field(default="toy", metadata={"choices": list(DATASETS), "help": "two-feature data set"})
    optimizer: str = field(
        default="sgd", metadata={"choices": list(NAMES), "help": "sgd, a sharplab.optim family member (sharplab "
                                 "optim list), untrained = floor, hard-only = SGD with the easy feature shuffled"}
    )
    rho: float = rho_field(0.05)
    lr: float = lr_field(0.05, "SGD learning rate")
    momentum: float = momentum_field(0.9)
    weight_decay: float = weight_decay_field(5e-4)
    epochs: int = field(default=10, metadata={"min": 0})
    batch_size: int = field(default=128, metadata={"min": 1})
    model: str = field(default="auto", metadata={
        "choices": ["auto", "pathway", "small-cnn", "small-cnn-gap", "mlp", "preact-resnet18"]})
    data_seed: int = field(default=0, metadata={"min": 0, "help": "seed of the data split (fixed over runs)"})
    root: str = field(default="", metadata={"help": "data root ('' = $SHARPLAB_DATA / offline sources)"})
    data_options: str = field(
        default="", metadata={"help": "data set loader options, e.g. 'hard_dims=16,margin_hard=0.05'"}
    )
    m: int = field(default=0, metadata={"min": 0, "help": "m-sharpness micro-batch (0 = whole batch)"})
    sam_start_epoch: int = field(default=0, metadata={"min": 0, "help": "SGD epochs before SAM is on"})
    jtt_epochs: int = field(default=0, metadata={
        "min": 0, "help": "JTT: epochs of the SGD identification run (0 = no upweighting)"})
    jtt_upweight: float = field(default=5.0, metadata={"min": 1.0, "help": "JTT: loss weight of the error set"})
    probe_cs: str = field(default="", metadata={
        "help": "probe regularisation grid, comma list ('' = sharplab.probe.DEFAULT_CS)"})
    check_batch: int = field(default=512, metadata={"min": 0, "help": "examples of the manipulation check"})
    probe_sizes: str = field(default="", metadata={
        "help": "probe learning curve: probe-train sizes, comma list ('' = no curve), e.g. '32,100,1000'"})
    probe_repeats: int = field(default=3, metadata={
        "min": 1, "max": 100, "help": "subsamples per learning-curve size"})
    device: str = field(default="cpu", metadata={
        "choices": ["cpu", "cuda", "auto"], "help": "where to train ('auto' = cuda when visible)"})
    region_probes: bool = field(default=False, metadata={
        "help": "per-half diagnostic: probe each half's pooled conv channels (dominoes)"})
    optimizer_options: dict = field(default_factory=dict, metadata={
        "omit_default": True, "help": "the family member's own keywords, e.g. {alpha = 0.1} for gsam "
                                      "(sharplab optim list)"})
    arm: str | dict = field(default="", metadata={
        "label": True, "help": "one configuration, a table {optimizer = 'sam', rho = 0.1, ...} or a string "
                               "'sam rho=0.1' (sets those fields; its string names the run in reports)"})

    def __post_init__(self) -> None:
        from sharplab.probe.curves import parse_sizes

        if self.probe_sizes.strip():
            try:
                parse_sizes(self.probe_sizes)
            except ValueError as exc:
                raise ConfigError(f"field probe_sizes: {exc}") from None
        where = f"arm {arms.table_text(self.arm)}" if isinstance(self.arm, dict) else ""
        object.__setattr__(self, "arm", arms.arm_name(self.arm))  # a table is input syntax: the string is stored
        values = {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **self._arm_changes(where)}
        if values["optimizer"] == UNTRAINED:
            if values["optimizer_options"]:
                raise ConfigError(f"{where or 'config'}: optimizer_options are for an optimizer, not 'untrained'")
            return
        try:
            _train_config(values)
        except ConfigError as exc:
            raise ConfigError(f"{where or (f'arm {self.arm!r}' if self.arm else 'config')}: {exc}") from None

    def _arm_changes(self, where: str = "") -> dict:
        fields = {name: (typ, f.metadata) for name, (typ, f) in config_fields(type(self)).items()}
        return arms.arm_changes(self.arm, fields, NAMES, where)

    def resolved(self) -> FeatureQualityConfig:
        """The config with ``arm`` applied (``"sam rho=0.5 sam_start_epoch=3"`` sets those fields); ``arm``
        stays, naming the run. Resolving twice changes nothing."""
        changes = self._arm_changes()
        return dataclasses.replace(self, **changes) if changes else self

    def train_config(self) -> TrainConfig:
        return _train_config({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def _train_config(values: dict) -> TrainConfig:
    """The training run of a (resolved) config's values; ``hard-only`` trains with SGD."""
    return TrainConfig(
        optimizer="sgd" if values["optimizer"] == HARD_ONLY else values["optimizer"], rho=values["rho"],
        lr=values["lr"], momentum=values["momentum"], weight_decay=values["weight_decay"], epochs=values["epochs"],
        batch_size=values["batch_size"], model=values["model"], m=values["m"],
        sam_start_epoch=values["sam_start_epoch"], optimizer_options=dict(values["optimizer_options"]),
    )  # fmt: skip


def _readouts(cfg: FeatureQualityConfig, cs: tuple[float, ...] | None):
    """The extra read-outs ``cfg`` asks for, as one ``(model, data, seed) -> metrics`` callable (or None)."""
    from sharplab.labs.feature_quality.readouts import curve_readout, region_readout
    from sharplab.probe.curves import parse_sizes

    sizes = parse_sizes(cfg.probe_sizes) if cfg.probe_sizes.strip() else ()
    if not sizes and not cfg.region_probes:
        return None

    def readouts(model, data, seed: int, probed: dict[str, float]) -> dict[str, float]:
        out = (curve_readout(model, data, sizes, repeats=cfg.probe_repeats, seed=seed, Cs=cs, probed=probed)
               if sizes else {})
        if cfg.region_probes:
            out.update(region_readout(model, data, seed=seed, Cs=cs))
        return out

    return readouts


def near_chance(val_error: float, num_classes: int) -> bool:
    """Pre-registered flag: a run 'did not learn' when its validation error exceeds half the chance error."""
    return not val_error <= 0.5 * (1.0 - 1.0 / num_classes)


def run(cfg: FeatureQualityConfig, ctx: RunContext) -> dict[str, float]:
    """Train with ``cfg`` (or not, for ``optimizer = "untrained"``), then probe both features.

    Every trained run records the manipulation check (:mod:`.check`) after each epoch into the metrics
    history and ``check.json``; ``gini_w`` / ``gini_phantom`` are the final values.
    """
    import json

    from sharplab.io import atomic_write_json
    from sharplab.labs.feature_quality.check import EpochCheck, check_batch
    from sharplab.labs.feature_quality.jtt import error_set_weights, shuffle_easy

    arm = cfg.arm.strip()
    cfg = cfg.resolved()
    data = load_data(
        cfg.dataset, root=cfg.root or None, data_seed=cfg.data_seed, options=parse_options(cfg.data_options)
    )
    if cfg.optimizer == HARD_ONLY:
        data = shuffle_easy(data, seed=cfg.data_seed)
    train_cfg = None if cfg.optimizer == UNTRAINED else cfg.train_config()
    hook = None
    path = ctx.artifact("check.json")
    if train_cfg is not None and cfg.check_batch:
        x, y = check_batch(data, cfg.check_batch, cfg.data_seed)
        hook = EpochCheck(x, y, train_cfg)
        if path.exists():  # resumed: keep the epochs already checked
            hook.history = json.loads(path.read_text())["history"]
        inner = hook

        def hook(epoch, model):  # noqa: F811  (wraps the check: log and persist every epoch)
            inner(epoch, model)
            ctx.log_metrics(epoch + 1, {k: v for k, v in inner.history[-1].items() if k != "epoch"})
            atomic_write_json(path, {"history": inner.history})
    weights, extra = None, {}
    if train_cfg is not None and cfg.jtt_epochs:
        weights, n_err = error_set_weights(data, train_cfg, cfg.jtt_epochs, cfg.jtt_upweight, seed=ctx.seed)
        extra["jtt_error_set"] = float(n_err)
    cs = tuple(float(c) for c in cfg.probe_cs.split(",") if c.strip()) or None
    readouts = _readouts(cfg, cs)
    metrics = run_one(data, train_cfg, seed=ctx.seed, ctx=ctx, model_name=cfg.model, check=hook,
                      weights=weights, probe_cs=cs, readouts=readouts)
    metrics.update(extra)
    if train_cfg is not None and cfg.check_batch:
        last = json.loads(path.read_text())["history"][-1] if path.exists() else {}
        metrics.update({k: v for k, v in last.items() if k != "epoch"})
    reuse = (data.meta or {}).get("digit_reuse") or {}
    if "train" in reuse:  # dominoes: how often the most-used training digit image appears in the train split
        metrics["digit_reuse_train"] = float(reuse["train"])
    metrics["near_chance"] = float(near_chance(metrics.get("val_error", float("nan")), int(data.num_classes)))
    final = {k: v for k, v in metrics.items() if k in RUN_METRICS or k.startswith(READOUT_PREFIXES)}
    ctx.log_metrics(cfg.epochs + 1, {k: v for k, v in final.items() if k.startswith("probe_error_")})
    if arm:
        atomic_write_json(ctx.artifact("arm.json"), {**dataclasses.asdict(cfg), "arm": arm})
    return final


for _name, _options in DATA_DEFAULTS.items():  # `sharplab data info` shows what the lab trains on
    register_preset(_name, "feature-quality", _options)

register_lab(
    Lab(
        "feature-quality",
        FeatureQualityConfig,
        run,
        report=report,
        description="SGD vs SAM/LSAM/IW-only/LR-only: linear-probe error of the easy and the hard feature",
        metrics=(*RUN_METRICS, *(f"{p}*" for p in READOUT_PREFIXES)),
    )
)

from sharplab.labs.feature_quality import mechanisms_lab as _mechanisms_lab  # noqa: E402,F401  (registers "mechanisms")
from sharplab.labs.feature_quality import three_feature_lab as _three_feature_lab  # noqa: E402,F401  ("three-feature")
