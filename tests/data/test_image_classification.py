"""The image-classification sets (CIFAR-10/100, Fashion-MNIST, digits) on files in their genuine formats; download
via 127.0.0.1; `sharplab data list|info` for them."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from sharplab.cli import main
from sharplab.data import download as dl
from sharplab.data import list_datasets, sources
from sharplab.data.formats import read_cifar100_file
from sharplab.data.image_classification import IMAGE_SETS, load_image_set, split_validation
from sharplab.errors import SharplabError
from sharplab.registry import Registry


def write_cifar100(path: Path, images: np.ndarray, fine: np.ndarray) -> Path:
    """CIFAR-100 python file: bytes keys, data uint8 [N, 3072], fine/coarse label lists, filenames."""
    d = {b"filenames": [f"img_{i}.png".encode() for i in range(len(images))], b"batch_label": b"training batch",
         b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) // 5 for v in fine],
         b"data": images.reshape(len(images), 3072).astype(np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(d, protocol=2))
    return path


def _cifar100_folder(folder: Path, writers, n_train: int = 60, n_test: int = 20) -> None:
    ytr, yte = np.arange(n_train) % 100, (np.arange(n_test) * 7) % 100
    write_cifar100(folder / "train", writers.unique_images(n_train, ytr, side=32, channels=3), ytr)
    write_cifar100(folder / "test", writers.unique_images(n_test, yte, side=32, channels=3, offset=1000), yte)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}, protocol=2))


def test_cifar100_reader_layout_and_labels(tmp_path, writers):
    y = np.array([3, 99, 0, 42])
    x = writers.unique_images(4, y, side=32, channels=3)
    img, lab = read_cifar100_file(write_cifar100(tmp_path / "train", x, y))
    assert img.shape == (4, 3, 32, 32) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, x)  # R, G, B planes of 32 x 32 row-major
    np.testing.assert_array_equal(lab, y)


def test_cifar100_rejects_code_and_damage(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "train").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(SharplabError, match="not a CIFAR-100"):
        read_cifar100_file(tmp_path / "train")
    (tmp_path / "test").write_bytes(b"\x80\x02garbage")
    with pytest.raises(SharplabError, match="download it again"):
        read_cifar100_file(tmp_path / "test")


def _cifar10_folder(folder: Path, writers) -> None:
    """Five training batches of 50 images and a test batch of 30, 10 classes."""
    y10 = np.arange(50) % 10
    for i in range(1, 6):
        writers.cifar_batch(folder / f"data_batch_{i}", writers.unique_images(50, y10, side=32, channels=3,
                                                                               offset=50 * i), y10)
    writers.cifar_batch(folder / "test_batch", writers.unique_images(30, y10[:30], side=32, channels=3,
                                                                      offset=2000), y10[:30])


def test_image_sets_split_and_scale(isolated, writers):
    _cifar100_folder(isolated / "cifar-100-python", writers)
    _cifar10_folder(isolated / "cifar-10-batches-py", writers)
    c100 = load_image_set("cifar100", str(isolated), seed=3)
    assert c100.num_classes == 100 and c100.input_shape == (3, 32, 32)
    assert len(c100.y_val) == 6 and len(c100.y_train) == 54 and len(c100.y_test) == 20
    assert float(c100.x_train.max()) <= 1.0 and float(c100.x_train.min()) >= 0.0
    # ids in pixels (0,0),(0,1) of channel 0 identify the examples: train and val are disjoint, cover all
    ids = lambda x: set((x[:, 0, 0, 0] * 255).round().long() * 256 + (x[:, 0, 0, 1] * 255).round().long())  # noqa: E731
    assert ids(c100.x_train).isdisjoint(ids(c100.x_val)) and len(ids(c100.x_train) | ids(c100.x_val)) == 60
    c10 = load_image_set("cifar10", str(isolated), seed=0)
    assert c10.num_classes == 10 and len(c10.y_train) + len(c10.y_val) == 250 and len(c10.y_val) == 25


def test_validation_split_official_rule():
    tr, val = split_validation(1000, seed=5)
    assert len(val) == 100 and len(tr) == 900 and set(tr).isdisjoint(val)
    np.testing.assert_array_equal(split_validation(1000, seed=5)[1], val)
    assert not np.array_equal(split_validation(1000, seed=6)[1], val)


def test_missing_folder_says_how(isolated):
    with pytest.raises(SharplabError, match="sharplab data download cifar100"):
        load_image_set("cifar100", str(isolated))


# --- sharplab data list / info ---------------------------------------------------------------------------
def _info_json(capsys, *args: str) -> list[dict]:
    assert main(["data", "info", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _as_loaded(records: list[dict], data) -> None:
    """The records of ``sharplab data info`` describe the splits that load_image_set returns."""
    parts = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}
    assert [r["split"] for r in records] == ["train", "val", "test"]
    for r in records:
        x, y = parts[r["split"]]
        assert r["n"] == len(y) and r["shape"] == list(x.shape)
        assert r["class_counts"] == np.bincount(y.numpy(), minlength=data.num_classes).tolist()


@pytest.mark.parametrize("name,folder,make", [("cifar10", "cifar-10-batches-py", _cifar10_folder),
                                              ("cifar100", "cifar-100-python", _cifar100_folder)])
def test_data_info_of_cifar_on_genuine_files(isolated, writers, capsys, name, folder, make):
    make(isolated / folder, writers)
    records = _info_json(capsys, name, "--root", str(isolated), "--seed", "3")
    _as_loaded(records, load_image_set(name, str(isolated), seed=3))
    assert main(["data", "info", name, "--root", str(isolated), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: input 3x32x32, {IMAGE_SETS.get(name).num_classes} classes")
    assert f"source: {isolated / folder}" in out and "seed 3" in out
    assert f"test         n={records[2]['n']:<7d} shape {records[2]['n']}x3x32x32" in out


def test_data_info_of_fashion_mnist_on_idx_files(isolated, writers, capsys, monkeypatch):
    ytr, yte = np.arange(40) % 10, np.arange(20) % 10
    folder = writers.idx_folder(isolated / "offline-fmnist", (writers.unique_images(40, ytr), ytr),
                                (writers.unique_images(20, yte, offset=100), yte))
    monkeypatch.setattr(sources, "OFFLINE_DIRS", {"fashion-mnist": [folder]})  # like /usr/share/datasets/...
    records = _info_json(capsys, "fashion-mnist")
    _as_loaded(records, load_image_set("fashion-mnist"))
    assert [r["shape"] for r in records] == [[36, 1, 28, 28], [4, 1, 28, 28], [20, 1, 28, 28]]


def test_data_info_of_digits_offline(capsys):
    records = _info_json(capsys, "digits", "--seed", "1")
    _as_loaded(records, load_image_set("digits", seed=1))
    assert [r["n"] for r in records] == [1213, 134, 450]


def test_the_digits_split_is_the_digits_lab_split():
    from sharplab.labs.digits import load_digits_tensors

    xtr, ytr, xte, yte = load_digits_tensors(torch.float64)
    data = load_image_set("digits", seed=0)
    assert torch.equal(data.y_test, yte) and torch.equal(data.y_train, ytr[data.meta["train_indices"]])
    assert torch.equal(data.y_val, ytr[data.meta["val_indices"]])
    # the lab keeps pixel / 16, the image set rounds to 8 bits: the same image, pixel for pixel
    assert torch.equal((data.x_test.flatten(1).double() * 255).round(), (xte * 255).round())


def test_data_info_of_missing_cifar_is_one_line_and_set_is_refused(isolated, capsys):
    assert main(["data", "info", "cifar100", "--root", str(isolated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: CIFAR-100 not found")
    assert "sharplab data download cifar100 --root DIR" in err
    assert main(["data", "info", "digits", "--set", "limit=10"]) == 2
    assert "takes no --set options" in capsys.readouterr().err


def test_data_list_shows_the_image_sets(capsys):
    assert main(["data", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in ("cifar10", "cifar100", "fashion-mnist", "digits"):
        assert "image classification" in lines[name], lines
    assert not set(IMAGE_SETS.names()) & set(list_datasets())  # one name, one data set


def test_official_cifar_specs():
    assert dl.DOWNLOADS.get("cifar100").files[0].checksum == "md5:eb9058c3a382ffc7106e4002c42a8d85"
    assert dl.DOWNLOADS.get("cifar100").files[0].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert dl.DOWNLOADS.get("cifar10").files[0].checksum == "md5:c58f30108f718f92721af3b95e74349a"


def test_download_cifar100_from_local_server(tmp_path, writers, monkeypatch):
    src = tmp_path / "src" / "cifar-100-python"
    _cifar100_folder(src, writers)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src, arcname="cifar-100-python")
    serve = tmp_path / "www"
    serve.mkdir()
    (serve / "cifar-100-python.tar.gz").write_bytes(buf.getvalue())
    official = dl.DOWNLOADS.get("cifar100").files[0]
    spec = dl.RemoteFile(official.url, official.dest, "md5:" + hashlib.md5(buf.getvalue()).hexdigest(),
                         extract_to=official.extract_to, creates=official.creates,
                         **({"expect": official.expect} if hasattr(official, "expect") else {}))
    reg: Registry[dl.DownloadSpec] = Registry("download")
    reg.add("cifar100", dl.DownloadSpec("cifar100", (spec,)))
    monkeypatch.setattr(dl, "DOWNLOADS", reg)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(serve)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        root = tmp_path / "root"
        dl.download("cifar100", root, base_url=f"http://127.0.0.1:{httpd.server_address[1]}", quiet=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
    data = load_image_set("cifar100", str(root))
    assert len(data.y_train) + len(data.y_val) == 60 and len(data.y_test) == 20


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
