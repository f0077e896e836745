"""The five studies of ``sharplab deep-net STUDY`` as grids of ``deep-net`` runs, plus their analyses.

Quick CPU versions (defaults below; digits, PreAct ResNet-18 of width 8, batch 64) finish in minutes on
2 cores; ``examples/deep_net_*.toml`` hold the study's own settings for a GPU (CIFAR-10 / CIFAR-100,
width 64, batch 128, 200 epochs). Every option of :class:`DeepNetConfig` can be overridden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sharplab.errors import ConfigError
from sharplab.io import atomic_write_json

STUDIES = ("m-sharpness", "sharpness", "finetune", "label-noise", "convergence")
QUICK = {"dataset": "digits", "width": 8, "batch_size": 64, "lr": 0.05, "epochs": 15}
ALPHAS = np.linspace(-0.5, 1.5, 9)


def grids(study: str, base: dict[str, Any], rhos: list[float] | None, ms: list[int] | None,
          epochs_after: int) -> list[tuple[str, dict[str, Any], dict[str, list[Any]]]]:
    """``[(name, base config, grid)]`` of ``study``; ``rhos`` / ``ms`` override the default sweeps."""
    b = {**QUICK, **base}
    if study in ("m-sharpness", "sharpness"):
        rhos = rhos or [0.005, 0.01, 0.02]
        ms = ms or [32, 8, 1]
        return [("m-sharpness-erm", {**b, "method": "erm", "rho": 0.0}, {}),
                ("m-sharpness-rho", b, {"method": ["random", "nsam", "msam"], "rho": rhos}),
                ("m-sharpness-m", {**b, "method": "msam"}, {"m": ms, "rho": [rhos[len(rhos) // 2]]})]
    rho = (rhos or [0.01])[0]
    if study == "finetune":
        e = int(b["epochs"])
        total = e + epochs_after
        ft = {**b, "epochs": total, "rho": rho}
        return [("finetune", ft, {}),  # ERM for E + E'
                ("finetune-erm-sam", {**ft, "then_method": "msam", "switch_epoch": e}, {}),
                ("finetune-sam-erm", {**ft, "method": "msam", "then_method": "erm", "switch_epoch": e}, {})]
    if study == "label-noise":
        ln = {"label_noise": 0.6, "epochs": 25, **base, "rho": rho}
        return [("label-noise", {**QUICK, **ln}, {"method": ["erm", "msam"]})]
    if study == "convergence":
        cv = {"n_train": 256, "augment": False, "lr_schedule": "constant", "weight_decay": 0.0, "epochs": 60,
              "grad_norm": True, **base, "rho": rho}
        return [("convergence", {**QUICK, **cv}, {"method": ["erm", "msam", "usam"]})]
    raise ConfigError(f"unknown study {study!r}; choose one of: {', '.join(STUDIES)}")


def finetune_pairs(records: list[Any]) -> list[tuple[Any, Any]]:
    """(ERM run, ERM -> SAM run) pairs with the same seed and base settings."""
    def key(r: Any) -> tuple:
        c = {k: v for k, v in r.config.items() if k not in ("then_method", "switch_epoch", "method")}
        return (r.seed, json.dumps(c, sort_keys=True))

    erm = {key(r): r for r in records if r.config["method"] == "erm" and not r.config["then_method"]}
    return [(erm[key(r)], r) for r in records
            if r.config["method"] == "erm" and r.config["then_method"] == "msam" and key(r) in erm]


def analyse(study: str, out: Path, records: list[Any]) -> dict[str, Any]:
    """Sharpness of every finished run (``sharpness``) or the ERM / ERM->SAM interpolation (``finetune``);
    results cached in ``out/<study>.json`` (only new runs are measured on a re-run)."""
    from sharplab.labs.deep_net.analysis import interpolate, sharpness_of_run
    from sharplab.labs.deep_net.config import DeepNetConfig
    from sharplab.runner.execute import run_dir_of

    path = out / f"{study}.json"
    cache: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    done = [r for r in records if r.status == "done"]
    if study == "sharpness":
        for r in done:
            if r.run_id not in cache:
                cfg = DeepNetConfig(**r.config)
                cache[r.run_id] = {**sharpness_of_run(cfg, run_dir_of(out, r.run_id), r.seed),
                                   "test_error": r.metrics.get("test_error"), "method": cfg.method,
                                   "rho": cfg.rho, "m": cfg.m, "seed": r.seed}
                atomic_write_json(path, cache)
    elif study == "finetune":
        for a, b in finetune_pairs(done):
            k = f"{a.run_id}-{b.run_id}"
            if k not in cache:
                cfg = DeepNetConfig(**a.config)
                cache[k] = interpolate(cfg, run_dir_of(out, a.run_id), run_dir_of(out, b.run_id), a.seed, ALPHAS)
                atomic_write_json(path, cache)
    return cache


def add_sections(study: str, analysis: dict[str, Any], builder: Any) -> None:
    """The study's own table / figure on top of the lab's report section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if study == "sharpness" and analysis:
        rows = sorted(analysis.values(), key=lambda r: (r["method"], r["m"], r["rho"], r["seed"]))
        builder.add_table("Sharpness of the trained models (training examples, eval mode)", [
            {k: r[k] for k in ("method", "rho", "m", "seed", "test_error", "m_sharpness", "hessian_top",
                               "hessian_trace")} for r in rows])
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, key in zip(axes, ("m_sharpness", "hessian_top", "hessian_trace")):
            for method in sorted({r["method"] for r in rows}):
                sel = [r for r in rows if r["method"] == method]
                ax.scatter([r[key] for r in sel], [r["test_error"] for r in sel], label=method)
            ax.set_xlabel(key)
            ax.set_ylabel("test error")
        axes[0].legend()
        fig.tight_layout()
        builder.add_figure("Test error against each sharpness measure", fig)
    if study == "finetune" and analysis:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for curve in analysis.values():
            ax.plot([p["alpha"] for p in curve], [p["test_error"] for p in curve], "o-", color="C0", alpha=0.7)
            ax.plot([p["alpha"] for p in curve], [p["train_error"] for p in curve], "s--", color="C1", alpha=0.7)
        ax.set_xlabel("alpha: (1 - alpha) w_ERM + alpha w_ERM->SAM")
        ax.set_ylabel("error (o test, s train)")
        fig.tight_layout()
        builder.add_figure("Linear interpolation between the ERM and ERM -> SAM weights", fig)
        first = next(iter(analysis.values()))
        builder.add_table("Interpolation (first seed)", first)
