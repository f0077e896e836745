"""CIFAR-10/100 readers on files written in the official python-pickle format; download via 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sharplab.data import download as dl
from sharplab.data.cifar import load_image_set, read_cifar100_file, split_validation
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


def test_image_sets_split_and_scale(isolated, writers):
    _cifar100_folder(isolated / "cifar-100-python", writers)
    y10 = np.arange(50) % 10
    for i in range(1, 6):
        writers.cifar_batch(isolated / "cifar-10-batches-py" / f"data_batch_{i}",
                            writers.unique_images(50, y10, side=32, channels=3, offset=50 * i), y10)
    writers.cifar_batch(isolated / "cifar-10-batches-py" / "test_batch",
                        writers.unique_images(30, y10[:30], side=32, channels=3, offset=2000), y10[:30])
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
