"""Downloads under faults: killed or refused extraction, missing folders, truncated archives, bad arguments."""

from __future__ import annotations

import pytest
from test_data_download import Server, _link, _tar  # noqa: F401  (Server: the fixture's class)

from sharplab.cli import main
from sharplab.data import download as dl
from sharplab.errors import SharplabError
from sharplab.registry import Registry

FOLDER = "birds"
MEMBERS = [(f"{FOLDER}/img/{i:03d}.jpg", bytes([i]) * 50) for i in range(20)] + [
    (f"{FOLDER}/metadata.csv", b"img_id,y\n")]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def birds(monkeypatch):
    """A waterbirds-like download without checksum: birds.tar.gz -> birds/ with metadata.csv expected."""
    reg: Registry[dl.DownloadSpec] = Registry("download")
    reg.add("birds", dl.DownloadSpec("birds", (dl.RemoteFile(
        "https://example.invalid/birds.tar.gz", "birds.tar.gz", None, extract_to=".", creates=FOLDER,
        expect=("metadata.csv",)),)))
    monkeypatch.setattr(dl, "DOWNLOADS", reg)


def _get(server, root):
    return main(["data", "download", "birds", "--root", str(root), "--base-url", server.url, "--quiet"])


def test_partial_folder_from_a_killed_extraction_is_not_accepted(server, tmp_path, birds, capsys):
    partial = tmp_path / FOLDER / "img"
    partial.mkdir(parents=True)
    for name, body in MEMBERS[:9]:  # what a kill -9 after 9 members left behind (no metadata.csv)
        (tmp_path / name).write_bytes(body)
    server.files["/birds.tar.gz"] = _tar(MEMBERS)
    assert _get(server, tmp_path) == 0
    assert (tmp_path / FOLDER / "metadata.csv").exists() and len(list(partial.iterdir())) == 20
    assert (tmp_path / FOLDER / dl.MARKER).exists() and not (tmp_path / "birds.tar.gz").exists()
    n = len(server.requests)
    assert _get(server, tmp_path) == 0 and len(server.requests) == n  # complete: nothing fetched again


