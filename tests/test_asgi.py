"""The ASGI bridge both ways (fastbind.asgi), on both cores, and under uvicorn when it is installed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fastbind import ConfigError, Request, Response, Runtime
from fastbind.asgi import app, request_url, worker

Message = dict[str, Any]


class FakeServer:
    """Drives an ASGI app as a server would: queued receive() messages, recorded send()."""

    def __init__(self, messages: list[Message]) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        for message in messages:
            self.inbox.put_nowait(message)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def http_scope(path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
               query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": headers if headers is not None else [(b"host", b"shop.test")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }


# -- a Runtime served as an ASGI app -------------------------------------------------------------


async def echo(request: Request, env: Any, ctx: Any) -> Response:
    if request.method == "POST":
        return Response(request.body, headers={"x-kind": type(request.body).__name__})
    leaf = await env.LEAF.fetch(request.url)
    return Response.json({"url": request.url, "leaf": await leaf.text()})


async def leaf(request: Request, env: Any, ctx: Any) -> Response:
    return Response("leaf")


def runtime() -> Runtime:
    rt = Runtime()
    rt.add_worker("gateway", echo, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    return rt


def test_request_url() -> None:
    assert request_url(http_scope("/a b", query=b"x=1")) == "http://shop.test/a b?x=1"
    scope = http_scope("/p", headers=[])
    assert request_url(scope) == "http://127.0.0.1:8000/p"
    scope.update(scheme="https", server=("example.com", 443), raw_path=b"/p%20q")
    assert request_url(scope) == "https://example.com/p%20q"


def test_app_serves_a_request_through_a_binding(core: Any, run: Any) -> None:
    server = FakeServer([{"type": "http.request", "body": b"", "more_body": False}])
    run(app(runtime(), "gateway")(http_scope("/items", query=b"page=2"), server.receive, server.send))
    start = server.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-length", b"%d" % len(server.body())) in start["headers"]
    assert json.loads(server.body()) == {"url": "http://shop.test/items?page=2", "leaf": "leaf"}


def test_app_streams_a_request_body_in_and_the_response_out(core: Any, run: Any) -> None:
    server = FakeServer([
        {"type": "http.request", "body": b"one ", "more_body": True},
        {"type": "http.request", "body": b"two ", "more_body": True},
        {"type": "http.request", "body": b"three", "more_body": False},
    ])
    run(app(runtime(), "gateway")(http_scope("/", "POST"), server.receive, server.send))
    assert server.sent[0]["status"] == 200
    assert (b"x-kind", b"_ReceivedBody") in server.sent[0]["headers"]
    bodies = [m for m in server.sent[1:]]
    assert [m.get("more_body", False) for m in bodies] == [True, True, True, False]
    assert server.body() == b"one two three"


def test_app_single_message_body_is_handed_over_as_bytes(core: Any, run: Any) -> None:
    server = FakeServer([{"type": "http.request", "body": b"whole", "more_body": False}])
    run(app(runtime(), "gateway")(http_scope("/", "POST"), server.receive, server.send))
    assert (b"x-kind", b"bytes") in server.sent[0]["headers"] and server.body() == b"whole"


def test_a_disconnect_cancels_the_pipeline(core: Any, run: Any) -> None:
    seen: list[str] = []

    async def slow(request: Request, env: Any, ctx: Any) -> Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return Response("late")

    rt = Runtime()
    rt.add_worker("slow", slow)

    async def go() -> None:
        server = FakeServer([{"type": "http.request", "body": b"", "more_body": False}])
        call = asyncio.ensure_future(app(rt, "slow")(http_scope(), server.receive, server.send))
        await asyncio.sleep(0.05)
        server.inbox.put_nowait({"type": "http.disconnect"})
        await asyncio.wait_for(call, 5)  # returns normally: the client is gone, not the server
        assert server.sent == []

    run(go())
    assert seen == ["cancelled"]


def test_lifespan(core: Any, run: Any) -> None:
    async def go(rt: Runtime, entry: str) -> list[Message]:
        server = FakeServer([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        await app(rt, entry)({"type": "lifespan", "asgi": {"version": "3.0"}}, server.receive, server.send)
        return server.sent

    assert run(go(runtime(), "gateway")) == [
        {"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"},
    ]
    broken = Runtime()
    broken.add_worker("gateway", echo, services={"LEAF": "missing"})
    sent = run(go(broken, "gateway"))
    assert sent == [{
        "type": "lifespan.startup.failed",
        "message": 'Worker "gateway" binding "LEAF" refers to a service "missing", but no such service is defined.',
    }]
    assert run(go(runtime(), "nope"))[0]["message"] == 'No Worker named "nope" is defined.'


# -- an ASGI app as a Worker ---------------------------------------------------------------------


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A small ASGI app, as Starlette or FastAPI would be: echoes what it received."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                raw_asgi.shut_down = True  # type: ignore[attr-defined]
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if scope["path"] == "/fail":
        raise LookupError("no such thing")
    payload = {
        "method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(), "server": list(scope["server"]),
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "body": body.decode(), "state": scope.get("state", {}),
    }
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def mounted_runtime(asgi: Any = raw_asgi, **options: Any) -> Runtime:
    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        response: Response = await env.API.fetch(request)
        return response

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"API": "api"})
    rt.add_worker("api", worker(asgi, **options))
    return rt


def test_worker_serves_an_asgi_app_through_a_binding(core: Any, run: Any) -> None:
    rt = mounted_runtime()

    async def go() -> tuple[int, str | None, Any]:
        request = Request("https://api.test:8443/items/caf%C3%A9?x=1", method="PUT",
                          headers={"x-a": "1"}, body=b"payload")
        response = await rt.dispatch("gateway", request)
        result = response.status, response.headers.get("content-type"), await response.json()
        await rt.aclose()
        return result

    status, content_type, seen = run(go())
    assert (status, content_type) == (201, "application/json")
    assert seen == {
        "method": "PUT", "path": "/items/café", "raw_path": "/items/caf%C3%A9", "query": "x=1",
        "server": ["api.test", 8443], "headers": [["x-a", "1"]], "body": "payload",
        "state": {"db": "connected"},  # lifespan startup ran before the first request
    }
    assert getattr(raw_asgi, "shut_down", False)  # and its shutdown when the Runtime closed


def test_worker_streams_both_ways(core: Any, run: Any) -> None:
    rt = mounted_runtime(lifespan=False)

    async def parts() -> AsyncIterator[bytes]:
        yield b"x" * 10
        yield b"y" * 5

    async def go() -> tuple[list[bytes], Any]:
        response = await rt.dispatch("gateway", Request("http://api.test/stream"))
        streamed = [chunk async for chunk in response.body]
        echoed = await rt.dispatch("gateway", Request("http://api.test/echo", method="POST", body=parts()))
        return streamed, await echoed.json()

    streamed, echoed = run(go())
    assert streamed == [b"a", b"b", b"c"]
    assert echoed["body"] == "x" * 10 + "y" * 5 and echoed["state"] == {}


def test_an_asgi_app_error_propagates_to_the_caller(core: Any, run: Any) -> None:
    rt = Runtime()
    seen: list[str] = []

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        try:
            await env.API.fetch("http://api.test/fail")
        except LookupError as exc:
            seen.append(str(exc))
        return Response("handled")

    rt.add_worker("gateway", gateway, services={"API": "api"})
    rt.add_worker("api", worker(raw_asgi, lifespan=False))

    async def go() -> str:
        return await (await rt.dispatch("gateway", Request("http://x/"))).text()

    assert run(go()) == "handled" and seen == ["no such thing"]


def test_work_after_the_response_runs_on_as_wait_until(core: Any, run: Any) -> None:
    done: list[str] = []

    async def background(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("no lifespan here")  # "auto" lifespan goes on without it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"queued"})
        await asyncio.sleep(0.05)  # a background task, as Starlette runs them
        done.append("background")

    rt = mounted_runtime(background)

    async def go() -> str:
        text = await (await rt.dispatch("gateway", Request("http://api.test/"))).text()
        for _ in range(200):
            if done:
                break
            await asyncio.sleep(0.01)
        return text

    assert run(go()) == "queued" and done == ["background"]


def test_worker_requires_lifespan_when_asked(core: Any, run: Any) -> None:
    async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("http only")

    rt = mounted_runtime(no_lifespan, lifespan=True)

    async def go() -> int:
        return (await rt.dispatch("gateway", Request("http://api.test/"))).status

    assert run(go()) == 500  # the startup failure is the Worker's uncaught error


# -- both ways under a real ASGI server ------------------------------------------------------------


def test_under_uvicorn(core: Any, run: Any) -> None:
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")

    async def go() -> tuple[Any, bytes, list[bytes]]:
        rt = mounted_runtime(lifespan=False)
        config = uvicorn.Config(app(rt, "gateway"), host="127.0.0.1", port=0, lifespan="on",
                                log_level="warning", loop="none")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        try:
            for _ in range(500):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            assert server.started
            port = server.servers[0].sockets[0].getsockname()[1]
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://127.0.0.1:{port}/anything?q=1", data=b"hi") as resp:
                    assert resp.status == 201
                    echoed = await resp.json()
                async with session.get(f"http://127.0.0.1:{port}/stream") as resp:
                    streamed = [chunk async for chunk in resp.content.iter_any()]
                    raw = b"".join(streamed)
            return echoed, raw, streamed
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    echoed, raw, _ = run(go())
    assert echoed["method"] == "POST" and echoed["body"] == "hi" and echoed["query"] == "q=1"
    assert raw == b"abc"


def test_app_needs_a_runtime() -> None:
    with pytest.raises(TypeError, match="fastbind.asgi.app needs a fastbind.Runtime"):
        app(object(), "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Runtime().add_worker("x", object())
