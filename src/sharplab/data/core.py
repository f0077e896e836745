"""Containers, the data-set registry and the split helpers shared by every two-feature data set.

A two-feature data set gives every example an input ``x``, a training label ``y`` and two feature labels
``easy`` and ``hard`` (Springer, Nagarajan & Raghunathan, *SAM Enhances Feature Quality via Balanced
Learning*, ICLR 2024, arXiv:2405.20439). In ``train``/``val``/``test`` the features are redundant
(``easy == hard == y`` for the dominoes and the toy); in the probe splits ``probe_train``/``probe_test`` they
are *decorrelated*: every (easy, hard) pair occurs equally often, so

    P(easy = a, hard = b) = P(easy = a) * P(hard = b) = 1 / (K_easy * K_hard)

holds exactly in the empirical distribution, and a probe for one feature cannot succeed through the other.
In the probe splits ``y`` is the hard feature's label (the feature a robust model should use).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sharplab.errors import ConfigError
from sharplab.registry import Registry

SPLITS: tuple[str, ...] = ("train", "val", "test", "probe_train", "probe_test")
DECORRELATED_SPLITS: tuple[str, ...] = ("probe_train", "probe_test")


@dataclass
class TwoFeatureSplit:
    """One split: inputs ``x`` [N, ...] (float32), labels ``y``, ``easy``, ``hard`` [N] (int64)."""

    x: torch.Tensor
    y: torch.Tensor
    easy: torch.Tensor
    hard: torch.Tensor

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for name in ("y", "easy", "hard"):
            t = getattr(self, name)
            if t.dtype != torch.long or t.shape != (n,):
                raise ValueError(f"{name} must be int64 of shape ({n},), got {t.dtype} {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def pair_counts(self) -> dict[tuple[int, int], int]:
        """Number of examples of each (easy, hard) label pair present in the split."""
        pairs, counts = torch.unique(torch.stack([self.easy, self.hard], 1), dim=0, return_counts=True)
        return {(int(a), int(b)): int(c) for (a, b), c in zip(pairs.tolist(), counts.tolist())}

    def subset(self, index: torch.Tensor | np.ndarray) -> TwoFeatureSplit:
        idx = torch.as_tensor(index, dtype=torch.long)
        return TwoFeatureSplit(self.x[idx], self.y[idx], self.easy[idx], self.hard[idx])


@dataclass
class TwoFeatureData:
    """A loaded data set: ``splits`` maps each name in :data:`SPLITS` to a :class:`TwoFeatureSplit`."""

    name: str
    splits: dict[str, TwoFeatureSplit]
    num_classes: int
    num_easy_classes: int
    num_hard_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    def __getitem__(self, split: str) -> TwoFeatureSplit:
        return self.splits[split]


@dataclass(frozen=True)
class DatasetEntry:
    """Registry record: ``load(options, root, seed)`` builds the data from a frozen ``options`` dataclass."""

    name: str
    options: type
    load: Callable[[Any, str | None, int], TwoFeatureData]
    summary: str
    folders: tuple[str, ...] = ()  # sub-folders of a data root that the set reads


DATASETS: Registry[DatasetEntry] = Registry("data set")


def register_dataset(name: str, options: type, summary: str, folders: Sequence[str] = ()):
    """Decorator: register ``load(options, root, seed) -> TwoFeatureData`` under ``name``."""

    def deco(fn: Callable[[Any, str | None, int], TwoFeatureData]):
        DATASETS.add(name, DatasetEntry(name, options, fn, summary, tuple(folders)))
        return fn

    return deco


#: options a lab loads a data set with when its user sets none: ``{dataset: {lab: {option: value}}}``
#: (filled by the labs at import through :func:`register_preset`; ``sharplab data info`` shows them)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def register_preset(dataset: str, owner: str, options: Mapping[str, Any]) -> None:
    """Record that ``owner`` (a lab) loads ``dataset`` with ``options`` by default, so that what a user
    inspects with ``sharplab data info`` can be what the lab trains on."""
    make_options(dataset, options)  # a preset with an unknown or bad option fails at import, not at run time
    PRESETS.setdefault(dataset, {})[owner] = dict(options)


def make_options(name: str, options: Mapping[str, Any]) -> Any:
    """Build the options dataclass of data set ``name``; unknown keys raise a one-line ConfigError."""
    entry = DATASETS.get(name)
    known = [f.name for f in dataclasses.fields(entry.options)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for data set {entry.name!r}; valid options: {', '.join(known)}"
        )
    return entry.options(**options)


def load_two_feature(name: str, root: str | None = None, seed: int = 0, **options: Any) -> TwoFeatureData:
    """Load the two-feature data set ``name`` (see :data:`DATASETS`) with its ``options``.

    Data are looked up in ``root``, then ``$SHARPLAB_DATA``, then the offline sources; ``seed`` fixes every
    random choice (sub-sampling, validation split, pairing of the probe splits).
    """
    entry = DATASETS.get(name)
    data = entry.load(make_options(name, options), root, int(seed))
    data.meta.setdefault("seed", int(seed))
    return data


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


# --- option validation ------------------------------------------------------------------------------
#: the largest size option accepted (examples, dimensions): more would only exhaust memory
MAX_SIZE = 10**7


def check_positive(obj: Any, *names: str, allow_none: bool = False) -> None:
    """Raise ConfigError unless each named field of ``obj`` is a finite number > 0 (or None when
    ``allow_none``); integer fields (sizes) must also be at most :data:`MAX_SIZE`."""
    import math

    hints = getattr(type(obj), "__annotations__", {})
    for n in names:
        v = getattr(obj, n)
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
            raise ConfigError(f"option {n}={v!r} must be > 0 (a finite number)")
        if "int" in str(hints.get(n, "")) and (v != int(v) or v > MAX_SIZE):
            raise ConfigError(f"option {n}={v!r} must be an integer in [1, {MAX_SIZE}]")


#: the most numbers (examples x dimensions) a generated data set may hold in all: 5e7 float64 are 400 MB
MAX_ELEMENTS = 5 * 10**7


def check_count(obj: Any, *names: str) -> None:
    """Raise ConfigError unless each named field of ``obj`` is an integer in [0, :data:`MAX_SIZE`]."""
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SIZE:
            raise ConfigError(f"option {n}={v!r} must be an integer in [0, {MAX_SIZE}]")


def check_nonneg(obj: Any, *names: str) -> None:
    """Raise ConfigError unless each named field of ``obj`` is a finite number >= 0 (not NaN, not inf)."""
    import math

    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"option {n}={v!r} must be a finite number >= 0")


def check_elements(what: str, examples: int, dims: int) -> None:
    """Raise ConfigError when ``examples x dims`` numbers exceed :data:`MAX_ELEMENTS`."""
    if examples * dims > MAX_ELEMENTS:
        raise ConfigError(f"{what}: {examples} examples x {dims} dimensions = {examples * dims} numbers, more "
                          f"than the limit of {MAX_ELEMENTS}; lower the sizes or the dimensions")


# --- split helpers ----------------------------------------------------------------------------------
def rng_for(seed: int, *salt: int | str) -> np.random.Generator:
    """Independent numpy generator per (seed, purpose), so adding a split never shifts another."""
    words = [seed] + [s if isinstance(s, int) else zlib.crc32(s.encode()) for s in salt]
    return np.random.default_rng(np.random.SeedSequence(words))


def split_by_fractions(labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
                       ) -> list[np.ndarray]:
    """Disjoint index sets, stratified by ``labels``: part j holds ``fractions[j]`` of every class."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum([0.0, *fractions])
    if bounds[-1] > 1.0 + 1e-9:
        raise ValueError(f"fractions sum to {bounds[-1]} > 1")
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for j in range(len(fractions)):
            parts[j].append(idx[cuts[j]:cuts[j + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=int) for p in parts]


def balanced_pairs(easy: np.ndarray, hard: np.ndarray, num_easy: int, num_hard: int,
                   rng: np.random.Generator, limit: int | None = None) -> np.ndarray:
    """Indices with exactly the same count of every (easy, hard) pair (decorrelated and balanced).

    The count per pair is ``min`` over all ``num_easy * num_hard`` pairs of the available examples, capped
    at ``limit // (num_easy * num_hard)``. Raises ConfigError when some pair has no example at all.
    """
    cells = [[np.flatnonzero((easy == a) & (hard == b)) for b in range(num_hard)] for a in range(num_easy)]
    per = min(len(c) for row in cells for c in row)
    if limit is not None:
        per = min(per, limit // (num_easy * num_hard))
    if per == 0:
        raise ConfigError("a decorrelated split needs at least one example of every (easy, hard) pair; "
                          "raise 'limit' or provide more data")
    chosen = [rng.choice(c, size=per, replace=False) for row in cells for c in row]
    return np.sort(np.concatenate(chosen))


def pair_table(num_easy: int, num_hard: int, per_pair: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (easy, hard) label arrays holding every pair exactly ``per_pair`` times."""
    e, h = np.meshgrid(np.arange(num_easy), np.arange(num_hard), indexing="ij")
    e = np.repeat(e.ravel(), per_pair)
    h = np.repeat(h.ravel(), per_pair)
    perm = rng.permutation(len(e))
    return e[perm], h[perm]


def draw_from_pools(labels: np.ndarray, pool: dict[int, np.ndarray], rng: np.random.Generator
                    ) -> np.ndarray:
    """For each wanted class in ``labels`` an index from ``pool[class]``.

    Every pool member is used once per pass over a fresh permutation (so use counts differ by at most
    one): members are reused only when a class needs more examples than its pool holds.
    """
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        members = pool[int(c)]
        if len(members) == 0:
            raise ConfigError(f"no image of class {int(c)} available for this split; provide more data")
        reps = -(-len(where) // len(members))
        seq = np.concatenate([rng.permutation(members) for _ in range(reps)])
        out[where] = seq[: len(where)]
    return out


def to_split(x: np.ndarray | torch.Tensor, y: np.ndarray, easy: np.ndarray, hard: np.ndarray
             ) -> TwoFeatureSplit:
    xt = torch.as_tensor(x)
    if xt.dtype != torch.float32:
        xt = xt.to(torch.float32)
    return TwoFeatureSplit(
        xt.contiguous(),
        torch.as_tensor(np.asarray(y), dtype=torch.long),
        torch.as_tensor(np.asarray(easy), dtype=torch.long),
        torch.as_tensor(np.asarray(hard), dtype=torch.long),
    )
