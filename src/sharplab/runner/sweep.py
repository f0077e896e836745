"""Hyperparameter sweeps with Optuna over an RDB storage (SQLite by default, PostgreSQL for many machines).

A study file gains a ``[sweep]`` table; ``[config]`` stays the base configuration::

    [sweep]
    metric = "test_error"        # a final metric the lab returns
    direction = "minimize"       # or "maximize"
    seeds = [0]                  # each trial runs these seeds; the objective is the mean over them
    [sweep.space]
    lr = { low = 0.01, high = 0.5, log = true }   # float field -> suggest_float; int field -> suggest_int
    rho = { low = 0.0, high = 0.2 }               # optional: step = ...
    optimizer = ["sgd", "sam"]                    # a list -> suggest_categorical

Every trial's runs go through the normal runner into ``--out`` (results store, checkpoints, report), so a
configuration already run is reused, not trained again. ``--trials N`` is the number of *completed*
trials the Optuna study should reach: re-running the same command after a crash, or running it on several
machines at once against one storage, stops once the study holds N completed trials (a worker starts a
trial only while completed + live RUNNING trials are fewer than N, so workers do not overshoot).
Several workers share a study simply by running the same command with the same
``--storage`` and study name; see ``docs/runner.md`` for PostgreSQL.

Crashes: each worker's trials beat in the storage (Optuna's heartbeat, every :data:`HEARTBEAT_S` s); a
trial whose worker was killed is marked FAIL by the next worker once its heartbeat is
:data:`GRACE_S` s old (at once when the worker ran on this host and its process is gone), so no trial
stays RUNNING. A fixed ``--sampler-seed`` is combined with the number of trials already in the study, so
a restarted sweep does not draw the configurations it already tried again.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharplab.errors import ConfigError, SharplabError
from sharplab.runner.config import Study, check_seed, run_spec
from sharplab.runner.execute import in_process_runner, run_until_claimed
from sharplab.runner.single_run import RunOptions
from sharplab.runner.store import check_out_dir, open_store
from sharplab.runner.validation import check_value, config_fields, validate_config

SWEEP_KEYS = ("metric", "direction", "seeds", "space")
HEARTBEAT_S = 10
GRACE_S = 30
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SweepSpec:
    metric: str
    direction: str
    seeds: tuple[int, ...]
    space: tuple[Param, ...]


def parse_sweep(study: Study) -> SweepSpec:
    """Validate ``[sweep]`` against the lab's config class (one-line ConfigError on any problem)."""
    from sharplab.runner.labs import get_lab

    table = study.sweep
    if not table:
        raise ConfigError("study file has no [sweep] table; add [sweep] metric = ... and [sweep.space]")
    for key in table:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"[sweep] unknown key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")
    metric = table.get("metric")
    if not isinstance(metric, str):
        raise ConfigError('[sweep] metric = "<final metric name>" is required, e.g. metric = "test_error"')
    lab = get_lab(study.lab)
    if not lab.has_metric(metric):
        raise ConfigError(f"[sweep] metric = {metric!r} is not a final metric of lab {lab.name!r}; "
                          f"choose one of: {', '.join(lab.metrics)}")
    direction = table.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"[sweep] direction = {direction!r} is not allowed; use 'minimize' or 'maximize'")
    seeds = table.get("seeds", list(study.seeds))
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"[sweep] seeds = {seeds!r} must be a non-empty list of integers >= 0")
    for s in seeds:
        check_seed(s, "[sweep] seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"[sweep] seeds = {seeds!r} repeats a seed; list each seed once")
    fields = config_fields(get_lab(study.lab).config_cls)
    space_raw = table.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError("[sweep.space] is missing or empty; add e.g. lr = { low = 0.01, high = 0.5 }")
    space = []
    for name, spec in space_raw.items():
        where = f"[sweep.space] {name}"
        if name not in fields:
            raise ConfigError(f"{where}: unknown config key; allowed keys: {', '.join(fields)}")
        typ, field = fields[name]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} = [] needs at least one choice")
            space.append(Param(name, "categorical", choices=tuple(check_value(where, v, typ, field.metadata)
                                                                  for v in spec)))
            continue
        keys = set(spec) if isinstance(spec, dict) else set()
        if not isinstance(spec, dict) or keys - {"low", "high", "log", "step"} or not {"low", "high"} <= keys:
            raise ConfigError(f"{where} = {spec!r}: write a list of choices or {{ low = .., high = .. }}")
        if typ not in (int, float):
            raise ConfigError(f"{where}: a range needs an int or float field; give a list of choices instead")
        low = check_value(f"{where}.low", spec["low"], typ, field.metadata)
        high = check_value(f"{where}.high", spec["high"], typ, field.metadata)
        log = spec.get("log", False)
        if low >= high or not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"{where} = {spec!r}: need low < high, and low > 0 when log = true")
        step = spec.get("step")
        if step is not None:
            ok = isinstance(step, int) if typ is int else isinstance(step, (int, float))
            if not ok or isinstance(step, bool) or not math.isfinite(step) or step <= 0 or step > high - low:
                raise ConfigError(f"{where}.step = {step!r} must be a positive {typ.__name__} <= high - low")
            if log:
                raise ConfigError(f"{where}: step and log = true cannot be combined; drop one")
        space.append(Param(name, "int" if typ is int else "float", low, high, log, step))
    return SweepSpec(metric, direction, tuple(seeds), tuple(space))


