"""ASGI both ways: serve a Runtime under any ASGI server, and mount any ASGI app as a Worker.

``app(runtime, entry)`` is an ASGI 3 application: uvicorn, hypercorn or granian serve the
Runtime's Worker ``entry`` with it, request and response bodies streamed both ways, a
client that goes away cancelling the pipeline (docs/design.md, "Lifecycle"), and lifespan events
accepted (startup resolves the bindings, shutdown closes the Runtime)::

    uvicorn --factory myapp:make_app        # def make_app(): return fastbind.asgi.app(rt, "gateway")

``worker(asgi_app)`` goes the other way: any ASGI application (Starlette, FastAPI, a
raw one) becomes a Worker that can be added to a Runtime, bound and called in process
through a binding, with no socket in between::

    rt.add_worker("api", fastbind.asgi.worker(fastapi_app))
    rt.add_worker("gateway", gateway, services={"API": "api"})
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .embed import raw_request, raw_response
from .http import asgi_websocket
from .errors import BodyReadError, ConfigError
from .request import Request
from .response import Response
from .runtime import Runtime, current_runtime

__all__ = ("app", "worker", "RuntimeApp", "ASGIApp", "Scope", "Receive", "Send")

logger = logging.getLogger("fastbind.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WorkerFunction = Callable[[Request, Any, Any], Awaitable[Response]]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HTTP_SCHEMES = {"ws": "http", "wss": "https"}
_NO_BODY_STATUSES = frozenset((204, 304))


def app(runtime: Runtime, entry: str) -> RuntimeApp:
    """An ASGI 3 application that serves every HTTP request with Worker ``entry``."""
    return RuntimeApp(runtime, entry)


class RuntimeApp:
    """ASGI 3 application over ``Runtime.dispatch``; see the module docstring."""

    def __init__(self, runtime: Runtime, entry: str) -> None:
        if not isinstance(runtime, Runtime):
            raise TypeError(f"fastbind.asgi.app needs a fastbind.Runtime, not {type(runtime).__name__}")
        self.runtime = runtime
        self.entry = entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            headers = list(scope["headers"])
            if not any(name == b"upgrade" for name, _ in headers):
                headers += [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
            request = raw_request(b"GET", request_url(scope), headers, None)
            await asgi_websocket.serve(self.runtime.entry(self.entry), request, scope, receive, send)
        else:
            raise ValueError(f"fastbind.asgi.app serves HTTP, not {kind!r} connections")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        guard = _DisconnectGuard(task, receive)
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body: Any = message.get("body", b"")
        if message.get("more_body", False):
            body = _ReceivedBody(body, guard)
        else:
            guard.watch()
        request = raw_request(scope["method"], request_url(scope), scope["headers"], body)
        try:
            response = await self.runtime.dispatch(self.entry, request)
            await _send_response(send, response, guard)
        except asyncio.CancelledError:
            if guard.disconnected and task.uncancel() == 0:
                return  # only the client went away: its pipeline has been cancelled
            raise
        finally:
            guard.stop()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.runtime.validate()  # a wrong binding fails the startup, not a request
                    if self.entry not in self.runtime.workers:
                        raise ConfigError(f'No Worker named "{self.entry}" is defined.')
                except ConfigError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def request_url(scope: Scope) -> str:
    """The absolute URL of an ASGI request: scheme, Host (or server), path, query (a
    WebSocket's ws/wss scheme is written http/https, as the upgrade request had it)."""
    given: str = scope.get("scheme") or "http"
    scheme = _HTTP_SCHEMES.get(given, given)
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        server = scope.get("server")
        if server is None:
            host = "localhost"
        else:
            name, port = server
            host = name if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{name}:{port}"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope.get("root_path", "") + scope["path"]
    query = scope.get("query_string", b"")
    return f"{scheme}://{host}{path}?{query.decode('latin-1')}" if query else f"{scheme}://{host}{path}"


class _DisconnectGuard:
    """Cancels the request's task when the client goes away, once the body has been read.

    While the body is being read, ``receive()`` belongs to the body; after that a task
    waits on it for ``http.disconnect``.
    """

    __slots__ = ("task", "receive", "watcher", "disconnected", "responded")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.task = task
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None
        self.disconnected = False
        self.responded = False

    def watch(self) -> None:
        # An empty context: the watcher is the server's, not part of any pipeline.
        self.watcher = asyncio.get_running_loop().create_task(self._watch(), context=contextvars.Context())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.responded:  # after the response, servers report the end this way too
                    self.gone()
                return

    def gone(self) -> None:
        if not self.disconnected:
            self.disconnected = True
            self.task.cancel()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


class _ReceivedBody:
    """A request body that arrives in several ASGI messages, as an async iterator."""

    __slots__ = ("_first", "_guard", "_done")

    def __init__(self, first: bytes, guard: _DisconnectGuard) -> None:
        self._first = first
        self._guard = guard
        self._done = False

    def __aiter__(self) -> _ReceivedBody:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            chunk, self._first = self._first, b""
            return chunk
        while not self._done:
            message = await self._guard.receive()
            if message["type"] == "http.disconnect":
                self._done = True
                self._guard.gone()
                raise BodyReadError("The client went away before sending the whole body")
            if not message.get("more_body", False):
                self._done = True
                self._guard.watch()
            body: bytes = message.get("body", b"")
            if body:
                return body
        raise StopAsyncIteration


async def _send_response(send: Send, response: Response, guard: _DisconnectGuard) -> None:
    status, headers, body = raw_response(response)
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = body if type(body) is bytes else bytes(body)
        if status not in _NO_BODY_STATUSES and not any(n == b"content-length" for n, _ in headers):
            headers.append((b"content-length", b"%d" % len(data)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        guard.responded = True
        await send({"type": "http.response.body", "body": data})
        return
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        async for chunk in body:
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        guard.responded = True
        await send({"type": "http.response.body", "body": b""})
    finally:
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()  # ends the pipeline also when the client went away mid-stream


# -- any ASGI application as a Worker ---------------------------------------------------------


def worker(asgi_app: ASGIApp, *, lifespan: bool | None = None) -> WorkerFunction:
    """A Worker (``async (request, env, ctx)``) that serves each request with ``asgi_app``.

    The app runs in a task of the invocation, so it is accounted to the pipeline and
    cancelled with it; the Worker returns as soon as the app has sent its response head
    and first body part (a response of several parts streams on). Work the app does
    after its response (e.g. background tasks) continues as ``ctx.wait_until`` work.

    ``lifespan``: run the app's lifespan startup before its first request and its
    shutdown when the Runtime is closed; None (the default) tries and goes on without
    when the app does not support it, True requires it, False skips it.
    """
    mounted = _MountedApp(asgi_app, lifespan)

    async def fetch(request: Request, env: Any, ctx: Any) -> Response:
        return await mounted.fetch(request, ctx)

    fetch.__name__ = fetch.__qualname__ = f"asgi_worker({getattr(asgi_app, '__name__', type(asgi_app).__name__)})"
    fetch.__doc__ = f"The ASGI application {asgi_app!r} as a fastbind Worker."
    setattr(fetch, "asgi_app", asgi_app)
    return fetch


class _MountedApp:
    def __init__(self, asgi_app: ASGIApp, lifespan: bool | None) -> None:
        self.app = asgi_app
        self.lifespan = lifespan
        self.state: dict[str, Any] | None = None
        self._startup: asyncio.Future[None] | None = None
        self._shutdown: Callable[[], Awaitable[None]] | None = None

    async def fetch(self, request: Request, ctx: Any) -> Response:
        if self.lifespan is not False:
            await self._started()
        upgrade = request.headers.get("upgrade")
        if upgrade is not None and upgrade.strip().lower() == "websocket":
            return await asgi_websocket.mounted(self.app, request, self.state)
        exchange = _Exchange(request)
        scope = _scope(request, self.state)
        task = asyncio.ensure_future(self.app(scope, exchange.receive, exchange.send))
        task.add_done_callback(exchange.app_done)
        try:
            response = await exchange.response
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            ctx.wait_until(task)  # e.g. background tasks after the response
        return response

    async def _started(self) -> None:
        startup = self._startup
        loop = asyncio.get_running_loop()
        if startup is None or startup.get_loop() is not loop:
            startup = self._startup = loop.create_future()
            # Outside any pipeline: the app's lifespan outlives every request.
            lifespan = self._run_lifespan(startup, current_runtime())
            loop.create_task(lifespan, context=contextvars.Context())
        await asyncio.shield(startup)

    async def _run_lifespan(self, startup: asyncio.Future[None], runtime: Runtime | None) -> None:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        stopped = asyncio.get_running_loop().create_future()
        self.state = {}
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                        "state": self.state}

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and not startup.done():
                startup.set_result(None)
            elif kind == "lifespan.startup.failed" and not startup.done():
                startup.set_exception(RuntimeError(f"ASGI lifespan startup failed: {message.get('message', '')}"))
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not stopped.done():
                stopped.set_result(None)

        async def shutdown() -> None:
            await inbox.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(asyncio.shield(stopped), 30)

        await inbox.put({"type": "lifespan.startup"})
        try:
            if runtime is not None:
                runtime.add_closer(shutdown)
            await self.app(scope, inbox.get, send)
        except Exception as exc:
            if not startup.done():
                if self.lifespan:
                    startup.set_exception(RuntimeError(f"ASGI lifespan is not supported by the app: {exc!r}"))
                else:
                    self.state = None
                    startup.set_result(None)  # "auto": the app has no lifespan, go on without
            else:
                logger.exception("ASGI lifespan of %r failed", self.app)
        finally:
            if not startup.done():
                startup.set_result(None)
            if not stopped.done():
                stopped.set_result(None)


def _scope(request: Request, state: dict[str, Any] | None) -> Scope:
    url = urlsplit(request.url)
    scheme = url.scheme
    raw_path = url.path or "/"
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1", "replace"),
        "query_string": url.query.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(n.encode("latin-1"), _latin1(v)) for n, v in request.headers],
        "client": None,
        "server": (url.hostname or "localhost", url.port or _DEFAULT_PORTS.get(scheme, 80)),
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


def _latin1(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


class _Exchange:
    """The receive and send of one ASGI request, turned into a Request in and a Response out."""

    def __init__(self, request: Request) -> None:
        self._body = request.body
        request.body_used = request.body is not None
        self._body_sent = False
        self._loop = asyncio.get_running_loop()
        self.response: asyncio.Future[Response] = self._loop.create_future()
        self._finished = self._loop.create_future()  # the response is complete or abandoned
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._stream: _SentBody | None = None

    async def receive(self) -> Message:
        if not self._body_sent:
            body = self._body
            if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
                self._body_sent = True
                data = body.encode() if isinstance(body, str) else bytes(body or b"")
                return {"type": "http.request", "body": data, "more_body": False}
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                self._body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except BodyReadError:
                self._body_sent = True
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": bytes(chunk), "more_body": True}
        await asyncio.shield(self._finished)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._status:
                raise RuntimeError("http.response.start was sent twice")
            self._status = int(message["status"])
            self._headers = [
                (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                for n, v in message.get("headers", ())
            ]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"an ASGI app behind a Worker cannot send {kind!r}")
        if not self._status:
            raise RuntimeError("http.response.body was sent before http.response.start")
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        stream = self._stream
        if stream is None:
            if not self.response.done():
                if not more:
                    self._respond(chunk or None)
                    self._finish()
                    return
                stream = self._stream = _SentBody(self._finish)
                self._respond(stream)
            else:
                return  # the response was abandoned
        await stream.put(chunk, more)

    def _respond(self, body: Any) -> None:
        status = self._status
        if status in _NO_BODY_STATUSES:
            body = None
        self.response.set_result(Response(body, status=status, headers=self._headers))

    def _finish(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    def app_done(self, task: asyncio.Future[None]) -> None:
        self._finish()
        if self._stream is not None:
            self._stream.close_input(task)
        if self.response.done():
            return
        if task.cancelled():
            self.response.cancel()
        elif task.exception() is not None:
            self.response.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self.response.set_exception(RuntimeError("the ASGI app returned without sending a response"))


class _SentBody:
    """The body an ASGI app sends in several messages, read by the Worker's caller."""

    def __init__(self, on_end: Callable[[], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._on_end = on_end
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    async def put(self, chunk: bytes, more: bool) -> None:
        if self._closed:
            return  # the reader went away; the app learns it from receive()
        if chunk:
            self._chunks.append(chunk)
        if not more:
            self._ended = True
            self._on_end()
        _wake(self._readable)
        # Back-pressure: the app waits while a chunk is still unread.
        while self._chunks and not self._closed:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable

    def close_input(self, task: asyncio.Future[None]) -> None:
        if not self._ended:
            self._ended = True
            if not task.cancelled() and task.exception() is not None:
                self._error = task.exception()
            elif not task.cancelled():
                self._error = RuntimeError("the ASGI app ended its response without the last body part")
        _wake(self._readable)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                _wake(self._writable)
                return chunk
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable

    async def aclose(self) -> None:
        self._closed = True
        self._chunks.clear()
        self._on_end()
        _wake(self._writable)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
