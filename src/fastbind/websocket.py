"""WebSockets as Cloudflare Workers have them: a ``WebSocketPair`` of two linked ends.

A Worker that answers an upgrade keeps one end (``server``), accepts it, and returns the
other in its Response: ``Response(None, status=101, web_socket=client)``. Whatever holds
``client`` then (the HTTP server, a caller through a binding, an outbound connection)
relays it: what one end sends, the other receives.

- ``send(message)`` queues a ``str`` (text) or bytes-like (binary) message for the
  other end and returns at once; ``await drain()`` waits until what this end has queued
  is under ``LOW_WATER``. What one end has queued and the other not yet read is bounded
  (the reading end's ``queue_limit``, 16 MiB by default): past it the pair is closed
  with 1011, logged, so a reader that stalls cannot grow memory without end.
- Receive with ``async for message in ws`` (until the other end closes) or with
  ``add_event_listener("message" | "close" | "error", callback)``; a callback may be a
  coroutine function. Listeners run in a task of the code that added them.
- ``close(code=1000, reason="")``: the other end gets the close; unless it was
  accepted with ``allow_half_open=True`` it replies at once (as Cloudflare does since
  its 2026-04-07 compatibility date), and both ends are CLOSED.

An end must be accepted (``accept()``, or a Durable Object's ``ctx.accept_websocket``)
before it sends or receives; messages sent to it before that wait for it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Union

import orjson

__all__ = (
    "WebSocket",
    "WebSocketPair",
    "MessageEvent",
    "CloseEvent",
    "ErrorEvent",
    "Message",
    "CONNECTING",
    "OPEN",
    "CLOSING",
    "CLOSED",
    "QUEUE_LIMIT",
    "LOW_WATER",
)

logger = logging.getLogger("fastbind")

Message = Union[str, bytes]

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
QUEUE_LIMIT = 16 * 1024 * 1024  # bytes that may wait unread at one end
LOW_WATER = 64 * 1024          # drain() returns below this
ATTACHMENT_LIMIT = 2048        # serialized bytes, as Cloudflare's

_NOT_ACCEPTED = (
    "You must call one of accept() or state.acceptWebSocket() on this WebSocket before "
    "sending messages."
)
_SENT_AFTER_CLOSE = "Can't call WebSocket send() after close()."
_EVENTS = ("message", "close", "error")


class MessageEvent:
    """What a "message" listener receives: ``data`` is a str or bytes."""

    __slots__ = ("data",)

    def __init__(self, data: Message) -> None:
        self.data = data


class CloseEvent:
    """What a "close" listener receives."""

    __slots__ = ("code", "reason", "was_clean")

    def __init__(self, code: int, reason: str, was_clean: bool) -> None:
        self.code = code
        self.reason = reason
        self.was_clean = was_clean


class ErrorEvent:
    """What an "error" listener receives: ``error`` is the exception."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_PAIR = object()  # what lets WebSocketPair make WebSockets


def check_close(code: int, reason: str) -> None:
    """A close a Worker may send: code 1000 or 3000-4999, a reason of at most 123 bytes."""
    if isinstance(code, bool) or not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"WebSocket close code must be 1000 or in 3000..4999, not {code!r}")
    if not isinstance(reason, str):
        raise TypeError(f"WebSocket close reason must be str, not {type(reason).__name__}")
    if len(reason.encode()) > 123:
        raise ValueError("WebSocket close reason must be at most 123 bytes of UTF-8")


