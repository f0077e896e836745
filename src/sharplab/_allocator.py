"""Keep freed memory in the process instead of returning it to the OS (glibc only).

On this class of machine, glibc's default malloc returns large freed blocks to the kernel (``mmap`` for
blocks above a dynamic threshold, ``trim`` of the heap top), and touching fresh pages again is slow:
per-example gradients under ``vmap`` and large activations then run up to 2x slower (measured with
``benchmarks/optim_overhead.py --compare-allocator``; docs/optim.md, "Performance"). Raising the mmap and
trim thresholds and turning off mmap for large blocks with
``mallopt`` keeps the memory in the heap, as a caching allocator would (the process's peak memory then
stays reserved). This changes the allocator of the whole process -- the user's own code and every other
library too (a freed 512 MiB array then stays resident) -- so it is never done at import: call
``sharplab.tune_allocator()`` explicitly. ``SHARPLAB_NO_MALLOC_TUNING=1`` makes that call a no-op, and settings
given through ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_MAX_`` are respected.
``allocator_setting()`` says what is in force (run records store it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX/2 = 32 MiB on 64-bit; larger values are rejected. Blocks above
# it would still be mmap'd and unmapped on free, so the main arena's mmap use is switched off (M_MMAP_MAX
# = 0): large blocks then come from the heap and are reused. (Threads' arenas still fall back to mmap.)
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: str | None = None


def allocator_setting() -> str:
    """What is in force: ``"glibc defaults"`` unless :func:`tune_allocator` has run in this process."""
    return _state or "glibc defaults"


def tune_allocator() -> str:
    """Opt in: raise glibc's mmap/trim thresholds for this process (once); return what is in force."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("SHARPLAB_NO_MALLOC_TUNING"):
        _state = "glibc defaults (SHARPLAB_NO_MALLOC_TUNING set)"
    elif any(os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")):
        _state = "user MALLOC_*_THRESHOLD_ environment"
    else:
        _state = _mallopt()
    return _state


def _mallopt() -> str:
    name = ctypes.util.find_library("c")
    if not name:
        return "unchanged (no libc found)"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unchanged (not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
          and mallopt(_M_MMAP_MAX, 0))
    if not ok:
        return "unchanged (mallopt refused)"
    return (f"mallopt mmap_threshold={MMAP_THRESHOLD >> 20}MiB trim_threshold={TRIM_THRESHOLD >> 20}MiB "
            "mmap_max=0")
