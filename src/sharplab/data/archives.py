"""Safe extraction of tar(.gz) and zip archives.

Every member is checked before anything is written: an absolute name, a ``..`` component, a link whose
target is absolute or leaves the destination, or a device/FIFO member rejects the whole archive with one
line naming the member. Tar extraction then also runs under Python's ``"data"`` filter (PEP 706), which
re-checks links against the files already on disk (e.g. a symlink chain built from two members).

Size budget: the bytes an archive declares for its members are added up before anything is written, and
an archive that declares more than its budget (``max_bytes``; see :func:`archive_budget`: at most
:data:`MAX_RATIO` times the archive's own size, never less than :data:`MIN_BUDGET`, never more than
:data:`MAX_BYTES`), more than :data:`MAX_MEMBERS` members, or more than the free space of the disk is
refused with one line. The declared sizes bound what is written: tar members are read for exactly their
declared size, and Python's zip reader stops a member at its declared size (a lying member then fails its
CRC check).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from sharplab.errors import SharplabError


class UnsafeArchiveError(SharplabError):
    """An archive member would be written (or would point) outside the destination folder, or the archive
    would unpack to more than its size budget."""


#: the most bytes any archive may unpack to (the largest data set here, CelebA's images, is 1.4 GB)
MAX_BYTES = 8 << 30
#: the most an archive may unpack to per byte of archive: images and pickles compress little (CIFAR-10's
#: 163 MB .tar.gz holds 178 MB), a "zip bomb" compresses a thousandfold
MAX_RATIO = 8
#: a small archive may always unpack to this much, whatever its ratio
MIN_BUDGET = 64 << 20
#: the most members an archive may hold (CelebA's 202,599 images fit)
MAX_MEMBERS = 1_000_000


def archive_budget(archive: str | os.PathLike, max_bytes: int | None = None) -> int:
    """The bytes ``archive`` may unpack to: ``MAX_RATIO`` x its size, at least ``MIN_BUDGET``, at most
    ``max_bytes`` (default :data:`MAX_BYTES`)."""
    size = Path(archive).stat().st_size
    return min(MAX_BYTES if max_bytes is None else max_bytes, max(MIN_BUDGET, MAX_RATIO * size))


def _check_budget(archive: Path, target: Path, declared: int, members: int, max_bytes: int | None) -> None:
    delete = "; delete it and download it again from the official source"
    if members > MAX_MEMBERS:
        raise UnsafeArchiveError(f"refusing to extract {archive.name}: more than {MAX_MEMBERS} members{delete}")
    if max_bytes is not None and declared > max_bytes:
        raise UnsafeArchiveError(f"refusing to extract {archive.name}: it would unpack to {declared} bytes, "
                                 f"more than its budget of {max_bytes} bytes{delete}")
    free = shutil.disk_usage(target).free
    if declared > free:
        raise SharplabError(f"cannot extract {archive.name}: it unpacks to {declared} bytes but only {free} "
                            f"are free on the disk of {target}; free some space and run the command again")


def _check_name(archive: Path, name: str) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} has an absolute path")
    if ".." in PurePosixPath(norm).parts:
        raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} contains '..'")


def _check_link(archive: Path, member: tarfile.TarInfo) -> None:
    target = member.linkname.replace("\\", "/")
    if target.startswith("/"):
        raise UnsafeArchiveError(
            f"refusing to extract {archive.name}: link {member.name!r} points to absolute path {target!r}")
    # symlinks resolve relative to their folder, hard links relative to the archive root
    base = posixpath.dirname(member.name) if member.issym() else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"refusing to extract {archive.name}: link {member.name!r} -> {target!r} leaves the folder")


def check_tar(archive: Path, tf: tarfile.TarFile, target: Path | None = None,
              max_bytes: int | None = None) -> None:
    """Check every member of ``tf`` (names, links, kinds), then the size budget (see the module)."""
    declared, members = 0, 0
    for m in tf:  # iterated, not getmembers(): an archive of millions of empty members stops early
        members += 1
        declared += max(m.size, 0) if m.isfile() else 0
        if members > MAX_MEMBERS or (max_bytes is not None and declared > max_bytes):
            break
        _check_name(archive, m.name)
        if m.issym() or m.islnk():
            _check_link(archive, m)
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: {m.name!r} is a special file")
    _check_budget(archive, target or Path(archive).parent, declared, members, max_bytes)


def safe_extract(archive: str | Path, target: str | Path, max_bytes: int | None = None) -> list[str]:
    """Extract a tar (any compression) or zip ``archive`` into ``target``; returns the member names.

    ``max_bytes``: the most bytes the members may declare in all (None: no budget but the disk's free space).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            check_tar(archive, tf, target, max_bytes)
            try:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(target, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; the checks above still apply
                    tf.extractall(target)  # noqa: S202
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: {exc}") from None
            return tf.getnames()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchiveError(
                        f"refusing to extract {archive.name}: member {info.filename!r} is a symbolic link")
            _check_budget(archive, target, sum(max(i.file_size, 0) for i in infos), len(infos), max_bytes)
            zf.extractall(target)
            return zf.namelist()
    raise SharplabError(f"{archive} is not a tar or zip archive; delete it and download again")
