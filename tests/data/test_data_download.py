"""Downloader against a local HTTP server on 127.0.0.1: success, checksum, truncation, resume, archives."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from sharplab.cli import main
from sharplab.data import download as dl
from sharplab.data import load_two_feature
from sharplab.data.archives import UnsafeArchiveError, safe_extract
from sharplab.data.fetch import fetch
from sharplab.errors import SharplabError
from sharplab.registry import Registry


class Server:
    """Serves ``files`` (path -> bytes); honours Range unless ``ranges`` is False; ``truncate`` cuts bodies."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.truncate: float | None = None
        self.content_type = "application/octet-stream"
        self.requests: list[tuple[str, str | None]] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                srv.requests.append((self.path, rng))
                body = srv.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                if rng and srv.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                part = body[start:]
                self.send_response(status)
                self.send_header("Content-Type", srv.content_type)
                self.send_header("Content-Length", str(len(part)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if srv.truncate is not None:
                    part = part[: int(len(part) * srv.truncate)]
                self.wfile.write(part)
                self.wfile.flush()
                if srv.truncate is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _md5(b: bytes) -> str:
    return "md5:" + hashlib.md5(b).hexdigest()


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))


def test_fetch_success_md5_and_sha256(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    out = fetch(server.url + "/a.bin", tmp_path / "a.bin", _md5(PAYLOAD), quiet=True)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    sha = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch(server.url + "/a.bin", tmp_path / "b.bin", sha, quiet=True).read_bytes() == PAYLOAD
    n = len(server.requests)
    fetch(server.url + "/a.bin", tmp_path / "a.bin", _md5(PAYLOAD), quiet=True)  # verified file: skipped
    assert len(server.requests) == n


def test_checksum_mismatch_deletes_and_says_so(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(SharplabError, match="checksum mismatch for a.bin") as e:
        fetch(server.url + "/a.bin", tmp_path / "a.bin", "md5:" + "0" * 32, quiet=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_truncated_download_keeps_part_and_resumes(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.truncate = 0.4
    with pytest.raises(SharplabError, match="stopped at .* of 300000 bytes; run the same command again"):
        fetch(server.url + "/a.bin", tmp_path / "a.bin", _md5(PAYLOAD), quiet=True)
    part = tmp_path / "a.bin.part"
    got = part.stat().st_size
    assert 0 < got < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:got]
    server.truncate = None
    out = fetch(server.url + "/a.bin", tmp_path / "a.bin", _md5(PAYLOAD), quiet=True)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/a.bin", f"bytes={got}-")  # resumed with a Range request


def test_resume_from_existing_part_and_server_without_range(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(server.url + "/a.bin", tmp_path / "a.bin", _md5(PAYLOAD), quiet=True)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD and server.requests[-1][1] == "bytes=1000-"
    server.ranges = False  # a server answering 200 to a Range request: start again, do not append
    (tmp_path / "c.bin.part").write_bytes(b"garbage!" * 10)
    fetch(server.url + "/a.bin", tmp_path / "c.bin", _md5(PAYLOAD), quiet=True)
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD


def test_unreachable_host_and_html_page(server, tmp_path):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SharplabError, match=f"cannot reach 127.0.0.1:{port} .*download .* by hand") as e:
        fetch(f"http://127.0.0.1:{port}/x.gz", tmp_path / "x.gz", quiet=True, timeout=5)
    assert "\n" not in str(e.value)
    server.files["/big.zip"] = b"<html>confirm</html>"
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(SharplabError, match="web page instead of big.zip"):
        fetch(server.url + "/big.zip", tmp_path / "big.zip", quiet=True)
    with pytest.raises(SharplabError, match="HTTP 404"):
        fetch(server.url + "/missing", tmp_path / "m", quiet=True)


@pytest.mark.parametrize("member, why", [
    (("/etc/evil", b"x"), "absolute path"),
    (("../evil", b"x"), "contains '..'"),
    (("ok/../../evil", b"x"), "contains '..'"),
    (_link("link", "../../outside"), "leaves the folder"),
    (_link("link", "/etc/passwd"), "absolute path"),
    (_link("hard", "../x", tarfile.LNKTYPE), "leaves the folder"),
    (_link("fifo", "", tarfile.FIFOTYPE), "special file"),
])
def test_malicious_tar_members_are_rejected(tmp_path, member, why):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar([("good.txt", b"fine"), member]))
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, target)
    assert not (target / "good.txt").exists()  # nothing is written before every member passed the checks
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_symlink_chain_escape_is_caught_on_disk(tmp_path):
    """'d' -> '.' then 'd/e' -> '..' looks harmless lexically but leaves the folder once d exists."""
    archive = tmp_path / "chain.tar"
    archive.write_bytes(_tar([_link("d", "."), _link("d/e", "..")]))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "out")


