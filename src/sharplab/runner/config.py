"""Study files: TOML -> validated, typed run specifications.

A study file names a lab, a base configuration and a grid whose cartesian product gives the runs::

    lab = "digits"
    name = "quick"
    [config]            # fields of the lab's frozen config dataclass
    epochs = 3
    [grid]              # every combination is one run; `seed` goes to RunContext.seed
    rho = [0.0, 0.05]
    seed = [0, 1]

A study whose arms sweep different things (a plain baseline next to a rho sweep, each method with its own
radii) writes several ``[[grid]]`` tables instead of one ``[grid]``: the runs are the union of their
products, each table with its own ``seed`` list (default: the config's ``seed``, else 0), and two tables
that define the same run are refused::

    [[grid]]
    method = ["erm"]
    seed = [0, 1]
    [[grid]]
    method = ["random"]
    rho = [0.5, 5.0]
    seed = [0, 1]

Size: the grid's combinations (times the seeds) are counted before the grid is expanded, and a study of more
than :data:`MAX_RUNS` runs is refused at once (each run is a row of the store and a folder); a study file
that really means more raises its own limit with a top-level ``max_runs = N``.

Every value is checked against the lab's config dataclass before anything runs: unknown keys, wrong types
and values outside a field's ``metadata`` (``min``, ``max``, ``choices``) raise a one-line
:class:`~sharplab.errors.ConfigError` naming the key, the value and what is allowed.

A run is identified by a hash of (lab, full resolved config, seed, number of processes): the same
configuration in any study file maps to the same run, which is how re-running finishes only what is missing.
A config class with several spellings of one configuration defines ``resolved()`` (the canonical one, which
runs and stores see); fields that only name a run (``metadata={"label": True}``) are hashed at their default,
fields with ``metadata={"omit_default": True}`` are not stored at their default (old ids stay valid), and runs
stored under an older spelling's id are found by it (:func:`adopt_recorded`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharplab.errors import ConfigError, SharplabError
from sharplab.runner.validation import MAX_INT, validate_config

TOP_LEVEL_KEYS = ("lab", "name", "description", "config", "grid", "sweep", "max_runs")
#: the most runs a study file may define unless it says ``max_runs = N`` (docs/runner.md, docs/limits.md)
MAX_RUNS = 10_000


@dataclass(frozen=True)
class RunSpec:
    """One configuration to run: lab name, resolved config (as a plain dict), seed, processes.

    ``key``: the run id when it is not the hash of ``config`` (:func:`run_spec`; a run read back from a store).
    ``legacy_id``: the id of the spelling as written, when it differs (:func:`adopt_recorded`).
    """

    lab: str
    config: dict[str, Any]
    seed: int = 0
    nproc: int = 1
    study: str = ""
    key: str = ""
    legacy_id: str = ""

    @property
    def run_id(self) -> str:
        return self.key or config_hash(self.lab, self.config, self.seed, self.nproc)

    def build_config(self) -> Any:
        """The lab's frozen config object for this run."""
        from sharplab.runner.labs import get_lab

        return validate_config(get_lab(self.lab).config_cls, self.config, where="config")


@dataclass(frozen=True)
class Study:
    """A parsed study file: the runs it defines plus the raw ``[sweep]`` table (for ``sharplab sweep``)."""

    lab: str
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]
    sweep: dict[str, Any]
    description: str = ""
    #: the grids of ``[[grid]]`` tables after the first (``grid`` / ``seeds``), each with its seeds
    more: tuple[tuple[dict[str, list[Any]], tuple[int, ...]], ...] = ()

    def runs(self, nproc: int = 1) -> list[RunSpec]:
        """Every combination of each grid (seed varying fastest), grid after grid, validated."""
        from sharplab.runner.labs import get_lab

        cls = get_lab(self.lab).config_cls
        specs = []
        for grid, seeds in ((self.grid, self.seeds), *self.more):
            keys = list(grid)
            seen: dict[str, str] = {}
            for combo in itertools.product(*(grid[k] for k in keys)):
                raw = {**self.base, **dict(zip(keys, combo))}
                cfg = validate_config(cls, raw, where="grid")
                runs = [run_spec(self.lab, cfg, seed, nproc, self.name) for seed in seeds]
                if runs and runs[0].run_id in seen:  # two spellings of one configuration
                    raise ConfigError(f"[grid] {_combo(keys, combo)} and {seen[runs[0].run_id]} are one "
                                      f"configuration (run {runs[0].run_id}); list it once")
                if runs:
                    seen[runs[0].run_id] = _combo(keys, combo)
                specs.extend(runs)
        return specs


