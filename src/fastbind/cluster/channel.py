"""The call channel between the processes of one node: hop requests, many at once, on one socket.

A Durable Object RPC call forwarded to another process of the node is the same hop
request as any (``forward.py``: method, path, signed hop headers, the arguments as
its body), and its answer the same response. What differs is how they travel: on one
unix socket per pair of processes, each message tagged with ``fastbind-call: <n>``,
answers sent as soon as they are ready (in any order), and everything one event loop
iteration produces written at once. On the machines fastbind was measured on, a socket
write that wakes the other process costs more than the rest of a small call together
(40-100 us against 20-30 us), so a call that had one write each way, as plain HTTP/1.1
gives, cost several in-process calls; here a write carries every call made meanwhile.
In-order answers (HTTP/1.1 pipelining) would batch as well, but a call answered behind
a slow one could then wait on a call that waits on it: tagging answers avoids that.

Only whole messages travel here (RPC arguments and results are encoded whole):
``fetch`` calls, streamed bodies and WebSockets go to the node's HTTP server socket.
Its hop headers are not signed: the socket lives in the node's run folder, which only
its user can enter (``tempfile.mkdtemp``), and the endpoint checks the peer's user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import httptools

from ..headers import Headers
from ..request import Request, check_url
from ..response import Response
from .peers import PeerGone, PeerResponse, PeerUnreachable

__all__ = ("CallChannel", "CallEndpoint", "CallServer", "CALL")

logger = logging.getLogger("fastbind.cluster")

CALL = "fastbind-call"  # the tag that pairs a call with its answer
_new_request = Request.__new__
_CALL_BYTES = CALL.encode()
_CONNECT_TIMEOUT_S = 5.0
_REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 421: b"Misdirected Request",
            500: b"Internal Server Error", 503: b"Service Unavailable", 508: b"Loop Detected"}


class _Writer:
    """Coalesces what one loop iteration writes into one ``transport.write``."""

    __slots__ = ("_transport", "_loop", "_out", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._out: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        out, self._out = self._out, []
        if not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))


# -- the caller's side -------------------------------------------------------------------


class _ChannelConnection(asyncio.Protocol):
    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel
        self._parser = httptools.HttpResponseParser(self)
        self.writer: _Writer | None = None
        self.pending: dict[bytes, asyncio.Future[PeerResponse]] = {}
        self.closed = False
        self._call = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.writer = _Writer(transport, asyncio.get_running_loop())  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._channel.lost(self)
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(PeerGone(f"the connection to {self._channel.label} was lost"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            logger.error("%s sent a malformed answer: %s", self._channel.label, exc)
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.decode("latin-1").lower()
        if lname == CALL:
            self._call = value
        else:
            self._headers.append((lname, value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.pending.pop(self._call, None)
        body = b"".join(self._body)
        if waiter is not None and not waiter.done():
            waiter.set_result(PeerResponse(self._parser.get_status_code(), self._headers, body))
        self._call = b""
        self._headers = []
        self._body = []


class CallChannel:
    """The caller's end of the channel to one process of the node (its calls socket)."""

    __slots__ = ("label", "_path", "_conn", "_connecting", "_next")

    def __init__(self, label: str, path: str) -> None:
        self.label = label
        self._path = path
        self._conn: _ChannelConnection | None = None
        self._connecting: asyncio.Future[_ChannelConnection] | None = None
        self._next = 0

    async def _connection(self) -> _ChannelConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:  # the first caller connects; the others wait for it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _connect(self) -> _ChannelConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                _, conn = await loop.create_unix_connection(lambda: _ChannelConnection(self), self._path)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise PeerUnreachable(f"cannot connect to {self.label}: {reason}") from None
        self._conn = conn
        return conn

    def lost(self, conn: _ChannelConnection) -> None:
        if self._conn is conn:
            self._conn = None

    async def request(self, head: bytes, body: bytes) -> PeerResponse:
        """Send one call (``head`` ends before its blank line) and await its answer."""
        conn = await self._connection()
        self._next += 1
        tag = b"%d" % self._next
        waiter: asyncio.Future[PeerResponse] = asyncio.get_running_loop().create_future()
        conn.pending[tag] = waiter
        assert conn.writer is not None
        conn.writer.write(b"%s%s: %s\r\ncontent-length: %d\r\n\r\n%s" % (head, _CALL_BYTES, tag, len(body), body))
        try:
            return await waiter
        finally:
            conn.pending.pop(tag, None)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.close()