def test_zip_extraction_and_rejection(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("PACS/photo/dog/a.txt", "ok")
    assert safe_extract(good, tmp_path / "g") == ["PACS/photo/dog/a.txt"]
    assert (tmp_path / "g" / "PACS/photo/dog/a.txt").read_text() == "ok"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "no")
    with pytest.raises(UnsafeArchiveError, match="contains '..'"):
        safe_extract(bad, tmp_path / "b")
    assert not (tmp_path / "escape.txt").exists()


def test_download_command_with_base_url(server, tmp_path, monkeypatch, capsys, writers, isolated):
    """`sharplab data download fmnist-mnist --base-url ...`: idx files verified in place, usable at once."""
    files = {}
    for sub, offset in (("fashion-mnist", 0), ("mnist", 5000)):
        y = np.repeat(np.arange(10), 12)
        writers.idx_folder(tmp_path / "src" / sub, (writers.unique_images(120, y, offset=offset), y),
                           (writers.unique_images(120, y, offset=offset + 200), y))
        files[sub] = {p.name: p.read_bytes() for p in (tmp_path / "src" / sub).iterdir()}
    reg: Registry[dl.DownloadSpec] = Registry("download")
    for sub in ("fashion-mnist", "mnist"):
        reg.add(sub, dl.DownloadSpec(sub, tuple(
            dl.RemoteFile(f"https://example.invalid/{n}", f"{sub}/{n}", _md5(b)) for n, b in files[sub].items())))
    monkeypatch.setattr(dl, "DOWNLOADS", reg)
    # a mirror holding both sets' files: fashion-mnist first, then mnist under another base URL
    root = tmp_path / "root"
    for sub in ("fashion-mnist", "mnist"):
        server.files = {f"/{sub}/{n}": b for n, b in files[sub].items()}
        assert main(["data", "download", sub, "--root", str(root), "--base-url", f"{server.url}/{sub}/",
                     "--quiet"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 8 and all(p.endswith(".gz") for p in out)
    data = load_two_feature("fmnist-mnist", root=str(root), limit=25)
    assert data.input_shape == (1, 56, 28)
    # a broken mirror: one-line error on stderr, exit code 2
    server.files = {}
    assert main(["data", "download", "fashion-mnist", "--root", str(tmp_path / "r2"), "--base-url",
                 server.url, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: download of") and "HTTP 404" in err and "\n" not in err


def test_download_extracts_archive_and_renames(server, tmp_path, monkeypatch):
    archive = _tar([("kfold/photo/dog/a.png", b"png"), ("kfold/sketch/dog/b.png", b"png")])
    server.files["/PACS.zip"] = archive
    reg: Registry[dl.DownloadSpec] = Registry("download")
    reg.add("pacs", dl.DownloadSpec("pacs", (dl.RemoteFile("https://example.invalid/x", "PACS.zip", _md5(archive),
                                                            extract_to=".", creates="PACS",
                                                            rename=("kfold", "PACS")),)))
    monkeypatch.setattr(dl, "DOWNLOADS", reg)
    paths = dl.download("pacs", tmp_path, base_url=server.url, quiet=True)
    assert paths == [tmp_path / "PACS"] and (tmp_path / "PACS/photo/dog/a.png").read_bytes() == b"png"
    assert not (tmp_path / "PACS.zip").exists() and not (tmp_path / "kfold").exists()
    n = len(server.requests)
    dl.download("pacs", tmp_path, base_url=server.url, quiet=True)  # already there: nothing fetched
    assert len(server.requests) == n


def test_official_specs_are_complete():
    for name in ("mnist", "fashion-mnist"):
        spec = dl.DOWNLOADS.get(name)
        assert sorted(f.filename for f in spec.files) == sorted(
            ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"])
        assert all(f.checksum and len(f.checksum) == 4 + 32 for f in spec.files)
    assert dl.download_names("fmnist-mnist") == ("fashion-mnist", "mnist")
    assert dl.DOWNLOADS.get("cifar10").files[0].creates == "cifar-10-batches-py"
    for name in ("celeba", "waterbirds", "pacs", "vlcs", "officehome"):
        assert dl.DOWNLOADS.get(name).files
    with pytest.raises(SharplabError, match="unknown download 'imagenet'"):
        dl.download_names("imagenet")
