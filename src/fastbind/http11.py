"""HTTP/1.1 connections on httptools: keep-alive, pipelining, streamed bodies and limits."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import quote_from_bytes

import httptools

from .headers import Headers
from .request import Request
from .response import Response
from .runtime import Runtime
from .http_body import BodyReadError, RequestBody

__all__ = ("HTTPLimits", "ServerState", "HTTPConnection", "AccessLog")

logger = logging.getLogger("fastbind.server")

AccessLog = Callable[["HTTPConnection", "Exchange", int, int], None]

# Request body bytes a connection holds that no Worker has taken yet: past HIGH the
# socket stops being read, below LOW it is read again (request bodies, DESIGN.md 3).
_BODY_HIGH = 256 * 1024
_BODY_LOW = 64 * 1024
# Parsed requests waiting behind the one being served (pipelining) before reading stops.
_QUEUE_HIGH = 32
# A response sent before its request body was read keeps the connection only if at
# most this much body is left to skip; otherwise the connection is closed.
_DISCARD_MAX = 64 * 1024
# A plain body up to this size goes out in one write with the head.
_COALESCE_MAX = 64 * 1024

# What the headers of the message being parsed said, besides Host and Content-Length.
_CHUNKED = 1
_EXPECT = 2
_CONNECTION = 4
_TWO_HOSTS = 8

_PAUSE_BODY = 1
_PAUSE_QUEUE = 2
_PAUSE_STOPPED = 4

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_NO_CONTENT = frozenset((204, 304))
# Headers whose value the server decides: framing and connection management (RFC 9112).
_OWN_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "date"))
# Request headers that change how the server reads the request.
_WATCHED = frozenset(("host", "content-length", "transfer-encoding", "expect", "connection"))

_PLAIN = (bytes, str, bytearray, memoryview)
_METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
}
_NAME_CACHE_SIZE = 512
_NAMES: dict[bytes, str] = {}
_HOSTS: dict[str, bool] = {}
# reg-name, IPv4 or [IPv6], and an optional port (RFC 9110 7.2, RFC 3986 3.2.2).
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
# What llhttp fails on when it meets a method it does not know: a token and a space.
_REQUEST_LINE_START = re.compile(rb"[\r\n]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ")
_TOKEN_PREFIX = re.compile(rb"[\r\n]*[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_PLACEHOLDER_METHOD = b"POST"
# HttpParserUpgrade is not an HttpParserError: it says where the HTTP part ended.
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
_MAX_METHOD = 64

_new_request = Request.__new__
_Task = asyncio.Task
_new_headers = Headers.__new__


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """What one client may make the server hold or wait for.

    ``max_body`` bounds a request body (413), ``max_head`` the request line and headers
    in bytes and ``max_headers`` their number (431); a client that stops sending in
    the middle of a request for ``read_timeout`` seconds gets a 408, and an idle
    keep-alive connection is closed after ``keep_alive_timeout`` seconds.
    """

    max_body: int = 100 * 1024 * 1024
    max_head: int = 64 * 1024
    max_headers: int = 128
    read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_body", "max_head", "max_headers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"HTTPLimits.{name} must be a positive int, not {value!r}")
        for name in ("read_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"HTTPLimits.{name} must be a number > 0, not {value!r}")


class ServerState:
    """What every connection of one server shares."""

    __slots__ = ("dispatch", "entry", "limits", "connections", "date", "draining",
                 "log", "default_host")

    def __init__(self, runtime: Runtime, entry: str, limits: HTTPLimits, default_host: str,
                 access_log: AccessLog | None = None) -> None:
        self.dispatch = runtime.dispatch
        self.entry = entry
        self.limits = limits
        self.connections: set[HTTPConnection] = set()
        self.date = ""
        self.draining = False
        self.log = access_log
        self.default_host = default_host
        self.refresh_date()

    def refresh_date(self) -> None:
        self.date = time.strftime("date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime())


class _Reject(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Exchange:
    """One request on a connection, from its head to the end of its response.

    Plain class attributes are the defaults: a request without a body sets only
    the few fields that differ, which keeps the per-request cost down.
    """

    request: Request | None = None
    version = "1.1"
    keep_alive = False
    head_only = False
    expect_continue = False
    length: int | None = None  # Content-Length; None when chunked or absent
    chunks: list[bytes] | None = None  # body received before the Worker started
    buffered = 0  # bytes in ``chunks``
    received = 0
    body_done = True
    stream: RequestBody | None = None
    discard = False  # the rest of the body is skipped as it arrives
    reject = 0  # a status to answer instead of the Worker's response
    reject_message = ""
    target = b""
    start = 0.0
    tunnel = False  # CONNECT: nothing after it on this connection is HTTP
    finished = False  # its response has been written

    def fail(self, status: int, message: str) -> None:
        self.reject = status
        self.reject_message = message
        self.keep_alive = False


def _rejection(status: int, message: str, version: str = "1.1") -> Exchange:
    ex = Exchange()
    ex.version = version
    ex.fail(status, message)
    return ex


class HTTPConnection(asyncio.Protocol):
    """One client connection: parse requests, serve them in order, write the answers."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._dispatch = state.dispatch
        self._entry = state.entry
        self._access_log = state.log is not None
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.peer: Any = None
        # the message being parsed
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_size = 0
        self._host: str | None = None
        self._length: int | None = None
        self._flags = 0
        self._method_override: str | None = None
        self._stash = b""  # the start of a request line with a method llhttp does not know
        self._in_message = False
        self._in_head = False
        self._current: Exchange | None = None
        self._completed = 0
        self._idle_at_start = True
        # serving
        self._queue: deque[Exchange] = deque()
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffered = 0
        self._pause = 0
        self._stopped = False  # no more requests are read from this connection
        self._lost = False
        self._write_paused = False
        self._write_paused_at = 0.0
        self._drain_waiter: asyncio.Future[None] | None = None
        # Progress counters, cheap to bump per request; the server's sweep turns them
        # into times (see check_timeouts).
        self.reads = 0  # data_received calls
        self.heads = 0  # request heads begun
        self.answers = 0  # responses finished
        now = self._loop.time()
        self._seen = (0, 0, 0)
        self._read_at = self._head_at = self._answer_at = now

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._state.connections.add(self)
        if self._access_log:
            self.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stopped = True
        self._state.connections.discard(self)
        self._queue.clear()
        for ex in (self._active, self._current):
            if ex is not None and ex.stream is not None:
                ex.stream.fail(BodyReadError("The client went away before sending the whole body"))
        if self._task is not None:
            self._task.cancel()  # the client went away: its pipeline is cancelled (DESIGN.md 2.7)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_at = self._loop.time()

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        if self._stopped:
            return
        if self._stash:
            data = self._stash + data
            self._stash = b""
        if self._in_head:
            # httptools keeps a header line to itself until it ends: count what arrives.
            self._head_size += len(data)
            if self._head_size > self._limits.max_head:
                self._reject_message(431, "The request head is larger than the server accepts.")
                return
        self._idle_at_start = not self._in_message
        self._completed = 0
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS as error:
            self._parse_failed(data, error)

    # -- parsing -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._idle_at_start = not self._in_message
        self._completed = 0
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS as error:
            self._parse_failed(data, error)

    def _parse_failed(self, data: bytes, error: Exception) -> None:
        if isinstance(error, httptools.HttpParserUpgrade):
            self._upgraded(data, error.args[0])
        elif isinstance(error, httptools.HttpParserCallbackError):
            cause = error.__context__
            if isinstance(cause, _Reject):
                self._reject_message(cause.status, cause.message)
            else:
                logger.error("HTTP parser callback failed", exc_info=cause or error)
                self._reject_message(500, "The server failed to read the request.")
        elif isinstance(error, httptools.HttpParserInvalidMethodError):
            self._unknown_method(data, self._idle_at_start)
        else:
            self._reject_message(400, f"Malformed request: {error}.")

    def on_url(self, url: bytes) -> None:
        if self._in_head:
            self._url += url
            self._head_size += len(url)
        else:  # the first piece of a request line: a new message (no on_message_begin call)
            self._in_message = self._in_head = True
            self._url = url
            self._head_size = len(url)
            self.heads += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_head or len(headers) >= self._limits.max_headers:
            raise _Reject(431, "The request headers are larger than the server accepts.")
        lname = _NAMES.get(name)
        if lname is None:
            lname = name.decode("latin-1").lower()
            if len(_NAMES) < _NAME_CACHE_SIZE:
                _NAMES[name] = lname
        text = value.decode("latin-1")
        headers.append((lname, text))
        if lname in _WATCHED:
            if lname == "host":
                if self._host is not None:
                    self._flags |= _TWO_HOSTS
                self._host = text
            elif lname == "content-length":
                self._length = int(text)  # llhttp has checked the digits
            elif lname == "transfer-encoding":
                self._flags |= _CHUNKED
            elif lname == "connection":
                self._flags |= _CONNECTION
            elif text.lower() == "100-continue":
                self._flags |= _EXPECT

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        flags = self._flags
        host = self._host
        length = self._length
        headers = _new_headers(Headers)
        headers._items = self._headers
        headers._shared = False
        # Ready for the next message on this connection.
        self._headers = []
        self._host = None
        self._length = None
        self._flags = 0
        ex = Exchange()
        ex.keep_alive = keep_alive = parser.should_keep_alive()
        version = "1.1"
        if not keep_alive or flags & _CONNECTION:
            # Without a Connection header, llhttp keeps only HTTP/1.1 (1.x, x > 0) open:
            # the version (a string httptools formats per call) is needed otherwise.
            version = ex.version = parser.get_http_version()
            if version != "1.0" and version != "1.1":
                if version[0] >= "2":
                    raise _Reject(505, f"HTTP/{version} is not served here; use HTTP/1.1.")
                raise _Reject(400, "Malformed request: the request line has no HTTP/1.x version.")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) if self._method_override is None else None
        if method is None:
            method = self._method_override or raw_method.decode("ascii")
            self._method_override = None
        target = ex.target = self._url
        if host is None:
            if version != "1.0":
                raise _Reject(400, "A Host header is required.")
            host = self._state.default_host
        elif flags & _TWO_HOSTS:
            raise _Reject(400, "More than one Host header.")
        elif not _HOSTS.get(host) and not _valid_host(host):
            raise _Reject(400, "Invalid Host header.")
        if target[:1] == b"/":
            url = "http://" + host + (target.decode("latin-1") if target.isascii() else _quote(target))
        else:
            url = _other_form(target, host)
            ex.tunnel = method == "CONNECT"
        request = ex.request = _new_request(Request)
        request.method = method
        request.url = url
        request.headers = headers
        request.body = None
        request.body_used = False
        if method == "HEAD":
            ex.head_only = True
        if length is not None or flags & _CHUNKED:
            self._expect_body(ex, length, flags & _EXPECT)
            if method == "GET" or method == "HEAD":
                # The Fetch API has no body on GET or HEAD: it is read and dropped.
                ex.chunks = None
                ex.discard = True
        if self._access_log:
            ex.start = time.perf_counter()
        self._current = ex
        if self._active is None and not self._queue:
            self._start(ex)
        else:
            self._queue.append(ex)
            if len(self._queue) >= _QUEUE_HIGH:
                self._pause_reading(_PAUSE_QUEUE)

    def _expect_body(self, ex: Exchange, length: int | None, expect: int) -> None:
        if length is not None:
            ex.length = length
            if length > self._limits.max_body:
                raise _Reject(413, f"The request body is larger than {self._limits.max_body} bytes.")
            if length == 0:
                return
        ex.body_done = False
        ex.chunks = []
        ex.expect_continue = bool(expect)

    def on_body(self, body: bytes) -> None:
        ex = self._current
        assert ex is not None
        size = len(body)
        ex.received += size
        if ex.discard:
            return
        if ex.received > self._limits.max_body:
            raise _Reject(413, f"The request body is larger than {self._limits.max_body} bytes.")
        self._buffered += size
        if ex.stream is not None:
            ex.stream.feed(body)
        else:
            assert ex.chunks is not None
            ex.chunks.append(body)
            ex.buffered += size
        if self._buffered > _BODY_HIGH:
            self._pause_reading(_PAUSE_BODY)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed += 1
        ex = self._current
        self._current = None
        if ex is not None:
            ex.body_done = True
            if ex.stream is not None:
                ex.stream.end()
            if not ex.keep_alive:
                self._stop_reading()

    def body_consumed(self, size: int) -> None:
        """A Worker took ``size`` buffered body bytes."""
        self._buffered -= size
        if self._pause & _PAUSE_BODY and self._buffered <= _BODY_LOW:
            self._resume_reading(_PAUSE_BODY)

    def send_continue(self, ex: Exchange) -> None:
        """Answer ``Expect: 100-continue``: the Worker has started reading the body."""
        if ex.expect_continue:
            ex.expect_continue = False
            if self._transport is not None and not self._lost:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _upgraded(self, data: bytes, offset: int) -> None:
        # The Upgrade header or CONNECT paused the parser: no protocol switch is made,
        # so what follows is HTTP again, except after CONNECT (a tunnel's bytes).
        last = self._queue[-1] if self._queue else self._active
        if last is not None and last.tunnel:
            last.keep_alive = False
            self._stop_reading()
            return
        self._parser = httptools.HttpRequestParser(self)
        if offset < len(data):
            self._feed(data[offset:])

    def _unknown_method(self, data: bytes, idle: bool) -> None:
        """llhttp knows a fixed set of methods; any other token is passed on to the Worker.

        The request line is fed again with a known method in its place. Where the
        message begins is known when the parser was between messages as ``data``
        arrived: at the start, or after the messages that completed in ``data``.
        """
        start = 0 if self._completed == 0 else _message_end(data, self._completed)
        if not idle or start is None:
            self._reject_message(400, "Malformed request: invalid method.")
            return
        match = _REQUEST_LINE_START.match(data, start)
        if match is None:
            prefix = _TOKEN_PREFIX.match(data, start)
            if prefix is not None and prefix.end() == len(data) and len(data) - start <= _MAX_METHOD:
                self._in_message = False
                self._stash = data[start:]  # the method's end has not arrived yet
                self._parser = httptools.HttpRequestParser(self)
                return
            self._reject_message(400, "Malformed request: invalid method.")
            return
        token = match.group(1)
        if len(token) > _MAX_METHOD:
            self._reject_message(400, "Malformed request: the method is too long.")
            return
        self._in_message = False
        self._method_override = token.decode("ascii")
        self._parser = httptools.HttpRequestParser(self)
        self._feed(data[start:match.start(1)] + _PLACEHOLDER_METHOD + data[match.end(1):])

    def _reject_message(self, status: int, message: str) -> None:
        """The message being received cannot be served: answer ``status`` in its turn, close."""
        self._stop_reading()
        self._in_head = False
        ex = self._current
        self._current = None
        if ex is None:
            self._queue.append(_rejection(status, message))
            if self._active is None:
                self._serve_next()
            return
        if ex.finished:
            if self._transport is not None:
                self._transport.close()  # its response is out already
            return
        ex.fail(status, message)
        if ex.stream is not None:
            ex.stream.fail(BodyReadError(message))

    def read_timed_out(self) -> None:
        self._reject_message(408, "The client took too long to send the request.")

    # -- flow control ---------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        if not self._pause and self._transport is not None and not self._lost:
            self._transport.pause_reading()
        self._pause |= reason

    def _resume_reading(self, reason: int) -> None:
        self._pause &= ~reason
        if not self._pause and self._transport is not None and not self._lost:
            self._transport.resume_reading()

    def _stop_reading(self) -> None:
        self._stopped = True
        self._pause_reading(_PAUSE_STOPPED)

    async def _drain(self) -> None:
        while self._write_paused and not self._lost:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None

    # -- serving ----------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        if ex.reject:
            self._write_rejection(ex)
            return
        self._active = ex
        self._task = _Task(self._serve(ex), loop=self._loop)

    def _serve_next(self) -> None:
        queue = self._queue
        if queue and not self._lost:
            ex = queue.popleft()
            if self._pause & _PAUSE_QUEUE and len(queue) < _QUEUE_HIGH // 2:
                self._resume_reading(_PAUSE_QUEUE)
            self._start(ex)
        elif self._state.draining and self._transport is not None:
            self._stopped = True
            self._transport.close()

    async def _serve(self, ex: Exchange) -> None:
        request = ex.request
        assert request is not None
        if ex.reject:  # refused between being queued and starting
            self._write_rejection(ex)
            return
        if ex.chunks is not None:
            request.body = self._take_body(ex)
        try:
            response = await self._dispatch(self._entry, request)
        except Exception:  # a Worker's own errors are 500 responses already: this is fastbind's
            logger.exception("Could not serve %s %s", request.method, request.url)
            response = _text_response(500, "Internal Server Error")
        if ex.reject:  # the body broke a limit while the Worker read it
            await _close_body(response)
            self._write_rejection(ex)
            return
        body = response.body
        response.body_used = True
        if body is None or isinstance(body, _PLAIN):
            sent = self._write_plain(ex, response, body)
        else:
            sent = await self._write_stream(ex, response, body)
        self._finish(ex, response.status, sent)

    def _take_body(self, ex: Exchange) -> Any:
        chunks = ex.chunks
        assert chunks is not None
        ex.chunks = None
        if ex.body_done and ex.buffered <= _BODY_HIGH:
            self.body_consumed(ex.buffered)
            # A small body that arrived whole is handed over as bytes.
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)) or None
        ex.stream = RequestBody(self, ex, chunks)
        if ex.body_done:
            ex.stream.end()
        return ex.stream

    def _finish(self, ex: Exchange, status: int, sent: int) -> None:
        ex.finished = True
        log = self._state.log
        if log is not None:
            log(self, ex, status, sent)
        self._task = None
        self._active = None
        if self._lost:
            return
        if not ex.body_done:
            self._skip_rest(ex)
        if not ex.keep_alive:
            assert self._transport is not None
            self._stopped = True
            self._transport.close()
            return
        self.answers += 1  # the keep-alive timeout counts from here
        if self._queue:
            self._serve_next()
        elif self._state.draining:
            self._serve_next()

    def _skip_rest(self, ex: Exchange) -> None:
        # Answered before the whole request body came: skip the rest if it is small.
        if not _skippable(ex):
            ex.keep_alive = False
        ex.discard = True
        if ex.stream is not None:
            self.body_consumed(ex.stream.abandon())
        elif ex.chunks is not None:
            self.body_consumed(ex.buffered)
            ex.chunks = None

    def _head(self, ex: Exchange, response: Response, framing: str, final: bool = True) -> bytes:
        """The status line and headers; ``final``: the whole body goes out with them."""
        status = response.status
        parts = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n"]
        dated = False
        for name, value in response.headers._items:
            if name in _OWN_HEADERS:
                if name != "date":
                    continue
                dated = True
            parts.append(f"{name}: {value}\r\n")
        if not dated:
            parts.append(self._state.date)
        parts.append(framing)
        if self._state.draining or (final and not ex.body_done and not _skippable(ex)):
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

    def _write_plain(self, ex: Exchange, response: Response, body: Any) -> int:
        transport = self._transport
        assert transport is not None
        if body is None:
            body = b""
        elif type(body) is str:
            body = body.encode()
        elif type(body) is memoryview:
            body = body.cast("B")
        if response.status in _NO_CONTENT:
            transport.write(self._head(ex, response, ""))
            return 0
        size = len(body)
        head = self._head(ex, response, f"content-length: {size}\r\n")
        if ex.head_only or not size:
            transport.write(head)
            return 0
        if size <= _COALESCE_MAX:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return size

    async def _write_stream(self, ex: Exchange, response: Response, body: Any) -> int:
        transport = self._transport
        assert transport is not None
        declared = _declared_length(response)
        sent = 0
        try:
            if response.status in _NO_CONTENT or ex.head_only:
                framing = "" if declared is None else f"content-length: {declared}\r\n"
                transport.write(self._head(ex, response, framing))
                return 0
            if declared is not None:
                transport.write(self._head(ex, response, f"content-length: {declared}\r\n", False))
                chunked = False
            elif ex.version == "1.0":
                ex.keep_alive = False  # the body ends when the connection does
                transport.write(self._head(ex, response, "", False))
                chunked = False
            else:
                transport.write(self._head(ex, response, "transfer-encoding: chunked\r\n", False))
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
                        transport.write(b"%x\r\n%b\r\n" % (size, chunk))
                    else:
                        transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._write_paused:
                    await self._drain()
                if self._lost:
                    raise asyncio.CancelledError
            if declared is not None and sent != declared:
                raise ValueError(f"the body is {sent} bytes long, its content-length says {declared}")
            if chunked:
                transport.write(b"0\r\n\r\n")
            return sent
        except Exception:
            # The head is out: the only way left to tell the client is to cut the body short.
            logger.exception("Response body of %s failed", ex.request)
            ex.keep_alive = False
            transport.abort()
            return sent
        finally:
            await _close_body(body)

    def _write_rejection(self, ex: Exchange) -> None:
        """Answer a request the server refused itself (4xx), then close the connection."""
        transport = self._transport
        if transport is None or self._lost:
            return
        body = (ex.reject_message + "\n").encode()
        status = ex.reject
        transport.write(
            (
                (_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n")
                + self._state.date
                + f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
                + "connection: close\r\n\r\n"
            ).encode("latin-1")
            + body
        )
        self._stopped = True
        transport.close()
        log = self._state.log
        if log is not None:
            log(self, ex, status, len(body))

    # -- timeouts and shutdown, called by the server ------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server every fraction of a timeout (DESIGN.md 3, limits).

        A request head must arrive whole within the read timeout from its first line
        (a head trickled byte by byte is cut off too); a body may take as long as it
        needs while it keeps coming, but not stall for the read timeout; an idle
        keep-alive connection is closed the keep-alive timeout after its last answer,
        whatever bytes it trickles that start no request.
        """
        seen = (self.reads, self.heads, self.answers)
        if seen != self._seen:
            if seen[0] != self._seen[0]:
                self._read_at = now
            if seen[1] != self._seen[1]:
                self._head_at = now
            if seen[2] != self._seen[2]:
                self._answer_at = now
            self._seen = seen
        transport = self._transport
        if transport is None or self._lost:
            return
        limits = self._limits
        if self._write_paused and now - self._write_paused_at >= limits.read_timeout:
            transport.abort()  # the client stopped reading what it asked for
            return
        if self._pause or (self._active is not None and self._active is not self._current):
            # The server is not reading, or is busy with an earlier request: not the client's delay.
            self._read_at = self._head_at = now
            return
        if self._in_head:
            if now - self._head_at >= limits.read_timeout:
                self.read_timed_out()
        elif self._in_message:
            if now - self._read_at >= limits.read_timeout:
                self.read_timed_out()
        elif self._active is None and not self._queue and now - self._answer_at >= limits.keep_alive_timeout:
            transport.close()

    def drain(self) -> None:
        """Shutdown: serve what has been received, then close (DESIGN.md 5)."""
        if self._active is None and not self._queue and self._transport is not None:
            self._stopped = True
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _skippable(ex: Exchange) -> bool:
    """Whether the unread rest of a request body is small enough to read and drop."""
    if ex.expect_continue or ex.length is None:
        return False  # the client waits to be asked, or the length is unknown (chunked)
    return ex.length - ex.received <= _DISCARD_MAX


def _valid_host(host: str) -> bool:
    known = _HOSTS.get(host)
    if known is None:
        known = _HOST.fullmatch(host) is not None and bool(host)
        if len(_HOSTS) < _NAME_CACHE_SIZE:
            _HOSTS[host] = known
    return known


def _quote(target: bytes) -> str:
    # Bytes outside ASCII are percent-encoded, as a browser would have sent them.
    return quote_from_bytes(target, safe="/?#[]@!$&'()*+,;=:%-._~")


def _other_form(target: bytes, host: str) -> str:
    """The URL of a request whose target is not a path (RFC 9112 3.2)."""
    text = target.decode("latin-1") if target.isascii() else _quote(target)
    lower = text[:8].lower()
    if lower.startswith("http://") or lower.startswith("https://"):
        return text  # absolute-form, as sent to a proxy
    if text == "*":
        return f"http://{host}/*"  # asterisk-form: OPTIONS * asks about the server
    return f"http://{text}/"  # authority-form: CONNECT host:port


def _message_end(data: bytes, count: int) -> int | None:
    """Where the ``count``-th message that starts at ``data[0]`` ends, or None.

    A second parser reads ``data`` in pieces that end where a message can end: at a
    line feed, or at the end of a Content-Length body.
    """
    counter = _MessageCounter()
    parser = httptools.HttpRequestParser(counter)
    pos = 0
    end = len(data)
    try:
        while pos < end:
            if counter.body_left > 0:
                stop = min(end, pos + counter.body_left)
            else:
                newline = data.find(b"\n", pos)
                stop = end if newline < 0 else newline + 1
            parser.feed_data(data[pos:stop])
            pos = stop
            if counter.done >= count:
                return pos
    except httptools.HttpParserError:
        return None
    return None


class _MessageCounter:
    __slots__ = ("done", "body_left")

    def __init__(self) -> None:
        self.done = 0
        self.body_left = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            self.body_left = int(value)

    def on_body(self, body: bytes) -> None:
        self.body_left -= len(body)

    def on_message_complete(self) -> None:
        self.done += 1
        self.body_left = 0


def _declared_length(response: Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 and value.isdigit() else None


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


async def _close_body(body: Any) -> None:
    if isinstance(body, Response):
        body = body.body
    closer = getattr(body, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            logger.exception("Closing a response body failed")


def _text_response(status: int, text: str) -> Response:
    return Response(text, status=status, headers={"content-type": "text/plain; charset=utf-8"})
