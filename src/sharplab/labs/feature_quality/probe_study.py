"""``sharplab feature-probe`` as a study of the runner lab ``feature-quality``, and its rows read back.

The command's grid -- the untrained floor, SGD at every lr, each SAM variant at every (m, lr, rho) -- is
one ``[[grid]]`` table per configuration, so the runs and the rows keep the command's order (floor, then
the optimizers as given, m, lr, rho; seed fastest). Every configuration is a run in the store of the
output folder: a second identical command runs nothing and reads the same records. The choice of lr and
rho is an aggregation step over those records (:func:`.lr_selection.select_per_optimizer`), never part of
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sharplab.errors import ConfigError
from sharplab.labs.feature_quality.experiment import UNTRAINED
from sharplab.labs.feature_quality.lr_selection import optimizer_label, select_per_optimizer
from sharplab.labs.feature_quality.report import runs_to_records
from sharplab.labs.feature_quality.train import OPTIMIZERS
from sharplab.runner.config import MAX_RUNS, RunSpec, Study, parse_study

STUDY = "feature-probe"  #: the study name its runs are recorded under
#: run metrics the command's rows leave out (the lab's flags; the rows have ``status`` and ``diverged``)
_NOT_IN_ROWS = ("near_chance", "digit_reuse_train")


def configurations(optimizers: Sequence[str], lrs: Sequence[float], rhos: Sequence[float], ms: Sequence[int]
                   ) -> list[tuple[str, float, float, int]]:
    """``(optimizer, lr, rho, m)`` of every configuration, the untrained floor first (at the first lr, which
    it does not use); SGD has rho 0 and m 0."""
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    jobs = [(UNTRAINED, float(lrs[0]), 0.0, 0)]
    for name in dict.fromkeys(optimizers):
        for m in (0,) if name == "sgd" else ms:
            for lr in lrs:
                for rho in (0.0,) if name == "sgd" else rhos:
                    jobs.append((name, float(lr), float(rho), int(m)))
    return jobs


def probe_study(config: dict[str, Any], optimizers: Sequence[str], *, seeds: Sequence[int],
                lrs: Sequence[float], rhos: Sequence[float], ms: Sequence[int] = (0,)) -> Study:
    """The study: ``config`` (fields of :class:`~sharplab.labs.feature_quality.FeatureQualityConfig` other
    than optimizer, lr, rho and m) for every configuration of :func:`configurations` and every seed."""
    if not seeds:
        raise ConfigError("--seeds must be at least 1")
    grids = [{"optimizer": [name], "lr": [lr], "rho": [rho], "m": [m], "seed": list(seeds)}
             for name, lr, rho, m in configurations(optimizers, lrs, rhos, ms)]
    return parse_study({"lab": "feature-quality", "name": STUDY, "config": config, "grid": grids,
                        "max_runs": max(MAX_RUNS, len(grids) * len(seeds))})


@dataclass
class ProbeResult:
    """The command's rows: one per run of the study, in its order, ``selected`` marked."""

    dataset: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  #: the runs' recorded compute time, summed
    unlearned: list[str] = field(default_factory=list)  #: optimizers none of whose configurations learned

    def chosen(self) -> list[dict[str, Any]]:
        """The selected configuration per optimizer; an optimizer none of whose configurations learned
        shows every configuration (``selected`` false), so its column says "diverged" or near chance."""
        return [r for r in self.rows if r["selected"] or r["optimizer"] in self.unlearned]


def _row(spec: RunSpec, run: Any) -> dict[str, Any]:
    """One run as the command prints it: configuration, seed, status and metrics (the floor at lr = rho = 0;
    a diverged run with ``val_error`` 1 and its ``diverged_step``, -1 when its features were not finite)."""
    cfg = spec.config
    floor = cfg["optimizer"] == UNTRAINED
    diverged = run.status == "diverged"
    row: dict[str, Any] = {
        "dataset": cfg["dataset"], "optimizer": optimizer_label(cfg), "rho": 0.0 if floor else float(cfg["rho"]),
        "lr": 0.0 if floor else float(cfg["lr"]), "seed": spec.seed, "status": run.status, "diverged": diverged,
    }  # fmt: skip
    if diverged:
        row.update(val_error=1.0, diverged_step=-1.0 if run.diverged_step is None else float(run.diverged_step))
        return row
    row.update({k: v for k, v in run.metrics.items() if k not in _NOT_IN_ROWS})
    if "gini_w" in row and "gini_phantom" in row:
        row["flattening"] = row["gini_w"] - row["gini_phantom"]
    row["seconds"] = float(run.seconds)
    return row


def probe_result(study: Study, runs: Sequence[Any]) -> ProbeResult:
    """The rows of ``study`` from the store's records ``runs`` (runs not finished are left out), with the
    validation-selected configuration of each optimizer marked."""
    specs = study.runs()
    by_id = {r.run_id: r for r in runs}
    finished = [(s, by_id[s.run_id]) for s in specs
                if s.run_id in by_id and by_id[s.run_id].status in ("done", "diverged")]
    choices = select_per_optimizer(runs_to_records([run for _, run in finished]))
    result = ProbeResult(specs[0].config["dataset"], seconds=sum(float(run.seconds) for _, run in finished))
    result.unlearned = [opt for opt, choice in choices.items() if choice is None]
    for spec, run in finished:
        row = _row(spec, run)
        label, cfg = row["optimizer"], spec.config
        row["selected"] = cfg["optimizer"] == UNTRAINED or choices.get(label) == (float(cfg["lr"]), float(cfg["rho"]))
        result.rows.append(row)
    return result
