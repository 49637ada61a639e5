"""Pure twin of the coarse clock (_coarse_clock.pxi): a count that goes up every half second.

The twin's thread is a Python thread: it needs the GIL for each tick, so while the
loop's thread runs short steps (letting the GIL go at every poll and taking it back at
once) a tick can come seconds late. The compiled core's thread never takes the GIL.
"""

from __future__ import annotations

import threading
import time

__all__ = ("CoarseClock",)

class _Count:
    tick = 0
    period = 0.5
    thread: threading.Thread | None = None
    lock = threading.Lock()


def _run() -> None:
    while True:
        time.sleep(_Count.period)
        _Count.tick += 1


class CoarseClock:
    """``tick`` goes up by one every ``period`` (half a second) once ``start()`` was
    called. Every instance reads the one count."""

    __slots__ = ()

    @property
    def tick(self) -> int:
        return _Count.tick

    @property
    def period(self) -> float:
        """Seconds between ticks (a benchmark under a slow tool may stretch them)."""
        return _Count.period

    @period.setter
    def period(self, seconds: float) -> None:
        if not 0.001 <= seconds <= 3600:
            raise ValueError(f"CoarseClock.period must be 0.001 to 3600 seconds, not {seconds!r}")
        _Count.period = seconds

    def start(self) -> None:
        """Make sure the thread runs (cheap when it does; again in a child after fork)."""
        if _Count.thread is not None:
            return
        with _Count.lock:
            if _Count.thread is None:
                thread = threading.Thread(target=_run, name="fastbind-coarse-clock", daemon=True)
                thread.start()
                _Count.thread = thread

    def after_fork(self) -> None:
        """In a child after fork: the thread is started again by the next ``start()``."""
        _Count.thread = None
        _Count.lock = threading.Lock()
        _Count.tick += 1
