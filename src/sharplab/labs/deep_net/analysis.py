"""Post-hoc analyses on finished ``deep-net`` runs: sharpness of saved weights, weight interpolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sharplab.errors import SharplabError
from sharplab.labs.deep_net.config import DeepNetConfig
from sharplab.labs.deep_net.train import build_net, error_and_loss, load_data, sharpness_metrics


def load_final(cfg: DeepNetConfig, run_dir: Path, in_channels: int, num_classes: int) -> torch.nn.Module:
    path = Path(run_dir) / "final.pt"
    if not path.exists():
        raise SharplabError(f"{path} is missing; finish the run first (sharplab run / sharplab deep-net ...)")
    model = build_net(cfg, in_channels, num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def sharpness_of_run(cfg: DeepNetConfig, run_dir: Path, seed: int) -> dict[str, float]:
    """m-sharpness, top Hessian eigenvalue and trace of a run's final weights on its training data."""
    data, noisy, _ = load_data(cfg, seed)
    model = load_final(cfg, run_dir, data.input_shape[0], data.num_classes)
    return sharpness_metrics(cfg, model, data.x_train, noisy)


def interpolate(cfg: DeepNetConfig, run_a: Path, run_b: Path, seed: int, alphas: np.ndarray
                ) -> list[dict[str, float]]:
    """Test/train error along w(alpha) = (1 - alpha) w_a + alpha w_b (GroupNorm: no statistics to reset)."""
    data, noisy, _ = load_data(cfg, seed)
    a = load_final(cfg, run_a, data.input_shape[0], data.num_classes)
    b = load_final(cfg, run_b, data.input_shape[0], data.num_classes)
    model = build_net(cfg, data.input_shape[0], data.num_classes)
    sa, sb = a.state_dict(), b.state_dict()
    rows = []
    for alpha in alphas:
        model.load_state_dict({k: (1 - alpha) * sa[k] + alpha * sb[k] if sa[k].is_floating_point() else sa[k]
                               for k in sa})
        te, tl = error_and_loss(model, data.x_test, data.y_test, torch.device("cpu"))
        tre, trl = error_and_loss(model, data.x_train, noisy, torch.device("cpu"))
        rows.append({"alpha": float(alpha), "test_error": te, "test_loss": tl, "train_error": tre,
                     "train_loss": trl})
    return rows
