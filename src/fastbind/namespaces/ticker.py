"""A coarse clock for the dispatch fast path: a number that goes up every half second.

``env.DISPATCHER.get(name)`` must notice, at most a second late, that a tenant is due
for a look at its files. Reading ``time.monotonic()`` at every call is a fifth of what
the whole look-up costs; comparing a tenant's last tick with this one is an attribute
load. A daemon thread advances it (it holds the GIL a few microseconds per tick), so it
runs whichever event loop serves the Runtime, and again in a child after a fork.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ("Ticker", "ticker")

TICK_S = 0.5


class Ticker:
    """``tick`` goes up by one every TICK_S seconds once ``start()`` was called."""

    __slots__ = ("tick", "_thread", "_lock")

    def __init__(self) -> None:
        self.tick = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Make sure the thread runs (cheap when it does)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="fastbind-namespace-ticker", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.tick += 1

    def _after_fork(self) -> None:
        # The thread is not copied by fork (fastbind serve --workers forks after loading):
        # the tick moves on, so that the next get() takes the slow path, which starts one.
        self._thread = None
        self._lock = threading.Lock()
        self.tick += 1


ticker = Ticker()
os.register_at_fork(after_in_child=ticker._after_fork)
