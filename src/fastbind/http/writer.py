"""Writing HTTP/1.1 responses: the head, plain and streamed bodies, a slow reader's back-pressure."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from ..response import Response
from .exchange import Exchange, ServerState

__all__ = ("ResponseWriter", "close_body")

logger = logging.getLogger("fastbind.server")

# A plain body up to this size goes out in one write with the head.
_COALESCE_MAX = 64 * 1024
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_NO_CONTENT = frozenset((204, 304))
# Headers whose value the server decides: framing and connection management (RFC 9112).
_OWN_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "date"))


class ResponseWriter:
    """The write side of one connection.

    The transport calls ``pause``/``resume`` (through the protocol's pause_writing and
    resume_writing) when its buffer fills and empties; a streamed body waits in
    ``drain`` meanwhile, and the connection starts no further request, so a client that
    reads slowly slows the Worker down instead of growing the server's memory.
    ``written`` counts the bytes handed to the transport: with the transport's unsent
    count, it tells whether the client is taking any (HTTPConnection.check_timeouts).
    """

    __slots__ = ("transport", "_state", "_loop", "paused", "written", "_waiter", "lost")

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self._state = state
        self._loop = loop
        self.paused = False
        self.written = 0
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False

    # -- flow control ---------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self) -> None:
        self.lost = True
        self._wake()

    async def drain(self) -> None:
        while self.paused and not self.lost:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- responses --------------------------------------------------------------------------

    def head(self, ex: Exchange, response: Response, framing: str, final: bool = True) -> bytes:
        """The status line and headers; ``final``: the whole body goes out with them.

        Decides, and says in a ``connection`` header, whether the connection outlives
        this response.
        """
        ex.answering = True
        status = response.status
        parts = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n"]
        dated = False
        for name, value in response.headers._read():
            if name in _OWN_HEADERS:
                if name != "date":
                    continue
                dated = True
            parts.append(f"{name}: {value}\r\n")
        if not dated:
            parts.append(self._state.date)
        parts.append(framing)
        if self._state.draining or (final and not ex.body_done and not ex.skippable()):
            ex.keep_alive = False
        if not ex.keep_alive:
            parts.append("connection: close\r\n\r\n")
        elif ex.version == "1.0":
            parts.append("connection: keep-alive\r\n\r\n")
        else:
            parts.append("\r\n")
        try:
            return "".join(parts).encode("latin-1")
        except UnicodeEncodeError:  # a value made by a Worker, not received from a client
            return b"".join(_encode_part(part) for part in parts)

    def plain(self, ex: Exchange, response: Response, body: Any) -> int:
        """Write a response whose body is None, bytes-like or str; returns the body bytes sent."""
        transport = self.transport
        assert transport is not None
        if body is None:
            body = b""
        elif type(body) is str:
            body = body.encode()
        elif type(body) is memoryview:
            body = body.cast("B")
        if response.status in _NO_CONTENT:
            head = self.head(ex, response, "")
            self.written += len(head)
            transport.write(head)
            return 0
        size = len(body)
        head = self.head(ex, response, f"content-length: {size}\r\n")
        if ex.head_only or not size:
            self.written += len(head)
            transport.write(head)
            return 0
        self.written += len(head) + size
        if size <= _COALESCE_MAX:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return size

    async def stream(self, ex: Exchange, response: Response, body: Any) -> int:
        """Write a response whose body is an async iterator, chunk by chunk as it comes.

        Chunked, or as it is when the Worker declared a Content-Length (or the client
        speaks HTTP/1.0). The body is closed at the end, also when the client went away.
        """
        transport = self.transport
        assert transport is not None
        write = self._write
        declared = _declared_length(response)
        sent = 0
        try:
            if response.status in _NO_CONTENT or ex.head_only:
                framing = "" if declared is None else f"content-length: {declared}\r\n"
                write(self.head(ex, response, framing))
                return 0
            if declared is not None:
                write(self.head(ex, response, f"content-length: {declared}\r\n", False))
                chunked = False
            elif ex.version == "1.0":
                ex.keep_alive = False  # the body ends when the connection does
                write(self.head(ex, response, "", False))
                chunked = False
            else:
                write(self.head(ex, response, "transfer-encoding: chunked\r\n", False))
                chunked = True
            async for chunk in body:
                if type(chunk) is not bytes:
                    chunk = _chunk_bytes(chunk)
                size = len(chunk)
                if not size:
                    continue
                sent += size
                if declared is not None and sent > declared:
                    raise ValueError(f"the body is longer than its content-length, {declared}")
                if chunked:
                    if size <= _COALESCE_MAX:
                        write(b"%x\r\n%b\r\n" % (size, chunk))
                    else:
                        write(b"%x\r\n" % size)
                        write(chunk)
                        write(b"\r\n")
                else:
                    write(chunk)
                if self.paused:
                    await self.drain()
                if self.lost:
                    raise asyncio.CancelledError
            if declared is not None and sent != declared:
                raise ValueError(f"the body is {sent} bytes long, its content-length says {declared}")
            if chunked:
                write(b"0\r\n\r\n")
            return sent
        except Exception:
            # The head is out: the only way left to tell the client is to cut the body short.
            logger.exception("Response body of %s failed", ex.request)
            ex.keep_alive = False
            transport.abort()
            return sent
        finally:
            await close_body(body)

    def rejection(self, ex: Exchange) -> int:
        """Answer a request the server refused itself (4xx); returns the body size.

        The caller closes the connection (HTTPConnection._close_draining).
        """
        transport = self.transport
        if transport is None or self.lost:
            return 0
        ex.answering = True
        body = (ex.reject_message + "\n").encode()
        status = ex.reject
        self._write(
            (
                (_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n")
                + self._state.date
                + f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
                + "connection: close\r\n\r\n"
            ).encode("latin-1")
            + body
        )
        return len(body)

    def send_continue(self) -> None:
        """``100 Continue``: the Worker has started reading a body the client holds back."""
        if self.transport is not None and not self.lost:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.written += len(data)
        self.transport.write(data)


def _declared_length(response: Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _chunk_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode()
    raise TypeError(f"A response body stream must yield bytes, not {type(chunk).__name__}")


def _encode_part(part: str) -> bytes:
    try:
        return part.encode("latin-1")
    except UnicodeEncodeError:
        return part.encode()


async def close_body(body: Any) -> None:
    """Close a Response's body (or a body) that will not be read: its pipeline ends."""
    if isinstance(body, Response):
        body = body.body
    closer = getattr(body, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            logger.exception("Closing a response body failed")
