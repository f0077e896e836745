"""Checkpoints with a recorded checksum, checked at load; the previous good checkpoint kept as a fallback.

``save_checkpoint(path, state)`` serialises ``state``, writes its SHA-256 to ``path.sha256`` and then the
checkpoint (both atomic), after moving a current checkpoint that still matches its checksum to
``checkpoint.prev.pt`` (with its checksum). ``load_checkpoint(path)`` returns the newest file that
matches its recorded checksum: a mismatch (flipped bits, a file replaced behind the run's back) is
reported naming the file, which is renamed ``*.bad`` and never used; the run then resumes from the
previous checkpoint, or starts over when there is none. A kill at any moment leaves either the new
checkpoint or the previous one verifiable. Checkpoints written before checksums existed (no ``.sha256``)
are loaded as they are.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharplab.errors import SharplabError

DIGEST_SUFFIX = ".sha256"


def previous_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _recorded(path: Path) -> str | None:
    try:
        return digest_path(path).read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return None


def _verified(path: Path) -> tuple[bytes | None, str | None]:
    """(contents, None) when ``path`` matches its checksum (or has none), else (None, why not)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    want = _recorded(path)
    if digest_path(path).exists() and want is None:
        return None, f"its checksum file {digest_path(path).name} is unreadable"
    if want is not None and sha256(data) != want:
        return None, f"SHA-256 {sha256(data)[:12]}... differs from the recorded {want[:12]}..."
    return data, None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` with its checksum, keeping the previous good checkpoint."""
    import torch

    from sharplab.io import atomic_write_bytes, deferred_interrupt

    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    try:
        with deferred_interrupt():
            if path.exists() and _verified(path)[1] is None:
                prev = previous_path(path)
                if digest_path(path).exists():
                    os.replace(digest_path(path), digest_path(prev))
                else:
                    with contextlib.suppress(FileNotFoundError):
                        digest_path(prev).unlink()
                os.replace(path, prev)
            atomic_write_bytes(digest_path(path), (sha256(data) + "\n").encode("ascii"))
            atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise SharplabError(f"checkpoint {path} cannot be written ({os.strerror(exc.errno)}); the previous "
                                "checkpoint is kept and nothing else was lost: free space, then re-run") from None
        raise


def load_checkpoint(path: str | os.PathLike, report: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint at ``path`` (or its previous one) that matches its checksum, or None."""
    import torch

    path = Path(path)
    say = report or (lambda msg: print(msg, file=sys.stderr))
    for candidate in (path, previous_path(path)):
        data, problem = _verified(candidate)
        if data is None:
            if problem != "missing":
                bad = candidate.with_name(candidate.name + ".bad")
                with contextlib.suppress(OSError):
                    os.replace(candidate, bad)
                say(f"checkpoint {candidate} is damaged ({problem}); not used (kept as {bad.name}), the run "
                    "continues from its last good state")
            continue
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise SharplabError(f"checkpoint {candidate} cannot be read ({reason}); delete it to start this run "
                                "over, or `sharplab reset DIR RUN_ID`") from None
        if candidate != path:
            say(f"resuming from the previous checkpoint {candidate}")
        return state
    return None
