"""A WebSocket over an upgraded HTTP/1.1 connection, relayed to the Worker's socket end.

The framing, the handshake's accept key and the extensions (permessage-deflate when the
client asks) are the ``websockets`` library's sans-I/O protocol; this module moves bytes
between it and the transport, assembles messages, and relays them to and from the end of
the WebSocketPair the Worker answered with:

- a message from the client is sent on that end (the Worker's end receives it); text
  that is not UTF-8 closes the connection with 1007, a message over ``max_message``
  with 1009; pings are answered, and a ping is sent every ``ping_interval`` seconds of
  quiet, the connection failing (1011) when no pong comes within ``ping_timeout``;
- what the Worker sends is written as frames, reading its queue only while the
  transport takes more (the Worker's ``drain()`` waits meanwhile, and its queue's bound
  closes a socket whose client stopped reading);
- a close from either side is relayed to the other; a connection lost without one is a
  1006 for the Worker; ``going_away()`` (a server shutting down) closes with 1001 once
  what the Worker sent has been written.
"""

from __future__ import annotations

import asyncio
import codecs
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close, Opcode
from websockets.http11 import Request as WSRequest
from websockets.protocol import OPEN, State
from websockets.frames import Frame
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ..websocket import CloseEvent, ErrorEvent, Message, WebSocket

__all__ = ("WebSocketLimits", "WebSocketRelay", "handshake")

logger = logging.getLogger("fastbind.server")

_TEXT, _BINARY, _CONT, _PONG, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG, Opcode.CLOSE
# Response headers the handshake itself decides.
_HANDSHAKE_HEADERS = frozenset((
    "upgrade", "connection", "sec-websocket-accept", "sec-websocket-extensions",
    "sec-websocket-protocol", "content-length", "transfer-encoding", "date",
))
_CLOSE_GRACE_S = 2.0  # after a close: how long the client has to close its side


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """What one WebSocket may make the server hold or wait for."""

    max_message: int = 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    send_queue: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if type(self.max_message) is not int or self.max_message < 1:
            raise ValueError(f"WebSocketLimits.max_message must be a positive int, not {self.max_message!r}")
        if type(self.send_queue) is not int or self.send_queue < 1:
            raise ValueError(f"WebSocketLimits.send_queue must be a positive int, not {self.send_queue!r}")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is None and name == "ping_interval":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"WebSocketLimits.{name} must be a number > 0, not {value!r}")


def handshake(
    target: str, request_headers: list[tuple[str, str]], answer_headers: list[tuple[str, str]],
    limits: WebSocketLimits,
) -> tuple[ServerProtocol, bytes, bool]:
    """The server side of the opening handshake for the Worker's 101 answer.

    Returns the protocol, the bytes of the HTTP response to write, and whether the
    handshake succeeded (False: the response is an error; close the connection after it).
    The subprotocol is the one the Worker's ``Sec-WebSocket-Protocol`` answer names;
    the Worker's other headers (``set-cookie``, say) go with the response.
    """
    chosen = [v.strip() for n, v in answer_headers if n == "sec-websocket-protocol"]
    protocol = ServerProtocol(
        extensions=[ServerPerMessageDeflateFactory()],
        subprotocols=[Subprotocol(chosen[0])] if chosen and chosen[0] else None,
        max_size=limits.max_message,
    )
    # The protocol reads the request head itself (as the client sent it, rewritten from
    # what the HTTP parser kept): it then expects frames.
    head = "".join([f"GET {target} HTTP/1.1\r\n", *(f"{n}: {v}\r\n" for n, v in request_headers), "\r\n"])
    protocol.receive_data(head.encode("latin-1", "replace"))
    requests = [event for event in protocol.events_received() if isinstance(event, WSRequest)]
    if not requests:  # the head could not be read back (it was checked once already)
        response = protocol.reject(400, "Failed to open a WebSocket connection: bad request.\n")
        protocol.send_response(response)
        return protocol, b"".join(protocol.data_to_send()), False
    response = protocol.accept(requests[0])
    if response.status_code == 101:
        for name, value in answer_headers:
            if name not in _HANDSHAKE_HEADERS:
                response.headers[name] = value
    protocol.send_response(response)
    return protocol, b"".join(protocol.data_to_send()), response.status_code == 101


