"""``sharplab data download NAME --root DIR``: official URLs, checksums, resume, safe extraction.

Each file is fetched by :func:`sharplab.data.fetch.fetch` (resumed, its length and checksum verified, then
renamed into place). Archives are unpacked with :func:`sharplab.data.archives.safe_extract` into a temporary
folder under the root; the expected folder is checked (it must exist and hold every file of
``RemoteFile.expect``), a marker file :data:`MARKER` is written into it last, and only then is it renamed
into place. A folder without the marker (an extraction killed half-way by an older version, or a folder
put there by hand that lacks an expected file) is not taken as done. An archive that fails to open
(truncated) is deleted and fetched once more.

Checksums: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 use their long-published MD5s; the four CelebA files use the
MD5s published with torchvision's CelebA loader. Waterbirds (Stanford NLP server) and the DomainBed sets
(Google Drive IDs as listed in DomainBed's ``download.py``) have no published checksum, so only the length
announced by the server is verified; those IDs are unverified here (no internet on the build machine).
``base_url`` replaces every URL's folder (mirrors, tests on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from sharplab.data.archives import UnsafeArchiveError, archive_budget, safe_extract
from sharplab.data.fetch import fetch, verify
from sharplab.errors import SharplabError
from sharplab.registry import Registry

#: the longest network timeout accepted, in seconds (a larger one overflows the socket's time_t)
MAX_TIMEOUT = 86_400.0

#: written into an unpacked folder after every member is in place: its presence means "complete"
MARKER = ".sharplab-complete"


@dataclass(frozen=True)
class RemoteFile:
    """``url`` (absolute); ``checksum`` ``"md5:<hex>"``/``"sha256:<hex>"`` or None; ``dest`` relative to root;
    ``extract_to`` (folder under root) for archives; ``creates``: the folder it yields (under root);
    ``expect``: files that must exist inside ``creates`` after extraction (relative to it)."""

    url: str
    dest: str
    checksum: str | None = None
    extract_to: str | None = None
    creates: str | None = None
    rename: tuple[str, str] | None = None  # (from, to) under root after extraction
    expect: tuple[str, ...] = ()
    #: most bytes its archive may unpack to (:func:`sharplab.data.archives.archive_budget`); None: the default
    max_bytes: int | None = None

    @property
    def filename(self) -> str:
        return Path(self.dest).name


@dataclass(frozen=True)
class DownloadSpec:
    name: str
    files: tuple[RemoteFile, ...]
    note: str = ""


DOWNLOADS: Registry[DownloadSpec] = Registry("download")

_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses; yann.lecun.com 403s
_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
}


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _register_all() -> None:
    for name, base in (("mnist", _MNIST), ("fashion-mnist", _FMNIST)):
        DOWNLOADS.add(name, DownloadSpec(name, tuple(
            RemoteFile(base + f, f"{name}/{f}", f"md5:{md5}") for f, md5 in _IDX_MD5[name].items())))
    DOWNLOADS.add("cifar10", DownloadSpec("cifar10", (RemoteFile(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "md5:c58f30108f718f92721af3b95e74349a", extract_to=".", creates="cifar-10-batches-py",
        expect=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),)))
    DOWNLOADS.add("cifar100", DownloadSpec("cifar100", (RemoteFile(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "md5:eb9058c3a382ffc7106e4002c42a8d85", extract_to=".", creates="cifar-100-python",
        expect=("train", "test", "meta")),)))
    DOWNLOADS.add("celeba", DownloadSpec("celeba", (
        RemoteFile(_drive("0B7EVK8r0v71pblRyaVFSWGxPY0U"), "celeba/list_attr_celeba.txt",
                   "md5:75e246fa4810816ffd6ee81facbd244c"),
        RemoteFile(_drive("0B7EVK8r0v71pY0NSMzRuSXJEVkk"), "celeba/list_eval_partition.txt",
                   "md5:d32c9cbf5e040fd4025c592c306e6668"),
        RemoteFile(_drive("0B7EVK8r0v71pZjFTYXZWM3FlRnM"), "celeba/img_align_celeba.zip",
                   "md5:00d2c5bc6d35e252742224ab0c1e8fcb", extract_to="celeba",
                   creates="celeba/img_align_celeba"),
    ), note="Google Drive; the 1.4 GB image zip may need a manual download"))
    DOWNLOADS.add("waterbirds", DownloadSpec("waterbirds", (RemoteFile(
        "https://downloads.cs.stanford.edu/nlp/data/dro/waterbird_complete95_forest2water2.tar.gz",
        "waterbird_complete95_forest2water2.tar.gz", None, extract_to=".",
        creates="waterbird_complete95_forest2water2", expect=("metadata.csv",)),), note="no published checksum"))
    for name, folder, fid, archive, inner in (
        ("pacs", "PACS", "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip", "kfold"),
        ("vlcs", "VLCS", "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS.tar.gz", "VLCS"),
        ("officehome", "OfficeHome", "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home.zip",
         "OfficeHomeDataset_10072016"),
    ):
        DOWNLOADS.add(name, DownloadSpec(name, (RemoteFile(
            _drive(fid), archive, None, extract_to=".", creates=folder,
            rename=(inner, folder) if inner != folder else None),),
            note="Google Drive; no published checksum"))


_register_all()

#: data-set names -> the downloads they need
DATASET_DOWNLOADS = {"fmnist-mnist": ("fashion-mnist", "mnist"), "cifar-mnist": ("cifar10", "mnist")}


def download_names(name: str) -> tuple[str, ...]:
    """Resolve a data-set or download name to download names (``fmnist-mnist`` -> fashion-mnist, mnist)."""
    key = name.strip().lower().replace("_", "-")
    if key in DATASET_DOWNLOADS:
        return DATASET_DOWNLOADS[key]
    DOWNLOADS.get(key)  # raises a one-line error listing the known names
    return (key,)


def with_base(url: str, base_url: str | None, filename: str) -> str:
    """``url``, or ``base_url/filename`` when a base URL overrides the official host."""
    return url if not base_url else base_url.rstrip("/") + "/" + filename


            # fall through: the caller compares the size with the announced total


def check_download_args(root: str | os.PathLike, base_url: str | None, timeout: float) -> Path:
    """Validate ``download``'s arguments before any network access; return the root as a Path."""
    import math

    if (not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0
            or timeout > MAX_TIMEOUT):
        raise SharplabError(f"--timeout {timeout} must be a number of seconds in (0, {MAX_TIMEOUT:g}], e.g. 30")
    if base_url is not None:
        try:
            parts = urllib.parse.urlsplit(base_url)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError as exc:
            raise SharplabError(f"--base-url {base_url!r} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
            raise SharplabError(f"--base-url {base_url!r} is not an http(s):// or file:// URL of a folder")
    path = Path(root).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise SharplabError(f"--root {str(path)!r}: {str(p)!r} is a file, not a folder; choose a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise SharplabError(f"--root {str(path)!r}: no permission to write in {str(p)!r}")
            if p != path and _is_pseudo_fs(p):
                raise SharplabError(f"--root {str(path)!r}: {str(p)!r} is a system folder where no data "
                                    "can be stored; choose another folder")
            break
    return path


def _is_pseudo_fs(path: Path) -> bool:
    """Whether ``path`` lies on a kernel file system (/proc, /sys) where folders cannot be created."""
    try:
        resolved = path.resolve()
    except OSError:
        return False
    return resolved.parts[:2] in (("/", "proc"), ("/", "sys"))


def is_complete(rf: RemoteFile, root: Path) -> bool:
    """Whether ``rf`` is already in place under ``root`` (a verified file, or a complete unpacked folder)."""
    target = root / (rf.creates or rf.dest)
    if rf.extract_to is None:
        return target.is_file() and verify(target, rf.checksum)[0]
    if not target.is_dir():
        return False
    if (target / MARKER).exists():
        return True
    # a folder without the marker counts only when every expected file is there (e.g. unpacked by hand)
    return bool(rf.expect) and all((target / f).exists() for f in rf.expect)


def _inner(rf: RemoteFile) -> str:
    """The folder inside the unpacked archive that becomes ``rf.creates``."""
    if rf.rename is not None:
        return rf.rename[0]
    assert rf.creates is not None and rf.extract_to is not None
    return os.path.relpath(rf.creates, rf.extract_to)


_CORRUPT = (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError, zlib.error)


def unpack(rf: RemoteFile, archive: Path, root: Path) -> Path:
    """Extract ``archive`` into a temporary folder, check it, mark it complete, rename it into place."""
    creates = root / (rf.creates or rf.dest)
    tmp = root / f".{archive.name}.extract.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        safe_extract(archive, tmp, max_bytes=archive_budget(archive, rf.max_bytes))
        inner = tmp / _inner(rf)
        if not inner.is_dir():
            found = ", ".join(sorted(p.name for p in tmp.iterdir())[:5]) or "nothing"
            raise SharplabError(f"{archive.name} does not hold the expected folder {_inner(rf)}/ (it holds: "
                                f"{found}); fetch the right archive, or unpack it by hand into {creates}")
        missing = [f for f in rf.expect if not (inner / f).exists()]
        if missing:
            raise SharplabError(f"{archive.name} is incomplete: {_inner(rf)}/ lacks {', '.join(missing)}; "
                                f"delete {archive} and download again")
        (inner / MARKER).write_text(f"{archive.name}\n", encoding="utf-8")
        if creates.exists():  # an incomplete folder from an earlier attempt
            shutil.rmtree(creates)
        creates.parent.mkdir(parents=True, exist_ok=True)
        os.replace(inner, creates)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return creates


def download(name: str, root: str | os.PathLike, base_url: str | None = None, timeout: float = 30.0,
             quiet: bool = False) -> list[Path]:
    """Download (and unpack) data set or download ``name`` under ``root``; returns the paths created.

    Files already present (a file whose checksum matches, a folder with the completion marker) are skipped.
    """
    root = check_download_args(root, base_url, timeout)
    keys = download_names(name)
    files = [rf for key in keys for rf in DOWNLOADS.get(key).files]
    new_dirs = _missing_dirs(root, files)
    try:
        return _download_files(files, root, base_url, timeout, quiet)
    except OSError as exc:  # disk full, permission, a file in the way: one line, and say what is kept
        raise SharplabError(f"download into {root} stopped: {exc.strerror or exc} "
                            f"({exc.filename or root}); files already complete were kept") from None
    finally:  # a failed download leaves no empty folder behind (a resumable .part keeps its folder)
        _remove_if_empty(new_dirs)


def _missing_dirs(root: Path, files: list[RemoteFile]) -> list[Path]:
    """Folders that do not exist yet and that a download of ``files`` into ``root`` would create."""
    wanted = {root, *root.parents}
    for rf in files:
        wanted.update(p for p in (root / rf.dest).parents if root in (p, *p.parents))
    return [p for p in wanted if not p.exists()]


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` that is (still, or again) an empty folder, deepest first."""
    for p in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (a kept .part file, a finished download), or gone
            p.rmdir()


def _download_files(files: list[RemoteFile], root: Path, base_url: str | None, timeout: float,
                    quiet: bool) -> list[Path]:
    done = []
    for rf in files:
        creates = root / (rf.creates or rf.dest)
        if is_complete(rf, root):
            done.append(creates)
            continue
        url = with_base(rf.url, base_url, rf.filename)
        path = fetch(url, root / rf.dest, rf.checksum, timeout, quiet)
        if rf.extract_to is not None:
            try:
                _unpack_or_refuse(rf, path, root)
            except _CORRUPT:  # truncated or damaged: fetch it once more
                path.unlink()
                path = fetch(url, root / rf.dest, rf.checksum, timeout, quiet)
                try:
                    _unpack_or_refuse(rf, path, root)
                except _CORRUPT as exc:
                    path.unlink()
                    raise SharplabError(f"{path.name} from {url} cannot be opened ({exc}); it was deleted. "
                                        "Check the source, or fetch it by hand") from None
            path.unlink()
        done.append(creates)
    return done


def _unpack_or_refuse(rf: RemoteFile, archive: Path, root: Path) -> Path:
    """:func:`unpack`, with a refused archive's message saying that the archive is still there to delete."""
    try:
        return unpack(rf, archive, root)
    except UnsafeArchiveError as exc:
        raise UnsafeArchiveError(f"{exc}; the archive was kept for inspection: delete {archive} "
                                 "before downloading again") from None
