"""Every study file shipped with sharplab (``examples/*.toml``, ``sharplab/studies/*.toml``) parses, names a
registered lab and expands into runs whose configs validate, arms included: a typo in a study file fails
here, not an hour into ``sharplab run``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharplab.runner.config import load_study

ROOT = Path(__file__).resolve().parents[2]
STUDY_FILES = sorted((ROOT / "examples").rglob("*.toml")) + sorted((ROOT / "src/sharplab/studies").glob("*.toml"))


def test_study_files_found():
    names = {p.name for p in STUDY_FILES}
    assert {"feature_quality_fmnist_full.toml", "feature_quality_fmnist_explore.toml", "demo_toy.toml",
            "m_sharpness_standin.toml"} <= names


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_file_expands_to_valid_runs(path):
    study = load_study(path)
    specs = study.runs()
    assert specs, f"{path.name} defines no runs"
    assert len({s.run_id for s in specs}) == len(specs), f"{path.name}: two grid points give the same run"
    for spec in specs:
        cfg = spec.build_config()
        resolved = getattr(cfg, "resolved", None)
        if resolved is not None:  # feature-quality arms: 'OPTIMIZER key=value ...' must name real fields
            resolved()
    if study.sweep:  # the [sweep] table too: its metric must be one the lab reports, its space valid fields
        from sharplab.runner.sweep import parse_sweep

        parse_sweep(study)