def _as_message(message: object) -> Message:
    if type(message) is str or type(message) is bytes:
        return message
    if isinstance(message, str):
        return str(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    raise TypeError(
        f"A WebSocket message must be str (text) or bytes-like (binary), not {type(message).__name__}"
    )


class WebSocket:
    """One end of a WebSocketPair (see the module docstring)."""

    # Containers are made when first needed: most sockets never queue, listen or drain,
    # and an idle socket should cost little (there may be tens of thousands).
    __slots__ = (
        "_peer", "_inbox", "_queued", "_accepted", "_state", "_waiter", "_drainers",
        "_listeners", "_sink", "_half_open", "queue_limit", "close_code", "close_reason",
        "was_clean", "protocol", "_attachment", "_on_closed", "_close_sent", "__weakref__",
    )

    def __init__(self, _made_by: object = None) -> None:
        if _made_by is not _PAIR:
            raise TypeError("A WebSocket is made by WebSocketPair()")
        self._peer: WebSocket | None = None
        self._inbox: deque[Message | CloseEvent | ErrorEvent] | None = None
        self._queued = 0  # bytes in this end's inbox, sent by the peer and not read yet
        self._accepted = False
        self._state = OPEN
        self._waiter: asyncio.Future[None] | None = None
        self._drainers: list[asyncio.Future[None]] | None = None
        self._listeners: dict[str, list[Callable[[Any], Any]]] | None = None
        self._sink: Callable[[Message | CloseEvent | ErrorEvent], bool] | None = None
        self._half_open = False
        self.queue_limit = QUEUE_LIMIT  # what may wait unread here (set by a relay)
        self.close_code: int | None = None
        self.close_reason = ""
        self.was_clean = False
        self.protocol = ""  # the subprotocol the handshake chose, when one did
        self._attachment: bytes | None = None
        self._on_closed: list[Callable[[], Any]] | None = None
        self._close_sent = False

    # -- state --------------------------------------------------------------------------

    @property
    def ready_state(self) -> int:
        """CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3)."""
        return self._state

    @property
    def accepted(self) -> bool:
        return self._accepted

    @property
    def buffered_amount(self) -> int:
        """Bytes this end sent that the other end has not read yet."""
        peer = self._peer
        return 0 if peer is None else peer._queued

    # -- the Worker's side ---------------------------------------------------------------

    def accept(self, *, allow_half_open: bool = False) -> None:
        """Start using this end; with ``allow_half_open`` a received close is not answered
        until ``close()`` is called (for proxies that close each side themselves)."""
        self._accepted = True
        self._half_open = bool(allow_half_open)
        self._wake()  # a listener's task waits for this

    def send(self, message: Message) -> None:
        """Queue ``message`` for the other end and return at once."""
        if not self._accepted:
            raise TypeError(_NOT_ACCEPTED)
        if self._state != OPEN:
            raise TypeError(_SENT_AFTER_CLOSE)
        data = _as_message(message)
        peer = self._peer
        assert peer is not None
        if peer._state == CLOSED:
            return  # the other end is gone: nothing reads any more
        peer._put(data)
        if peer._queued > peer.queue_limit and self._state == OPEN:
            logger.warning(
                "WebSocket send queue over %d bytes (the other end does not read); closed with 1011",
                peer.queue_limit,
            )
            self._fail_both(1011, "send queue limit exceeded")

    async def drain(self) -> None:
        """Wait until what this end queued for the other is under LOW_WATER (or it closed)."""
        peer = self._peer
        while peer is not None and peer._queued > LOW_WATER and peer._state != CLOSED:
            waiter = asyncio.get_running_loop().create_future()
            if peer._drainers is None:
                peer._drainers = []
            peer._drainers.append(waiter)
            await waiter

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close this end; the other end receives ``code`` and ``reason``."""
        check_close(code, reason)
        if self._state == CLOSED or self._close_sent:
            return  # (a reply the runtime already sent: silently ignored, as Cloudflare does)
        self._close(code, reason, True)

    def add_event_listener(self, event: str, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(event)`` for each "message", the "close" or an "error" of this end."""
        if event not in _EVENTS:
            raise ValueError(f'WebSocket event must be one of {", ".join(_EVENTS)}, not {event!r}')
        if not callable(callback):
            raise TypeError(f"A WebSocket listener must be callable, not {callback!r}")
        if self._listeners is None:
            self._listeners = {}
            # A task of the code that listens: in a Worker, a task of its invocation.
            asyncio.get_running_loop().create_task(self._dispatch())
        self._listeners.setdefault(event, []).append(callback)

    def remove_event_listener(self, event: str, callback: Callable[[Any], Any]) -> None:
        callbacks = (self._listeners or {}).get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    def serialize_attachment(self, value: Any) -> None:
        """Keep ``value`` with this socket, as JSON of at most 2,048 bytes (Durable
        Objects keep what a socket is about this way)."""
        try:
            data = orjson.dumps(value)
        except TypeError as exc:
            raise TypeError(f"A WebSocket attachment must be JSON data: {exc}") from None
        if len(data) > ATTACHMENT_LIMIT:
            raise ValueError(
                f"A WebSocket attachment must serialize to at most {ATTACHMENT_LIMIT:,} bytes, "
                f"not {len(data):,}"
            )
        self._attachment = data

    def deserialize_attachment(self) -> Any:
        """A copy of what ``serialize_attachment`` kept (None if nothing was)."""
        return None if self._attachment is None else orjson.loads(self._attachment)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        if self._listeners and self._listeners.get("message"):
            raise TypeError("This WebSocket's messages go to its message listeners; do not also iterate it")
        while True:
            item = await self._next()
            if isinstance(item, CloseEvent):
                return
            if not isinstance(item, ErrorEvent):  # (the close that follows ends the loop)
                yield item

    # -- for what relays an end (a server, an outbound connection) -------------------------

    def relay_close(self, code: int, reason: str = "", *, was_clean: bool = True) -> None:
        """Close this end as the connection it stands for closed: with any code a peer
        may send (1001 going away, 1005 no code, 1009 too big...), unchecked."""
        if self._state != CLOSED and not self._close_sent:
            self._close(code, reason, was_clean)

    def relay_to(self, sink: Callable[[Message | CloseEvent | ErrorEvent], bool]) -> None:
        """Hand what reaches this end to ``sink`` as it arrives, with no task between:
        ``sink(event)`` returns False when it cannot take it now (its connection is not
        writable); the event then waits, and so does all that follows, until
        ``pop_waiting()`` takes them. What waited before this call waits still."""
        self._sink = sink

    def pop_waiting(self) -> Message | CloseEvent | ErrorEvent | None:
        """The next event that waits here, taken off (a close stays), or None."""
        inbox = self._inbox
        if not inbox:
            return None
        item = inbox[0]
        if not isinstance(item, CloseEvent):
            self._pop()
        return item

    async def receive(self) -> Message | CloseEvent | ErrorEvent:
        """The next event of this end: a message, an ErrorEvent, or its CloseEvent (which
        every later call returns again). For relays; a Worker iterates or listens."""
        return await self._next()

    def has_unread(self) -> bool:
        """Whether messages the other end sent wait here (the close aside)."""
        return any(not isinstance(item, (CloseEvent, ErrorEvent)) for item in self._inbox or ())

    def when_closed(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once this end is CLOSED (at once if it is already)."""
        if self._state == CLOSED:
            callback()
        else:
            if self._on_closed is None:
                self._on_closed = []
            self._on_closed.append(callback)

    def fail(self, error: BaseException, code: int = 1006) -> None:
        """The connection behind this pair broke: "error" listeners hear of ``error``,
        then both ends close with ``code`` (1006: closed without a close frame)."""
        for end in (self, self._peer):
            if end is not None and end._state != CLOSED and end._listeners and end._listeners.get("error"):
                end._put(ErrorEvent(error))
        self._fail_both(code, "")

    # -- delivery ---------------------------------------------------------------------------

    def _put(self, item: Message | CloseEvent | ErrorEvent) -> None:
        """Something for this end: to its relay at once when it takes it, else queued."""
        sink = self._sink
        if sink is not None and not self._inbox and sink(item):
            return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(item)
        if not isinstance(item, (CloseEvent, ErrorEvent)):
            self._queued += len(item)
        self._wake()

    def _pop(self) -> Message | CloseEvent | ErrorEvent:
        """The first queued item, taken off (the caller knows there is one)."""
        inbox = self._inbox
        assert inbox
        item = inbox.popleft()
        if not isinstance(item, (CloseEvent, ErrorEvent)):
            self._queued -= len(item)
            if self._drainers and self._queued <= LOW_WATER:
                self._wake_drainers()
        return item

    async def _next(self) -> Message | CloseEvent | ErrorEvent:
        """The next message, or the close mark once the other end closed."""
        if not self._accepted:
            raise TypeError(_NOT_ACCEPTED.replace("sending", "receiving"))
        while not self._inbox:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        assert self._inbox
        if isinstance(self._inbox[0], CloseEvent):
            return self._inbox[0]  # the close stays: later reads see it again
        return self._pop()

    def _remote_close(self, code: int, reason: str, was_clean: bool) -> None:
        """The other end closed with ``code``; answer it unless half-open."""
        if self._state == CLOSED:
            return
        self.close_code = code
        self.close_reason = reason
        self.was_clean = was_clean
        self._put(CloseEvent(code, reason, was_clean))
        if self._state == CLOSING or not self._half_open:
            peer = self._peer
            if peer is not None and peer._state != CLOSED:  # the reply reaches the closer
                peer.was_clean = was_clean
                if peer.close_code is None:  # the automatic reply echoes the code
                    peer.close_code, peer.close_reason = code, reason
                peer._put(CloseEvent(peer.close_code, peer.close_reason, was_clean))
                peer._closed()
            self._closed()
        else:
            self._state = CLOSING

    def _close(self, code: int, reason: str, was_clean: bool) -> None:
        self._close_sent = True
        self._state = CLOSING
        peer = self._peer
        if peer is not None:
            peer._remote_close(code, reason, was_clean)

    def _fail_both(self, code: int, reason: str) -> None:
        """Close both ends with ``code`` now (a limit, a broken connection): not clean."""
        for end in (self, self._peer):
            if end is not None and end._state != CLOSED:
                end.close_code, end.close_reason, end.was_clean = code, reason, False
                end._put(CloseEvent(code, reason, False))
                end._closed()

    def _closed(self) -> None:
        self._state = CLOSED
        self._wake_drainers()
        callbacks, self._on_closed = self._on_closed, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                logger.exception("A WebSocket close callback raised")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, None
        for waiter in drainers or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _dispatch(self) -> None:
        """Hand messages, then the close, to the listeners (a task per listening end)."""
        while not self._accepted:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        while True:
            item = await self._next()
            if isinstance(item, ErrorEvent):
                await self._call("error", item)
                continue
            if isinstance(item, CloseEvent):
                await self._call("close", item)
                return
            await self._call("message", MessageEvent(item))

    async def _call(self, event: str, payload: Any) -> None:
        for callback in tuple((self._listeners or {}).get(event, ())):
            try:
                result = callback(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("WebSocket %s listener raised", event)

    def __repr__(self) -> str:
        state = ("CONNECTING", "OPEN", "CLOSING", "CLOSED")[self._state]
        return f"<WebSocket {state}>"


class WebSocketPair:
    """Two linked WebSocket ends: ``client, server = WebSocketPair()``.

    Also indexable as Cloudflare's object is (``pair[0]``, ``pair[1]``).
    """

    __slots__ = ("client", "server")

    def __init__(self) -> None:
        client, server = WebSocket(_PAIR), WebSocket(_PAIR)
        client._peer, server._peer = server, client
        self.client = client
        self.server = server

    def __iter__(self) -> Iterator[WebSocket]:
        return iter((self.client, self.server))

    def __getitem__(self, index: int) -> WebSocket:
        return (self.client, self.server)[index]

    def __len__(self) -> int:
        return 2
