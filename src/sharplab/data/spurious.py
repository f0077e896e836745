"""CelebA and Waterbirds: a target attribute (hard) and a spuriously correlated one (easy).

* ``celeba`` (Liu et al. 2015), official files under ``<root>/celeba/``: ``img_align_celeba/``,
  ``list_attr_celeba.txt`` (count line, attribute-name line, then ``name v1 ... v40`` with values +-1) and
  ``list_eval_partition.txt`` (``name p``, p = 0 train / 1 val / 2 test). hard = y = ``target``
  (default ``Male``: gender), easy = ``spurious`` (default ``Blond_Hair``: hair colour), the roles of
  Springer et al. (ICLR 2024) Table 1; ``target="Blond_Hair", spurious="Male"`` gives the usual
  group-robustness setting of Sagawa et al. (2020).
* ``waterbirds`` (Sagawa et al. 2020), ``<root>/waterbird_complete95_forest2water2/metadata.csv`` with
  columns ``img_id,img_filename,y,split,place,place_filename``: hard = y = bird (1 = waterbird),
  easy = place (1 = water); ``split`` 0 / 1 / 2 = train / val / test.

The easy label is encoded so that it agrees with ``y`` on most training examples (for CelebA, easy = 1
means *not* Male, since blond hair is more frequent among women); ``meta["easy_encoding"]`` says which.

Splits: ``train``/``val``/``test`` are the official partitions. ``correlation="natural"`` (default) keeps
them as released, minority groups included, as the study does; the test split's worst-group error is then
reported over the four (easy, hard) groups. ``"full"`` keeps only examples whose two features agree
(``easy == y``), the fully redundant contract of the synthetic sets. ``probe_train`` (from the official validation
partition) and ``probe_test`` (from the official test partition) hold every (easy, hard) pair equally often
(:func:`~sharplab.data.core.balanced_pairs`), so they share images with ``val`` and ``test``, never with
``train``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharplab.data import sources
from sharplab.data.core import TwoFeatureData, balanced_pairs, register_dataset, rng_for
from sharplab.data.imagesets import ImageOptions, cap, materialise
from sharplab.errors import ConfigError, SharplabError

CORRELATIONS = ("full", "natural")
WATERBIRDS_DIR = "waterbird_complete95_forest2water2"


@dataclass(frozen=True)
class CelebAOptions(ImageOptions):
    target: str = "Male"  # hard feature (the study's Table 1: gender hard, hair colour easy)
    spurious: str = "Blond_Hair"
    correlation: str = "natural"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_correlation(self.correlation)


@dataclass(frozen=True)
class WaterbirdsOptions(ImageOptions):
    correlation: str = "natural"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_correlation(self.correlation)


def _check_correlation(value: str) -> None:
    if value not in CORRELATIONS:
        raise ConfigError(f"option correlation={value!r} must be one of: {', '.join(CORRELATIONS)}")


@dataclass
class Table:
    """Per-image file path, hard (= target) label, raw spurious label and official partition (0/1/2)."""

    paths: list[str]
    hard: np.ndarray
    spurious: np.ndarray
    partition: np.ndarray


def read_celeba(folder: Path, target: str, spurious: str) -> Table:
    """Parse ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` (attribute values +-1 -> 1 / 0)."""
    attr_path, part_path = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
    lines = attr_path.read_text().splitlines()
    try:
        count, names = int(lines[0].split()[0]), lines[1].split()
        rows = [ln.split() for ln in lines[2:] if ln.strip()]
    except (IndexError, ValueError):
        raise SharplabError(f"{attr_path} is not in the CelebA attribute format; download it again") from None
    if len(rows) != count:
        raise SharplabError(f"{attr_path} announces {count} images but lists {len(rows)}; download it again")
    for a in (target, spurious):
        if a not in names:
            raise ConfigError(f"CelebA has no attribute {a!r}; choose one of: {', '.join(names)}")
    ti, si = names.index(target) + 1, names.index(spurious) + 1
    files = [r[0] for r in rows]
    hard = np.array([r[ti] == "1" for r in rows], dtype=np.int64)
    spur = np.array([r[si] == "1" for r in rows], dtype=np.int64)
    partition = {}
    for ln in part_path.read_text().splitlines():
        parts = ln.split()
        if len(parts) == 2:
            partition[parts[0]] = int(parts[1])
    missing = [f for f in files if f not in partition]
    if missing:
        raise SharplabError(f"{part_path} has no partition for {missing[0]} (and {len(missing) - 1} more)")
    img_dir = folder / "img_align_celeba"
    return Table([str(img_dir / f) for f in files], hard, spur, np.array([partition[f] for f in files]))


def read_waterbirds(folder: Path) -> Table:
    """Parse ``metadata.csv`` (img_id,img_filename,y,split,place,place_filename)."""
    path = folder / "metadata.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"img_filename", "y", "split", "place"}
    if not rows or not need <= set(rows[0]):
        raise SharplabError(f"{path} lacks the columns {', '.join(sorted(need))}; download it again")
    return Table(
        [str(folder / r["img_filename"]) for r in rows],
        np.array([int(r["y"]) for r in rows], dtype=np.int64),
        np.array([int(r["place"]) for r in rows], dtype=np.int64),
        np.array([int(r["split"]) for r in rows], dtype=np.int64),
    )


def build(name: str, table: Table, opt: CelebAOptions | WaterbirdsOptions, seed: int,
          descr: tuple[str, str, str]) -> TwoFeatureData:
    """Encode easy to agree with y in train, choose each split's indices, decode (see module docstring)."""
    train = table.partition == 0
    agree = float(np.mean(table.spurious[train] == table.hard[train])) if train.any() else 1.0
    flipped = agree < 0.5
    easy = 1 - table.spurious if flipped else table.spurious.copy()
    hard = table.hard
    index = {}
    for split, p in (("train", 0), ("val", 1), ("test", 2)):
        keep = table.partition == p
        if opt.correlation == "full":
            keep &= easy == hard
        index[split] = cap(np.flatnonzero(keep), opt.limit, rng_for(seed, name, split))
    for split, p in (("probe_train", 1), ("probe_test", 2)):
        part = np.flatnonzero(table.partition == p)
        sel = balanced_pairs(easy[part], hard[part], 2, 2, rng_for(seed, name, split), opt.limit)
        index[split] = part[sel]
    for split, idx in index.items():
        if len(idx) == 0:
            raise SharplabError(f"{name}: split {split!r} is empty; check the partition file of the data set")
    splits = materialise(table.paths, hard, easy, hard, index, opt)
    target, spur, spur_name = descr
    return TwoFeatureData(
        name, splits, 2, 2, 2,
        meta={"hard_feature": target, "easy_feature": spur,
              "easy_encoding": f"easy = 1 - {spur_name}" if flipped else f"easy = {spur_name}",
              "train_agreement_natural": agree if not flipped else 1 - agree,
              "correlation": opt.correlation, "image_size": opt.image_size, "norm": opt.norm,
              "groups": "(easy, hard) pairs; worst-group error over the 4 pairs"},
    )


@register_dataset("celeba", CelebAOptions, "CelebA: Male (hard, target) vs Blond_Hair (easy), standard splits",
                  folders=("celeba",))
def load_celeba(opt: CelebAOptions, root: str | None, seed: int) -> TwoFeatureData:
    folder = sources.require_folder(
        "celeba", root, ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"), "CelebA")
    table = read_celeba(folder, opt.target, opt.spurious)
    return build("celeba", table, opt, seed, (opt.target, opt.spurious, f"{opt.spurious} (+1)"))


@register_dataset("waterbirds", WaterbirdsOptions, "Waterbirds: bird type (hard, target) vs place (easy)",
                  folders=(WATERBIRDS_DIR,))
def load_waterbirds(opt: WaterbirdsOptions, root: str | None, seed: int) -> TwoFeatureData:
    folder = sources.require_folder(WATERBIRDS_DIR, root, ("metadata.csv",), "Waterbirds")
    table = read_waterbirds(folder)
    return build("waterbirds", table, opt, seed, ("bird: 1 = waterbird", "place: 1 = water", "place"))
