"""Runner lab ``three-feature``: one optimizer trained on the three-feature toy for one seed and probed on
the easy, medium and hard feature (:func:`~sharplab.labs.feature_quality.three_feature.run_one`);
``sharplab mechanisms --study three-feature`` runs SGD and SAM per seed as a study of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sharplab.labs.feature_quality.three_feature import FEATURES3, ThreeFeatureConfig, run_one
from sharplab.runner.context import RunContext
from sharplab.runner.labs import Lab, register_lab

METRICS = (*(f"probe_error_{f}" for f in FEATURES3), "test_error", "v_ratio")


def run(cfg: ThreeFeatureConfig, ctx: RunContext) -> dict[str, float]:
    return run_one(cfg, ctx.seed, ctx)


def report(runs: Sequence[Any], builder: Any) -> None:
    from sharplab.runner.report import add_metric_table

    add_metric_table(builder, "three-feature", list(runs), list(METRICS))
    builder.add_text("Three redundant features of decreasing margin (easy, medium, hard); probe errors on the "
                     "decorrelated probe-test split, in %. v_ratio = ||v_hard|| / ||v_easy|| of the PathwayNet.")


register_lab(Lab("three-feature", ThreeFeatureConfig, run, report=report,
                 description="three-feature toy (easy / medium / hard): an optimizer probed on each feature"))
