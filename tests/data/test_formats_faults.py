"""File readers refuse what they would silently get wrong: float idx labels, float CIFAR data, missing batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sharplab.data.formats import read_cifar, read_cifar_batch, read_idx_pair
from sharplab.errors import SharplabError


def test_float_idx_labels_are_refused_not_truncated(tmp_path, writers):
    y = np.arange(10)
    writers.idx_folder(tmp_path, (writers.unique_images(10, y), y), (writers.unique_images(10, y), y))
    writers.idx(tmp_path / "train-labels-idx1-ubyte.gz", np.linspace(0.2, 9.7, 10).astype(np.float32))
    with pytest.raises(SharplabError, match="labels float32"):
        read_idx_pair(tmp_path, "train")
    assert read_idx_pair(tmp_path, "test")[1].tolist() == list(range(10))


def test_float_cifar_data_is_refused_not_cast(tmp_path):
    d = {b"labels": [1, 2], b"data": np.full((2, 3072), 300.5, dtype=np.float64)}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(SharplabError, match="not uint8"):
        read_cifar_batch(path)


def test_missing_cifar_batch_file_is_one_line(tmp_path, writers):
    for name in ("data_batch_1", "data_batch_2"):
        writers.cifar_batch(tmp_path / name, np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 1]))
    with pytest.raises(SharplabError, match="data_batch_3 is missing; run `sharplab data download cifar10"):
        read_cifar(tmp_path, "train")
