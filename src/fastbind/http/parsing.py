"""The reading half of a connection: httptools' callbacks, and a request the same however its bytes were split.

llhttp (through httptools) is a streaming parser, so what it decides does not depend on
where reads end. What the server adds around it must not either, and three things need
the bytes of the request line or of a header line that a read left unfinished: a method
llhttp does not know (it fails on its first unknown byte, after taking the ones before
it in an earlier read), an HTTP/0.9 request line (llhttp waits for headers that never
come), and the head size limit (httptools holds an unfinished header line to itself).
So after each read the line left unfinished is kept (``_line``), and the message in
progress is measured as llhttp's callbacks will measure it once it is whole.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from ..headers import Headers
from ..outbound.hop import HOP_HEADERS
from ..request import CfProperties, Request, check_url
from .eager import EAGER
from .exchange import Exchange, HTTPLimits, ServerState
from .framing import (
    BOUNDARY, CHUNK_SIZE, HEAD, SIZED, compact_line, partial_line_size, scan, versionless_request_line,
)
from .target import HOST_OK, MAX_METHOD, METHODS, other_form_url, quote_target, unknown_method, valid_host

if TYPE_CHECKING:
    from .request_body import RequestBody

__all__ = ("RequestParsing", "Reject")

# What the headers of the message being parsed said, besides Host and Content-Length.
_CHUNKED = 1
_EXPECT = 2
_CONNECTION = 4
_TWO_HOSTS = 8
_UPGRADE = 16  # Upgrade: websocket
_HOP = 32  # a fastbind-* hop header: the request goes to the server's hop receiver
# Request headers that change how the server reads the request.
_WATCHED = frozenset(("host", "content-length", "transfer-encoding", "expect", "connection", "upgrade",
                      *HOP_HEADERS))
# Why the socket is not being read (HTTPConnection._pause is a set of these bits).
PAUSE_BODY = 1
PAUSE_QUEUE = 2
PAUSE_STOPPED = 4
PAUSE_UPGRADE = 8  # an upgrade request waits for its answer
PAUSE_WRITE = 16  # the client has not taken enough of the answers yet
# Request body bytes a connection holds that no Worker has taken yet: past HIGH the
# socket stops being read, below LOW it is read again.
BODY_HIGH = 256 * 1024
BODY_LOW = 64 * 1024
# Parsed requests waiting behind the one being served (pipelining) before reading stops.
QUEUE_HIGH = 32
# Reading stops at QUEUE_HIGH, but one read can hold thousands of tiny pipelined
# requests: past this many queued, the connection is answered 429 and closed.
QUEUE_MAX = 256

_HEAD_TOO_LARGE = "The request head is larger than the server accepts."
_NAME_CACHE_SIZE = 512
_NAMES: dict[bytes, str] = {}  # header names as sent -> lower-case str
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LF = 10
_CR = 13

_new_request = Request.__new__
_new_headers = Headers.__new__
logger = logging.getLogger("fastbind.server")


class Reject(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestParsing:
    """httptools' callbacks and what a read leaves behind; HTTPConnection is the rest.

    A mixin (no layer of calls between llhttp and the connection's state): the
    connection defines ``_start``, ``_serve_next``, ``_reject_message``,
    ``_stop_reading`` and ``_pause_reading`` and the serving state these callbacks
    hand exchanges to.
    """

    _state: ServerState
    _limits: HTTPLimits
    _access_log: bool
    _queue: deque[Exchange]
    _active: Exchange | None
    _buffered: int
    _stopped: bool
    _holding: bool
    _next: Exchange | None
    heads: int

    def _init_parsing(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._scheme = self._state.scheme
        self._heading: Exchange | None = None  # a head being checked (access log: what a refusal was for)
        self._upgrade_rest = b""  # what came after an upgrade request, before its answer
        # the message being parsed
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_size = 0  # the target, and name + value + 4 per header so far
        self._host: str | None = None
        self._length: int | None = None
        self._codings = ""  # the Transfer-Encoding lines so far, as one list
        self._flags = 0
        self._method_override: str | None = None
        self._stash = b""  # the start of a request line with a method llhttp does not know
        self._in_message = False
        self._in_head = False
        self._current: Exchange | None = None
        # what the read being fed tells of message boundaries (see framing.scan)
        self._completed = 0  # messages completed in it
        self._framings: list[int] = []  # the body of each head that ended in it
        self._frame_kind = BOUNDARY  # where the last read ended
        self._frame_left = 0
        self._frame_line = b""  # a chunked body's unfinished line there
        self._line = b""  # the unfinished head line, or method, the last read ended with

    # -- stubs the connection overrides -------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        raise NotImplementedError

    def _launch(self, ex: Exchange) -> None:
        raise NotImplementedError

    def _serve_next(self) -> None:
        raise NotImplementedError

    def _reject_message(self, status: int, message: str) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def _pause_reading(self, reason: int) -> None:
        raise NotImplementedError

    def _writing_paused(self) -> bool:
        raise NotImplementedError

    # -- feeding ------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse ``data``: a read, or what is left of one after a new parser took over.

        Where a request's task starts eagerly (``eager``), a request ready to be served
        meanwhile starts once the whole read is parsed (``_next``): what comes after it
        in the read (an upgrade, a tunnel) is known then. Elsewhere its task starts at
        the loop's next turn anyway, and ``_feed`` is ``_parse``.
        """
        holding = self._holding
        self._holding = True
        try:
            self._parse(data)
        finally:
            self._holding = holding
        if not holding and self._next is not None:
            ex = self._next
            self._next = None
            self._launch(ex)

    def _parse(self, data: bytes) -> None:
        """Parse ``data`` (see ``_feed``)."""
        self._completed = 0
        if self._framings:
            self._framings.clear()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._parse_failed(data, error)
            return
        if self._in_message and not self._in_head:
            self._body_under_way(data)
        elif not self._stopped:
            self._read_ended(data)

    if not EAGER:
        _feed = _parse  # noqa: F811 - (see _feed)

    def _body_under_way(self, data: bytes) -> None:
        """The read ended in a body: keep where, for the framing of the next read."""
        current = self._current
        if current is not None and current.length is not None:
            self._frame_kind = SIZED
            self._frame_left = current.length - current.received
        else:  # chunked: where its framing stands is found by following it (from _line)
            _, self._frame_kind, self._frame_left, self._frame_line = self._scan(data)
        self._line = b""

    def _read_ended(self, data: bytes) -> None:
        """``data`` was parsed whole and left a head, or the next request line, unfinished."""
        sized = self._completed > 0 and (self._framings[-1] > 0 if self._framings else self._frame_kind == SIZED)
        if self._in_head:
            start = data.rfind(b"\n") + 1
            if sized:  # a Content-Length body may end anywhere: find where
                start = max(start, self._last_end(data, start))
            line = self._line + data if start == 0 and not self._completed else data[start:]
            self._frame_kind = HEAD
            if data[-1] == _LF and not self._headers and self._versionless(data, sized):
                return
            if self._head_size + partial_line_size(line) > self._limits.max_head:
                self._reject_message(431, _HEAD_TOO_LARGE)
                return
            self._line = compact_line(line)
            return
        # Between messages: the bytes after the last one may be the start of a method.
        last = data[-1]
        if last == _LF or last == _CR:
            tail = b""
        elif not self._completed:
            tail = self._line + data
        elif sized:
            tail = data[self._last_end(data, data.rfind(b"\n") + 1):]
        else:
            # It ended at a line feed: the tail is the run of method bytes at the end.
            stop = len(data)
            while stop > 0 and len(data) - stop <= MAX_METHOD and data[stop - 1] in _TOKEN_BYTES:
                stop -= 1
            tail = data[stop:]
        self._line = tail.lstrip(b"\r\n")[: MAX_METHOD + 1] if tail else tail
        self._frame_kind = BOUNDARY

    def _versionless(self, data: bytes, sized: bool) -> bool:
        """The read ended a line and no header came yet: refuse an HTTP/0.9 request line."""
        before = data.rfind(b"\n", 0, len(data) - 1) + 1
        if sized:
            before = max(before, self._last_end(data, before))
        line = self._line + data if before == 0 and not self._completed else data[before:]
        if versionless_request_line(line, self._url):
            self._reject_message(400, "Malformed request: the request line has no HTTP/1.x version.")
            return True
        return False

    def _scan(self, data: bytes, count: int = -1) -> tuple[list[int], int, int, bytes]:
        kind = self._frame_kind
        line = self._line if kind == HEAD else self._frame_line
        return scan(data, kind, self._frame_left, line, self._framings, count)

    def _last_end(self, data: bytes, otherwise: int) -> int:
        """Where in ``data`` the last message completed in it ends (``otherwise`` if unknown)."""
        ends = self._scan(data, self._completed)[0]
        return ends[-1] if len(ends) == self._completed else otherwise

    def _parse_failed(self, data: bytes, error: Exception) -> None:
        if isinstance(error, httptools.HttpParserUpgrade):
            self._upgraded(data, error.args[0])
        elif isinstance(error, httptools.HttpParserCallbackError):
            cause = error.__context__
            if isinstance(cause, Reject):
                self._reject_message(cause.status, cause.message)
            else:
                logger.error("HTTP parser callback failed", exc_info=cause or error)
                self._reject_message(500, "The server failed to read the request.")
        elif isinstance(error, httptools.HttpParserInvalidMethodError):
            self._unknown_method(data)
        else:
            self._reject_message(400, f"Malformed request: {error}.")

    def _upgraded(self, data: bytes, offset: int) -> None:
        # The Upgrade header or CONNECT paused the parser. After a WebSocket upgrade
        # request, what follows is kept for the socket (or dropped with the connection
        # if the Worker answers otherwise); after CONNECT, a tunnel's bytes; else no
        # protocol switch is made and what follows is HTTP again.
        last = self._queue[-1] if self._queue else self._active
        if last is not None and last.websocket is not None:
            self._upgrade_rest = data[offset:]
            self._pause_reading(PAUSE_UPGRADE)
            return
        if last is not None and last.tunnel:
            last.keep_alive = False
            self._stop_reading()
            return
        self._restart(data[offset:])

    def _restart(self, rest: bytes) -> None:
        """Parse ``rest`` with a new parser, from a message's start (after an upgrade not made)."""
        self._parser = httptools.HttpRequestParser(self)
        self._line = b""
        self._frame_kind = BOUNDARY
        if rest:
            self._feed(rest)

    def _unknown_method(self, data: bytes) -> None:
        # The request line is fed again, to a new parser, with a known method in place
        # of the token. It began in an earlier read (its start is ``_line``) unless a
        # message completed in this one: then it begins where that one ended.
        start: int | None
        if self._completed:
            start = self._last_end(data, -1)
            if start < 0:
                start = None
        elif self._frame_kind == BOUNDARY:
            data, start = self._line + data, 0
        else:
            start = None
        self._line = b""
        self._frame_kind = BOUNDARY
        found = unknown_method(data, start) if start is not None else None
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

    # -- httptools' callbacks ---------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self._in_head:
            self._url += url
            self._head_size += len(url)
        else:  # the first piece of a request line: a new message (no on_message_begin call)
            self._in_message = self._in_head = True
            self._url = url
            self._head_size = len(url)
            self.heads += 1
        if self._head_size > self._limits.max_head:
            raise Reject(431, _HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_head or len(headers) >= self._limits.max_headers:
            raise Reject(431, _HEAD_TOO_LARGE)
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
                self._transfer_coding(text)
            elif lname == "connection":
                self._flags |= _CONNECTION
            elif lname == "upgrade":
                if text.strip().lower() == "websocket":
                    self._flags |= _UPGRADE
            elif lname in HOP_HEADERS:
                self._flags |= _HOP
            elif text.lower() == "100-continue":
                self._flags |= _EXPECT

    def _transfer_coding(self, text: str) -> None:
        # Several Transfer-Encoding lines are one list (RFC 9110 5.3). The parser
        # removes the chunked framing only: a body in another coding before it ("gzip,
        # chunked") would reach the Worker still coded (RFC 9112 6.1: 501). A final
        # coding other than chunked is the parser's 400.
        codings = self._codings = f"{self._codings}, {text}" if self._codings else text
        parts = [c.strip(" \t") for c in codings.lower().split(",")]
        if len(parts) > 1 and parts[-1] == "chunked" and any(c != "chunked" for c in parts[:-1]):
            raise Reject(501, "Transfer codings other than chunked are not supported.")
        self._flags |= _CHUNKED

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
        if self._codings:
            self._codings = ""
        self._framings.append(-1 if flags & _CHUNKED else length or 0)
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
                    raise Reject(505, f"HTTP/{version} is not served here; use HTTP/1.1.")
                raise Reject(400, "Malformed request: the request line has no HTTP/1.x version.")
        raw_method = parser.get_method()
        method = METHODS.get(raw_method) if self._method_override is None else None
        if method is None:
            method = self._method_override or raw_method.decode("ascii")
            self._method_override = None
        if flags & _HOP:
            ex.hop = True
        if flags & _UPGRADE and raw_method == b"GET" and parser.should_upgrade():
            ex.websocket = headers._items  # (the handshake reads them as the client sent them)
        target = ex.target = self._url
        if host is None:
            if version != "1.0":
                raise Reject(400, "A Host header is required.")
            host = self._state.default_host
        elif flags & _TWO_HOSTS:
            raise Reject(400, "More than one Host header.")
        elif not HOST_OK.get(host) and not valid_host(host):
            raise Reject(400, "Invalid Host header.")
        if target[:1] == b"/":
            url = self._scheme + host + (target.decode("latin-1") if target.isascii() else quote_target(target))
        else:
            other = other_form_url(target, host)
            if other is None:
                raise Reject(400, "Malformed request: the request target names no valid host.")
            url = other
            ex.tunnel = method == "CONNECT"
        try:
            url = check_url(url)  # the URL standard's form, as every Request's (one match if it is)
        except TypeError:
            raise Reject(400, "Malformed request: the request target and Host make no valid URL.") from None
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
            if flags & _CHUNKED:
                ex.chunked = True
            self._expect_body(ex, length, flags & _EXPECT)  # (a 413 here is queued as a refusal)
        self._current = ex
        self._heading = None
        if not ex.body_done and (method == "GET" or method == "HEAD"):
            # The Fetch API has no body on GET or HEAD: it is read (up to --max-body)
            # and dropped, and the request is served once it has come.
            ex.chunks = None
            ex.discard = ex.held = True
            return
        self._ready(ex)

    def _ready(self, ex: Exchange) -> None:
        """``ex`` can be served: now, or in its turn."""
        if self._active is None and not self._queue and not self._writing_paused():
            self._start(ex)
            return
        if len(self._queue) >= QUEUE_MAX:
            self._current = None
            raise Reject(429, "Too many pipelined requests on one connection.")
        self._queue.append(ex)
        if len(self._queue) >= QUEUE_HIGH:
            self._pause_reading(PAUSE_QUEUE)

    def _expect_body(self, ex: Exchange, length: int | None, expect: int) -> None:
        if length is not None:
            ex.length = length
            if length > self._limits.max_body:
                raise Reject(413, f"The request body is larger than {self._limits.max_body} bytes.")
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
        if ex.received > self._limits.max_body:  # also a body that is only dropped (GET, HEAD)
            raise Reject(413, f"The request body is larger than {self._limits.max_body} bytes.")
        if ex.discard:
            return
        self._buffered += size
        stream: RequestBody | None = ex.stream
        if stream is not None:
            stream.feed(body)
        else:
            assert ex.chunks is not None
            ex.chunks.append(body)
            ex.buffered += size
        if self._buffered > BODY_HIGH:
            self._pause_reading(PAUSE_BODY)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed += 1
        ex = self._current
        self._current = None
        if ex is not None:
            ex.body_done = True
            if ex.stream is not None:
                ex.stream.end()
            if ex.held:
                ex.held = False
                self._ready(ex)
            if not ex.keep_alive:
                self._stop_reading()

