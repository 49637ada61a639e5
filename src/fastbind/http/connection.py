"""HTTP/1.1 connections on httptools: keep-alive, pipelining, flow control, timeouts, WebSocket upgrades.

One ``HTTPConnection`` per client: httptools (llhttp) parses what arrives into
Requests (``parsing``: the callbacks, and a request the same however its bytes were
split), a task per request awaits the runtime's top-level dispatch (so that a client
going away can cancel exactly its pipeline; started eagerly where Python can, see
``eager``), and requests of one connection are
answered one after the other, in order. ``writer`` writes the answers, ``target``
turns the request line into a URL, ``exchange`` holds the state of one request and
the server's limits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from functools import partial
from typing import Any, cast

from ..errors import BodyReadError
from ..response import Response
from ..websocket import WebSocket
from . import eager
from .access_log import CLIENT_GONE
from .exchange import AccessLog, Exchange, HTTPLimits, ServerState
from .parsing import (
    BODY_HIGH, BODY_LOW, PAUSE_BODY, PAUSE_QUEUE, PAUSE_STOPPED, PAUSE_UPGRADE, PAUSE_WRITE, QUEUE_HIGH,
    RequestParsing,
)
from .request_body import RequestBody
from .websocket import WebSocketRelay, handshake
from .writer import ResponseWriter, close_body

__all__ = ("HTTPConnection", "HTTPLimits", "ServerState", "Exchange", "AccessLog")

logger = logging.getLogger("fastbind.server")

# After a refusal (429, 413, 400...), or an answer given before its request body came
# whole, the client may still be sending: closing a socket with unread input resets
# the connection, and a reset can discard the last answers in the client's buffer. So
# the server half-closes, reads and drops what comes, and closes when the client does
# or after this many seconds (RFC 9112 9.6, "tear-down").
_LINGER_S = 2.0
# Unsent output a connection may hold: past HIGH the socket is not read and no further
# pipelined request starts until it is back under LOW (the transport's water marks).
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024

_LINGER_OFF = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
# After the 100 Continue sent on a client's FIN, when to look for the reset it draws
# (the sweep looks on after that).
_PROBE_LOOKS_S = (0.02, 0.2)
_PLAIN = (bytes, str, bytearray, memoryview)
_new_task = eager.new_task  # a request's task (eager on 3.12+)


def _socket_error(transport: asyncio.Transport) -> int:
    """The pending error of the transport's socket (a reset that came in), 0 if none."""
    sock = transport.get_extra_info("socket")
    try:
        return 0 if sock is None else int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError:
        return 1


