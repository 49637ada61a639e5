"""Outbound fetch (DESIGN.md 2.4, 2.5, 2.7, 3, 5) against a real aiohttp server, on both cores."""

from __future__ import annotations

import asyncio
import gzip
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

import fastbind
from fastbind import (
    FetchError,
    Limits,
    Request,
    Response,
    Runtime,
    TooManySubrequestsError,
    fetch,
    remote,
)
from fastbind.gate import ConnectionGate, gate_for
from fastbind.http_client import NetworkBody, session_for
from fastbind.runtime import current_runtime

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


# -- the gate on its own ---------------------------------------------------------------


def test_gate_is_fifo_and_cancellation_neither_takes_nor_leaks_a_slot(run) -> None:
    async def main() -> None:
        gate = ConnectionGate(2)
        await gate.acquire()
        await gate.acquire()
        order: list[str] = []

        async def take(name: str) -> None:
            await gate.acquire()
            order.append(name)

        tasks: dict[str, asyncio.Task[None]] = {}
        for name in "abcd":
            tasks[name] = asyncio.create_task(take(name))
            queued = len(tasks)
            await until(lambda: gate.waiting == queued, f"{name} queued")
        tasks["b"].cancel()  # cancelled while queued: leaves the queue
        await asyncio.gather(tasks["b"], return_exceptions=True)
        assert (gate.active, gate.waiting) == (2, 3)

        gate.release()  # handed to "a"
        await tasks["a"]
        gate.release()  # handed to "c", which is cancelled before it runs: passes it to "d"
        tasks["c"].cancel()
        await asyncio.gather(tasks["c"], tasks["d"], return_exceptions=True)
        assert tasks["c"].cancelled() and order == ["a", "d"]
        assert (gate.active, gate.waiting) == (2, 0)

        newcomer = asyncio.create_task(take("late"))
        await until(lambda: gate.waiting == 1, "the newcomer queued")
        gate.release()
        await newcomer
        for _ in range(2):
            gate.release()
        assert (gate.active, gate.waiting) == (0, 0)
        with pytest.raises(RuntimeError):
            gate.release()

    run(main())


def test_one_gate_per_pipeline_gone_with_it(core) -> None:
    from fastbind import gate as gate_module

    first = core.PipelineContext("a", Limits(open_connections=3))
    second = core.PipelineContext("b", Limits())
    assert gate_for(first) is gate_for(first)
    assert gate_for(first) is not gate_for(second)
    assert (gate_for(first).limit, gate_for(second).limit) == (3, 6)
    before = len(gate_module._gates)
    first.close()
    second.close()
    del first, second
    assert len(gate_module._gates) == before - 2


# -- fetch from Workers ----------------------------------------------------------------


