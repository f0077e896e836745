"""Readers for the official on-disk formats, and the image ops (no torchvision).

* idx (MNIST, Fashion-MNIST; LeCun et al.): big-endian header ``0x00 0x00 <type> <ndim>`` then ``ndim``
  uint32 sizes, then the row-major array. Read raw or gzip-compressed (detected by the gzip magic).
* CIFAR-10 python batches (Krizhevsky 2009): pickled dicts with ``b"data"`` (uint8 [N, 3072], channel
  planes R, G, B of 32 x 32 row-major) and ``b"labels"``. Unpickled with an allow-list (numpy arrays and
  plain containers only), so a crafted batch file cannot run code.
* Images (JPEG/PNG) are decoded by Pillow, then resized with :func:`resize_center_crop` (antialiased
  bilinear resize of the shorter side followed by a centre crop) and normalised per channel.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sharplab.errors import SharplabError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SharplabError(f"{path} is a damaged gzip file ({exc}); delete it, download again") from None
    return raw


def resolve_gz(folder: Path, name: str) -> Path:
    """``folder/name`` if present, else the same name without (or with) the ``.gz`` suffix."""
    for cand in (name, name[:-3] if name.endswith(".gz") else name + ".gz"):
        if (folder / cand).exists():
            return folder / cand
    raise SharplabError(f"{folder / name} is missing; download the data set again")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (raw or .gz) into a numpy array of its declared type and shape."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise SharplabError(f"{path} is not an idx file (bad magic number); delete it and download again")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SharplabError(f"{path} is truncated (incomplete idx header); delete it and download again")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise SharplabError(
            f"{path} holds {len(data) - header} data bytes but its header declares {expected}; "
            "delete it and download again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


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


# --- CIFAR-10 ---------------------------------------------------------------------------------------
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


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, 32, 32], int64 labels [N]) from one CIFAR-10 python batch file."""
    path = Path(path)
    if not path.is_file():
        raise SharplabError(f"CIFAR batch file {path} is missing; run `sharplab data download cifar10 --root ROOT` "
                            "(it fetches the archive again and checks every batch file)")
    try:
        with path.open("rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        raw = np.asarray(d[b"data"])
        raw_labels = np.asarray(d[b"labels"])
        if raw.dtype != np.uint8 or raw_labels.dtype.kind not in "iu":
            raise ValueError(f"data is {raw.dtype} and labels {raw_labels.dtype}, not uint8 and integers")
        data = raw
        labels = raw_labels.astype(np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise SharplabError(f"{path} is not a CIFAR-10 python batch ({exc}); download it again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise SharplabError(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10 shaped")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def read_cifar(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(folder / name) for name in CIFAR_FILES[part]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
