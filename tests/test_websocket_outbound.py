"""Outbound WebSockets: fetch(url, headers={"Upgrade": "websocket"}) to a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fastbind import FetchError, Request, Response, Runtime, fetch

websockets = pytest.importorskip("websockets", reason="the websockets library is not installed")
from websockets.asyncio.server import serve  # noqa: E402


async def _echo(connection: Any) -> None:
    async for message in connection:
        await connection.send(message)


def test_a_worker_talks_to_a_remote_websocket_server(core, run) -> None:
    reports: list[Any] = []

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        upstream = await fetch(request.url, headers={"Upgrade": "websocket"})
        ws = upstream.web_socket
        assert upstream.status == 101 and ws is not None
        ws.accept()
        ws.send("hello")
        ws.send(b"\x00\x01")
        got = [await ws.receive(), await ws.receive()]
        ws.close(1000, "thanks")
        closed = await ws.receive()
        return Response.json([got[0], list(got[1]), closed.code])

    async def main() -> Any:
        async with serve(_echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            rt = Runtime(on_pipeline_end=reports.append)
            rt.add_worker("w", worker)
            response = await rt.dispatch("w", Request(f"http://127.0.0.1:{port}/echo"))
            body = await response.json()
            await rt.aclose()
            return body

    assert run(main()) == ["hello", [0, 1], 1000]
    assert [(s.kind, s.outcome) for s in reports[0].subrequests] == [("fetch", "ok")]


def test_a_server_that_will_not_upgrade_is_a_fetch_error(core, run) -> None:
    async def refuse(connection: Any, request: Any) -> Any:
        return connection.respond(403, "no\n")

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        try:
            await fetch(request.url, headers={"Upgrade": "websocket"})
        except FetchError as error:
            return Response(str(error))
        return Response("upgraded?")

    async def main() -> str:
        async with serve(_echo, "127.0.0.1", 0, process_request=refuse) as server:
            port = server.sockets[0].getsockname()[1]
            rt = Runtime()
            rt.add_worker("w", worker)
            response = await rt.dispatch("w", Request(f"http://127.0.0.1:{port}/"))
            text = await response.text()
            await rt.aclose()
            return text

    text = run(main())
    assert "answered 403 instead of switching protocols" in text
