"""Readers for the official on-disk formats, and the image ops (no torchvision).

* idx (MNIST, Fashion-MNIST; LeCun et al.): big-endian header ``0x00 0x00 <type> <ndim>`` then ``ndim``
  uint32 sizes, then the row-major array. Read raw or gzip-compressed (detected by the gzip magic).
* CIFAR-10 python batches (Krizhevsky 2009): pickled dicts with ``b"data"`` (uint8 [N, 3072], channel
  planes R, G, B of 32 x 32 row-major) and ``b"labels"``; CIFAR-100's ``train`` and ``test`` files: the
  same ``b"data"`` layout with ``b"fine_labels"`` (100 classes, read here) and ``b"coarse_labels"`` (20
  super-classes). Unpickled with an allow-list (numpy arrays and plain containers only), so a crafted file
  cannot run code.
* Images (JPEG/PNG) are decoded by Pillow, then resized with :func:`resize_center_crop` (antialiased
  bilinear resize of the shorter side followed by a centre crop) and normalised per channel.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import pickletools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from sharplab.errors import SharplabError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_gz(folder: Path, name: str) -> Path:
    """``folder/name`` if present, else the same name without (or with) the ``.gz`` suffix."""
    for cand in (name, name[:-3] if name.endswith(".gz") else name + ".gz"):
        if (folder / cand).exists():
            return folder / cand
    raise SharplabError(f"{folder / name} is missing; download the data set again")


#: the most data bytes an idx file may declare (Fashion-MNIST's training images are 47 MB)
MAX_IDX_BYTES = 256 << 20
#: the largest CIFAR python file read (a CIFAR-100 ``train`` file is 155 MB)
MAX_CIFAR_FILE = 512 << 20
_CHUNK = 1 << 20


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """``path`` opened for reading, through a streaming gzip decoder when it starts with the gzip magic."""
    f = path.open("rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (raw or .gz) into a numpy array of its declared type and shape.

    The header is checked before any data is held: the declared size (computed without overflow) must be
    at most :data:`MAX_IDX_BYTES`, and a gzip file is decompressed in chunks, stopping as soon as it holds
    more than the header declares, so a small "gzip bomb" costs no more memory than its declared size.
    """
    path = Path(path)
    delete = "delete it and download again"
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise SharplabError(f"{path} is not an idx file (bad magic number); {delete}")
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise SharplabError(f"{path} is truncated (incomplete idx header); {delete}")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
            if expected > MAX_IDX_BYTES:
                raise SharplabError(f"{path}: its header declares {'x'.join(map(str, dims))} values "
                                    f"({expected} bytes), more than the {MAX_IDX_BYTES} bytes an idx data set "
                                    f"file may hold; {delete}")
            data = _read_exactly(f, expected)
    except (OSError, EOFError, zlib.error) as exc:
        raise SharplabError(f"{path} is a damaged gzip file ({exc}); {delete}") from None
    if len(data) != expected:
        held = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise SharplabError(f"{path} holds {held} data bytes but its header declares {expected}; {delete}")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_exactly(f: BinaryIO, n: int) -> bytearray:
    """Up to ``n + 1`` bytes of ``f``, read in chunks (one byte more than ``n`` means the file is longer)."""
    buf = bytearray()
    while len(buf) <= n:
        chunk = f.read(min(_CHUNK, n + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx_pair(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` or ``test`` part of an idx folder."""
    img_name, lab_name = IDX_FILES[part]
    images = read_idx(resolve_gz(folder, img_name))
    raw_labels = read_idx(resolve_gz(folder, lab_name))
    if images.dtype != np.uint8 or raw_labels.dtype.kind not in "iu":
        raise SharplabError(f"{folder}: {part} images are {images.dtype} and labels {raw_labels.dtype}; MNIST-style "
                            "idx files hold uint8 images and integer labels (a float file would be truncated)")
    labels = raw_labels.astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise SharplabError(f"{folder}: {part} images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.uint8), labels


# --- CIFAR-10, CIFAR-100 ----------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Allows only what CIFAR batches contain: numpy arrays/dtypes and builtin containers."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name} in a CIFAR batch")
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x name numpy.core
            module = module.replace("numpy.core.", "numpy._core.", 1) if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> Any:
    """Unpickle a CIFAR python file with the allow-list, from memory: the file must be at most
    :data:`MAX_CIFAR_FILE` bytes, and a length declared inside it cannot ask for more than the file holds
    (ValueError otherwise)."""
    size = path.stat().st_size
    if size > MAX_CIFAR_FILE:
        raise ValueError(f"the file is {size} bytes, more than the {MAX_CIFAR_FILE} of a CIFAR python file")
    raw = path.read_bytes()
    # first a pass over the opcodes in pure Python: it reads each declared length from memory and fails on
    # one longer than the rest of the file, where the C unpickler would allocate the length first
    for _ in pickletools.genops(io.BytesIO(raw)):
        pass
    return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()


def cifar_arrays(d: Any, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 data [N, 3072], int64 labels [N]) of an unpickled CIFAR dict, every type and shape checked
    *before* an array is built: ``data`` must already be a uint8 array (a nested list would be turned into
    an array of any size), ``labels`` an integer array or a list of ``N`` ints. Raises ValueError."""
    if not isinstance(d, dict):
        raise ValueError(f"it holds a {type(d).__name__}, not a dict")
    data, labels = d[b"data"], d[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"a {data.dtype} array" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise ValueError(f"data is {what}, not uint8")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"data has shape {data.shape}, not (N, 3072)")
    n = data.shape[0]
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise ValueError(f"labels are a {labels.dtype} array of shape {labels.shape}, not {n} integers")
    elif isinstance(labels, list):
        if len(labels) != n or not all(type(v) is int for v in labels):
            raise ValueError(f"labels are not a list of {n} integers")
    else:
        raise ValueError(f"labels are a {type(labels).__name__}, not integers")
    return data, np.asarray(labels).astype(np.int64)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, 32, 32], int64 labels [N]) from one CIFAR-10 python batch file."""
    path = Path(path)
    if not path.is_file():
        raise SharplabError(f"CIFAR batch file {path} is missing; run `sharplab data download cifar10 --root ROOT` "
                            "(it fetches the archive again and checks every batch file)")
    try:
        data, labels = cifar_arrays(load_cifar_pickle(path), b"labels")
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError,
            AttributeError, RecursionError) as exc:
        raise SharplabError(f"{path} is not a CIFAR-10 python batch ({exc}); download it again") from None
    return data.reshape(-1, 3, 32, 32), labels


CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def read_cifar(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(folder / name) for name in CIFAR_FILES[part]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar100_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, 32, 32], int64 fine labels [N]) from CIFAR-100's ``train`` or ``test`` pickle."""
    path = Path(path)
    try:
        data, labels = cifar_arrays(load_cifar_pickle(path), b"fine_labels")
    except FileNotFoundError:
        raise SharplabError(f"{path} is missing; run 'sharplab data download cifar100 --root DIR'") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError, AttributeError,
            RecursionError) as exc:
        raise SharplabError(f"{path} is not a CIFAR-100 python file ({exc}); download it again") from None
    if labels.size and (labels.min() < 0 or labels.max() > 99):
        raise SharplabError(f"{path}: fine labels outside 0..99; the file is damaged, download it again")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar100(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``train`` or ``test`` part of a ``cifar-100-python`` folder (see :func:`read_cifar100_file`)."""
    return read_cifar100_file(Path(folder) / ("train" if part == "train" else "test"))


# --- images -----------------------------------------------------------------------------------------
def decode_image(path: str | Path) -> torch.Tensor:
    """Decode a JPEG/PNG into float32 RGB [3, H, W] in [0, 1] (greyscale/RGBA/palette converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(Path(path).read_bytes())) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise SharplabError(f"cannot decode image {path} ({exc}); the file may be damaged") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [C, H, W] so the shorter side is ``size`` (antialiased bilinear); crop the centre square."""
    _, h, w = img.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[:, top:top + size, left:left + size].clamp_(0.0, 1.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean_c) / std_c over the channel axis (dimension -3)."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def load_images(paths: Sequence[str | Path], size: int, norm: str = "imagenet",
                progress: bool = False) -> torch.Tensor:
    """Decode, resize/crop to ``size`` x ``size`` and normalise: float32 [N, 3, size, size].

    ``norm``: ``"imagenet"`` (ImageNet channel mean/std) or ``"none"`` (values in [0, 1]).
    """
    out = torch.empty(len(paths), 3, size, size)
    it = paths
    if progress:
        from sharplab.progress import progress

        it = progress(paths, desc="decoding images", unit="img", leave=False)
    for i, p in enumerate(it):
        out[i] = resize_center_crop(decode_image(p), size)
    if norm == "imagenet":
        out = normalize(out, IMAGENET_MEAN, IMAGENET_STD)
    return out
