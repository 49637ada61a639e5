"""A shutdown's deadline, counted from the signal, kept even while the loop's thread is stuck.

The event loop runs its signal handlers (``loop.add_signal_handler``) only when it gets
control back: a Worker that never yields keeps it, and SIGTERM would wait for it. But a
signal's Python-level handler runs in the main thread between two bytecodes, in that
Worker's code too. So ``serve`` wraps the loop's handlers: the first signal starts the
deadline and arms the CPU watchdog (fastbind.watchdog), whose thread, at the deadline,
raises CancelledError into the pipeline step still running, and a moment later, if the
loop has still not come back, exits the process with status 1. A second signal brings
both forward to now.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from functools import partial
from types import FrameType
from typing import Any

from ..watchdog import watchdog

__all__ = ("ShutdownDeadline",)

# After the deadline, how long the shutdown may take to cancel and close what is left
# before the process is ended without it.
EXIT_GRACE_S = 0.9


class ShutdownDeadline:
    """``timeout`` seconds from the first stop signal (see the module)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.signalled_at: float | None = None

    def watch(self, signums: Iterable[int]) -> None:
        """Wrap the handlers installed for ``signums`` (after loop.add_signal_handler)."""
        watchdog.start()
        for signum in signums:
            signal.signal(signum, partial(self._on_signal, signal.getsignal(signum)))

    def _on_signal(self, previous: Any, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signalled_at is None:
            self.signalled_at = now
            watchdog.stopping(now + self.timeout, now + self.timeout + EXIT_GRACE_S)
        else:  # a second signal: what is left is cancelled now
            watchdog.stopping(now, now + EXIT_GRACE_S)
        if callable(previous):
            previous(signum, frame)  # the loop's own: it wakes the loop, which runs its handler

    def left(self) -> float:
        """Seconds left before the deadline (all of them before any signal)."""
        if self.signalled_at is None:
            return self.timeout
        return max(0.0, self.signalled_at + self.timeout - time.monotonic())

    def release(self) -> None:
        """The shutdown has ended: disarm the watchdog's deadlines."""
        watchdog.stopped()
