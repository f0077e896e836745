"""CelebA, Waterbirds and DomainBed readers against tiny releases written in their official layouts.

Every image is a solid colour that encodes its index, so each decoded example can be traced back to the
file (and so to the labels) it came from.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from sharplab.data import load_two_feature
from sharplab.errors import ConfigError, DataNotFoundError

ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]


def _celeba(root, writers, n=400, seed=0, ext="png"):
    """A CelebA release: img_align_celeba/*.jpg|png, list_attr_celeba.txt, list_eval_partition.txt."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    blond = rng.random(n) < 0.4
    male = np.where(rng.random(n) < 0.6, ~blond, rng.random(n) < 0.5)  # blond hair mostly on women
    part = np.tile([0, 0, 1, 2], n // 4)
    names = [f"{i + 1:06d}.{ext}" for i in range(n)]
    lines = [str(n), " ".join(ATTRS)]
    for i, name in enumerate(names):
        vals = [rng.choice([-1, 1]), 1 if blond[i] else -1, 1 if male[i] else -1, -1]
        lines.append(name + " " + " ".join(f"{v:2d}" for v in vals))  # official files pad with spaces
        writers.image(folder / "img_align_celeba" / name, writers.solid(writers.color_of(i), 12, 10))
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{nm} {p}\n" for nm, p in zip(names, part)))
    return blond.astype(int), male.astype(int), part


def test_celeba_reader_labels_splits_and_pixels(isolated, writers):
    blond, male, part = _celeba(isolated, writers)
    data = load_two_feature("celeba", root=str(isolated), seed=0, image_size=8, norm="none", limit=None,
                            target="Blond_Hair", spurious="Male", correlation="full")
    assert data.input_shape == (3, 8, 8) and data.meta["easy_encoding"] == "easy = 1 - Male (+1)"
    female = 1 - male
    for name, s in data.splits.items():
        rows = writers.index_of(s.x)
        np.testing.assert_array_equal(blond[rows], s.hard.numpy())
        np.testing.assert_array_equal(female[rows], s.easy.numpy())
        np.testing.assert_array_equal(s.y.numpy(), s.hard.numpy())
        want_part = {"train": 0, "val": 1, "test": 2, "probe_train": 1, "probe_test": 2}[name]
        assert set(part[rows]) == {want_part}
        if name.startswith("probe"):
            counts = s.pair_counts()
            assert len(counts) == 4 and len(set(counts.values())) == 1
            p = np.flatnonzero(part == want_part)
            smallest = min(int(np.sum((blond[p] == a) & (female[p] == b))) for a in (0, 1) for b in (0, 1))
            assert counts[(0, 0)] == smallest
        else:  # correlation="full": only examples whose features agree, all of them
            assert torch.equal(s.easy, s.hard)
            p = np.flatnonzero((part == want_part) & (blond == female))
            assert sorted(rows) == p.tolist()
    natural = load_two_feature("celeba", root=str(isolated), image_size=8, norm="none", limit=None)
    assert len(natural.splits["train"]) == int(np.sum(part == 0))  # default: standard splits, all groups
    assert natural.meta["hard_feature"] == "Male" and natural.meta["easy_feature"] == "Blond_Hair"


def test_celeba_jpeg_imagenet_norm_and_errors(isolated, writers):
    _celeba(isolated, writers, n=200, ext="jpg")
    data = load_two_feature("celeba", root=str(isolated), image_size=4, limit=6, target="Blond_Hair",
                            spurious="Male")
    assert len(data.splits["train"]) <= 6 and data.splits["train"].x.shape[1:] == (3, 4, 4)
    assert float(data.splits["train"].x.min()) < 0  # ImageNet standardisation
    with pytest.raises(ConfigError, match="no attribute 'Red_Hair'"):
        load_two_feature("celeba", root=str(isolated), target="Red_Hair")
    with pytest.raises(ConfigError, match="correlation"):
        load_two_feature("celeba", root=str(isolated), correlation="half")
    with pytest.raises(DataNotFoundError, match="CelebA not found.*download celeba"):
        load_two_feature("celeba", root=str(isolated / "elsewhere"))


def test_waterbirds_metadata_reader(isolated, writers):
    folder = isolated / "waterbird_complete95_forest2water2"
    rng = np.random.default_rng(1)
    rows, n = [], 120
    for i in range(n):
        y = int(rng.integers(0, 2))
        split = [0, 1, 2][i % 3]
        place = y if (split == 0 and rng.random() < 0.95) else int(rng.integers(0, 2))
        fname = f"{y + 1:03d}.Bird_{y}/Bird_{i:04d}.jpg"
        writers.image(folder / fname.replace(".jpg", ".png"), writers.solid(writers.color_of(i), 9, 9))
        (folder / fname.replace(".jpg", ".png")).rename(folder / fname)  # PNG bytes in a .jpg: Pillow sniffs
        rows.append({"img_id": i + 1, "img_filename": fname, "y": y, "split": split, "place": place,
                     "place_filename": f"/x/{i}.jpg"})
    with (folder / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["img_id", "img_filename", "y", "split", "place", "place_filename"])
        w.writeheader()
        w.writerows(rows)
    y = np.array([r["y"] for r in rows])
    place = np.array([r["place"] for r in rows])
    split = np.array([r["split"] for r in rows])
    data = load_two_feature("waterbirds", root=str(isolated), image_size=5, norm="none", limit=None,
                            correlation="full")
    assert data.meta["easy_encoding"] == "easy = place"
    for name, s in data.splits.items():
        idx = writers.index_of(s.x)
        np.testing.assert_array_equal(y[idx], s.hard.numpy())
        np.testing.assert_array_equal(place[idx], s.easy.numpy())
        if name.startswith("probe"):
            assert len(set(s.pair_counts().values())) == 1 and len(s.pair_counts()) == 4
            assert set(split[idx]) == {1 if name == "probe_train" else 2}
    tr = writers.index_of(data.splits["train"].x)
    assert sorted(tr) == np.flatnonzero((split == 0) & (y == place)).tolist()
    natural = load_two_feature("waterbirds", root=str(isolated), image_size=5, norm="none", limit=None)
    assert sorted(writers.index_of(natural.splits["train"].x)) == np.flatnonzero(split == 0).tolist()


def _domainbed(root, writers, name="PACS", domains=("art_painting", "cartoon", "photo", "sketch"),
               classes=("dog", "elephant", "giraffe"), per=(6, 5, 4, 7)):
    info, i = [], 0
    for d, count in zip(domains, per):
        for c in classes:
            for k in range(count + (1 if c == "dog" else 0)):  # dogs one more: the probe must balance
                ext = "png" if d == domains[0] else "jpg"  # solid JPEG colours survive within 16 levels
                writers.image(root / name / d / c / f"pic_{k}.{ext}", writers.solid(writers.color_of(i), 7, 9))
                info.append((i, d, c))
                i += 1
    (root / name / "README.txt").write_text("not a domain")
    return info


def test_domainbed_folders_and_held_out_domain(isolated, writers):
    info = _domainbed(isolated, writers)
    data = load_two_feature("pacs", root=str(isolated), test_domain="photo", image_size=6, norm="none",
                            limit=None, seed=2)
    assert data.meta["domains"] == ["art_painting", "cartoon", "photo", "sketch"]
    assert data.meta["classes"] == ["dog", "elephant", "giraffe"] and data.meta["test_domain"] == "photo"
    assert data.num_classes == data.num_hard_classes == 3 and data.num_easy_classes == 4
    dom = {i: d for i, d, _ in info}
    cls = {i: c for i, _, c in info}
    seen = {}
    for name, s in data.splits.items():
        idx = writers.index_of(s.x)
        assert [data.meta["classes"][k] for k in s.hard.tolist()] == [cls[i] for i in idx]
        assert [data.meta["domains"][k] for k in s.easy.tolist()] == [dom[i] for i in idx]
        seen[name] = set(idx)
        if name in ("train", "val"):
            assert "photo" not in {dom[i] for i in idx}
        else:
            assert {dom[i] for i in idx} == {"photo"}
    assert not seen["train"] & seen["val"] and not seen["probe_train"] & seen["probe_test"]
    source = {i for i, d, _ in info if d != "photo"}
    assert seen["train"] | seen["val"] == source and 0 < len(seen["val"]) < 0.2 * len(source)
    assert seen["test"] == {i for i, d, _ in info if d == "photo"}
    for name in ("probe_train", "probe_test"):
        assert data.splits[name].pair_counts() == {(2, 0): 2, (2, 1): 2, (2, 2): 2}
    by_index = load_two_feature("pacs", root=str(isolated), test_domain=2, image_size=6, norm="none", seed=2)
    assert torch.equal(by_index.splits["train"].x, data.splits["train"].x)
    with pytest.raises(ConfigError, match="test_domain='clipart' is not a domain"):
        load_two_feature("pacs", root=str(isolated), test_domain="clipart")


def test_domainbed_class_mismatch_is_one_line(isolated, writers):
    _domainbed(isolated, writers, name="VLCS", domains=("Caltech101", "LabelMe"), classes=("bird", "car"),
               per=(2, 2))
    (isolated / "VLCS" / "LabelMe" / "chair").mkdir()
    with pytest.raises(Exception, match="every domain needs the same class folders") as e:
        load_two_feature("vlcs", root=str(isolated))
    assert "\n" not in str(e.value)
