"""HTTP/1.1 connections on httptools: keep-alive, pipelining, streamed bodies and limits.

One ``HTTPConnection`` per client: httptools (llhttp) parses what arrives into
Requests, a task per request awaits the runtime's top-level dispatch (so that a client
going away can cancel exactly its pipeline), and requests of one connection are
answered one after the other, in order. ``writer`` writes the answers, ``target``
turns the request line into a URL, ``exchange`` holds the state
of one request and the server's limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, cast

import httptools

from ..errors import BodyReadError
from ..headers import Headers
from ..request import CfProperties, Request, check_url
from ..response import Response
from ..websocket import WebSocket
from .access_log import CLIENT_GONE
from .exchange import AccessLog, Exchange, HTTPLimits, ServerState
from .request_body import RequestBody
from .target import HOST_OK, METHODS, message_end, other_form_url, quote_target, unknown_method, valid_host
from .websocket import WebSocketRelay, handshake
from .writer import ResponseWriter, close_body

__all__ = ("HTTPConnection", "HTTPLimits", "ServerState", "Exchange", "AccessLog")

logger = logging.getLogger("fastbind.server")

# Request body bytes a connection holds that no Worker has taken yet: past HIGH the
# socket stops being read, below LOW it is read again.
_BODY_HIGH = 256 * 1024
_BODY_LOW = 64 * 1024
# Parsed requests waiting behind the one being served (pipelining) before reading stops.
_QUEUE_HIGH = 32
# Reading stops at _QUEUE_HIGH, but one read can hold thousands of tiny pipelined
# requests: past this many queued, the connection is answered 429 and closed.
_QUEUE_MAX = 256
# After a refusal (429, 413, 400...), or an answer given before its request body came
# whole, the client may still be sending: closing a socket with unread input resets
# the connection, and a reset can discard the last answers in the client's buffer. So
# the server half-closes, reads and drops what comes, and closes when the client does
# or after this many seconds (RFC 9112 9.6, "tear-down").
_LINGER_S = 2.0

# What the headers of the message being parsed said, besides Host and Content-Length.
_CHUNKED = 1
_EXPECT = 2
_CONNECTION = 4
_TWO_HOSTS = 8
_UPGRADE = 16  # Upgrade: websocket
# Request headers that change how the server reads the request.
_WATCHED = frozenset(("host", "content-length", "transfer-encoding", "expect", "connection", "upgrade"))

# Why the socket is not being read.
_PAUSE_BODY = 1
_PAUSE_QUEUE = 2
_PAUSE_STOPPED = 4
_PAUSE_UPGRADE = 8  # an upgrade request waits for its answer

_PLAIN = (bytes, str, bytearray, memoryview)
_NAME_CACHE_SIZE = 512
_NAMES: dict[bytes, str] = {}  # header names as sent -> lower-case str
# HttpParserUpgrade is not an HttpParserError: it says where the HTTP part ended.
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)

_new_request = Request.__new__
_new_headers = Headers.__new__
# Request tasks are created directly: the loop's task factory (the runtime's) is for
# tasks that Workers start, and a request task is not started inside any Worker.
_Task = asyncio.Task


class _Reject(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HTTPConnection(asyncio.Protocol):
    """One client connection: parse requests, serve them in order, write the answers."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._dispatch = state.dispatch
        self._access_log = state.log is not None
        self._scheme = state.scheme
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._writer = ResponseWriter(state, self._loop)
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
        self._heading: Exchange | None = None  # a head being checked (access log: what a refusal was for)
        self._completed = 0  # messages completed in the data being fed
        self._idle_at_start = True  # the parser was between messages as that data came
        # serving
        self._queue: deque[Exchange] = deque()
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffered = 0
        self._pause = 0
        self._stopped = False  # no more requests are read from this connection
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None  # the timed close of a draining close
        self._relay: WebSocketRelay | None = None  # once upgraded: the WebSocket it carries
        self._upgrade_rest = b""  # what came after an upgrade request, before its answer
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
        self._transport = self._writer.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._state.connections.add(self)
        if self._access_log:
            self.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._relay is not None:
            self._state.connections.discard(self)
            self._relay.connection_lost()
            return
        self._lost = True
        self._stopped = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._state.connections.discard(self)
        self._queue.clear()
        for ex in (self._active, self._current):
            if ex is not None and ex.stream is not None:
                ex.stream.fail(BodyReadError("The client went away before sending the whole body"))
        if self._task is not None:
            self._task.cancel()  # the client went away: its pipeline is cancelled
        self._writer.connection_lost()

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.pause_writing()
        self._writer.pause()

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.resume_writing()
        self._writer.resume()

    def data_received(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.data_received(data)
            return
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
            self._unknown_method(data)
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
                # The parser removes the chunked framing only: a body in another
                # coding before it ("gzip, chunked") would reach the Worker still coded
                # (RFC 9112 6.1: 501). A final coding other than chunked is the
                # parser's 400.
                codings = text.lower().split(",")
                if len(codings) > 1 and codings[-1].strip(" \t") == "chunked" and any(
                    c.strip(" \t") != "chunked" for c in codings[:-1]
                ):
                    raise _Reject(501, "Transfer codings other than chunked are not supported.")
                self._flags |= _CHUNKED
            elif lname == "connection":
                self._flags |= _CONNECTION
            elif lname == "upgrade":
                if text.strip().lower() == "websocket":
                    self._flags |= _UPGRADE
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
        if self._access_log:  # from here: a request refused below is logged with its line and time
            ex.start = time.perf_counter()
            self._heading = ex
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
        method = METHODS.get(raw_method) if self._method_override is None else None
        if method is None:
            method = self._method_override or raw_method.decode("ascii")
            self._method_override = None
        if flags & _UPGRADE and raw_method == b"GET" and parser.should_upgrade():
            ex.websocket = headers._items  # (the handshake reads them as the client sent them)
        target = ex.target = self._url
        if host is None:
            if version != "1.0":
                raise _Reject(400, "A Host header is required.")
            host = self._state.default_host
        elif flags & _TWO_HOSTS:
            raise _Reject(400, "More than one Host header.")
        elif not HOST_OK.get(host) and not valid_host(host):
            raise _Reject(400, "Invalid Host header.")
        if target[:1] == b"/":
            url = self._scheme + host + (target.decode("latin-1") if target.isascii() else quote_target(target))
        else:
            other = other_form_url(target, host)
            if other is None:
                raise _Reject(400, "Malformed request: the request target names no valid host.")
            url = other
            ex.tunnel = method == "CONNECT"
        try:
            url = check_url(url)  # the URL standard's form, as every Request's (one match if it is)
        except TypeError:
            raise _Reject(400, "Malformed request: the request target and Host make no valid URL.") from None
        request = ex.request = _new_request(Request)
        request.method = method
        request.url = url
        request.headers = headers
        request.body = None
        request.body_used = False
        request._cf = CfProperties(httpProtocol=f"HTTP/{version}")  # what is known of the client
        if method == "HEAD":
            ex.head_only = True
        if length is not None or flags & _CHUNKED:
            self._expect_body(ex, length, flags & _EXPECT)
            if method == "GET" or method == "HEAD":
                # The Fetch API has no body on GET or HEAD: it is read and dropped.
                ex.chunks = None
                ex.discard = True
        self._current = ex
        self._heading = None
        if self._active is None and not self._queue:
            self._start(ex)
        else:
            if len(self._queue) >= _QUEUE_MAX:
                self._current = None
                raise _Reject(429, "Too many pipelined requests on one connection.")
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

    def _upgraded(self, data: bytes, offset: int) -> None:
        # The Upgrade header or CONNECT paused the parser. After a WebSocket upgrade
        # request, what follows is kept for the socket (or dropped with the connection
        # if the Worker answers otherwise); after CONNECT, a tunnel's bytes; else no
        # protocol switch is made and what follows is HTTP again.
        last = self._queue[-1] if self._queue else self._active
        if last is not None and last.websocket is not None:
            self._upgrade_rest = data[offset:]
            self._pause_reading(_PAUSE_UPGRADE)
            return
        if last is not None and last.tunnel:
            last.keep_alive = False
            self._stop_reading()
            return
        self._parser = httptools.HttpRequestParser(self)
        if offset < len(data):
            self._feed(data[offset:])

    def _unknown_method(self, data: bytes) -> None:
        # The request line is fed again with a known method in place of the token. Where
        # the message begins is known when the parser was between messages as ``data``
        # arrived: at its start, or after the messages that completed in it.
        start = 0 if self._completed == 0 else message_end(data, self._completed)
        found = unknown_method(data, start) if self._idle_at_start and start is not None else None
        if found is None:
            self._reject_message(400, "Malformed request: invalid method.")
            return
        method, rest = found
        self._in_message = False
        self._parser = httptools.HttpRequestParser(self)
        if method is None:
            self._stash = rest  # the method's end has not arrived yet
            return
        self._method_override = method
        self._feed(rest)

    def _reject_message(self, status: int, message: str) -> None:
        """The message being received cannot be served: answer ``status`` in its turn, close."""
        self._stop_reading()
        self._in_head = False
        ex = self._current
        self._current = None
        if ex is None:
            rejection = Exchange.rejection(status, message)
            heading, self._heading = self._heading, None
            if heading is not None:  # refused as its head was checked: its line is known
                rejection.request, rejection.target = heading.request, heading.target
                rejection.version, rejection.start = heading.version, heading.start
            self._queue.append(rejection)
            if self._active is None:
                self._serve_next()
            return
        if ex.finished:
            self._close_draining()  # its response is out already
            return
        ex.fail(status, message)
        if ex.stream is not None:
            ex.stream.fail(BodyReadError(message))

    # -- what RequestBody calls ------------------------------------------------------------

    def body_consumed(self, size: int) -> None:
        """A Worker took ``size`` buffered body bytes."""
        self._buffered -= size
        if self._pause & _PAUSE_BODY and self._buffered <= _BODY_LOW:
            self._resume_reading(_PAUSE_BODY)

    def send_continue(self, ex: Exchange) -> None:
        """Answer ``Expect: 100-continue``: the Worker has started reading the body."""
        if ex.expect_continue:
            ex.expect_continue = False
            self._writer.send_continue()

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

    # -- serving ----------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        if ex.reject:
            self._reject(ex)
            return
        self._active = ex
        self._task = _Task(self._serve(ex), loop=self._loop)
        if self._access_log:
            self._task.add_done_callback(lambda task: self._log_if_gone(task, ex))

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
            self._reject(ex)
            return
        if ex.chunks is not None:
            request.body = self._take_body(ex)
        try:
            response = await self._dispatch(request)
        except Exception:  # a Worker's own errors are 500 responses already: this is fastbind's
            logger.exception("Could not serve %s %s", request.method, request.url)
            response = Response("Internal Server Error", status=500,
                                headers={"content-type": "text/plain; charset=utf-8"})
        if ex.reject:  # the body broke a limit while the Worker read it
            await close_body(response)
            self._reject(ex)
            return
        web_socket = response.web_socket
        if web_socket is not None:
            if ex.websocket is not None and response.status == 101:
                self._upgrade(ex, response, web_socket)
                return
            logger.error("Worker answered %s %s with a WebSocket, but the request asked for no upgrade",
                         request.method, request.url)
            web_socket.relay_close(1011, "the request was not a WebSocket upgrade")
            response = Response("Internal Server Error", status=500,
                                headers={"content-type": "text/plain; charset=utf-8"})
        body = response.body
        response.body_used = True
        if body is None or isinstance(body, _PLAIN):
            sent = self._writer.plain(ex, response, body)
        else:
            sent = await self._writer.stream(ex, response, body)
        self._finish(ex, response.status, sent)
        if ex.websocket is not None and not self._lost:
            # Not switched: HTTP/1.1 goes on after the upgrade request (RFC 9110 7.8).
            rest, self._upgrade_rest = self._upgrade_rest, b""
            self._parser = httptools.HttpRequestParser(self)
            self._resume_reading(_PAUSE_UPGRADE)
            if rest:
                self._feed(rest)

    def _upgrade(self, ex: Exchange, response: Response, web_socket: WebSocket) -> None:
        """The Worker answered the upgrade with a socket: complete the handshake and
        carry the socket on this connection from now on (http/websocket.py)."""
        assert ex.websocket is not None and self._transport is not None
        limits = self._state.ws_limits
        protocol, head, accepted = handshake(ex.target.decode("latin-1"), ex.websocket,
                                             response.headers.items(), limits)
        transport = self._transport
        transport.write(head)
        ex.finished = True
        log = self._state.log
        if log is not None:
            log(self, ex, 101 if accepted else ex.reject or 400, 0)
        self._task = None
        self._active = None
        if not accepted:  # a malformed handshake: its error answer is out
            web_socket.relay_close(1002, "the WebSocket handshake failed")
            transport.close()
            return
        relay = self._relay = WebSocketRelay(transport, protocol, web_socket, limits, transport.close)
        rest, self._upgrade_rest = self._upgrade_rest, b""
        if rest:
            relay.data_received(rest)
        self._pause = 0
        if not transport.is_closing():
            transport.resume_reading()

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
            if ex.body_done and not self._pause and not self._queue and not self._in_message:
                self._transport.close()  # nothing of the client's is left unread
            else:
                self._close_draining()
            return
        self.answers += 1  # the keep-alive timeout counts from here
        if self._queue or self._state.draining:
            self._serve_next()

    def _log_if_gone(self, task: asyncio.Task[None], ex: Exchange) -> None:
        # The client went away before its answer was out: its line says 499 (as nginx's).
        if task.cancelled() and not ex.finished:
            log = self._state.log
            assert log is not None
            log(self, ex, CLIENT_GONE, 0)

    def _skip_rest(self, ex: Exchange) -> None:
        # Answered before the whole request body came: skip the rest if it is small.
        if not ex.skippable():
            ex.keep_alive = False
        ex.discard = True
        if ex.stream is not None:
            self.body_consumed(ex.stream.abandon())
        elif ex.chunks is not None:
            self.body_consumed(ex.buffered)
            ex.chunks = None

    def _reject(self, ex: Exchange) -> None:
        self._stopped = True
        sent = self._writer.rejection(ex)
        self._close_draining()
        log = self._state.log
        if log is not None:
            log(self, ex, ex.reject, sent)

    def _close_draining(self) -> None:
        """Close once the last answer is out, without a reset (see _LINGER_S)."""
        transport = self._transport
        if transport is None or self._lost or transport.is_closing() or self._linger is not None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answers so far, then FIN; input is still read, and dropped
        self._queue.clear()  # requests after the last answer are not served
        self._pause = 0
        transport.resume_reading()
        self._linger = self._loop.call_later(_LINGER_S, transport.close)

    # -- timeouts and shutdown, called by the server ------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server every fraction of a timeout.

        A request head must arrive whole within the read timeout from its first line
        (a head trickled byte by byte is cut off too); a body may take as long as it
        needs while it keeps coming, but not stall for the read timeout; an idle
        keep-alive connection is closed the keep-alive timeout after its last answer,
        whatever bytes it trickles that start no request. A WebSocket keeps itself
        alive with pings (http/websocket.py).
        """
        if self._relay is not None:
            return
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
        if transport is None or self._lost or self._linger is not None:
            return  # (a draining close has its own timer)
        limits = self._limits
        writer = self._writer
        if writer.paused and now - writer.paused_at >= limits.read_timeout:
            transport.abort()  # the client stopped reading what it asked for
            return
        if self._pause or (self._active is not None and self._active is not self._current):
            # The server is not reading, or is busy with an earlier request: not the client's delay.
            self._read_at = self._head_at = now
            return
        if self._in_head:
            if now - self._head_at >= limits.read_timeout:
                self._reject_message(408, "The client took too long to send the request.")
        elif self._in_message:
            if now - self._read_at >= limits.read_timeout:
                self._reject_message(408, "The client took too long to send the request.")
        elif self._active is None and not self._queue and now - self._answer_at >= limits.keep_alive_timeout:
            transport.close()

    def drain(self) -> None:
        """Shutdown: serve what has been received, then close."""
        if self._relay is not None:
            self._relay.going_away()  # a WebSocket: 1001 once what the Worker sent is out
            return
        if self._active is None and not self._queue and self._transport is not None:
            self._stopped = True
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
