"""The CPU watchdog: a thread that stops pipelines past ``Limits.cpu_ms``, and a stuck loop at a shutdown's deadline."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from functools import partial
from typing import Any

from . import core as cores

__all__ = ("CpuWatchdog", "watchdog")

# Ticks: a twentieth of the smallest CPU limit registered, within these bounds (the
# longest also while none is registered).
_TICK_MIN_S = 0.002
_TICK_MAX_S = 0.1
_STOPPING_TICK_S = 0.05


class CpuWatchdog:
    """Asks each core, at every tick, to look at the pipeline step running now.

    A Runtime registers its core and CPU limit (``guard``), once: no call is made per
    request. At each tick the core looks at the pipeline step running now: it meters a
    pipeline it finds running from then on, and ``watchdog_tick`` interrupts one past
    its limit (CpuLimitExceeded raised into it with PyThreadState_SetAsyncExc). The
    compiled core looks without the GIL, tick after tick, inside ``watchdog_wait``: this
    thread takes the GIL only to interrupt, to tick the twin or a per-call scope, or
    when poked. It must not wait for the GIL to look: while the loop's thread runs
    short steps it lets the GIL go at every poll and takes it back at once, and a
    thread waiting for it then waits for seconds. A Worker that never yields
    (``while True: pass``) never lets it go; this thread gets it at the next switch
    interval.

    A call with a CPU limit of its own (a per-call scope: CallLimits) is ``watch``-ed
    while it runs: ticks are then the shortest, and its core is looked at.

    ``stopping`` arms a shutdown's deadlines, from a signal handler: at the first the
    step still running gets CancelledError raised into it (the loop's thread may be
    stuck in it, unable to run the shutdown), at the second the process exits.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._guards: dict[int, tuple[Any, Any, float | None]] = {}  # id -> (ref, core, limit s)
        self._gone: list[tuple[int, Any]] = []  # (key, ref) of owners that died, pruned by _retune
        self._calls: dict[int, Any] = {}  # id(core) -> core, of the calls with a CPU limit
        self._open_calls = 0
        self._cores: tuple[Any, ...] = ()
        self._interval = _TICK_MAX_S
        self._stop: tuple[float, float] | None = None  # (interrupt at, exit at), time.monotonic
        self._thread: threading.Thread | None = None
        # The compiled core's wait looks without the GIL; without it, the twin's sleeps.
        self._waiter = cores.twin if cores.compiled is None else cores.compiled

    @property
    def interval(self) -> float:
        """Seconds between ticks now."""
        return self._interval

    @property
    def open_calls(self) -> int:
        """Calls with a CPU limit of their own running now."""
        return self._open_calls

    def guard(self, owner: Any, core: Any, limit_s: float | None) -> None:
        """Watch the pipelines of ``core`` while ``owner`` lives (``limit_s``: its CPU
        limit, None for none: its steps can still be interrupted by ``stopping``)."""
        key = id(owner)
        ref = weakref.ref(owner, partial(self._forget, key))
        with self._lock:
            self._guards[key] = (ref, core, limit_s)
            self._retune()
            self.start()

    def _forget(self, key: int, ref: Any) -> None:
        # A weak reference's callback runs inside whatever allocation collected its owner,
        # on any thread, even in the middle of _retune's loops over _guards: it only notes
        # the key (list.append iterates nothing), and the watchdog's thread prunes it.
        self._gone.append((key, ref))
        self._waiter.watchdog_poke()

    def watch(self, core: Any) -> None:
        """A call with a CPU limit of its own started (its scope's code runs on ``core``)."""
        with self._lock:
            self._open_calls += 1
            self._calls[id(core)] = core
            self._retune()
            self.start()

    def unwatch(self) -> None:
        """A call with a CPU limit of its own ended."""
        with self._lock:
            self._open_calls = max(0, self._open_calls - 1)
            if not self._open_calls:
                self._calls.clear()
            self._retune()

    def _retune(self) -> None:
        while self._gone:
            key, ref = self._gone.pop()
            if key in self._guards and self._guards[key][0] is ref:  # (not a new owner at that id)
                del self._guards[key]
        guards = tuple(self._guards.values())  # (a callback may note a key meanwhile, not remove it)
        limits = [limit for _, _, limit in guards if limit]
        if self._open_calls:
            self._interval = _TICK_MIN_S
        else:
            self._interval = max(_TICK_MIN_S, min(_TICK_MAX_S, min(limits) / 20)) if limits else _TICK_MAX_S
        cores = {id(core): core for _, core, _ in guards}
        cores.update(self._calls)
        self._cores = tuple(cores.values())
        self._waiter.watchdog_configure(self._tick_s())
        self._waiter.watchdog_poke()  # (a wait that looks only should come back and see)

    def _tick_s(self) -> float:
        return self._interval if self._stop is None else min(self._interval, _STOPPING_TICK_S)

    def start(self) -> None:
        """Start the thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastbind-cpu-watchdog", daemon=True)
                self._thread.start()

    def stopping(self, interrupt_at: float, exit_at: float) -> None:
        """Arm a shutdown's deadlines (``time.monotonic()`` values); see the class.

        Safe in a signal handler: it only assigns and stores (the handler may run
        between any two bytecodes of the loop's thread, also while that thread holds a
        lock here).
        """
        self._stop = (interrupt_at, exit_at)
        self._waiter.watchdog_configure(self._tick_s())
        self._waiter.watchdog_poke()

    def stopped(self) -> None:
        """The shutdown ended: disarm its deadlines."""
        self._stop = None
        self._waiter.watchdog_configure(self._tick_s())

    def _run(self) -> None:
        waiter = self._waiter
        while True:
            if self._gone:
                with self._lock:
                    self._retune()
            cores, stop = self._cores, self._stop
            if stop is not None:
                waiter.watchdog_configure(self._tick_s())
            # Back after every look when something is done with the GIL at each tick:
            # another core's look, a per-call scope, a shutdown's deadline.
            every_look = stop is not None or bool(self._calls) or any(core is not waiter for core in cores)
            waiter.watchdog_wait(every_look)
            for core in cores:
                core.watchdog_tick()
            if stop is not None:
                self._stop_tick(cores, stop)

    def _stop_tick(self, cores: tuple[Any, ...], stop: tuple[float, float]) -> None:
        now = time.monotonic()
        interrupt_at, exit_at = stop
        if now >= exit_at:
            # The loop did not come back: nothing else can end the process in time.
            os.write(2, b"fastbind: ERROR the shutdown deadline passed and the event loop is "
                        b"still stuck in a Worker; exiting\n")
            os._exit(1)
        if now >= interrupt_at:
            for core in cores:
                core.interrupt_slice(asyncio.CancelledError)


watchdog = CpuWatchdog()