# -- the owner's side ---------------------------------------------------------------------


class CallEndpoint(asyncio.Protocol):
    """Serves the calls of one peer: each as its own task, answered as soon as it is done.

    ``answer(request)`` is the server's hop receiver; what it returns is sent back
    whole, tagged with the call's ``fastbind-call``.
    """

    def __init__(self, server: CallServer) -> None:
        self._server = server
        self._answer = server.answer
        self._parser = httptools.HttpRequestParser(self)
        self._writer: _Writer | None = None
        self._loop = asyncio.get_running_loop()
        self._mine: set[asyncio.Task[None]] = set()
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._call = b""
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not _same_user(transport):
            logger.error("refused a connection to the node's call channel from another user")
            transport.close()
            return
        self._writer = _Writer(transport, self._loop)  # type: ignore[arg-type]
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server.connections.discard(self)
        for task in list(self._mine):
            task.cancel()  # the caller went away: its calls' pipelines end as a client's do

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            logger.error("malformed call on the node's call channel: %s", exc)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.decode("latin-1").lower()
        if lname == CALL:
            self._call = value
        elif lname != "content-length":
            self._headers.append((lname, value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        headers = Headers.__new__(Headers)
        headers._items = self._headers
        headers._shared = False
        request = _new_request(Request)
        request.method = self._parser.get_method().decode("ascii")
        request.url = _url(self._url)
        request.headers = headers
        request.body = b"".join(self._body) if self._body else None
        request.body_used = False
        call, self._call = self._call, b""
        self._url = b""
        self._headers = []
        self._body = []
        # A task made directly: the loop's task factory is for tasks Workers start.
        task = asyncio.Task(self._serve(request, call), loop=self._loop)
        self._mine.add(task)
        task.add_done_callback(self._mine.discard)

    async def _serve(self, request: Request, call: bytes) -> None:
        try:
            response = await self._answer(request)
            body = await response.bytes()
        except Exception:
            logger.exception("a forwarded call failed on its way back")
            response, body = Response(None, status=500), b""
        if self._lost or self._writer is None:
            return
        lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"Status"))]
        for name, value in response.headers.items():
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1", "replace")))
        lines.append(b"%s: %s\r\ncontent-length: %d\r\n\r\n" % (_CALL_BYTES, call, len(body)))
        lines.append(body)
        self._writer.write(b"".join(lines))


_URLS: dict[bytes, str] = {}  # request targets (an RPC path per method) -> checked URL
_URLS_MAX = 1024


def _url(target: bytes) -> str:
    """The URL of a call's request target, checked once per target."""
    url = _URLS.get(target)
    if url is None:
        url = check_url("http://fastbind" + target.decode("latin-1"))
        if len(_URLS) < _URLS_MAX:
            _URLS[target] = url
    return url


def _same_user(transport: asyncio.BaseTransport) -> bool:
    """Whether the peer runs as this process's user (where the system says: Linux). The
    socket's folder is private to that user already; this is the second lock."""
    sock = transport.get_extra_info("socket")
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return True
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    except OSError:
        return False
    return bool(uid == os.getuid())


class CallServer:
    """The calls socket of one process: its endpoints, for ``create_unix_server``."""

    def __init__(self, answer: Callable[[Request], Awaitable[Response]]) -> None:
        self.answer = answer
        self.connections: set[CallEndpoint] = set()

    def protocol(self) -> CallEndpoint:
        return CallEndpoint(self)

    def close_all(self) -> None:
        """Close every connection (at the end of a shutdown: the calls have ended)."""
        for endpoint in list(self.connections):
            endpoint.transport.close()
