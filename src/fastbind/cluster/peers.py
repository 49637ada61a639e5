"""Connections to peers: keep-alive HTTP/1.1 over a unix socket or TCP, on httptools.

A forwarded call that does not go on the node's call channel (``channel.py``: RPC
calls between the node's processes) is one HTTP/1.1 request to a fastbind server that
this process trusts (another process of the node, over its unix socket, or another node). aiohttp's client
costs about four times as much CPU per request as the fastbind server that answers it
(measured: 45 us against 16 us for a small request over a unix socket), and forwarding
must stay cheap next to an in-process call, so the forwarder writes its requests and
parses the answers itself with httptools, the parser the server uses. It speaks only
what fastbind's server answers: ``Content-Length`` or chunked bodies, keep-alive, one
request at a time per connection (a pool per peer holds as many as run at once).
WebSocket upgrades go through aiohttp (``forward.py``).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from typing import Any

import httptools

from ..errors import FastbindError

__all__ = ("PeerPool", "PeerResponse", "PeerGone", "PeerUnreachable")

# Answers up to this size are read whole before they are handed over; larger ones,
# and chunked ones, stream (reading pauses while more than _STREAM_HIGH waits).
_WHOLE_MAX = 256 * 1024
_STREAM_HIGH = 256 * 1024
_IDLE_MAX = 64  # idle connections kept per peer
# An idle connection older than this is not reused: the server closes idle connections
# after its keep-alive timeout (5 s by default), and one closed as a request goes out
# would fail a call that never ran.
_IDLE_REUSE_S = 2.0
_CONNECT_TIMEOUT_S = 5.0


class PeerUnreachable(FastbindError):
    """No connection could be made to the peer: the request was never sent."""


class PeerGone(FastbindError):
    """The connection broke after the request was sent: it may have run, or not."""


class PeerResponse:
    """An answer: status, headers (lower-case names), and the body (bytes or a stream)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Stream:
    """The body of an answer that streams: an async iterator of the chunks as they come."""

    __slots__ = ("_conn", "_chunks", "_size", "_done", "_error", "_waiter")

    def __init__(self, conn: _PeerConnection) -> None:
        self._conn: _PeerConnection | None = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > _STREAM_HIGH and self._conn is not None:
            self._conn.pause()
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._done:
                self._release()
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._conn is not None and self._size < _STREAM_HIGH // 4:
            self._conn.resume()
        return chunk

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stream_done()

    async def aclose(self) -> None:
        """Stop reading: a connection whose answer was not read to its end is closed."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.close()
        elif conn is not None:
            conn.stream_done()


class _PeerConnection(asyncio.Protocol):
    """One keep-alive connection: one request, then its answer, at a time."""

    def __init__(self, pool: PeerPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self._stream: _Stream | None = None
        self._waiter: asyncio.Future[PeerResponse] | None = None
        self._head_only = False
        self._keep = True
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self._length = -1
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        error = PeerGone(f"the connection to {self._pool.label} was lost" + (f": {exc}" if exc else ""))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self._stream is not None:
            self._stream.end(error)
            self._stream = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(error)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = PeerGone(f"{self._pool.label} sent a malformed answer: {exc}")
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(error)
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.decode("latin-1").lower()
        self._headers.append((lname, value.decode("latin-1")))
        if lname == "content-length":
            self._length = int(value)

    def on_headers_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self._keep = False
        if self._head_only:  # the answer to HEAD has no body, whatever its headers say
            self._answer(None)
            self.close()  # the parser would wait for the body its headers announce
            return
        if self._length < 0 or self._length > _WHOLE_MAX:
            self._stream = _Stream(self)
            self._answer(self._stream)

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        stream = self._stream
        if stream is not None:
            self._stream = None
            stream.end()
        elif self._waiter is not None and not self._waiter.done():
            body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
            self._answer(body)
            self._done()

    def _answer(self, body: Any) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(PeerResponse(self._parser.get_status_code(), self._headers, body))

    def _done(self) -> None:
        """The answer was read to its end: the connection may serve the next request."""
        self._headers = []
        self._chunks = []
        self._length = -1
        self._waiter = None
        if self._keep and not self.closed:
            self._pool.put_back(self)
        else:
            self.close()

    def stream_done(self) -> None:
        self._done()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    async def _drain(self) -> None:
        if self._paused_writing and not self.closed:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    async def exchange(self, head: bytes, body: Any, head_only: bool) -> PeerResponse:
        """Send a request (``head`` ends before its blank line) and await the answer's head."""
        assert self.transport is not None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        transport = self.transport
        try:
            if isinstance(body, str):
                body = body.encode()
            if body is None:
                transport.write(head + b"content-length: 0\r\n\r\n")
            elif isinstance(body, (bytes, bytearray, memoryview)):
                transport.write(b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
            else:  # a stream: chunked, waiting whenever the peer reads slower
                transport.write(head + b"transfer-encoding: chunked\r\n\r\n")
                async for chunk in body:
                    if self.closed:
                        break
                    if chunk:
                        transport.write(b"%x\r\n%s\r\n" % (len(chunk), bytes(chunk)))
                        await self._drain()
                if not self.closed:
                    transport.write(b"0\r\n\r\n")
            answer: PeerResponse = await waiter
            return answer
        except BaseException:
            waiter.cancel()
            self.close()  # cancelled or failed half-way: its answer would arrive for nobody
            raise


class PeerPool:
    """The connections to one peer, kept open between requests."""

    __slots__ = ("label", "_path", "_host", "_port", "_ssl", "_idle", "_open", "_retired")

    def __init__(self, label: str, *, path: str | None = None, host: str | None = None,
                 port: int | None = None, ssl: _ssl.SSLContext | None = None) -> None:
        self.label = label  # names the peer in errors
        self._path = path
        self._host = host
        self._port = port
        self._ssl = ssl
        self._idle: list[_PeerConnection] = []
        self._open: set[_PeerConnection] = set()
        self._retired = False  # no new requests: each connection closes once its call ends

    async def _connect(self) -> _PeerConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                if self._path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _PeerConnection(self), self._path)
                else:
                    assert self._host is not None and self._port is not None
                    _, conn = await loop.create_connection(
                        lambda: _PeerConnection(self), self._host, self._port, ssl=self._ssl,
                    )
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise PeerUnreachable(f"cannot connect to {self.label}: {reason}") from None
        self._open.add(conn)
        return conn

    async def request(self, head: bytes, body: Any = None, head_only: bool = False) -> PeerResponse:
        """Send one request on an idle connection (or a new one) and await its answer.

        PeerUnreachable when no connection could be made; PeerGone when the connection
        broke after the request went out on it.
        """
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if asyncio.get_running_loop().time() - conn.idle_since > _IDLE_REUSE_S:
                conn.close()
                continue
            return await conn.exchange(head, body, head_only)
        conn = await self._connect()
        return await conn.exchange(head, body, head_only)

    def put_back(self, conn: _PeerConnection) -> None:
        if len(self._idle) < _IDLE_MAX and not self._retired:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: _PeerConnection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    def retire(self) -> None:
        """Let the connections go as their calls end (the peer left, or moved): the idle
        ones now, the busy ones when they are put back."""
        self._retired = True
        for conn in list(self._idle):
            conn.close()

    def __repr__(self) -> str:
        return f"<PeerPool {self.label} open={len(self._open)} idle={len(self._idle)}>"

