"""The gateway server: a Runtime's entry Worker on HTTP/1.1, uvloop, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl as _ssl
from collections.abc import Callable, Sequence
from typing import Any

import uvloop

from ..cluster.channel import CallServer
from ..cluster.receive import HopReceiver
from ..runtime import Runtime
from . import access_log as _access_log
from .connection import HTTPConnection
from .exchange import AccessLog, HTTPLimits, ServerState
from .stopping import ShutdownDeadline
from .websocket import WebSocketLimits

__all__ = ("Server", "HTTPLimits", "ListenError", "serve", "run", "format_address", "tls_context")


class ListenError(OSError):
    """The server could not listen on the address it was given."""


class Server:
    """Serves Worker ``entry`` of ``runtime`` on the sockets it listens on.

    ``await start(host, port)`` listens; ``await shutdown(timeout)`` stops accepting,
    lets every request already received finish and the pipelines' pending work
    (``ctx.wait_until``) end, up to ``timeout`` seconds, then cancels what is left.
    """

    def __init__(
        self,
        runtime: Runtime,
        entry: str,
        *,
        limits: HTTPLimits | None = None,
        ws_limits: WebSocketLimits | None = None,
        access_log: bool | str = False,
        log_hooks: Sequence[AccessLog] = (),
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        # A wrong binding or an unknown entry fails here, before anything is served.
        self._entry = runtime.entry(entry)
        self._hops = HopReceiver(runtime, entry)
        self.runtime = runtime
        self.entry = entry
        self.limits = limits or HTTPLimits()
        self.ws_limits = ws_limits or WebSocketLimits()
        self.ssl = ssl
        # access_log: True or "text" for the classic line, "json" for JSON lines; log_hooks
        # (metrics) are called for every request as the access log is.
        logs = list(log_hooks)
        if access_log:
            logs.insert(0, _access_log.writer("text" if access_log is True else str(access_log), entry))
        self._log = _access_log.combine(logs)
        self._server: asyncio.Server | None = None
        self._unix: asyncio.Server | None = None  # the unix socket of a process slot (cluster)
        self._calls: CallServer | None = None  # and its call channel
        self._calls_server: asyncio.Server | None = None
        self._state: ServerState | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._force = asyncio.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) of every socket served."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self, host: str = "127.0.0.1", port: int = 8787, *, reuse_port: bool = False,
                    backlog: int = 2048, sock: socket.socket | None = None) -> None:
        """Listen on ``host``:``port``, or on ``sock``, a listening socket given (``--fd``)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            host, port = sock.getsockname()[:2]
        state = self._state = ServerState(
            self._entry, self.limits, ws_limits=self.ws_limits, default_host=_host_header(host, port),
            access_log=self._log, hop=self._hops,
        )
        if self.ssl is not None:
            state.scheme = "https://"
        try:
            if sock is not None:
                self._server = await loop.create_server(
                    lambda: HTTPConnection(state), sock=sock, backlog=backlog, ssl=self.ssl,
                )
            else:
                self._server = await loop.create_server(
                    lambda: HTTPConnection(state), host, port,
                    reuse_address=True, reuse_port=reuse_port or None, backlog=backlog, ssl=self.ssl,
                )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from exc
        if port == 0:
            state.default_host = _host_header(host, self.addresses[0][1])
        self._interval = self.limits.sweep_interval
        self._sweeper = loop.call_later(self._interval, self._sweep)

    async def listen_unix(self, unix_path: str, calls_path: str | None = None) -> None:
        """Also serve on the unix socket ``unix_path`` (after ``start``), and the node's call
        channel on ``calls_path``: the other processes of a node forward their calls to
        this one's Durable Objects there (cluster/channel.py)."""
        state = self._state
        assert state is not None, "start() first"
        loop = asyncio.get_running_loop()
        for where in (unix_path, calls_path):
            if where is not None and os.path.exists(where):
                os.unlink(where)  # left by a process of this slot that was killed
        try:
            self._unix = await loop.create_unix_server(lambda: HTTPConnection(state), unix_path)
            if calls_path is not None:
                self._calls = CallServer(self._hops.trusted)
                self._calls_server = await loop.create_unix_server(self._calls.protocol, calls_path)
        except OSError as exc:
            raise ListenError(exc.errno, f"cannot listen on {unix_path}: {exc.strerror}") from exc

    def _sweep(self) -> None:
        state = self._state
        assert state is not None
        state.refresh_date()
        now = asyncio.get_running_loop().time()
        for connection in list(state.connections):
            connection.check_timeouts(now)
        self._sweeper = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    @property
    def forced(self) -> bool:
        """Whether a second signal cut the shutdown short."""
        return self._force.is_set()

    def force(self) -> None:
        """Cut a running ``shutdown`` short: cancel what is still running now."""
        self._force.set()

    async def shutdown(self, timeout: float = 30.0) -> bool:
        """Drain and stop; returns True when everything ended before the deadline."""
        state = self._state
        server = self._server
        if state is None or server is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state.draining = True
        server.close()  # stop accepting; connections already open are drained
        for extra in (self._unix, self._calls_server):
            if extra is not None:
                extra.close()
        for connection in list(state.connections):
            connection.drain()
        clean = await self._until(lambda: not state.connections, deadline)
        clean = clean and await self._until(
            lambda: self.runtime.live_counts()["pipelines"] == 0, deadline
        )
        if not clean:
            for connection in list(state.connections):
                connection.abort()  # connection_lost cancels its pipeline
            await self._until(lambda: not state.connections, loop.time() + 1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await server.wait_closed()
        if self._calls is not None:
            self._calls.close_all()  # its calls have ended with the pipelines
        for extra in (self._unix, self._calls_server):
            if extra is not None:
                await extra.wait_closed()
        await self.runtime.aclose()
        return clean

    async def _until(self, done: Callable[[], bool], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while not done():
            if self._force.is_set() or loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


async def serve(
    runtime: Runtime,
    entry: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    limits: HTTPLimits | None = None,
    ws_limits: WebSocketLimits | None = None,
    access_log: bool | str = False,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
    on_ready: Callable[[Server], None] | None = None,
    log_hooks: Sequence[AccessLog] = (),
    ssl: _ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
    companions: Sequence[tuple[Server, str, int]] = (),
    unix_path: str | None = None,
    calls_path: str | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; returns an exit code.

    0 when everything ended within ``shutdown_timeout`` (counted from the signal); 1
    when the shutdown had to cut requests or work short, or a second signal cancelled
    what was still running at once. ``companions``: (server, host, port) of servers
    that run alongside (the metrics endpoint), started after this one and stopped
    after it.
    ``unix_path`` and ``calls_path``: the unix sockets of a process slot, for the others
    of its node.
    """
    server = Server(runtime, entry, limits=limits, ws_limits=ws_limits, access_log=access_log,
                    log_hooks=log_hooks, ssl=ssl)
    await server.start(host, port, reuse_port=reuse_port, sock=sock)
    if unix_path is not None:
        await server.listen_unix(unix_path, calls_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            server.force()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    deadline = ShutdownDeadline(shutdown_timeout)  # kept even while a Worker holds the loop
    deadline.watch((signal.SIGTERM, signal.SIGINT))
    try:
        for companion, companion_host, companion_port in companions:
            await companion.start(companion_host, companion_port, reuse_port=reuse_port)
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        clean = await server.shutdown(deadline.left())
        for companion, _, _ in companions:
            await companion.shutdown(1.0)
    finally:
        deadline.release()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0 if clean and not server.forced else 1


def run(runtime: Runtime, entry: str, **options: Any) -> int:
    """``serve`` on a new uvloop event loop; returns the exit code."""
    return uvloop.run(serve(runtime, entry, **options))


def format_address(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def tls_context(certfile: str, keyfile: str | None = None, password: str | None = None) -> _ssl.SSLContext:
    """A server-side TLS context with the certificate chain of ``certfile`` (and its key),
    the stdlib's defaults (TLS 1.2 and later), and ALPN offering ``http/1.1``."""
    context = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile, password)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _host_header(host: str, port: int) -> str:
    # What an HTTP/1.0 request without Host is taken to have asked for.
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

