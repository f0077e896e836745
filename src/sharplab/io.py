"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a crash at any moment) sees either the old file or the complete new one, never a prefix.
Ctrl-C (SIGINT) during the write is deferred until the file is in place, then raised: an interrupted
``torch.save`` would otherwise leave a half-written stream and a confusing error. A kill -9 can still
leave the ``.NAME.*.tmp`` file, which the runner deletes when it next claims the run.

The file gets the permissions of an ordinary new file (``0666`` less the user's umask), not the ``0600``
of a temporary file, and a folder standing where the file belongs is refused with one line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """One-line :class:`~sharplab.errors.SharplabError` unless ``path`` is, or can be created as, a folder
    this process can write in (not a file, not under a file, not under /proc, /sys or /dev)."""
    from sharplab.errors import SharplabError

    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise SharplabError(f"{what}: empty path; name a folder")
    parts = p.resolve().parts
    if len(parts) > 1 and parts[1] in ("proc", "sys", "dev"):
        raise SharplabError(f"{what} {str(path)!r} is under /{parts[1]}; choose another folder")
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise SharplabError(f"{what} {str(path)!r}: {str(q)!r} is a file, not a folder; choose another")
            if not os.access(q, os.W_OK | os.X_OK):
                raise SharplabError(f"{what} {str(path)!r}: no permission to write in {str(q)!r}")
            break
    return p


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back SIGINT inside the block (main thread only); raise KeyboardInterrupt after it if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not allowed here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path`` and rename it over ``path`` (Ctrl-C deferred)."""
    with deferred_interrupt():
        return _atomic_write(path, write)


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """``0o666`` less this process's umask: the mode ``open()`` would give a new file."""
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    from sharplab.errors import SharplabError

    path = Path(path)
    if path.is_dir():
        raise SharplabError(f"{path} is a folder where a file belongs; move it away and run the command again")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # e.g. a file system without permissions
                os.fchmod(f.fileno(), file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
