"""A request body as it arrives from the socket: an async iterator of bytes with back-pressure."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from ..errors import BodyReadError

__all__ = ("RequestBody", "BodyReadError")


class _Connection(Protocol):
    def body_consumed(self, size: int) -> None: ...
    def send_continue(self, exchange: Any) -> None: ...


class RequestBody:
    """The body of one request, read by a Worker while the client is still sending it.

    Chunks are the bytes objects the parser produced, handed on as they are. Each
    chunk taken tells the connection, which reads the socket again once little is left
    (the connection pauses reading while too much waits here).
    """

    __slots__ = ("_connection", "_exchange", "_chunks", "_done", "_error", "_waiter")

    def __init__(self, connection: _Connection, exchange: Any, chunks: list[bytes]) -> None:
        self._connection = connection
        self._exchange = exchange
        self._chunks: deque[bytes] = deque(chunks)
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._connection.body_consumed(len(chunk))
                return chunk
            if self._error is not None:
                raise BodyReadError(str(self._error))
            if self._done:
                raise StopAsyncIteration
            # Expect: 100-continue: the client sends the body once it is asked for.
            self._connection.send_continue(self._exchange)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    # -- the connection's side ----------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._wake()

    def end(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._chunks.clear()
        self._wake()

    def abandon(self) -> int:
        """The response is out: drop what is buffered, fail later reads; returns the bytes dropped."""
        dropped = sum(map(len, self._chunks))
        self._chunks.clear()
        if dropped or not self._done:
            self._error = BodyReadError(
                "The response was sent before the request body was read; the rest was discarded"
            )
        self._wake()
        return dropped

    async def aclose(self) -> None:
        """The Worker does not want the rest: it is skipped as it arrives."""
        self._connection.body_consumed(self.abandon())
        self._exchange.discard = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __repr__(self) -> str:
        state = "ended" if self._done else "failed" if self._error else "open"
        return f"<RequestBody {state}, {len(self._chunks)} chunks buffered>"