class HTTPConnection(RequestParsing, asyncio.Protocol):
    """One client connection: parse requests, serve them in order, write the answers."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._dispatch = state.dispatch
        self._access_log = state.log is not None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._writer = ResponseWriter(state, self._loop)
        self.peer: Any = None
        self._init_parsing()
        # serving
        self._queue: deque[Exchange] = deque()
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None  # the active request's, until it is done
        self._holding = False  # a read is being parsed, or a request's first step runs (see _start)
        self._next: Exchange | None = None  # the request to start after that
        self._buffered = 0
        self._pause = 0
        self._stopped = False  # no more requests are read from this connection
        self._lost = False
        self._eof = False  # the client half-closed: it sends nothing more
        self._probing = False  # a 100 Continue went out after the FIN (see eof_received)
        self._linger: asyncio.TimerHandle | None = None  # the timed close of a draining close
        self._relay: WebSocketRelay | None = None  # once upgraded: the WebSocket it carries
        # Progress counters, cheap to bump per request; the server's sweep turns them
        # into times (see check_timeouts).
        self.reads = 0  # data_received calls
        self.heads = 0  # request heads begun
        self.answers = 0  # responses finished
        now = self._loop.time()
        self._seen = (0, 0, 0)
        self._read_at = self._head_at = self._answer_at = self._write_at = now
        self._delivered = -1  # output bytes the socket had taken at the last sweep (-1: nothing was waiting)

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = self._writer.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
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
            return
        # The client reads slower than the server answers: read no more of its
        # requests and start no more of them until it has caught up.
        self._writer.pause()
        self._pause_reading(PAUSE_WRITE)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.resume_writing()
            return
        self._writer.resume()
        self._resume_reading(PAUSE_WRITE)
        if self._active is None and not self._lost:
            self._serve_next()

    def _writing_paused(self) -> bool:
        return self._writer.paused

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
        self._feed(data)

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close (as h11 does)."""
        if self._relay is not None:
            return False  # a WebSocket's client that half-closes is gone: the transport closes
        self._eof = True
        if self._linger is not None:  # a draining close waited for this
            self._linger.cancel()
            self._linger = None
            assert self._transport is not None
            self._transport.close()
            return True
        if self._stopped:
            return True  # a refusal or a last answer is on its way out, and closes
        if self._in_message:
            self._reject_message(400, "The client closed the connection before sending the whole request.")
            return True
        last = self._queue[-1] if self._queue else self._active
        if last is None:
            return False  # nothing to answer: the transport closes
        self._stop_reading()
        last.keep_alive = False  # its answer says connection: close, and closes
        active = self._active
        if active is not None and not active.answering and active.version == "1.1":
            # A FIN cannot tell a client that half-closed (and reads on) from one that
            # closed. An interim response, which HTTP/1.1 clients must skip, tells:
            # a closed socket answers it with a reset, which the sweep sees (SO_ERROR)
            # and which cancels the pipeline as any client going away does.
            self._writer.send_continue()
            self._probing = True
            for delay in _PROBE_LOOKS_S:  # a reset comes back within a round trip: look soon
                self._loop.call_later(delay, self._probe_answered)
        return True

    def _probe_answered(self) -> None:
        transport = self._transport
        if transport is not None and not self._lost and _socket_error(transport):
            transport.abort()  # the client closed, not half-closed: it is gone

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
        if ex.held:  # waiting for its (dropped) body to end: the refusal takes its turn now
            ex.held = False
            self._queue.append(ex)
            if self._active is None:
                self._serve_next()
            return
        if ex.stream is not None:
            ex.stream.fail(BodyReadError(message))

    # -- what RequestBody calls ------------------------------------------------------------

    def body_consumed(self, size: int) -> None:
        """A Worker took ``size`` buffered body bytes."""
        self._buffered -= size
        if self._pause & PAUSE_BODY and self._buffered <= BODY_LOW:
            self._resume_reading(PAUSE_BODY)

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
        self._pause_reading(PAUSE_STOPPED)

    # -- serving ----------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        if ex.reject:
            self._reject(ex)
            return
        self._active = ex
        if self._holding:
            # Called while a read is parsed, or as a request answered in its first step
            # ends: started once that is over (the parser's view of the read complete;
            # and by a loop, not one call deeper per request).
            self._next = ex
            return
        self._launch(ex)

    def _launch_task(self, ex: Exchange) -> None:
        task = self._task = _new_task(self._loop, self._serve(ex))
        if self._access_log:
            task.add_done_callback(partial(self._log_if_gone, ex))

    def _launch(self, ex: Exchange) -> None:
        self._holding = True
        try:
            while True:
                # On 3.12+ the first step runs now (http/eager.py): a request answered at
                # once is done when this returns, and the next one starts in this loop.
                task = _new_task(self._loop, self._serve(ex))
                if not task.done():
                    self._task = task
                    if self._access_log:
                        task.add_done_callback(partial(self._log_if_gone, ex))
                elif self._access_log:
                    self._log_if_gone(ex, task)
                next_ex = self._next
                if next_ex is None:
                    return
                self._next = None
                ex = next_ex
        finally:
            self._holding = False

    if not eager.EAGER:  # 3.11: the task starts at the loop's next turn; nothing to hold
        _launch = _launch_task  # noqa: F811

    def _serve_next(self) -> None:
        if self._writer.paused:
            return  # resume_writing serves it, once the client has read enough
        queue = self._queue
        if queue and not self._lost:
            ex = queue.popleft()
            if self._pause & PAUSE_QUEUE and len(queue) < QUEUE_HIGH // 2:
                self._resume_reading(PAUSE_QUEUE)
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
            response = await (self._state.hop if ex.hop else self._dispatch)(request)
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
            self._resume_reading(PAUSE_UPGRADE)
            self._restart(rest)

    def _upgrade(self, ex: Exchange, response: Response, web_socket: WebSocket) -> None:
        """The Worker answered the upgrade with a socket: complete the handshake and
        carry the socket on this connection from now on (http/websocket.py)."""
        assert ex.websocket is not None and self._transport is not None
        limits = self._state.ws_limits
        protocol, head, accepted = handshake(ex.target.decode("latin-1"), ex.websocket,
                                             response.headers.items(), limits)
        transport = self._transport
        self._writer.written += len(head)
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
        if ex.body_done and ex.buffered <= BODY_HIGH:
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
            if self._eof or (ex.body_done and not self._pause and not self._queue and not self._in_message):
                self._transport.close()  # nothing of the client's is left unread
            else:
                self._close_draining()
            return
        self.answers += 1  # the keep-alive timeout counts from here
        if self._queue or self._state.draining:
            self._serve_next()

    def _log_if_gone(self, ex: Exchange, task: asyncio.Task[None]) -> None:
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
        if self._eof or not transport.can_write_eof():
            transport.close()  # (after a half-close nothing more comes)
            return
        transport.write_eof()  # the answers so far, then FIN; input is still read, and dropped
        self._queue.clear()  # requests after the last answer are not served
        self._pause = 0
        transport.resume_reading()
        self._linger = self._loop.call_later(_LINGER_S, transport.close)

    # -- timeouts and shutdown, called by the server ------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server every fraction of a timeout.

        Output the client does not take for the write timeout aborts the connection,
        also one that is closing. A request head must arrive whole within the read
        timeout from its first line (a head trickled byte by byte is cut off too); a
        body may take as long as it needs while it keeps coming, but not stall for the
        read timeout; an idle keep-alive connection is closed the keep-alive timeout
        after its last answer, whatever bytes it trickles that start no request.
        A WebSocket keeps itself alive with pings (http/websocket.py).
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
        if transport is None or self._lost:
            return
        limits = self._limits
        unsent = transport.get_write_buffer_size()
        if unsent:
            delivered = self._writer.written - unsent
            if delivered != self._delivered:
                self._delivered = delivered
                self._write_at = now
            elif now - self._write_at >= limits.write_timeout:
                self._reset()  # the client stopped reading what it asked for
                return
        elif self._delivered >= 0:
            self._delivered = -1
        if self._probing and _socket_error(transport):
            transport.abort()  # the client closed, not half-closed: it is gone
            return
        if self._linger is not None or transport.is_closing():
            return  # (a draining close has its own timer)
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

    def _reset(self) -> None:
        """Abort with a TCP reset: output that cannot be delivered is dropped by the kernel
        too, rather than kept while it tries (a plain close would queue a FIN behind it)."""
        assert self._transport is not None
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
            except OSError:
                pass
        self._transport.abort()
