"""The paper-scale feature-quality study files run end to end on tiny files in the genuine formats.

Each ``examples/paper_*.toml`` is run through ``sharplab run`` and ``sharplab report`` with its arms and
read-outs as shipped and only the sizes shrunk (1 epoch, tiny images, one seed), on a data root this test
writes in the official on-disk layouts (idx.gz, CIFAR python batches, CelebA text lists, the Waterbirds
metadata.csv, DomainBed domain/class folders).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sharplab.cli import main
from sharplab.runner.config import _toml_loads as toml_loads
from sharplab.runner.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
TINY = {"epochs": 1, "batch_size": 16, "check_batch": 16, "probe_sizes": "4,8", "device": "cpu"}
IMAGE_OPTIONS = {"image_size": 8, "limit": 400}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):  # an inline table (an arm)
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _tiny_study(path: Path, out: Path, root: Path) -> Path:
    """The study file with its sizes shrunk: same lab, arms, data set(s) and read-outs."""
    study = toml_loads(path.read_text())
    config = {**study["config"], **TINY, "root": str(root)}
    if "image_size" in config.get("data_options", ""):
        opts = dict(item.split("=", 1) for item in config["data_options"].split(","))
        opts.update({k: str(v) for k, v in IMAGE_OPTIONS.items()})
        config["data_options"] = ",".join(f"{k}={v}" for k, v in opts.items())
    grid = {**study["grid"], "seed": [0]}
    lines = [f"{k} = {_toml_value(study[k])}" for k in ("lab", "name", "description")]
    lines += ["", "[config]", *(f"{k} = {_toml_value(v)}" for k, v in config.items())]
    lines += ["", "[grid]", *(f"{k} = {_toml_value(v)}" for k, v in grid.items())]
    tiny = out / path.name
    tiny.write_text("\n".join(lines) + "\n")
    return tiny


def _idx_pair(writers, folder: Path, per_class_train: int, per_class_test: int, offset: int) -> None:
    ytr, yte = np.repeat(np.arange(10), per_class_train), np.repeat(np.arange(10), per_class_test)
    writers.idx_folder(folder, (writers.unique_images(len(ytr), ytr, offset=offset), ytr),
                       (writers.unique_images(len(yte), yte, offset=offset + len(ytr)), yte))


def _cifar(writers, root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    labels = np.tile(np.arange(10), 8)
    for i in range(1, 6):
        writers.cifar_batch(folder / f"data_batch_{i}", writers.unique_images(80, labels, 32, 3, offset=100 * i),
                            labels)
    test = np.tile(np.arange(10), 20)
    writers.cifar_batch(folder / "test_batch", writers.unique_images(200, test, 32, 3, offset=900), test)


def _celeba(writers, root: Path, n: int = 240) -> None:
    rng = np.random.default_rng(0)
    folder = root / "celeba"
    attrs = ["Blond_Hair", "Male"]
    names = [f"{i + 1:06d}.png" for i in range(n)]
    lines = [str(n), " ".join(attrs)]
    for i, name in enumerate(names):
        male = int(rng.random() < 0.5)
        blond = int(rng.random() < (0.2 if male else 0.7))
        lines.append(name + " " + " ".join(f"{2 * v - 1:2d}" for v in (blond, male)))
        writers.image(folder / "img_align_celeba" / name, writers.solid(writers.color_of(i), 12, 10))
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{nm} {[0, 0, 1, 2][i % 4]}\n"
                                                           for i, nm in enumerate(names)))


def _waterbirds(writers, root: Path, n: int = 160) -> None:
    folder = root / "waterbird_complete95_forest2water2"
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        y, split = int(rng.integers(0, 2)), [0, 1, 2][i % 3]
        place = y if (split == 0 and rng.random() < 0.95) else int(rng.integers(0, 2))
        fname = f"{y + 1:03d}.Bird_{y}/Bird_{i:04d}.png"
        writers.image(folder / fname, writers.solid(writers.color_of(i), 9, 9))
        rows.append({"img_id": i + 1, "img_filename": fname, "y": y, "split": split, "place": place,
                     "place_filename": f"/x/{i}.jpg"})
    with (folder / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _domainbed(writers, root: Path) -> None:
    i = 0
    for name in ("PACS", "VLCS", "OfficeHome"):
        for d in ("d0", "d1", "d2", "d3"):
            for c in ("c0", "c1", "c2"):
                for k in range(8):
                    writers.image(root / name / d / c / f"p{k}.png", writers.solid(writers.color_of(i), 7, 9))
                    i += 1


FILES = {
    "paper_celeba.toml": _celeba,
    "paper_waterbirds.toml": _waterbirds,
    "paper_domainbed.toml": _domainbed,
    "paper_cifar_mnist.toml": lambda w, r: (_cifar(w, r), _idx_pair(w, r / "mnist", 20, 20, 5000)),
    "paper_fmnist_mnist.toml": lambda w, r: (_idx_pair(w, r / "fashion-mnist", 30, 30, 0),
                                             _idx_pair(w, r / "mnist", 20, 20, 5000)),
}


def test_every_paper_study_file_is_covered():
    assert {p.name for p in (ROOT / "examples").glob("paper_*.toml")} == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_paper_study_runs_end_to_end_on_genuine_format_files(name, isolated, writers, tmp_path, capsys):
    FILES[name](writers, isolated)
    study = _tiny_study(ROOT / "examples" / name, tmp_path, isolated)
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--quiet", "--threads", "1"]) == 0, capsys.readouterr()
    assert main(["report", str(out)]) == 0
    with ResultsStore(out) as store:
        runs = store.runs()
    shipped = toml_loads((ROOT / "examples" / name).read_text())["grid"]
    assert len(runs) == len(shipped["arm"]) * len(shipped.get("dataset", [None]))
    assert {r.status for r in runs} == {"done"}
    for r in runs:
        assert 0.0 <= r.metrics["probe_error_hard"] <= 1.0
        assert any(k.startswith("curve_error_hard_n") for k in r.metrics)  # the shipped read-outs ran
    html = (out / "report.html").read_text()
    assert "probe learning curves" in html
