"""Safe extraction of tar(.gz) and zip archives.

Every member is checked before anything is written: an absolute name, a ``..`` component, a link whose
target is absolute or leaves the destination, or a device/FIFO member rejects the whole archive with one
line naming the member. Tar extraction then also runs under Python's ``"data"`` filter (PEP 706), which
re-checks links against the files already on disk (e.g. a symlink chain built from two members).
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from sharplab.errors import SharplabError


class UnsafeArchiveError(SharplabError):
    """An archive member would be written (or would point) outside the destination folder."""


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


def check_tar(archive: Path, tf: tarfile.TarFile) -> None:
    for m in tf.getmembers():
        _check_name(archive, m.name)
        if m.issym() or m.islnk():
            _check_link(archive, m)
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: {m.name!r} is a special file")


def safe_extract(archive: str | Path, target: str | Path) -> list[str]:
    """Extract a tar (any compression) or zip ``archive`` into ``target``; returns the member names."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            check_tar(archive, tf)
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
            for info in zf.infolist():
                _check_name(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchiveError(
                        f"refusing to extract {archive.name}: member {info.filename!r} is a symbolic link")
            zf.extractall(target)
            return zf.namelist()
    raise SharplabError(f"{archive} is not a tar or zip archive; delete it and download again")
