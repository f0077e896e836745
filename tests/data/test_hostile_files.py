"""Small hostile files: each is refused with one line before it can exhaust memory or disk.

The memory cases run in a subprocess whose address space is capped (``RLIMIT_AS``) at what it uses after
its imports plus :data:`HEADROOM_MB`: a reader that allocated what the file asks for would die of
``MemoryError`` there instead of printing the one-line refusal.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from sharplab.data import archives
from sharplab.data.archives import UnsafeArchiveError, archive_budget, safe_extract
from sharplab.data.formats import MAX_IDX_BYTES, read_cifar_batch, read_idx
from sharplab.errors import SharplabError
from sharplab.runner.context import read_history

HEADROOM_MB = 400

PRELUDE = textwrap.dedent("""
    import re, resource, sys
    from pathlib import Path
    import numpy as np
    from sharplab.data import formats
    from sharplab.errors import SharplabError
    vm = int(re.search(r"VmSize:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + ({headroom} << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        {call}
    except SharplabError as exc:
        print("refused:", exc)
    else:
        print("accepted")
""")


def _limited(call: str) -> str:
    """Run ``call`` under the memory cap; its stdout (``refused: <message>`` or ``accepted``)."""
    code = PRELUDE.format(headroom=HEADROOM_MB, call=call)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def _nested_list_pickle(levels: int = 3, width: int = 1000) -> bytes:
    """A few KB that unpickle to a list of lists of ... (``width ** levels`` ints, shared through the memo)."""
    inner: list = [0] * width
    for _ in range(levels - 1):
        inner = [inner] * width
    return pickle.dumps({b"data": inner, b"labels": [0], b"fine_labels": [0]}, protocol=2)


# --- CIFAR ------------------------------------------------------------------------------------------
def test_small_cifar_pickle_asking_for_gigabytes_is_refused_under_a_memory_cap(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_nested_list_pickle())
    assert path.stat().st_size < 10_000  # unpickles to 10^9 list items: 7.45 GiB as an int64 array
    out = _limited(f"formats.read_cifar_batch(Path({str(path)!r}))")
    assert out.startswith("refused:") and "not uint8" in out, out
    out = _limited(f"formats.read_cifar100_file(Path({str(path)!r}))")
    assert out.startswith("refused:") and "not uint8" in out, out


@pytest.mark.parametrize("labels", [[[0] * 3] * 2, np.zeros((2, 2), np.int64), "ab", [0.5, 1.0], [0]])
def test_cifar_labels_of_the_wrong_kind_or_length_are_refused(tmp_path, labels):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2))
    with pytest.raises(SharplabError, match="labels"):
        read_cifar_batch(path)


def test_cifar_pickle_declaring_a_huge_bytes_object_is_refused(tmp_path):
    # BINBYTES8 with a declared length of 2^40 and 10 bytes of content (protocol 4 opcode)
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x" * 10)
    out = _limited(f"formats.read_cifar_batch(Path({str(path)!r}))")
    assert out.startswith("refused:") and "not a CIFAR-10 python batch" in out, out


# --- idx --------------------------------------------------------------------------------------------
def _idx_header(dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("dims", [(2**32 - 1,) * 3, (65536, 65536, 65536), (2**32 - 1, 2**32 - 1, 2, 2)])
def test_idx_header_whose_dimensions_overflow_is_refused(tmp_path, dims):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_header(dims) + b"\0" * 64)
    with pytest.raises(SharplabError, match="header declares"):
        read_idx(path)


def _gzip_of_zeros(path: Path, header: bytes, zeros: int) -> Path:
    """Write ``header`` + ``zeros`` zero bytes as a gzip stream, compressed chunk by chunk."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    chunk = bytes(1 << 20)
    with path.open("wb") as f:
        f.write(comp.compress(header))
        for _ in range(zeros >> 20):
            f.write(comp.compress(chunk))
        f.write(comp.flush())
    return path


def test_idx_gz_bomb_is_streamed_and_refused_under_a_memory_cap(tmp_path):
    # the header declares 10 x 28 x 28 bytes; the stream holds 600 MB of zeros after it
    path = _gzip_of_zeros(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_header((10, 28, 28)), 600 << 20)
    assert path.stat().st_size < 1 << 20
    out = _limited(f"formats.read_idx(Path({str(path)!r}))")
    assert out.startswith("refused:") and "more than 7840" in out, out


def test_idx_gz_declaring_more_than_the_limit_is_refused_before_reading(tmp_path):
    dims = (60000, 28, 28, 8)  # 376 MB declared
    assert MAX_IDX_BYTES < 60000 * 28 * 28 * 8
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx_header(dims)))
    with pytest.raises(SharplabError, match="more than the"):
        read_idx(path)