class WebSocketRelay:
    """Relays one upgraded connection and the Worker's end of its pair (the ``client`` end).

    No task of its own: frames from the client are handled as the transport hands them
    over, and what the Worker sends is written from its ``send()`` call while the
    transport takes more; while it is paused the Worker's messages wait on the end (where
    ``drain()`` and the send queue's bound see them) until ``resume_writing``.
    """

    __slots__ = (
        "_transport", "_protocol", "_end", "_limits", "_loop", "_on_done", "_chunks", "_decoder",
        "_paused", "_going_away", "_ping", "_ping_sent", "_relayed_close", "_closer", "_done",
    )

    def __init__(
        self, transport: asyncio.Transport, protocol: ServerProtocol, end: WebSocket,
        limits: WebSocketLimits, on_done: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._end = end
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._on_done = on_done
        self._chunks: list[Any] = []  # str pieces of a text message, bytes of a binary one
        self._decoder: Any = None  # the UTF-8 decoder of a text message being assembled
        self._paused = False  # the transport's buffer is full: the Worker's messages wait
        self._going_away = False  # close with 1001 once what waits is written
        self._relayed_close = False  # the client's close (or the loss) reached the Worker
        self._closer: asyncio.TimerHandle | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._ping_sent = 0.0
        self._done = False
        end.accept()
        end.queue_limit = limits.send_queue  # what the Worker sent, waiting for the socket
        end.relay_to(self._deliver)
        self.resume_writing()  # what the Worker sent before the handshake was written
        self._arm_ping()

    # -- from the client ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        self._handle_events()
        self._flush()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._handle_events()
        self._flush()

    def _handle_events(self) -> None:
        end = self._end
        message: Message
        for frame in self._protocol.events_received():
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if frame.fin and (opcode is _TEXT or opcode is _BINARY):  # a whole message
                if opcode is _TEXT:
                    try:
                        message = str(frame.data, "utf-8")
                    except UnicodeDecodeError:
                        self._protocol.fail(1007, "invalid UTF-8 in a text message")
                        break
                else:
                    message = bytes(frame.data)
                if end.ready_state == 1:
                    end.send(message)
                    self._hold_back()
            elif opcode is _TEXT or opcode is _BINARY or opcode is _CONT:  # a fragment
                if opcode is not _CONT:
                    self._decoder = codecs.getincrementaldecoder("utf-8")() if opcode is _TEXT else None
                decoder = self._decoder
                if decoder is not None:
                    try:
                        self._chunks.append(decoder.decode(frame.data, frame.fin))
                    except UnicodeDecodeError:
                        self._protocol.fail(1007, "invalid UTF-8 in a text message")
                        break
                else:
                    self._chunks.append(bytes(frame.data))
                if frame.fin:
                    chunks, self._chunks = self._chunks, []
                    message = "".join(chunks) if decoder is not None else b"".join(chunks)
                    if end.ready_state == 1:
                        end.send(message)
                        self._hold_back()
            elif opcode is _PONG:
                self._ping_sent = 0.0
                self._arm_ping()
        self._relay_close()

    def _hold_back(self) -> None:
        """Stop reading while the Worker has too much unread (it reads, we read again)."""
        if self._end.buffered_amount > self._limits.max_message and not self._done:
            self._transport.pause_reading()
            self._loop.create_task(self._resume_reading(), context=contextvars.Context())

    async def _resume_reading(self) -> None:
        await self._end.drain()
        if not self._done and not self._transport.is_closing():
            self._transport.resume_reading()

    def _relay_close(self) -> None:
        """The protocol has a close (received, or sent because of an error): tell the Worker."""
        protocol = self._protocol
        if self._relayed_close:
            return
        close: Close | None = protocol.close_rcvd or (protocol.close_sent if protocol.state is not OPEN else None)
        if close is None:
            return
        self._relayed_close = True
        clean = protocol.close_rcvd is not None and protocol.close_sent is not None
        self._end.relay_close(close.code, close.reason, was_clean=clean or protocol.close_rcvd is not None)
        self._expect_close()

    def connection_lost(self) -> None:
        if self._done:
            return
        self._done = True
        for timer in (self._ping, self._closer):
            if timer is not None:
                timer.cancel()
        if not self._relayed_close:
            self._relayed_close = True
            self._end.fail(ConnectionResetError("the client went away without a close frame"), 1006)
        elif self._end.ready_state != 3:
            self._end.fail(ConnectionResetError("the connection closed before the close handshake ended"))
        self._on_done()

    # -- to the client -------------------------------------------------------------------

    def _deliver(self, event: Message | CloseEvent | ErrorEvent) -> bool:
        """What the Worker's end sent: written now, or False (it waits) while paused."""
        if self._paused:
            return False
        self._write(event)
        return True

    def _write(self, event: Message | CloseEvent | ErrorEvent) -> None:
        protocol = self._protocol
        if self._done or protocol.state is not OPEN:
            return  # closing: what is left is dropped
        try:
            if type(event) is str:
                protocol.send_text(event.encode())
            elif type(event) is bytes:
                protocol.send_binary(event)
            elif isinstance(event, CloseEvent):
                # The Worker's end closed: its code goes to the client (1005 and 1006
                # are never sent on the wire).
                code = event.code
                protocol.send_close(1011 if code in (1005, 1006) else code, event.reason)
                self._expect_close()
            else:
                return  # an ErrorEvent: the close that follows says it
            self._flush()
        except Exception:
            logger.exception("Relaying a WebSocket to its client failed")
            self._transport.abort()

    def _flush(self) -> None:
        transport = self._transport
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # the protocol's end of the stream, after a close
            else:
                transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        """The transport takes more: write what waited, in order, while it does."""
        self._paused = False
        end = self._end
        while not self._paused:
            event = end.pop_waiting()
            if event is None:
                break
            self._write(event)
            if isinstance(event, CloseEvent):
                return
        if self._going_away and not self._paused:
            self._going_away = False
            self._close_going_away()

    def _expect_close(self) -> None:
        """A close was sent: the client has a grace period to close its side."""
        if self._protocol.close_expected() and self._closer is None and not self._done:
            self._closer = self._loop.call_later(_CLOSE_GRACE_S, self._transport.close)

    # -- keep-alive and shutdown --------------------------------------------------------

    def _arm_ping(self) -> None:
        interval = self._limits.ping_interval
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        if interval is not None and not self._done:
            self._ping = self._loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        protocol = self._protocol
        if self._done or protocol.state is not OPEN:
            return
        if self._ping_sent:  # the last ping was never answered
            protocol.fail(1011, "keepalive ping timeout")
            self._flush()
            self._relay_close()
            self._transport.abort()
            return
        protocol.send_ping(b"fastbind")
        self._flush()
        self._ping_sent = self._loop.time()
        self._ping = self._loop.call_later(self._limits.ping_timeout, self._send_ping)

    def going_away(self) -> None:
        """The server stops: close with 1001 once what the Worker already sent is written."""
        if self._paused or self._end.has_unread():
            self._going_away = True  # resume_writing closes after the rest
        else:
            self._close_going_away()

    def _close_going_away(self) -> None:
        protocol = self._protocol
        if protocol.state is OPEN and not self._done:
            protocol.send_close(1001, "server shutting down")
            self._flush()
            self._relay_close()

    @property
    def state(self) -> State:
        return self._protocol.state