def configs_study(lab: str, name: str, runs: Sequence[tuple[Any, int]], description: str = "") -> Study:
    """The study of a list of ``(config object, seed)`` runs, for a command that builds its own list of
    configurations rather than one cartesian grid: the fields every configuration shares form the base,
    and each distinct configuration is one grid of single values with its seeds. Repeated runs are listed
    once; :data:`MAX_RUNS` applies as to a study file."""
    check_study_name(name)
    seeds: dict[str, list[int]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for cfg, seed in runs:
        config = config_to_dict(cfg)
        key = json.dumps(config, sort_keys=True)
        configs.setdefault(key, config)
        if check_seed(seed) not in seeds.setdefault(key, []):
            seeds[key].append(seed)
    if not configs:
        raise ConfigError(f"study {name!r} has no runs")
    check_grid_size({}, sum(len(s) for s in seeds.values()))
    first, *rest = configs.values()
    base = {k: v for k, v in first.items()
            if all(k in c and json.dumps(c[k]) == json.dumps(v) for c in rest)}
    grids = [({k: [v] for k, v in c.items() if k not in base}, tuple(seeds[key])) for key, c in configs.items()]
    return Study(lab, name, base, grids[0][0], grids[0][1], {}, description, tuple(grids[1:]))


def _combo(keys: list[str], combo: tuple[Any, ...]) -> str:
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in zip(keys, combo)) or "the base config"


def run_spec(lab: str, cfg: Any, seed: int = 0, nproc: int = 1, study: str = "") -> RunSpec:
    """The run of a validated config object: its canonical spelling (``cfg.resolved()`` where the class
    defines one) and, when the spelling as written hashes to another id, that id as ``legacy_id``."""
    resolve = getattr(cfg, "resolved", None)
    config = config_to_dict(resolve() if callable(resolve) else cfg)
    run_id = config_hash(lab, identity(type(cfg), config), seed, nproc)
    legacy = config_hash(lab, config_to_dict(cfg), seed, nproc)
    return RunSpec(lab, config, seed, nproc, study, key=run_id, legacy_id="" if legacy == run_id else legacy)


def adopt_recorded(specs: list[RunSpec], recorded: dict[str, Any]) -> list[RunSpec]:
    """``specs`` with each one whose id the store lacks but whose ``legacy_id`` it holds replaced by the
    recorded run (its stored config and id): stores written before a lab resolved its spellings at load keep
    resuming and de-duplicating. ``recorded``: run id -> record (with ``.config``)."""
    out = []
    for s in specs:
        if s.legacy_id and s.run_id not in recorded and s.legacy_id in recorded:
            s = RunSpec(s.lab, recorded[s.legacy_id].config, s.seed, s.nproc, s.study, key=s.legacy_id)
        out.append(s)
    return out


