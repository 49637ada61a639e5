"""What the HTTP/1.1 server shares: its limits, its state, and one request's exchange."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..request import Request
from .websocket import WebSocketLimits

if TYPE_CHECKING:
    from .request_body import RequestBody

__all__ = ("HTTPLimits", "ServerState", "Exchange", "AccessLog", "DISCARD_MAX")

# A response sent before its request body was read keeps the connection only if at
# most this much body is left to skip; otherwise the connection is closed.
DISCARD_MAX = 64 * 1024

# Called once per answered request: (connection, exchange, status, body bytes sent).
AccessLog = Callable[[Any, "Exchange", int, int], None]


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """What one client may make the server hold or wait for.

    ``max_body`` bounds a request body (413), ``max_head`` the request line and headers
    (431: the target, plus each header's name and value and 4 bytes) and
    ``max_headers`` their number (431). A request head must arrive whole, and a body
    must not stall, within ``read_timeout`` seconds (408); output the client does not
    take for ``write_timeout`` seconds aborts the connection; an idle keep-alive
    connection is closed after ``keep_alive_timeout`` seconds.
    """

    max_body: int = 100 * 1024 * 1024
    max_head: int = 64 * 1024
    max_headers: int = 128
    read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    write_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body", "max_head", "max_headers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"HTTPLimits.{name} must be a positive int, not {value!r}")
        for name in ("read_timeout", "keep_alive_timeout", "write_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"HTTPLimits.{name} must be a number > 0, not {value!r}")

    @property
    def sweep_interval(self) -> float:
        """How often the server checks its connections' timeouts: a fraction of the shortest."""
        return min(1.0, self.read_timeout / 4, self.keep_alive_timeout / 4, self.write_timeout / 4)


class ServerState:
    """What every connection of one server shares."""

    __slots__ = ("dispatch", "hop", "limits", "ws_limits", "connections", "date", "draining",
                 "log", "default_host", "scheme")

    def __init__(self, entry: Any, limits: HTTPLimits, default_host: str,
                 access_log: AccessLog | None = None, ws_limits: WebSocketLimits | None = None,
                 *, hop: Callable[[Request], Any]) -> None:
        # ``dispatch(request)``: the entry point of the served Worker (Runtime.entry),
        # awaited as Runtime.dispatch awaits it, without that coroutine around it.
        self.dispatch = entry
        # ``hop(request)``: what answers a request with fastbind-* hop headers (a remote
        # binding's or a forwarded Durable Object call: cluster/receive.py).
        self.hop = hop
        self.limits = limits
        self.ws_limits = ws_limits or WebSocketLimits()
        self.connections: set[Any] = set()  # the open HTTPConnections
        self.date = ""  # the Date header line, refreshed every second
        self.draining = False
        self.log = access_log
        self.default_host = default_host  # what an HTTP/1.0 request without Host asked for
        self.scheme = "http://"  # of request.url: "https://" behind TLS
        self.refresh_date()

    def refresh_date(self) -> None:
        self.date = time.strftime("date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime())


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
    chunked = False  # Transfer-Encoding: chunked
    chunks: list[bytes] | None = None  # body received before the Worker started
    buffered = 0  # bytes in ``chunks``
    received = 0
    body_done = True
    stream: RequestBody | None = None
    discard = False  # the rest of the body is skipped as it arrives
    held = False  # served once its body (dropped: GET, HEAD) has come
    reject = 0  # a status to answer instead of the Worker's response
    reject_message = ""
    target = b""
    start = 0.0
    tunnel = False  # CONNECT: nothing after it on this connection is HTTP
    websocket: list[tuple[str, str]] | None = None  # a WebSocket upgrade request: its headers
    answering = False  # its response head has been written
    hop = False  # it has fastbind-* hop headers: ServerState.hop answers it
    finished = False  # its response has been written

    @classmethod
    def rejection(cls, status: int, message: str) -> Exchange:
        """An exchange the server answers itself with ``status``, then closes."""
        ex = cls()
        ex.fail(status, message)
        return ex

    def fail(self, status: int, message: str) -> None:
        self.reject = status
        self.reject_message = message
        self.keep_alive = False

    def skippable(self) -> bool:
        """Whether the unread rest of the request body is small enough to read and drop."""
        if self.expect_continue or self.length is None:
            return False  # the client waits to be asked, or the length is unknown (chunked)
        return self.length - self.received <= DISCARD_MAX
