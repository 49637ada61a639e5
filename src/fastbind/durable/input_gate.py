"""The input gate of a Durable Object: when a call may start, and in which order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ("InputGate",)


class InputGate:
    """Lets the calls of one object start in arrival order; holds them while blocked.

    The rule (issue 9, Cloudflare's input gate on one thread):

    - A call is *admitted* (its method starts) at once when the gate is open and no
      earlier call is waiting; otherwise it waits in a FIFO queue.
    - The gate is *blocked* while a ``block_concurrency_while()`` callback runs: no call
      starts, whatever the callback awaits.
    - Storage operations complete without suspending, so an object's code between two
      awaits of anything else (a binding, a fetch, a timer) runs with no other call of
      the object in between. Awaiting anything else lets the next call start, as
      Cloudflare's gate opens on non-storage I/O (which is also why an object can call
      itself, or be called back, without deadlock).
    - When the gate unblocks, waiting calls are admitted one at a time: the next one
      only after the previous one has run up to its first suspension, so a call that
      blocks the gate again keeps every later call waiting.
    """

    __slots__ = ("_waiting", "_blockers", "_handing_over")

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._blockers: set[asyncio.Future[Any]] = set()
        self._handing_over = False  # a waiter was admitted and has not run yet

    @property
    def idle(self) -> bool:
        """No call waits and nothing blocks the gate."""
        return not self._waiting and not self._blockers

    def is_blocked_by(self, task: asyncio.Future[Any] | None) -> bool:
        return task is not None and task in self._blockers

    def admit(self) -> asyncio.Future[None] | None:
        """None if the call may start now, else a future that resolves when it may."""
        if not self._blockers and not self._waiting and not self._handing_over:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    def block(self, blocker: asyncio.Future[Any]) -> None:
        """Admit no call until ``blocker`` is done (then call ``unblock``)."""
        self._blockers.add(blocker)

    def unblock(self, blocker: asyncio.Future[Any]) -> None:
        self._blockers.discard(blocker)
        if not self._blockers and not self._handing_over:
            self._admit_next()

    def _admit_next(self) -> None:
        self._handing_over = False
        while self._waiting and not self._blockers:
            waiter = self._waiting.popleft()
            if waiter.done():  # its call was cancelled while it waited
                continue
            waiter.set_result(None)
            # The waiter's task was just scheduled; this runs after its step, so the
            # next call starts only once the admitted one has suspended or finished.
            self._handing_over = True
            waiter.get_loop().call_soon(self._admit_next)
            return

    def blockers(self) -> list[asyncio.Future[Any]]:
        return list(self._blockers)

    def fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        """Raise ``make_error()`` in every waiting call (the object was reset or closed)."""
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(make_error())
