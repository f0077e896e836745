"""What each run records about where and how it ran (written to ``run.json``)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import sharplab


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    """``<sha>`` (``-dirty`` if the tree has changes) of the git checkout holding the package, or None."""
    where = Path(cwd) if cwd else Path(sharplab.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None


def environment() -> dict[str, Any]:
    """Package and library versions, machine, threads, allocator setting, git revision."""
    import numpy

    return {
        "sharplab": sharplab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "machine": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "allocator": sharplab.allocator_setting(),
        "git": git_revision(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
