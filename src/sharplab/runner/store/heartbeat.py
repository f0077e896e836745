"""The heartbeat of a running run: a daemon thread that stamps the run's row every few seconds."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from sharplab.errors import SharplabError
from sharplab.runner.store.base import ClaimLost, heartbeat_every


class Heartbeat:
    """Beat ``run_id`` under claim ``token`` every ``every`` seconds (default :func:`heartbeat_every`) on a
    store of its own, opened by ``opener`` in the thread. A failed beat (a busy or unreachable store) is
    retried at the next one; once the claim is lost (reset or taken over) the thread stops and
    :attr:`lost` holds the reason (the run's next write raises it)."""

    def __init__(self, opener: Callable[[], Any], run_id: str, token: str | None,
                 every: float | None = None) -> None:
        self._opener, self._run_id, self._token = opener, run_id, token
        self._every = every if every is not None else heartbeat_every()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{run_id}")
        self.lost: str | None = None

    def _loop(self) -> None:
        store = None
        while not self._stop.wait(self._every):
            try:
                if store is None:
                    store = self._opener()
                store.beat(self._run_id, self._token)
            except ClaimLost as exc:
                self.lost = str(exc)
                break
            except (SharplabError, OSError, Exception):  # the next beat will do; reopen then
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
                store = None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
