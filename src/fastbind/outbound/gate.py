"""The connection gate: at most N outbound fetches of one pipeline await headers (docs/design.md, "Open connections")."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Generator
from typing import Any

from ..policy import observed_headers

__all__ = ("Admission", "ConnectionGate", "gate_for")


class ConnectionGate:
    """A FIFO counting gate: ``await acquire()`` takes a slot, ``release()`` gives it back.

    Unlike ``asyncio.Semaphore`` it hands a freed slot straight to the oldest waiter,
    so a newcomer can never overtake the queue, and it never fails a waiter: a fetch
    waits as long as it takes. A waiter cancelled while queued leaves the queue
    without a slot; one cancelled just after a slot was handed to it passes the slot
    on, so cancellation can neither take nor leak a slot.
    """

    __slots__ = ("_limit", "_active", "_waiters")

    def __init__(self, limit: int) -> None:
        if type(limit) is not int or limit < 1:
            raise ValueError(f"A connection gate needs a positive int limit, not {limit!r}")
        self._limit = limit
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def active(self) -> int:
        """Slots taken now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Acquirers queued for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def acquire(self) -> Awaitable[None]:
        """Take a slot, waiting in FIFO order while all are taken: ``await gate.acquire()``.

        A free slot is taken by the call itself, so await the result at once.
        """
        if self._active < self._limit and not self._waiters:
            self._active += 1
            return _TAKEN  # nothing to wait for, so no coroutine to make
        return self._wait()

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # release() handed us the slot as the cancel arrived: pass it on.
                self.release()
            elif waiter in self._waiters:  # release() may have dropped it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest live waiter if there is one."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; ``active`` stays
                return
        if self._active <= 0:
            raise RuntimeError("ConnectionGate.release() called more times than acquire()")
        self._active -= 1

    def __repr__(self) -> str:
        return f"<ConnectionGate active={self._active}/{self._limit} waiting={self.waiting}>"


class _Taken:
    """The awaitable of a slot taken at once: awaiting it returns None without suspending."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_TAKEN = _Taken()


# One gate per pipeline, gone with it. Kept outside the pipeline so that the core's
# types need not know about asyncio futures; the interface is small enough to move in.
_gates: weakref.WeakKeyDictionary[Any, ConnectionGate] = weakref.WeakKeyDictionary()


def gate_for(pipeline: Any) -> ConnectionGate:
    """The connection gate of ``pipeline`` (a core PipelineContext), made on first use."""
    gate = _gates.get(pipeline)
    if gate is None:
        gate = _gates[pipeline] = ConnectionGate(pipeline.open_connections)
    return gate



class Admission:
    """``async with Admission(invocation, url):`` around an outbound connection's opening.

    Inside a Worker the connection is one subrequest of ``invocation`` (entering raises
    TooManySubrequestsError past the budget) and holds a slot of its pipeline's gate
    until the block ends; its ledger record ends "ok" (with ``status`` when the block set
    it), "canceled" or "error" with the block. Outside a Worker (``invocation`` None) it
    does nothing.
    """

    __slots__ = ("_invocation", "_url", "_record", "_gate", "status")

    def __init__(self, invocation: Any, url: str) -> None:
        self._invocation = invocation
        self._url = url
        self._record: Any = None
        self._gate: ConnectionGate | None = None
        self.status: int | None = None

    async def __aenter__(self) -> None:
        invocation = self._invocation
        if invocation is None:
            return
        pipeline = invocation.pipeline
        record = pipeline.charge_fetch(invocation, self._url)
        gate = gate_for(pipeline)
        try:
            await gate.acquire()
        except BaseException:
            record.finish("canceled")
            raise
        self._record, self._gate = record, gate

    def traced(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` with the ones the pipeline's observers add for this connection
        (tracing: its own traceparent, in place of any the Worker copied)."""
        record = self._record
        if record is None:
            return headers
        pipeline = self._invocation.pipeline
        if not pipeline.observed:
            return headers
        extra = observed_headers(pipeline, record.index)
        if not extra:
            return headers
        names = {name for name, _ in extra}
        return [h for h in headers if h[0] not in names] + extra

    async def __aexit__(self, kind: type[BaseException] | None, error: object, tb: object) -> None:
        if self._gate is not None:
            self._gate.release()
        record = self._record
        if record is not None:
            if kind is None:
                record.finish("ok", self.status)
            else:
                record.finish("canceled" if issubclass(kind, asyncio.CancelledError) else "error")
