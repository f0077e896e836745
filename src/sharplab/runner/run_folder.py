"""A run's folder: where it lies, the files it leaves, and the check that they are still what was recorded.

Layout of an output folder::

    DIR/results.sqlite          the results store (sharplab.runner.store; or a PostgreSQL database: --store URL)
    DIR/studies/<name>.json     each study file run into DIR, as parsed
    DIR/runs/<run_id>/run.json  resolved config, seed, versions, machine, git revision (atomic)
    DIR/runs/<run_id>/run.log   the run's log;  checkpoint.pt, model.pt and other artifacts of the lab

When a run finishes, the store records the size and SHA-256 of every file in its folder (logs and
TensorBoard excepted, :func:`run_files`); ``sharplab status --check`` compares them (:func:`verify_run_files`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sharplab.runner.store import RunRecord


def run_dir_of(out_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def remove_temp_files(run_dir: Path) -> None:
    """Delete temporary files of atomic writes left by a killed attempt (``.NAME.*.tmp``)."""
    for tmp in run_dir.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


#: files whose content changes after a run finishes (logs) are not part of its manifest
_UNLISTED = (".log",)


def run_files(run_dir: Path) -> dict[str, list[Any]]:
    """``relative path -> [size, SHA-256]`` of the files a run left in its folder (logs and TensorBoard
    excepted), recorded when it finishes and checked by ``sharplab status --check``."""
    out: dict[str, list[Any]] = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.endswith(_UNLISTED) and not rel.startswith("tensorboard/"):
            out[rel] = [p.stat().st_size, file_sha256(p)]
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (bounded memory)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_run_files(rec: RunRecord) -> list[str]:
    """Problems with a finished run's folder: missing run.json or one that disagrees with the store, and
    recorded files that are missing or changed size or contents (a SHA-256 recorded at finish; stores
    written before checksums existed have sizes only)."""
    import json

    assert rec.run_dir is not None
    problems = []
    meta = rec.run_dir / "run.json"
    if not meta.is_file():
        return [f"{meta} is missing"]
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return [f"{meta} is not valid JSON"]
    for key, want in (("run_id", rec.run_id), ("lab", rec.lab), ("seed", rec.seed), ("config", rec.config)):
        if info.get(key) != want:
            problems.append(f"{meta}: {key} differs from the store")
    for name, entry in (rec.files or {}).items():
        size, digest = (entry[0], entry[1]) if isinstance(entry, list) else (entry, None)
        path = rec.run_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, the store recorded {size}")
        elif digest is not None and file_sha256(path) != digest:
            problems.append(f"{path} has other contents than when the run finished (SHA-256 differs)")
    return problems
