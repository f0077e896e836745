"""The five studies of ``sharplab deep-net STUDY`` as grids of ``deep-net`` runs, plus their analyses.

Quick CPU versions (defaults below; digits, PreAct ResNet-18 of width 8, batch 64) finish in minutes on
2 cores; ``examples/deep_net_*.toml`` hold the study's own settings for a GPU (CIFAR-10 / CIFAR-100,
width 64, batch 128; 200 epochs for m-sharpness, 1,000 for label noise, 1,000 + 100 for fine-tuning). Every
option of :class:`DeepNetConfig` can be overridden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sharplab.errors import ConfigError
from sharplab.io import atomic_write_json

STUDIES = ("m-sharpness", "sharpness", "finetune", "label-noise", "convergence")
#: quick CPU defaults. lr 0.01 and 20 epochs were chosen by ERM's final *training* loss (lr 0.01 / 0.02 / 0.03
#: at 15 and 20 epochs, seed 0; no test or validation numbers used): 0.117 at lr 0.01, 20 epochs (training
#: error 2.0 %), against 0.35 (8.5 %) for the former lr 0.05, 15 epochs, which underfitted.
QUICK = {"dataset": "digits", "width": 8, "batch_size": 64, "lr": 0.01, "epochs": 20, "train_eval_every": 5}
#: seeds of each quick study when ``--seed`` is not given
QUICK_SEEDS = {"m-sharpness": [0, 1], "sharpness": [0, 1], "finetune": [0, 1, 2], "label-noise": [0, 1, 2],
               "convergence": [0, 1, 2]}
SHARPNESS_KEYS = ("m_sharpness", "hessian_top", "hessian_trace")


def grids(study: str, base: dict[str, Any], rhos: list[float] | None, ms: list[int] | None,
          epochs_after: int) -> list[tuple[str, dict[str, Any], dict[str, list[Any]]]]:
    """``[(name, base config, grid)]`` of ``study``; ``rhos`` / ``ms`` override the default sweeps."""
    b = {**QUICK, **base}
    if study in ("m-sharpness", "sharpness"):
        rhos = rhos or [0.005, 0.02]
        ms = ms or [32, 8, 1]
        # the m sweep at the smallest rho: small m perturbs each example on its own, and 1-SAM at rho 0.01
        # did not fit the training set (40 % training error) in the earlier quick runs
        return [("m-sharpness-erm", {**b, "method": "erm", "rho": 0.0}, {}),
                ("m-sharpness-rho", b, {"method": ["random", "nsam", "m-sam"], "rho": rhos}),
                ("m-sharpness-m", {**b, "method": "m-sam"}, {"m": ms, "rho": [min(rhos)]})]
    rho = (rhos or [0.01])[0]
    if study == "finetune":
        e = int(b["epochs"])
        total = e + epochs_after
        ft = {**b, "epochs": total, "rho": rho}
        return [("finetune", ft, {}),  # ERM for E + E'
                ("finetune-erm-sam", {**ft, "then_method": "m-sam", "switch_epoch": e}, {}),
                ("finetune-sam-erm", {**ft, "method": "m-sam", "then_method": "erm", "switch_epoch": e}, {})]
    if study == "label-noise":
        ln = {"label_noise": 0.6, "epochs": 40, "train_eval_every": 1, **base, "rho": rho}
        return [("label-noise", {**QUICK, **ln}, {"method": ["erm", "m-sam"]})]
    if study == "convergence":
        cv = {"n_train": 256, "augment": False, "lr": 0.05, "lr_schedule": "constant", "weight_decay": 0.0,
              "epochs": 60, "grad_norm": True, "train_eval_every": 1, **base, "rho": rho}
        return [("convergence", {**QUICK, **cv}, {"method": ["erm", "m-sam", "usam"]})]
    raise ConfigError(f"unknown study {study!r}; choose one of: {', '.join(STUDIES)}")


SUMMARY_KEYS = ("method", "then_method", "rho", "m", "label_noise")
SUMMARY_METRICS = ("test_error", "early_stopped_test_error", "train_error", "train_loss", "train_error_noisy",
                   "train_error_clean", "grad_norm", "full_train_loss")


def label(config: dict[str, Any]) -> str:
    """Short name of a run's method: ``ERM``, ``random``, ``n-SAM``, ``64-SAM`` (m-SAM with its m), ``USAM``,
    with ``A -> B`` for a switch."""
    def one(method: str) -> str:
        if method == "m-sam":
            return f"{config.get('m') or config['batch_size']}-SAM"
        return {"erm": "ERM", "nsam": "n-SAM", "usam": "USAM"}.get(method, method)

    name = one(config["method"])
    return f"{name} -> {one(config['then_method'])}" if config.get("then_method") else name


#: order of the methods in tables and figures
METHOD_ORDER = {"erm": 0, "random": 1, "nsam": 2, "m-sam": 3, "usam": 4}


def setting_order(config: dict[str, Any]) -> tuple:
    """Sort key of a setting: ERM, random, n-SAM, m-SAM by decreasing m, USAM; switches after; then rho."""
    return (METHOD_ORDER.get(config["method"], 9), bool(config.get("then_method")), -(config.get("m") or 10**9),
            config["rho"], label(config))


def group_settings(runs: list[Any]) -> dict[tuple, list[Any]]:
    """The runs of each setting (same :data:`SUMMARY_KEYS`), settings in :func:`setting_order`."""
    groups: dict[tuple, list[Any]] = {}
    for r in runs:
        groups.setdefault(tuple(r.config.get(k) for k in SUMMARY_KEYS), []).append(r)
    return dict(sorted(groups.items(), key=lambda item: setting_order(item[1][0].config)))


def summarise(records: list[Any], sharpness: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds of the final metrics, per setting (method, then_method, rho, m), with
    the sharpness measures of ``sharpness`` (:func:`analyse` of the ``sharpness`` study, by run id) when given.

    When an ERM run (rho 0, no switch) of the same seed exists, also ``d_test_error``: the mean of the paired
    per-seed differences test_error(run) - test_error(ERM) with their sd and a 95 % t interval
    (mean +- t_{0.975, k-1} sd / sqrt(k)), which removes the test-set and seed effects the two runs share."""
    from sharplab.runner.aggregate import summarize

    done = [r for r in records if r.status == "done" and r.metrics]
    erm = {r.seed: r.metrics["test_error"] for r in done
           if r.config["method"] == "erm" and not r.config.get("then_method") and "test_error" in r.metrics}
    groups = group_settings(done)
    rows = []
    for runs in groups.values():
        cfg = runs[0].config
        row: dict[str, Any] = {"setting": label(cfg), "method": cfg["method"], "rho": cfg["rho"],
                               "m": cfg.get("m", 0), "seeds": len(runs)}
        measured = [{**(sharpness or {}).get(r.run_id, {}), **r.metrics} for r in runs]
        for name in (*SUMMARY_METRICS, *SHARPNESS_KEYS):
            vals = [values[name] for values in measured if name in values]
            if vals:
                s = summarize(vals)
                row[name], row[f"{name}_sd"] = s.mean, s.std
        diffs = summarize(r.metrics["test_error"] - erm[r.seed] for r in runs if r.seed in erm)
        if cfg["method"] != "erm" and diffs.n:
            row["d_test_error"] = diffs.mean
            if diffs.n > 1:
                row["d_test_error_ci95"] = [diffs.mean - diffs.ci95, diffs.mean + diffs.ci95]
        rows.append(row)
    return rows


