"""ASGI WebSockets both ways: a Runtime under uvicorn with a real client, and an ASGI
app's WebSocket endpoint mounted as a Worker and reached through a binding."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import fastbind.asgi
from fastbind import Request, Response, Runtime, WebSocketPair

websockets = pytest.importorskip("websockets", reason="the websockets library is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
from websockets.asyncio.client import connect  # noqa: E402


async def echo_worker(request: Request, env: Any, ctx: Any) -> Response:
    if request.headers.get("upgrade") != "websocket":
        return Response("not a websocket", status=426)
    client, server = WebSocketPair()
    server.accept()

    async def echo() -> None:
        async for message in server:
            server.send(message)
        server.close(1000, "")

    asyncio.ensure_future(echo())
    return Response(None, status=101, web_socket=client, headers={"sec-websocket-protocol": "chat"})


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    return await env.ECHO.fetch(request)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_runtime_under_uvicorn_serves_websockets(core, run) -> None:
    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"ECHO": "echo"})
    rt.add_worker("echo", echo_worker)
    port = _free_port()

    async def main() -> list[Any]:
        config = uvicorn.Config(fastbind.asgi.app(rt, "gateway"), host="127.0.0.1", port=port,
                                log_level="warning", lifespan="off", ws="websockets-sansio")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            async with connect(f"ws://127.0.0.1:{port}/chat", subprotocols=["chat"]) as ws:
                await ws.send("hello")
                await ws.send(b"\x01\x02")
                got = [await ws.recv(), await ws.recv(), ws.subprotocol]
            return got
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    assert run(main()) == ["hello", b"\x01\x02", "chat"]


async def asgi_echo(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await send({"type": "websocket.send", "text": f"app: {text}"} if text is not None
                   else {"type": "websocket.send", "bytes": message["bytes"][::-1]})


def test_an_asgi_apps_websocket_is_reached_through_a_binding(core, run) -> None:
    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"ECHO": "app"})
    rt.add_worker("app", fastbind.asgi.worker(asgi_echo, lifespan=False))

    async def main() -> list[Any]:
        headers = {"upgrade": "websocket", "connection": "upgrade", "sec-websocket-protocol": "v1"}
        response = await rt.dispatch("gateway", Request("https://example.com/ws", headers=headers))
        ws = response.web_socket
        assert response.status == 101 and ws is not None
        ws.accept()
        ws.send("hi")
        ws.send(b"abc")
        got = [await ws.receive(), await ws.receive(), response.headers.get("sec-websocket-protocol")]
        ws.close(1000)
        refused = await rt.dispatch("gateway", Request("https://example.com/refuse", headers=headers))
        for _ in range(200):
            if rt.live_counts()["pipelines"] == 0:
                break
            await asyncio.sleep(0.005)
        return got + [refused.status]

    assert run(main()) == ["app: hi", b"cba", "v1", 403]
    assert rt.live_counts() == {"pipelines": 0, "invocations": 0, "tasks": 0}