def test_interrupted_extraction_leaves_no_target_folder(server, tmp_path, birds, monkeypatch):
    server.files["/birds.tar.gz"] = _tar(MEMBERS)
    real = dl.safe_extract

    def killed(archive, target, **kwargs):
        real(archive, target, **kwargs)
        raise KeyboardInterrupt  # stands for the kill: everything was written to the temporary folder

    monkeypatch.setattr(dl, "safe_extract", killed)
    with pytest.raises(KeyboardInterrupt):
        dl.download("birds", tmp_path, base_url=server.url, quiet=True)
    assert not (tmp_path / FOLDER).exists()
    monkeypatch.setattr(dl, "safe_extract", real)
    assert dl.download("birds", tmp_path, base_url=server.url, quiet=True) == [tmp_path / FOLDER]
    assert (tmp_path / FOLDER / "metadata.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == [FOLDER]  # no temporary folder left


def test_refused_archive_is_refused_again_and_leaves_nothing(server, tmp_path, birds, capsys):
    server.files["/birds.tar.gz"] = _tar([*MEMBERS, _link("d", "."), _link("d/e", "..")])
    for _ in range(2):
        assert _get(server, tmp_path) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: refusing to extract") and err.count("\n") == 1
        assert not (tmp_path / FOLDER).exists()


def test_archive_without_the_expected_folder(server, tmp_path, birds, capsys):
    server.files["/birds.tar.gz"] = _tar([("other/metadata.csv", b"x")])
    assert _get(server, tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "expected folder birds/" in captured.err and "it holds: other" in captured.err
    assert not (tmp_path / FOLDER).exists()


def test_archive_missing_an_expected_file(server, tmp_path, birds, capsys):
    server.files["/birds.tar.gz"] = _tar(MEMBERS[:-1])
    assert _get(server, tmp_path) == 2
    assert "lacks metadata.csv" in capsys.readouterr().err and not (tmp_path / FOLDER).exists()


def test_truncated_archive_on_disk_is_fetched_again(server, tmp_path, birds):
    good = _tar(MEMBERS)
    (tmp_path / "birds.tar.gz").write_bytes(good[: len(good) // 2])  # kept by an earlier, cut-off run
    server.files["/birds.tar.gz"] = good
    assert dl.download("birds", tmp_path, base_url=server.url, quiet=True) == [tmp_path / FOLDER]
    assert (tmp_path / FOLDER / "metadata.csv").exists()


def test_an_archive_that_never_opens_is_deleted_with_one_line(server, tmp_path, birds, capsys):
    good = _tar(MEMBERS)
    server.files["/birds.tar.gz"] = good[: len(good) // 2]
    assert _get(server, tmp_path) == 2
    err = capsys.readouterr().err
    assert "cannot be opened" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert len(server.requests) == 2  # fetched once more before giving up


@pytest.mark.parametrize("args,match", [
    (["--timeout", "-1"], "--timeout"), (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"),
    (["--base-url", "not a url"], "--base-url"), (["--base-url", "ftp://host/x"], "--base-url"),
])
def test_bad_download_arguments(server, tmp_path, birds, capsys, args, match):
    argv = ["data", "download", "birds", "--root", str(tmp_path / "r"), "--quiet", *args]
    if "--base-url" not in args:
        argv += ["--base-url", server.url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert server.requests == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("timeout", [-1.0, 0.0, float("nan"), float("inf")])
def test_library_checks_the_timeout_too(server, tmp_path, birds, timeout):
    with pytest.raises(SharplabError, match="--timeout"):
        dl.download("birds", tmp_path, base_url=server.url, timeout=timeout)
    assert server.requests == []


def test_root_that_is_a_file(server, tmp_path, birds, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for root in (f, f / "sub"):
        with pytest.raises(SharplabError, match="is a file"):
            dl.download("birds", root, base_url=server.url)
    assert server.requests == []


# --- hostile HTTP replies (issue 23, item 8) and a failed download's folders (item 9) --------------------
class Hostile:
    """A local HTTP server whose every GET is answered by ``respond(handler)`` (raw status and headers)."""

    def __init__(self, respond) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str | None]] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                srv.requests.append((self.path, self.headers.get("Range")))
                respond(self)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(status: int, body: bytes, **headers: str):
    def respond(handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            handler.send_header(k.replace("_", "-"), v)
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def _download_birds(url, root):
    return main(["data", "download", "birds", "--root", str(root), "--base-url", url, "--quiet"])


def test_garbled_content_length_is_one_line_and_saves_nothing(tmp_path, birds, capsys):
    srv = Hostile(_reply(200, _tar(MEMBERS), Content_Length="abc"))
    try:
        assert _download_birds(srv.url, tmp_path) == 2
    finally:
        srv.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "invalid Content-Length 'abc'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("partial, content_range", [
    (0, "bytes 5-{end}/{total}"),  # a 206 to a request without Range
    (100, "bytes 0-{end}/{total}"), (100, "bytes abc"), (100, None),  # the wrong part after byte 100
])
def test_a_206_with_the_wrong_content_range_is_one_line_and_keeps_no_partial_file(tmp_path, birds, capsys, partial,
                                                                                content_range):
    body = _tar(MEMBERS)
    if partial:  # an interrupted earlier download: resumed with a Range request
        (tmp_path / "birds.tar.gz.part").write_bytes(body[:partial])
    headers = {"Content_Length": str(len(body))}
    if content_range is not None:
        headers["Content_Range"] = content_range.format(end=len(body) - 1, total=len(body))
    srv = Hostile(_reply(206, body, **headers))
    try:
        assert _download_birds(srv.url, tmp_path) == 2
        assert srv.requests[0][1] == (f"bytes={partial}-" if partial else None)
    finally:
        srv.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "unexpected byte range" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no spliced .part kept, no folder


def test_a_failed_download_leaves_no_empty_folder(server, tmp_path, capsys):
    """``data download mnist`` against a mirror that has nothing: no empty ``root/mnist/`` stays behind."""
    root = tmp_path / "root"
    root.mkdir()
    assert main(["data", "download", "mnist", "--root", str(root), "--base-url", server.url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and err.count("\n") == 1, err
    assert server.requests  # it did try
    assert sorted(p.name for p in root.iterdir()) == []


def test_a_refused_archive_is_kept_and_the_message_says_to_delete_it(server, tmp_path, birds, capsys):
    server.files["/birds.tar.gz"] = _tar([*MEMBERS, _link(f"{FOLDER}/escape", "/etc/passwd")])
    assert _get(server, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to extract") and err.count("\n") == 1, err
    archive = tmp_path / "birds.tar.gz"
    assert f"delete {archive}" in err
    assert archive.exists() and not (tmp_path / FOLDER).exists()
