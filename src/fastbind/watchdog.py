"""The CPU watchdog: a thread that stops pipelines stuck past ``Limits.cpu_ms``."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ("CpuWatchdog", "watchdog")


class CpuWatchdog:
    """Asks each core, every ``interval`` seconds, to interrupt an over-budget slice.

    A Worker that never yields (``while True: pass``) holds the GIL; this thread gets
    it at the next switch interval, and the core's ``watchdog_tick`` raises
    CpuLimitExceeded into the running slice (PyThreadState_SetAsyncExc). The thread
    sleeps on an Event while no CPU-limited pipeline is open, so it costs nothing then.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._open = 0
        self._cores: set[Any] = set()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def open_pipelines(self) -> int:
        return self._open

    def watch(self, core: Any) -> None:
        """A CPU-limited pipeline (or call with a CPU limit) of ``core`` started."""
        with self._lock:
            if core not in self._cores:
                self._cores.add(core)
            self._open += 1
            if not self._wanted.is_set():
                self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fastbind-cpu-watchdog", daemon=True
                )
                self._thread.start()

    def unwatch(self) -> None:
        """A CPU-limited pipeline (or call) ended."""
        with self._lock:
            self._open -= 1
            if self._open < 0:
                self._open = 0
        # The thread goes back to sleep when it next finds nothing open: a limited
        # pipeline or call right after this one then pays no wake-up.

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(self._interval)
            with self._lock:
                if self._open <= 0:
                    self._wanted.clear()
                    continue
            for core in tuple(self._cores):
                core.watchdog_tick()


watchdog = CpuWatchdog()
