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

from ..websocket import WebSocket

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
    """Relays one upgraded connection and the Worker's end of its pair (the ``client`` end)."""

    __slots__ = (
        "_transport", "_protocol", "_end", "_limits", "_loop", "_on_done", "_chunks", "_decoder",
        "_writable", "_sender", "_ping", "_ping_sent", "_relayed_close", "_closer", "_done",
        "__weakref__",
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
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self._relayed_close = False  # the client's close (or the loss) reached the Worker
        self._closer: asyncio.TimerHandle | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._ping_sent = 0.0
        self._done = False
        end.accept()
        end.send_limit = limits.send_queue
        # Not a task of any pipeline (an empty context): it relays until the socket closes.
        self._sender = self._loop.create_task(self._send_out(), context=contextvars.Context())
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
        for frame in self._protocol.events_received():
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
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
                    message: Any = "".join(chunks) if decoder is not None else b"".join(chunks)
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
        if protocol.close_expected():
            self._closer = self._loop.call_later(_CLOSE_GRACE_S, self._transport.close)

    def connection_lost(self) -> None:
        if self._done:
            return
        self._done = True
        for timer in (self._ping, self._closer):
            if timer is not None:
                timer.cancel()
        self._wake_writer()
        if not self._relayed_close:
            self._relayed_close = True
            self._end.fail(ConnectionResetError("the client went away without a close frame"), 1006)
        elif self._end.ready_state != 3:
            self._end.fail(ConnectionResetError("the connection closed before the close handshake ended"))
        self._sender.cancel()
        self._on_done()

    # -- to the client -------------------------------------------------------------------

    async def _send_out(self) -> None:
        end, protocol = self._end, self._protocol
        try:
            async for message in end:
                if protocol.state is not OPEN:
                    continue  # closing: what is left is dropped
                if isinstance(message, str):
                    protocol.send_text(message.encode())
                else:
                    protocol.send_binary(message)
                self._flush()
                if self._writable is not None:
                    await self._writable
            # The Worker's end closed: its code goes to the client (1006 is never sent).
            if protocol.state is OPEN:
                code = end.close_code or 1000
                protocol.send_close(1011 if code in (1005, 1006) else code, end.close_reason or "")
                self._flush()
                if protocol.close_expected():
                    self._closer = self._loop.call_later(_CLOSE_GRACE_S, self._transport.close)
        except asyncio.CancelledError:
            pass
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
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

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
        end = self._end
        if end.ready_state in (1, 2):
            self._loop.create_task(self._close_after_sending(), context=contextvars.Context())

    async def _close_after_sending(self) -> None:
        end, protocol = self._end, self._protocol
        while end.has_unread() and protocol.state is OPEN and not self._done:
            await asyncio.sleep(0)
        if protocol.state is OPEN and not self._done:
            protocol.send_close(1001, "server shutting down")
            self._flush()
            self._relay_close()

    @property
    def state(self) -> State:
        return self._protocol.state