def check_storage_url(url: str) -> None:
    """One-line error for a storage URL of an unknown scheme or an unusable SQLite path."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        raise SharplabError(f"--storage {url!r} is not a supported database URL; use sqlite:///path.db or "
                            "postgresql://user@host/db")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise SharplabError(f"--storage {url!r}: write sqlite:///relative/path.db or sqlite:////absolute.db")
        path = Path(rest[1:])
        if path.is_dir():
            raise SharplabError(f"--storage {url!r}: {str(path)!r} is a folder; name a database file")
        from sharplab.runner.store.sqlite import is_sqlite_file

        if path.is_file() and not is_sqlite_file(path):
            raise SharplabError(f"--storage {url!r}: {str(path)!r} exists and is not a SQLite database; "
                                "name a new file or an Optuna database")
        check_out_dir(path.parent)


def make_storage(url: str) -> Any:
    """An Optuna ``RDBStorage`` with trial heartbeats; SQLite gets a long lock timeout so that workers can
    share the file."""
    import optuna

    check_storage_url(url)
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _retry(lambda: optuna.storages.RDBStorage(url, **kwargs))
    except ImportError as exc:
        raise SharplabError(f"--storage {url!r} needs a database driver: {exc}".splitlines()[0]) from None
    except Exception as exc:  # sqlalchemy OperationalError & co: unreachable server, bad credentials
        if type(exc).__module__.startswith(("sqlalchemy", "psycopg2", "sqlite3")):
            raise SharplabError(f"--storage {url!r} cannot be opened: {exc}".splitlines()[0][:300]) from None
        raise


def _retry(make: Callable[[], Any], attempts: int = 6) -> Any:
    """Workers started together race to create the schema/study on a fresh database; the loser retries
    and finds them in place."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return make()
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 + 0.25 * random.random() * (attempt + 1))


def run_sweep(study: Study, out_dir: str | os.PathLike, trials: int, storage: str,
              study_name: str | None = None, sampler_seed: int | None = None,
              options: RunOptions | None = None) -> Any:
    """Optimise until the Optuna study holds ``trials`` completed trials; return the Optuna study."""
    import optuna
    if trials < 1:
        raise SharplabError(f"--trials {trials} must be >= 1")
    sweep = parse_sweep(study)
    cls = _config_cls(study.lab)
    out_dir = Path(out_dir)
    if (options and options.quiet) or os.environ.get("CI"):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = make_storage(storage)
    name = study_name or study.name
    ostudy = _retry(lambda: optuna.create_study(study_name=name, storage=rdb, direction=sweep.direction,
                                                load_if_exists=True))
    fail_dead_trials(ostudy)
    ostudy.sampler = optuna.samplers.TPESampler(seed=restart_seed(sampler_seed, ostudy))
    run_one = in_process_runner(out_dir, options or RunOptions())
    here = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", here)
        values = {p.name: p.suggest(trial) for p in sweep.space}
        cfg = validate_config(cls, {**study.base, **values}, where="sweep")
        specs = [run_spec(study.lab, cfg, seed, 1, study.name) for seed in sweep.seeds]
        with open_store(out_dir) as store:
            store.add_runs(specs)
        statuses = [run_until_claimed(out_dir, spec, run_one) for spec in specs]
        trial.set_user_attr("run_ids", [s.run_id for s in specs])
        if any(s != "done" for s in statuses):
            trial.set_user_attr("statuses", statuses)
            raise optuna.TrialPruned(f"runs ended {statuses}")
        with open_store(out_dir) as store:
            scores = [store.get(s.run_id).metrics.get(sweep.metric) for s in specs]
        if any(v is None for v in scores):
            raise SharplabError(f"[sweep] metric {sweep.metric!r} is not among the lab's final metrics")
        return float(sum(scores) / len(scores))

    if budget_taken(ostudy) < trials:
        ostudy.optimize(objective, n_trials=trials, callbacks=[_stop_at(trials)], catch=())
    write_summary(ostudy, sweep, out_dir)
    return ostudy


