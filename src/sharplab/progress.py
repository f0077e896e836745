"""Progress reporting shared by every command and lab: a tqdm bar on a terminal, plain lines otherwise.

When stderr is not a terminal (a log file, CI, ``nohup``), a bar's carriage-return updates would become one
line per update; :func:`progress` then returns a :class:`LineProgress`, which prints one line
``desc: 40% (40/100), 12 s`` each time another ``every`` percent is done (default 10), plus the last one.
Without a known total it prints every ``min_interval`` seconds. Nothing is printed during the first
``quiet_for`` seconds (default :data:`QUIET_FOR`, 10 s), so a short job leaves no lines at all; a longer one
starts printing at its next step after that. Both have the same small interface:
iteration, ``update(n)``, ``set_postfix(dict)``, ``close()``, and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

QUIET_FOR = 10.0  # seconds of work before a non-terminal progress report prints its first line


class LineProgress:
    """tqdm's interface, writing a plain line every ``every`` percent (or ``min_interval`` s if no total)."""

    def __init__(self, iterable: Iterable | None = None, total: int | float | None = None, desc: str = "",
                 initial: int = 0, every: float = 10.0, min_interval: float = 30.0, file: TextIO | None = None,
                 unit: str = "it", quiet_for: float = QUIET_FOR, **_: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        self.every, self.min_interval, self.unit, self.quiet_for = every, min_interval, unit, quiet_for
        self.file = file or sys.stderr
        self.start = self._last_time = time.monotonic()
        self._last_pct = -1.0 if not total else 100.0 * initial / total
        self.postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            pct = 100.0 * self.n / self.total
            if pct >= 100.0 or pct - self._last_pct >= self.every - 1e-9:
                self._last_pct = pct - (pct % self.every if pct < 100.0 else 0.0)
                self._write(now)
        elif now - self._last_time >= self.min_interval:
            self._write(now)

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(values or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def _write(self, now: float) -> None:
        self._last_time = now
        if now - self.start < self.quiet_for:  # a short job prints nothing
            return
        done = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        pct = f"{100.0 * self.n / self.total:3.0f}% " if self.total else ""
        extra = f" [{self.postfix}]" if self.postfix else ""
        label = f"{self.desc}: " if self.desc else ""
        print(f"{label}{pct}({done}), {now - self.start:.0f} s{extra}", file=self.file, flush=True)

    def close(self) -> None:
        self._closed = True

    def refresh(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off:
    """A disabled bar: iterates and accepts updates silently."""

    def __init__(self, iterable: Iterable | None = None, **_: Any) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        return iter(self.iterable)

    def update(self, n: int | float = 1) -> None:
        self.n += n

    def set_postfix(self, *a: Any, **kw: Any) -> None:
        pass

    def set_postfix_str(self, *a: Any, **kw: Any) -> None:
        pass

    def set_description(self, *a: Any, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "",
             disable: bool = False, leave: bool = True, file: TextIO | None = None, **kwargs: Any) -> Any:
    """A progress bar for ``iterable`` (or ``total`` steps driven by ``update``): tqdm on a terminal,
    :class:`LineProgress` otherwise, nothing when ``disable``. ``kwargs`` go to tqdm (``unit``, ``initial``,
    ``unit_scale``); :class:`LineProgress` uses ``unit`` and ``initial``."""
    if disable:
        return _Off(iterable)
    kwargs.pop("dynamic_ncols", None)
    stream = file or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=leave, file=stream, dynamic_ncols=True, **kwargs)
    keep = {k: v for k, v in kwargs.items() if k in ("unit", "initial", "every", "min_interval", "quiet_for")}
    return LineProgress(iterable, total=total, desc=desc, file=stream, **keep)