def config_hash(lab: str, config: dict[str, Any], seed: int, nproc: int = 1) -> str:
    """12 hex digits of sha256 over the canonical JSON of the run's identity."""
    ident: dict[str, Any] = {"lab": lab, "config": config, "seed": seed}
    if nproc != 1:
        ident["nproc"] = nproc
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def identity(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """What the run id of a resolved config of ``cls`` hashes: the config with every ``label`` field at its
    default (labels name a run, they do not make it another)."""
    labels = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("label")}
    return {k: (_default(labels[k]) if k in labels else v) for k, v in config.items()}


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    return json.loads(json.dumps(value))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-friendly dict (tuples become lists); ``omit_default`` fields at their
    default are left out."""
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for f in dataclasses.fields(cfg):
        if f.metadata.get("omit_default") and f.name in out and out[f.name] == _default(f):
            del out[f.name]
    return out


# --- loading -----------------------------------------------------------------------------------------
def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise SharplabError("reading TOML on Python 3.10 needs tomli: pip install tomli") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file is not valid TOML: {exc}") from None


def load_study(path: str | Path) -> Study:
    """Parse and validate a study file (every grid combination is checked here, before any run)."""
    path = Path(path)
    if not path.is_file():
        raise SharplabError(f"study file {str(path)!r} not found; pass the path of a .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"study file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise SharplabError(f"cannot read study file {str(path)!r}: {exc.strerror}") from None
    default = "".join(c if c in _NAME_CHARS else "-" for c in path.stem).lstrip(".") or "study"
    return parse_study(_toml_loads(text), default_name=default)


def parse_study(doc: dict[str, Any], default_name: str = "study") -> Study:
    from sharplab.runner.labs import get_lab

    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown top-level key {key!r} in study file; "
                              f"allowed: {', '.join(TOP_LEVEL_KEYS)}")
    if "lab" not in doc or not isinstance(doc["lab"], str):
        raise ConfigError('study file needs lab = "<name>" at the top; see `sharplab labs`')
    lab = get_lab(doc["lab"])
    name = check_study_name(doc.get("name", default_name))
    base = dict(_table(doc, "config"))
    default_seeds: list[Any] = [base.pop("seed")] if "seed" in base else [0]
    tables = _grid_tables(doc)
    limit = doc.get("max_runs", MAX_RUNS)
    check_grid_size({}, 0, limit)  # the limit itself, even for a study of no runs
    total = 0
    for _, table in tables:  # counted before any value is checked or combined: a 10^7-run grid stops here
        seeds = table.get("seed", default_seeds)
        total += check_grid_size({k: v for k, v in table.items() if isinstance(v, list) and k != "seed"},
                                 len(seeds) if isinstance(seeds, list) else 1, limit)
        if total > limit:
            raise ConfigError(f"the [[grid]] tables define {total} runs or more, more than the limit of {limit}; "
                              f"shrink them, or raise the limit with a top-level max_runs = {total}")
    cls = lab.config_cls
    validate_config(cls, base, where="config")
    grids = [_one_grid(cls, base, where, table, default_seeds) for where, table in tables]
    study = Study(lab.name, name, base, grids[0][0], grids[0][1], dict(_table(doc, "sweep")),
                  str(doc.get("description", "")), tuple(grids[1:]))
    specs = study.runs()  # combinations can still fail the config class's own cross-field checks
    if len(tables) > 1 and len({s.run_id for s in specs}) != len(specs):
        raise ConfigError("two [[grid]] tables define the same run (same config and seed); list each run once")
    return study


def _grid_tables(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[("[grid]", table)]``, or one entry per ``[[grid]]`` table (named ``[[grid]] 1``, ``2``, ...)."""
    value = doc.get("grid", {})
    if isinstance(value, list):
        if not value or not all(isinstance(t, dict) for t in value):
            raise ConfigError("grid must be a table ([grid]) or a list of tables ([[grid]] blocks), each "
                              "with key = [values] lines")
        return [(f"[[grid]] {i}", dict(t)) for i, t in enumerate(value, 1)] if len(value) > 1 \
            else [("[grid]", dict(value[0]))]
    return [("[grid]", dict(_table(doc, "grid")))]


def _one_grid(cls: type, base: dict[str, Any], where: str, grid_raw: dict[str, Any],
              default_seeds: list[Any]) -> tuple[dict[str, list[Any]], tuple[int, ...]]:
    """One grid table checked: its seeds and its value lists (each value validated alone)."""
    seeds = grid_raw.pop("seed", default_seeds)
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where} seed = {seeds!r} must be a non-empty list of integers, e.g. [0, 1, 2]")
    for s in seeds:
        check_seed(s, "seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} seed = {seeds!r} repeats a seed; list each seed once")
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where} {key} = {values!r} must be a non-empty list of values, "
                              f"e.g. {key} = [...]")
        canon = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(canon)) != len(canon):
            raise ConfigError(f"{where} {key} = {values!r} repeats a value; list each value once")
        grid[key] = values
    for key, values in grid.items():  # check each grid value alone first: the message names it exactly
        for v in values:
            validate_config(cls, {**base, key: v}, where="grid")
    return grid, tuple(seeds)


#: a study name becomes a file name (``DIR/studies/<name>.json``, ``runs/<name>``): no paths
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_SEED = MAX_INT


def check_study_name(name: Any) -> str:
    """A study name: 1-100 letters, digits, ``.``, ``_``, ``-``, not starting with ``.`` (no path parts)."""
    if (not isinstance(name, str) or not name or len(name) > 100 or name[0] == "."
            or not set(name) <= _NAME_CHARS):
        raise ConfigError(f"name = {name!r} is not allowed; use 1-100 letters, digits, '.', '_' or '-', "
                          "not starting with '.' (the name is used as a file name)")
    return name


def check_grid_size(grid: dict[str, list[Any]], n_seeds: int, limit: Any = MAX_RUNS) -> int:
    """The number of runs of ``grid`` x ``n_seeds``, counted without expanding it; ConfigError past ``limit``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"max_runs = {limit!r} must be a positive integer (the most runs the study may define)")
    n = n_seeds
    for values in grid.values():
        n *= len(values)
    if n > limit:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        raise ConfigError(f"the study defines {n} runs ({sizes} x {n_seeds} seeds), more than the limit of "
                          f"{limit}; shrink the grid, or raise the limit with a top-level max_runs = {n}")
    return n


def check_seed(seed: Any, where: str = "seed") -> int:
    """A seed: an integer in [0, 2^63 - 1] (what torch and NumPy generators accept)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where} = {seed!r} is not allowed; seeds are integers in [0, 2^63 - 1]")
    return seed


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table: write [{key}] on its own line, then key = value lines")
    return value