def test_fetch_from_a_worker_is_a_subrequest_with_a_streamed_body(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/hello"), headers={"x-trace": "1"})
        assert isinstance(resp.body, NetworkBody) and not resp.body.done
        assert resp.status == 200 and resp.ok
        assert resp.headers.get("x-origin") == "yes"
        assert current_runtime() is rt
        return Response(await resp.text() + " via " + ctx.worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://example.com/"))
            return await resp.text()

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)
    assert run(main()) == "hello via worker"
    (record,) = fetches(reports[0])
    assert (record.caller, record.target, record.depth, record.outcome) == (
        "worker", origin.url("/hello"), 1, "ok"
    )


def test_a_host_name_is_resolved(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(f"http://localhost:{origin.port}/hello")
        return Response(await resp.bytes())

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).text()

    assert run(main()) == "hello"


def test_twenty_fetches_from_three_workers_never_exceed_six_awaiting_headers(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def fetcher(request, env, ctx):
        n = int(request.headers.get("x-n"))
        responses = await asyncio.gather(
            *(fetch(origin.url(f"/held?i={ctx.worker}{i}")) for i in range(n))
        )
        return Response.json([await r.text() for r in responses])

    async def pong(request, env, ctx):
        return Response("pong")

    async def gateway(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        calls = asyncio.gather(
            env.A.fetch("https://a/", headers={"x-n": "7"}),
            env.B.fetch("https://b/", headers={"x-n": "7"}),
            env.C.fetch("https://c/", headers={"x-n": "6"}),
        )
        await until(lambda: origin.inflight == 6 and gate.waiting == 14, "6 held and 14 queued")
        # The gate is full, yet a binding call goes straight through.
        answer = await env.PONG.fetch("https://pong/")
        seen["during_binding"] = (origin.inflight, gate.active, gate.waiting, await answer.text())
        origin.open_gate()
        results = await calls
        seen["after"] = (gate.active, gate.waiting)
        return Response.json([await r.json() for r in results])

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("gateway", gateway, services={"A": "a", "B": "b", "C": "c", "PONG": "pong"})
    for name in ("a", "b", "c"):
        rt.add_worker(name, fetcher)
    rt.add_worker("pong", pong)

    async def main():
        async with rt:
            resp = await rt.dispatch("gateway", Request("https://example.com/"))
            return await resp.json()

    bodies = run(main())
    assert [len(b) for b in bodies] == [7, 7, 6]
    assert sorted(sum(bodies, [])) == sorted(origin.arrivals)
    assert origin.requests == 20
    assert origin.peak == 6
    assert seen["during_binding"] == (6, 6, 14, "pong")
    assert seen["after"] == (0, 0)
    records = fetches(reports[0])
    assert len(records) == 20 and {r.outcome for r in records} == {"ok"}
    assert sorted(r.caller for r in records) == ["a"] * 7 + ["b"] * 7 + ["c"] * 6


def test_queued_fetches_reach_the_network_in_the_order_they_queued(core, run, origin) -> None:
    async def worker(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        tasks = [asyncio.create_task(fetch(origin.url("/held?i=first")))]
        await until(lambda: origin.inflight == 1, "the first fetch held")
        for i in range(5):
            tasks.append(asyncio.create_task(fetch(origin.url(f"/held?i={i}"))))
            await until(lambda: gate.waiting == i + 1, f"fetch {i} queued")
        origin.open_gate()
        return Response.json([await r.text() for r in await asyncio.gather(*tasks)])

    rt = Runtime(limits=Limits(open_connections=1))
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == ["first", "0", "1", "2", "3", "4"]
    assert origin.arrivals == ["first", "0", "1", "2", "3", "4"]
    assert origin.peak == 1


def test_a_fetch_cancelled_while_queued_leaves_the_queue(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        held = [asyncio.create_task(fetch(origin.url(f"/held?i={i}"))) for i in range(6)]
        await until(lambda: origin.inflight == 6, "6 fetches held")
        queued = asyncio.create_task(fetch(origin.url("/held?i=queued")))
        await until(lambda: gate.waiting == 1, "the 7th fetch queued")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        seen["after_cancel"] = (queued.cancelled(), gate.active, gate.waiting)
        origin.open_gate()
        texts = [await r.text() for r in await asyncio.gather(*held)]
        seen["after"] = (gate.active, gate.waiting)
        return Response.json(texts)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == [str(i) for i in range(6)]
    assert seen["after_cancel"] == (True, 6, 0)
    assert seen["after"] == (0, 0)
    assert origin.requests == 6 and "queued" not in origin.arrivals
    outcomes = [r.outcome for r in fetches(reports[0])]
    assert sorted(outcomes) == ["canceled"] + ["ok"] * 6


def test_the_pipeline_ending_cancels_an_in_flight_fetch(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        seen["gate"] = gate_for(ctx.pipeline)
        seen["task"] = asyncio.create_task(fetch(origin.url("/held?i=orphan")))
        await until(lambda: origin.inflight == 1, "the fetch to reach the server")
        return Response("done before the fetch")

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            assert await resp.text() == "done before the fetch"
            # The server sees the connection go away: the fetch did not run on.
            await until(lambda: origin.disconnected == 1, "the server to see the disconnect")

    run(main())
    assert seen["task"].cancelled()
    assert (seen["gate"].active, seen["gate"].waiting) == (0, 0)
    assert [r.outcome for r in fetches(reports[0])] == ["canceled"]
    assert origin.inflight == 0


# -- redirects ---------------------------------------------------------------------------


def test_each_redirect_is_a_subrequest_and_the_21st_raises(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        n = request.headers.get("x-n")
        resp = await fetch(origin.url(f"/redirect/{n}"))
        return Response(await resp.text())

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main(n: int) -> tuple[int, str]:
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/", headers={"x-n": str(n)}))
            return resp.status, await resp.text()

    assert run(main(3)) == (200, "arrived")
    assert [r.target for r in fetches(reports[0])] == [
        origin.url(f"/redirect/{n}") for n in (3, 2, 1, 0)
    ]
    assert run(main(20)) == (200, "arrived")
    assert len(fetches(reports[1])) == 21
    status, _ = run(main(21))
    assert status == 500
    assert isinstance(reports[2].error, TypeError) and str(reports[2].error) == "Too many redirects."
    assert len(fetches(reports[2])) == 21  # the 21st redirect is refused, not fetched


def test_redirects_spend_the_subrequest_budget(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        await fetch(origin.url("/redirect/10"))
        return Response("unreachable")

    rt = Runtime(limits=Limits(subrequests=4), on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return (await rt.dispatch("worker", Request("https://e/"))).status

    assert run(main()) == 500
    assert isinstance(reports[0].error, TooManySubrequestsError)
    assert len(fetches(reports[0])) == 4 and origin.requests == 4


def test_manual_and_error_redirect_modes(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/redirect/2"), redirect="manual")
        seen["manual"] = (resp.status, resp.headers.get("location"))
        await resp.aclose()
        with pytest.raises(FetchError, match=r'redirected \(302 to /redirect/1\) and redirect is "error"'):
            await fetch(origin.url("/redirect/2"), redirect="error")
        with pytest.raises(TypeError, match="redirect must be"):
            await fetch(origin.url("/redirect/2"), redirect="sometimes")
        return Response(None)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return (await rt.dispatch("worker", Request("https://e/"))).status

    assert run(main()) == 200
    assert seen["manual"] == (302, "/redirect/1")
    assert len(fetches(reports[0])) == 2 and origin.requests == 2


def test_303_turns_a_post_into_a_get_without_its_body(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(
            origin.url("/see-other"), method="POST", body=b"form",
            headers={"content-type": "application/x-www-form-urlencoded", "authorization": "t"},
        )
        return Response(await resp.bytes())

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    echoed = run(main())
    assert (echoed["method"], echoed["body"]) == ("GET", "")
    assert "content-type" not in echoed["headers"]
    assert echoed["headers"]["authorization"] == "t"  # same origin: kept


# -- bodies ------------------------------------------------------------------------------


def test_the_response_body_streams_from_the_network(core, run, origin) -> None:
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/stream"))
        chunks = resp.body.__aiter__()
        seen["first"] = await chunks.__anext__()
        seen["server_done_after_first"] = origin.stream_finished
        origin.finish_stream()
        seen["rest"] = b"".join([chunk async for chunk in chunks])
        seen["body_done"] = resp.body.done
        # A fetched Response can be returned as is: the caller streams it on.
        return await fetch(origin.url("/hello"))

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            return await resp.text()

    assert run(main()) == "hello"
    assert seen == {
        "first": b"first;", "server_done_after_first": False, "rest": b"second", "body_done": True,
    }


def test_aclose_drops_the_body_and_closes_its_connection(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/stream"))
        await resp.aclose()
        assert resp.body.done and resp.body_used
        await until(lambda: origin.disconnected == 1, "the server to see the connection closed")
        return Response("closed")

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).text()

    assert run(main()) == "closed"
    assert not origin.stream_finished


@pytest.mark.parametrize("kind", ["stream", "bytes", "memoryview", "str", "request"])
def test_request_bodies(core, run, origin, kind: str) -> None:
    async def chunks():
        for part in (b"one,", "two,", memoryview(b"three")):
            yield part
            await asyncio.sleep(0)

    async def worker(request, env, ctx):
        url = origin.url("/echo")
        if kind == "stream":
            resp = await fetch(url, method="POST", body=chunks())
        elif kind == "bytes":
            resp = await fetch(url, method="PUT", body=b"one,two,three")
        elif kind == "memoryview":
            resp = await fetch(url, method="POST", body=memoryview(b"xxone,two,three")[2:])
        elif kind == "str":
            resp = await fetch(url, method="POST", body="one,two,three")
        else:
            # fetch(request) sends a Request as it is, and uses its body up.
            outgoing = Request(url, method="POST", headers=request.headers, body=request.body)
            resp = await fetch(outgoing)
            assert outgoing.body_used
        return Response(await resp.bytes(), headers={"content-type": "application/json"})

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            incoming = Request("https://e/", method="POST", body=chunks(), headers={"x-in": "1", "host": "e"})
            return await (await rt.dispatch("worker", incoming)).json()

    echoed = run(main())
    assert echoed["body"] == "one,two,three"
    headers = echoed["headers"]
    if kind in ("stream", "request"):
        assert headers.get("transfer-encoding") == "chunked"
    else:
        assert headers.get("content-length") == "13"
    if kind == "str":
        assert headers["content-type"] == "text/plain;charset=UTF-8"
    else:
        assert "content-type" not in headers  # aiohttp would add one; fetch does not
    if kind == "request":
        assert headers["x-in"] == "1" and headers["host"] == f"127.0.0.1:{origin.port}"


def test_decoded_bodies_lose_their_encoding_headers_and_empty_ones_are_none(core, run, origin) -> None:
    async def worker(request, env, ctx):
        zipped = await fetch(origin.url("/gzip"))
        no_content = await fetch(origin.url("/status/204"))
        head = await fetch(origin.url("/hello"), method="HEAD")
        return Response.json({
            "text": await zipped.text(),
            "encoding": zipped.headers.get("content-encoding"),
            "length": zipped.headers.get("content-length"),
            "204": [no_content.status, no_content.body],
            "head": [head.status, head.body, head.headers.get("content-length")],
        })

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == {
        "text": "unzipped", "encoding": None, "length": None,
        "204": [204, None], "head": [200, None, "5"],
    }


# -- errors ------------------------------------------------------------------------------


def test_network_errors_name_the_url(core, run, origin) -> None:
    reports, hook = collect()
    refused = f"http://127.0.0.1:{free_port()}/nobody-home"

    async def worker(request, env, ctx):
        with pytest.raises(FetchError) as refused_info:
            await fetch(refused)
        with pytest.raises(FetchError) as slow_info:
            await fetch(origin.url("/slow"), timeout=0.2)
        with pytest.raises(FetchError) as default_info:
            await fetch(origin.url("/slow"))  # the Runtime's fetch_timeout
        with pytest.raises(FetchError) as dns_info:
            await fetch("http://no-such-host.invalid/x", timeout=5)
        return Response.json([str(e.value) for e in (refused_info, slow_info, default_info, dns_info)])

    rt = Runtime(on_pipeline_end=hook, fetch_timeout=0.3)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            await until(lambda: origin.disconnected == 2, "the timed-out fetches to hang up")
            return await resp.json()

    refused_msg, slow_msg, default_msg, dns_msg = run(main())
    assert refused_msg.startswith(f"Fetch to {refused} failed: could not connect to 127.0.0.1:")
    assert slow_msg == f"Fetch to {origin.url('/slow')} failed: timed out after 0.2 s waiting for the server to send data."
    assert "timed out after 0.3 s" in default_msg
    assert dns_msg.startswith("Fetch to http://no-such-host.invalid/x failed:")
    assert [r.outcome for r in fetches(reports[0])] == ["error"] * 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", 'Fetch API cannot load: unsupported scheme "ftp"'),
        ("file:///etc/passwd", 'Fetch API cannot load: unsupported scheme "file"'),
        ("/relative", "Invalid URL: /relative"),
        ("http://[::1/", "Invalid URL: http://[::1/"),
        ("http://host:99999/", "Invalid URL: http://host:99999/"),
        ("http://exa mple.com/", "Invalid URL: http://exa mple.com/"),
        ("not a url", "Invalid URL: not a url"),
        ("http:no-host", "Invalid URL: http:no-host"),
    ],
)
def test_bad_urls_raise_type_error(core, run, url: str, message: str) -> None:
    async def worker(request, env, ctx):
        messages = []
        for init in ({}, {"headers": {"x-a": "1"}}):  # with init, a Request is built first
            with pytest.raises(TypeError) as info:
                await fetch(url, **init)
            messages.append(str(info.value))
        return Response.json(messages)

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == [message, message]


def test_timeouts_must_be_positive_numbers() -> None:
    bad_values: list[Any] = [0, -1, "5", True, float("inf")]
    for bad in bad_values:
        with pytest.raises(ValueError, match="positive number of seconds"):
            Runtime(fetch_timeout=bad)


# -- sessions and clients ----------------------------------------------------------------


def test_one_session_per_runtime_closed_by_aclose(core, run, origin) -> None:
    sessions = []

    async def worker(request, env, ctx):
        await (await fetch(origin.url("/hello"))).aclose()
        sessions.append(session_for(current_runtime()))
        return Response(None)

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            for _ in range(3):
                await rt.dispatch("worker", Request("https://e/"))
            assert not sessions[0].closed

    run(main())
    assert len(set(map(id, sessions))) == 1
    assert sessions[0].closed


def test_outside_a_worker_fetch_is_a_plain_client(run, origin) -> None:
    async def main():
        resp = await fetch(origin.url("/hello"))
        body = resp.body
        text = await resp.text()
        assert body.done
        return resp.status, text, current_runtime()

    assert run(main()) == (200, "hello", None)


# -- a pipeline across processes -----------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[int]:
    """A second Python process serving a Runtime; yields its port."""
    script = Path(__file__).with_name("fetch_peer.py")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        if not ready:
            raise RuntimeError("the peer process did not start")
        yield int(proc.stdout.readline())
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_remote_binding_reaches_a_worker_in_another_process(core, run, peer) -> None:
    reports, hook = collect()

    async def gateway(request, env, ctx):
        resp = await env.USERS.fetch(
            "https://users.internal/names?id=7#frag", method="POST", body=b"hi",
            headers={"x-from": "gateway"},
        )
        return Response(await resp.bytes(), status=resp.status)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("gateway", gateway, services={"USERS": remote(f"http://127.0.0.1:{peer}/v1/")})

    async def main():
        async with rt:
            resp = await rt.dispatch("gateway", Request("https://example.com/"))
            return resp.status, await resp.json()

    status, answer = run(main())
    assert status == 200
    assert answer == {
        "pid": answer["pid"], "url": f"http://127.0.0.1:{peer}/v1/names?id=7", "method": "POST",
        "body": "hi", "from": "gateway", "name": "ada", "depth": 1,
    }
    assert answer["pid"] != os.getpid()
    (record,) = reports[0].subrequests
    assert (record.kind, record.caller, record.target, record.outcome) == (
        "fetch", "gateway", f"http://127.0.0.1:{peer}/v1/names?id=7", "ok"
    )


def test_a_remote_binding_is_gated_like_any_fetch(core, run, origin) -> None:
    seen: dict[str, Any] = {}

    async def gateway(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        tasks = [asyncio.create_task(env.ORIGIN.fetch(f"https://any/held?i={i}")) for i in range(3)]
        await until(lambda: origin.inflight == 2 and gate.waiting == 1, "2 held and 1 queued")
        seen["state"] = (gate.active, gate.waiting)
        origin.open_gate()
        return Response.json([await r.text() for r in await asyncio.gather(*tasks)])

    rt = Runtime(limits=Limits(open_connections=2))
    rt.add_worker("gateway", gateway, services={"ORIGIN": remote(origin.url(""))})

    async def main():
        async with rt:
            return await (await rt.dispatch("gateway", Request("https://e/"))).json()

    assert run(main()) == ["0", "1", "2"]
    assert seen["state"] == (2, 1) and origin.peak == 2


def test_a_remote_binding_outside_a_worker_raises(core, run) -> None:
    from fastbind.remote import RemoteFetcher

    binding = RemoteFetcher(Runtime(), "USERS", "http://127.0.0.1:9/")
    assert binding.url_for("https://x/a/b?c=d#e") == "http://127.0.0.1:9/a/b?c=d"
    with pytest.raises(fastbind.FastbindError, match=r"env.USERS.fetch\(\) was called outside"):
        run(binding.fetch("https://x/"))


def test_a_remote_binding_needs_an_http_url() -> None:
    async def gateway(request, env, ctx):
        return Response(None)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"FILES": remote("ftp://files.example/")})
    with pytest.raises(fastbind.ConfigError, match='Remote binding "FILES" needs an http'):
        rt.validate()
