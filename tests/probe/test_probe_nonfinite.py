"""Non-finite features (e.g. from a diverged model) never reach scikit-learn: the probe raises
:class:`~sharplab.errors.Diverged` (one line in the CLI) and feature-probe keeps the row as diverged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sharplab.errors import Diverged
from sharplab.probe import fit_linear_probe


@pytest.mark.parametrize("where", ["train", "test"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_features_raise_diverged_not_a_sklearn_error(where, bad) -> None:
    g = torch.Generator().manual_seed(0)
    z_tr, z_te = torch.randn(40, 3, generator=g), torch.randn(20, 3, generator=g)
    y_tr, y_te = torch.arange(40) % 2, torch.arange(20) % 2
    (z_tr if where == "train" else z_te)[3, 1] = bad
    with pytest.raises(Diverged, match="features") as info:
        fit_linear_probe(z_tr, y_tr, z_te, y_te)
    assert "\n" not in str(info.value) and "diverged" in str(info.value)


def test_feature_probe_keeps_a_row_whose_features_are_nan(monkeypatch, capsys, tmp_path) -> None:
    import sharplab.probe.evaluate as evaluate
    from sharplab.cli import main

    real = evaluate.extract_features

    def nan_features(model, x, **kw):  # what a model whose weights overflowed after its last loss check gives
        return torch.full_like(real(model, x, **kw), float("nan"))

    monkeypatch.setattr(evaluate, "extract_features", nan_features)
    rc = main(["feature-probe", "--dataset", "toy", "--optimizer", "sgd", "--epochs", "1", "--seeds", "1",
               "--json", "--quiet", "--data-option", "n_train=200", "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Traceback" not in cap.err and "Input X contains" not in cap.err
    rows = [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")]
    sgd = [r for r in rows if r.get("optimizer") == "sgd"]
    assert sgd and all(r["val_error"] == 1.0 and r["diverged_step"] == -1.0 for r in sgd)
