"""A real HTTP origin for the outbound fetch tests: aiohttp.web on 127.0.0.1 in its own thread."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

__all__ = ("WAIT_S", "Origin", "collect", "fetches", "free_port", "origin", "origin_server", "until")

WAIT_S = 10.0  # bound of every wait for the other side; never reached when things work


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after WAIT_S seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Origin:
    """A real aiohttp.web server on 127.0.0.1, on its own loop in its own thread.


    ``/held`` counts the requests it has received but not yet answered (``inflight``,
    ``peak``) and holds each until the test opens the gate, then a short while more.
    """


    def __init__(self) -> None:
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="origin", daemon=True)
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None


    # -- control, from the test's thread ---------------------------------------------


    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(WAIT_S):
            raise RuntimeError("the origin server did not start")


    def stop(self) -> None:
        assert self.loop is not None and self._stopped is not None
        self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(WAIT_S)


    def reset(self, *, hold: bool = True) -> None:
        self._call(self._reset, hold)


    def open_gate(self) -> None:
        self._call(self._held_open.set)


    def finish_stream(self) -> None:
        self._call(self._stream_go.set)


    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self.loop is not None
        done = threading.Event()


        def run() -> None:
            fn(*args)
            done.set()


        self.loop.call_soon_threadsafe(run)
        if not done.wait(WAIT_S):
            raise RuntimeError("the origin server loop is stuck")


    # -- the server, on its own loop -------------------------------------------------


    def _reset(self, hold: bool) -> None:
        self.inflight = 0
        self.peak = 0
        self.requests = 0
        self.arrivals: list[str] = []
        self.disconnected = 0
        self.stream_finished = False
        self._held_open = asyncio.Event()
        self._stream_go = asyncio.Event()
        if not hold:
            self._held_open.set()


    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        loop.run_until_complete(self._main())
        loop.close()


    async def _main(self) -> None:
        self._reset(hold=True)
        self._stopped = asyncio.Event()
        app = web.Application()
        for path, handler in [
            ("/hello", self.hello),
            ("/held", self.held),
            ("/redirect/{n}", self.redirect),
            ("/see-other", self.see_other),
            ("/echo", self.echo),
            ("/stream", self.stream),
            ("/slow", self.slow),
            ("/gzip", self.gzipped),
            ("/status/{code}", self.status),
        ]:
            app.router.add_route("*", path, handler)
        # A client that goes away cancels its handler: that is how we see a connection closed.
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stopped.wait()
        await runner.cleanup()


    async def hello(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text="hello", headers={"x-origin": "yes"})


    async def held(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.arrivals.append(request.query.get("i", ""))
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.wait_for(self._held_open.wait(), WAIT_S)
            await asyncio.sleep(0.005)  # overlap with the next ones in line
        except asyncio.CancelledError:
            self.disconnected += 1
            raise
        finally:
            self.inflight -= 1
        return web.Response(text=request.query.get("i", "held"))


    async def redirect(self, request: web.Request) -> web.Response:
        self.requests += 1
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="arrived")
        # Relative, as many servers send it: the client resolves it.
        return web.Response(status=302, headers={"Location": f"/redirect/{n - 1}"})


    async def see_other(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(status=303, headers={"Location": "/echo"})


    async def echo(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "body": body.decode(),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        })


    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"content-type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first;")
        try:
            await asyncio.wait_for(self._stream_go.wait(), WAIT_S)
        except asyncio.CancelledError:
            self.disconnected += 1
            raise
        await response.write(b"second")
        await response.write_eof()
        self.stream_finished = True
        return response


    async def slow(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            self.disconnected += 1
            raise
        return web.Response(text="late")


    async def gzipped(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(
            body=gzip.compress(b"unzipped"),
            headers={"content-encoding": "gzip", "content-type": "text/plain"},
        )


    async def status(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=int(request.match_info["code"]))


@pytest.fixture(scope="module")
def origin_server() -> Iterator[Origin]:
    server = Origin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def origin(origin_server: Origin) -> Origin:
    origin_server.reset()
    return origin_server


def collect() -> tuple[list[Any], Callable[[Any], None]]:
    reports: list[Any] = []
    return reports, reports.append


def fetches(report: Any) -> list[Any]:
    return [r for r in report.subrequests if r.kind == "fetch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