def finetune_pairs(records: list[Any]) -> list[tuple[Any, Any]]:
    """(ERM run, ERM -> SAM run) pairs with the same seed and base settings."""
    def key(r: Any) -> tuple:
        c = {k: v for k, v in r.config.items() if k not in ("then_method", "switch_epoch", "method")}
        return (r.seed, json.dumps(c, sort_keys=True))

    erm = {key(r): r for r in records if r.config["method"] == "erm" and not r.config["then_method"]}
    return [(erm[key(r)], r) for r in records
            if r.config["method"] == "erm" and r.config["then_method"] == "m-sam" and key(r) in erm]


def analyse(study: str, out: Path, records: list[Any]) -> dict[str, Any]:
    """Sharpness of every finished run (``sharpness``) or the ERM / ERM->SAM interpolation (``finetune``);
    results cached in ``out/<study>.json`` (only new runs are measured on a re-run)."""
    from sharplab.labs.deep_net.analysis import ALPHAS, interpolate, sharpness_of_run
    from sharplab.labs.deep_net.config import DeepNetConfig
    from sharplab.runner.run_folder import run_dir_of

    path = out / f"{study}.json"
    cache: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    done = [r for r in records if r.status == "done"]
    if study == "sharpness":
        for r in done:
            if r.run_id not in cache:
                cfg = DeepNetConfig(**r.config)
                # a run trained with sharpness = true measured its final weights already: not measured twice
                measured = {k: r.metrics[k] for k in SHARPNESS_KEYS if k in r.metrics}
                if len(measured) < len(SHARPNESS_KEYS):
                    measured = sharpness_of_run(cfg, run_dir_of(out, r.run_id), r.seed)
                cache[r.run_id] = {**measured,
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


def analyse_folder(study: str, out: str | Path) -> dict[str, Any]:
    """:func:`analyse` on every run of an output folder (e.g. one made by ``sharplab run
    examples/deep_net_finetune.toml``): ``analyse_folder("finetune", "runs/ft")``."""
    from sharplab.runner.store import open_store

    if study not in ("sharpness", "finetune"):
        raise ConfigError(f"analyse_folder: study must be 'sharpness' or 'finetune', got {study!r}")
    out = Path(out)
    with open_store(out, create=False) as store:
        records = store.runs()
    return analyse(study, out, records)


def add_sections(study: str, analysis: dict[str, Any], builder: Any, summary: list[dict[str, Any]] | None = None
                 ) -> None:
    """The study's own tables / figures on top of the lab's report section (``summary``: :func:`summarise`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary:
        cols = ["setting", "rho", "seeds", "test_error", "test_error_sd", "d_test_error", "d_test_error_ci95",
                "early_stopped_test_error", "train_error", "train_loss", "train_error_noisy", "train_error_clean",
                "grad_norm", "m_sharpness", "m_sharpness_sd", "hessian_top", "hessian_top_sd", "hessian_trace",
                "hessian_trace_sd"]
        present = [c for c in cols if any(c in r for r in summary)]
        builder.add_table("Mean and sd over seeds (d_test_error: paired difference to ERM of the same seed, "
                          "95 % t interval)", [{c: r.get(c, "") for c in present} for r in summary])
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
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for i, curve in enumerate(analysis.values()):
            alphas = [p["alpha"] for p in curve]
            ax.plot(alphas, [100 * p["test_error"] for p in curve], "-", color="C0", alpha=0.7,
                    label="test" if i == 0 else None)
            ax.plot(alphas, [100 * p["train_error"] for p in curve], "--", color="C1", alpha=0.7,
                    label="training" if i == 0 else None)
        ax.axvline(0, color="grey", lw=0.6)
        ax.axvline(1, color="grey", lw=0.6)
        ax.set_xlabel("alpha: (1 - alpha) w_ERM + alpha w_ERM->SAM (one line per seed)")
        ax.set_ylabel("error (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        builder.add_figure("Linear interpolation between the ERM and ERM -> SAM weights", fig)
        first = next(iter(analysis.values()))
        builder.add_table("Interpolation (first seed)", first)
