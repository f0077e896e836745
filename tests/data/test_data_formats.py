"""Readers against tiny files written in the genuine formats (idx, CIFAR pickles, PNG/JPEG)."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from sharplab.data.formats import (
    decode_image,
    normalize,
    read_cifar,
    read_cifar_batch,
    read_idx,
    read_idx_pair,
    resize_center_crop,
)
from sharplab.errors import SharplabError


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_idx_roundtrip_every_type(tmp_path, writers, gz, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = writers.idx(tmp_path / "a-idx3", arr, gz=gz)
    got = read_idx(path)
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")


def test_idx_header_bytes_are_big_endian(tmp_path, writers):
    """Independent check of the header layout: 2051 is MNIST's image magic (0x00000803)."""
    path = writers.idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=False)
    raw = path.read_bytes()
    assert int.from_bytes(raw[:4], "big") == 2051
    assert [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3)] == [2, 28, 28]
    assert read_idx(path).shape == (2, 28, 28)


def test_idx_rejects_bad_magic_and_truncation(tmp_path, writers):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(SharplabError, match="bad magic"):
        read_idx(bad)
    good = writers.idx(tmp_path / "t.gz", np.arange(10, dtype=np.uint8), gz=False)
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(SharplabError, match="declares 10"):
        read_idx(cut)
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(gzip.compress(good.read_bytes())[:-6])
    with pytest.raises(SharplabError, match="gzip"):
        read_idx(damaged)


def test_idx_pair_reads_official_names_gz_or_raw(tmp_path, writers):
    y_tr, y_te = np.array([3, 1, 4, 1]), np.array([5, 9])
    x_tr, x_te = writers.unique_images(4, y_tr), writers.unique_images(2, y_te, offset=100)
    for gz in (True, False):
        folder = writers.idx_folder(tmp_path / f"mnist{gz}", (x_tr, y_tr), (x_te, y_te), gz=gz)
        x, y = read_idx_pair(folder, "test")
        np.testing.assert_array_equal(x, x_te)
        np.testing.assert_array_equal(y, y_te)
        assert y.dtype == np.int64


def test_cifar_batch_layout(tmp_path, writers):
    """Row layout is 1024 R, then 1024 G, then 1024 B values, each a 32 x 32 row-major plane."""
    n = 3
    flat = np.zeros((n, 3072), np.uint8)
    flat[0, 0] = 10  # R at (0, 0)
    flat[1, 1024 + 32 * 2 + 5] = 20  # G at (2, 5)
    flat[2, 2048 + 32 * 31 + 31] = 30  # B at (31, 31)
    writers.cifar_batch(tmp_path / "data_batch_1", flat.reshape(n, 3, 32, 32), np.array([1, 9, 1]))
    x, y = read_cifar_batch(tmp_path / "data_batch_1")
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [1, 9, 1]
    assert x[0, 0, 0, 0] == 10 and x[1, 1, 2, 5] == 20 and x[2, 2, 31, 31] == 30
    assert int(x.sum()) == 60


def test_cifar_reads_five_train_batches_and_rejects_code(tmp_path, writers):
    for i in range(1, 6):
        writers.cifar_batch(tmp_path / f"data_batch_{i}", writers.unique_images(2, np.array([i, i]), 32, 3),
                            np.array([i, i]))
    x, y = read_cifar(tmp_path, "train")
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({b"data": os.getcwd}))  # any callable outside the allow-list
    with pytest.raises(SharplabError, match="not a CIFAR-10 python batch"):
        read_cifar_batch(evil)


def test_decode_png_and_jpeg(tmp_path, writers):
    rgb = np.zeros((6, 4, 3), np.uint8)
    rgb[:, :, 0] = 255
    rgb[3:, :, 2] = 128
    x = decode_image(writers.image(tmp_path / "a.png", rgb))
    assert x.shape == (3, 6, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    j = decode_image(writers.image(tmp_path / "a.jpg", writers.solid((200, 100, 50), 16, 16)))
    torch.testing.assert_close(j.mean(dim=(1, 2)), torch.tensor([200, 100, 50]) / 255, atol=3 / 255, rtol=0)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SharplabError, match="cannot decode"):
        decode_image(tmp_path / "broken.jpg")


def test_resize_center_crop_against_hand_cases():
    # a 2 x 8 wide image: the shorter side already fits, so only the centre 2 x 2 window is kept
    img = torch.arange(16, dtype=torch.float32).view(1, 2, 8) / 16
    torch.testing.assert_close(resize_center_crop(img, 2), img[:, :, 3:5])
    # downscaling a constant image keeps it constant; 2x2 block-averaging a checkerboard of 0/1 gives 0.5
    const = torch.full((3, 20, 10), 0.25)
    out = resize_center_crop(const, 5)
    assert out.shape == (3, 5, 5)
    torch.testing.assert_close(out, torch.full((3, 5, 5), 0.25))
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float()[None]
    torch.testing.assert_close(resize_center_crop(checker, 4)[:, 1:3, 1:3], torch.full((1, 2, 2), 0.5))


def test_resize_matches_pillow_antialiased_bilinear():
    """Independent reference: Pillow's BILINEAR resize (a triangle filter widened when downscaling)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    a = rng.random((16, 12)).astype(np.float32)
    ref = np.asarray(Image.fromarray(a, mode="F").resize((6, 8), Image.Resampling.BILINEAR))[1:7]
    got = resize_center_crop(torch.from_numpy(a)[None], 6)[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_normalize_channelwise():
    x = torch.ones(2, 3, 4, 4)
    out = normalize(x, (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
    torch.testing.assert_close(out[:, 0], torch.ones(2, 4, 4))
    torch.testing.assert_close(out[:, 1], torch.full((2, 4, 4), 0.5))
    torch.testing.assert_close(out[:, 2], torch.zeros(2, 4, 4))
