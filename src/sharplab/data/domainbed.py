"""DomainBed image folders (Gulrajani & Lopez-Paz 2021): PACS, VLCS, OfficeHome.

Layout ``<root>/<SET>/<domain>/<class>/<image>`` (JPEG/PNG); domains and classes are the sorted folder
names, as in DomainBed. hard = y = class, easy = domain index. Following Springer et al. (ICLR 2024), the
network trains on the *source* domains and the probes are fitted and scored on the held-out
``test_domain`` (a name or an index into the sorted domains; default 0, DomainBed's first test env):

* ``train``/``val``: every image of the source domains, split 90/10 (seeded, stratified by domain and
  class; DomainBed has no official validation split);
* ``test``: the held-out domain (out-of-domain test error);
* ``probe_train``/``probe_test``: the held-out domain split 50/50, stratified by class, with every class
  equally often in each half. The easy label is constant there (one domain), so it is trivially
  independent of the class; a probe can only succeed through the class feature. ``test`` shares images
  with the probe splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharplab.data import sources
from sharplab.data.core import TwoFeatureData, balanced_pairs, register_dataset, rng_for, split_by_fractions
from sharplab.data.imagesets import ImageOptions, cap, materialise
from sharplab.errors import ConfigError, SharplabError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


@dataclass(frozen=True)
class DomainBedOptions(ImageOptions):
    test_domain: str | int = 0


@dataclass
class FolderTable:
    paths: list[str]
    domain: np.ndarray
    label: np.ndarray
    domains: list[str]
    classes: list[str]


def read_image_folders(folder: Path) -> FolderTable:
    """List ``domain/class/image`` files; every domain must hold the same class folders."""
    domains = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domains:
        raise SharplabError(f"{folder} has no domain folders; expected <domain>/<class>/<image>")
    per_domain = {d: sorted(p.name for p in (folder / d).iterdir() if p.is_dir()) for d in domains}
    classes = per_domain[domains[0]]
    for d, cls in per_domain.items():
        if cls != classes:
            raise SharplabError(f"{folder / d} has classes {cls} but {domains[0]} has {classes}; "
                                "every domain needs the same class folders")
    paths, dom, lab = [], [], []
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            files = sorted(p for p in (folder / d / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += [str(p) for p in files]
            dom += [di] * len(files)
            lab += [ci] * len(files)
    return FolderTable(paths, np.array(dom, dtype=np.int64), np.array(lab, dtype=np.int64), domains, classes)


def domain_index(domains: list[str], which: str | int) -> int:
    if isinstance(which, str) and which.isdigit():
        which = int(which)
    if isinstance(which, int):
        if 0 <= which < len(domains):
            return which
    elif which in domains:
        return domains.index(which)
    raise ConfigError(f"option test_domain={which!r} is not a domain; choose one of: {', '.join(domains)} "
                      f"(or an index 0..{len(domains) - 1})")


def load_domainbed(name: str, folder_name: str, opt: DomainBedOptions, root: str | None, seed: int
                   ) -> TwoFeatureData:
    folder = sources.require_folder(folder_name, root, what=folder_name)
    t = read_image_folders(folder)
    held = domain_index(t.domains, opt.test_domain)
    source = np.flatnonzero(t.domain != held)
    target = np.flatnonzero(t.domain == held)
    strata = t.domain[source] * len(t.classes) + t.label[source]
    tr, va = split_by_fractions(strata, [0.9, 0.1], rng_for(seed, name, "train-val"))
    index = {
        "train": cap(source[tr], opt.limit, rng_for(seed, name, "train")),
        "val": cap(source[va], opt.limit, rng_for(seed, name, "val")),
        "test": cap(target, opt.limit, rng_for(seed, name, "test")),
    }
    halves = split_by_fractions(t.label[target], [0.5, 0.5], rng_for(seed, name, "probe"))
    k = len(t.classes)
    for split, half in zip(("probe_train", "probe_test"), halves):
        part = target[half]
        sel = balanced_pairs(np.zeros(len(part), dtype=np.int64), t.label[part], 1, k,
                             rng_for(seed, name, split), opt.limit)
        index[split] = part[sel]
    if len(index["train"]) == 0:
        raise SharplabError(f"{folder}: no training images in the source domains")
    splits = materialise(t.paths, t.label, t.domain, t.label, index, opt)
    return TwoFeatureData(
        name, splits, k, len(t.domains), k,
        meta={"domains": t.domains, "classes": t.classes, "test_domain": t.domains[held],
              "source_domains": [d for i, d in enumerate(t.domains) if i != held],
              "hard_feature": "class", "easy_feature": "domain index",
              "image_size": opt.image_size, "norm": opt.norm},
    )


def _register(name: str, folder: str, summary: str) -> None:
    def load(opt: DomainBedOptions, root: str | None, seed: int) -> TwoFeatureData:
        return load_domainbed(name, folder, opt, root, seed)

    register_dataset(name, DomainBedOptions, summary, folders=(folder,))(load)


_register("pacs", "PACS", "DomainBed PACS: 7 classes x 4 domains; probes on the held-out test_domain")
_register("vlcs", "VLCS", "DomainBed VLCS: 5 classes x 4 domains; probes on the held-out test_domain")
_register("officehome", "OfficeHome", "DomainBed OfficeHome: 65 classes x 4 domains; probes on test_domain")