def summary_path(out_dir: str | os.PathLike, study_name: str) -> Path:
    """Where :func:`write_summary` puts a sweep's summary (``sharplab report`` reads every one there)."""
    return Path(out_dir) / "sweeps" / f"{study_name}.json"


def write_summary(ostudy: Any, sweep: SweepSpec, out_dir: str | os.PathLike) -> Path:
    """``sweeps/<study>.json`` (atomic): every trial (number, state, value, params, run ids, worker), the best
    trial, and Optuna's parameter importances (fANOVA) when at least two trials completed. The report's
    sweep section is built from it, so it needs no access to the Optuna storage."""
    from optuna.trial import TrialState

    from sharplab.io import atomic_write_json

    trials = ostudy.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        try:
            import optuna

            importances = {k: float(v) for k, v in optuna.importance.get_param_importances(ostudy).items()}
        except (RuntimeError, ValueError, ImportError):  # e.g. a parameter that never varied
            importances = {}
    pick = min if sweep.direction == "minimize" else max
    best = pick(complete, key=lambda t: t.value) if complete else None
    summary = {
        "study": ostudy.study_name, "metric": sweep.metric, "direction": sweep.direction,
        "seeds": list(sweep.seeds),
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "run_ids": t.user_attrs.get("run_ids", []), "worker": t.user_attrs.get("worker", "")}
                   for t in trials],
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "importances": importances,
    }
    return atomic_write_json(summary_path(out_dir, ostudy.study_name), summary)


def budget_taken(ostudy: Any) -> int:
    """Completed trials plus those RUNNING in live workers (dead workers' trials are failed first): a worker
    starts another trial only while this is below ``--trials``, so concurrent workers do not overshoot the
    budget (a worker whose trial dies later leaves the budget short until the command is re-run)."""
    from optuna.trial import TrialState

    fail_dead_trials(ostudy)
    return len(ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def _stop_at(trials: int) -> Callable[[Any, Any], None]:
    def callback(ostudy: Any, trial: Any) -> None:
        if budget_taken(ostudy) >= trials:
            ostudy.stop()

    return callback


def restart_seed(sampler_seed: int | None, ostudy: Any) -> int | None:
    """The TPE seed for this worker: ``sampler_seed`` mixed with the number of trials already stored, so a
    restart (or a second worker) does not replay the first worker's draws; None stays random."""
    if sampler_seed is None:
        return None
    n = len(ostudy.get_trials(deepcopy=False))
    return (sampler_seed * 1_000_003 + n) % 2**32 if n else sampler_seed % 2**32


def fail_dead_trials(ostudy: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker ran on this host and is gone (killed); return their numbers.
    Trials of workers on other hosts are failed by Optuna once their heartbeat is ``GRACE_S`` old."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from sharplab.runner.store import pid_alive

    failed = []
    host = socket.gethostname()
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        dead = worker_host == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))
        try:
            if dead and ostudy._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed.append(t.number)
        except UpdateFinishedTrialError:  # another live worker failed it between our read and our write
            continue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fail_stale_trials(ostudy)
    return failed


def _config_cls(lab: str) -> type:
    from sharplab.runner.labs import get_lab

    return get_lab(lab).config_cls