def test_idx_reader_still_reads_a_valid_gzip_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "ok.gz"
    path.write_bytes(gzip.compress(_idx_header(arr.shape) + arr.tobytes()))
    assert np.array_equal(read_idx(path), arr)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(_idx_header(arr.shape) + arr.tobytes()[:-1]))
    with pytest.raises(SharplabError, match="holds 23 data bytes but its header declares 24"):
        read_idx(short)


# --- archives ---------------------------------------------------------------------------------------
BOMB = 80 << 20  # more than archives.MIN_BUDGET, compressed to ~80 KB


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("PACS/big.bin", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(BOMB >> 20):
            f.write(chunk)
    return path


def _tar_bomb(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("birds/big.bin")
        info.size = BOMB
        tf.addfile(info, _Zeros(BOMB))
    return path


@pytest.mark.parametrize("make", [_zip_bomb, _tar_bomb], ids=["zip", "tar.gz"])
def test_archive_bomb_is_refused_before_anything_is_written(tmp_path, make):
    archive = make(tmp_path / ("bomb.zip" if make is _zip_bomb else "bomb.tar.gz"))
    assert archive.stat().st_size < 1 << 20
    budget = archive_budget(archive)
    assert budget == archives.MIN_BUDGET < BOMB
    with pytest.raises(UnsafeArchiveError, match=f"unpack to {BOMB} bytes, more than its budget.*delete it"):
        safe_extract(archive, tmp_path / "out", max_bytes=budget)
    assert list((tmp_path / "out").iterdir()) == []


def test_archive_larger_than_the_free_disk_space_is_refused(tmp_path, monkeypatch):
    archive = _zip_bomb(tmp_path / "bomb.zip")

    class Usage:
        free = 1 << 20

    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(SharplabError, match="only 1048576 are free"):
        safe_extract(archive, tmp_path / "out")


def test_archive_budget_scales_with_the_archive_and_is_capped(tmp_path):
    small = tmp_path / "a"
    small.write_bytes(b"x" * 1000)
    assert archive_budget(small) == archives.MIN_BUDGET
    assert archive_budget(small, max_bytes=10) == 10
    big = tmp_path / "b"
    with big.open("wb") as f:
        f.truncate(20 << 20)  # sparse: no disk used
    assert archive_budget(big) == archives.MAX_RATIO * (20 << 20)


# --- history.jsonl ----------------------------------------------------------------------------------
def test_history_that_is_a_symlink_to_dev_zero_is_not_read(tmp_path):
    (tmp_path / "history.jsonl").symlink_to("/dev/zero")
    start = time.monotonic()
    assert read_history(tmp_path) == []
    assert time.monotonic() - start < 5


def test_history_is_read_up_to_its_byte_bound(tmp_path, monkeypatch):
    from sharplab.runner import context

    line = b'{"step": 1, "metrics": {"a": 1.0}}\n'
    (tmp_path / "history.jsonl").write_bytes(line * 1000)
    monkeypatch.setattr(context, "MAX_HISTORY_BYTES", len(line) * 10)
    assert len(read_history(tmp_path)) == 10


def test_history_skips_over_long_lines_and_out_of_range_steps(tmp_path, monkeypatch):
    from sharplab.runner import context

    monkeypatch.setattr(context, "MAX_HISTORY_LINE", 100)
    (tmp_path / "history.jsonl").write_bytes(
        b'{"step": 1e20, "metrics": {"a": 1.0}}\n{"step": -1, "metrics": {"a": 1.0}}\n'
        b'{"step": 2, "metrics": {"a": 2.0}}\n' + b'{"step": 3, "x": "' + b"y" * 500 + b'"}\n'
        b'{"step": 4.0, "metrics": {"a": 4.0}}\n')
    assert read_history(tmp_path) == [(2, {"a": 2.0}), (4, {"a": 4.0})]


def test_history_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "history.jsonl")  # opening it for reading would block forever
    assert read_history(tmp_path) == []
