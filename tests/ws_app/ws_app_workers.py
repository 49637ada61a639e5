"""Workers for the WebSocket server tests: an echo behind a gateway, and chat rooms."""

from __future__ import annotations

import asyncio
from typing import Any

from fastbind import DurableObject, Request, Response, WebSocket, WebSocketPair


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    path = request.url.split("/", 3)[3].split("?")[0]
    if path.startswith("room/"):
        return await env.ROOMS.get_by_name(path[5:]).fetch(request)
    if path == "plain":
        return Response("plain answer")
    if path == "wrong":  # a socket for a request that asked for none
        client, server = WebSocketPair()
        server.accept()
        return Response(None, status=101, web_socket=client)
    if path in ("flood", "flood-unchecked"):
        return flood(drain=path == "flood")
    return await env.ECHO.fetch(request)


FLOOD = 400  # messages of 32 KiB: more than the kernel's socket buffers hold


def flood(drain: bool) -> Response:
    """FLOOD messages of 32 KiB numbered in order (awaiting drain() after each), or sent
    with no drain() at all (past the server's --ws-send-queue the socket closes)."""
    client, server = WebSocketPair()
    server.accept()

    async def run() -> None:
        for number in range(FLOOD):
            if server.ready_state != 1:
                return
            server.send(f"{number:05d}".encode() + b"." * 32_768)
            if drain:
                await server.drain()
        server.send("done")
        server.close()

    asyncio.ensure_future(run())
    return Response(None, status=101, web_socket=client)


async def echo(request: Request, env: Any, ctx: Any) -> Response:
    if request.headers.get("upgrade", "").lower() != "websocket":
        return Response("upgrade required", status=426)
    client, server = WebSocketPair()
    server.accept()

    async def run() -> None:
        async for message in server:
            server.send(message)
        server.close(1000, "bye")

    asyncio.ensure_future(run())
    asked = request.headers.get("sec-websocket-protocol")
    headers = {"sec-websocket-protocol": asked.split(",")[0].strip()} if asked else None
    return Response(None, status=101, web_socket=client, headers=headers)


class Room(DurableObject):
    """Every message goes to every socket of the room; a leaver is announced with its code."""

    async def fetch(self, request: Request) -> Response:
        user = request.url.rsplit("user=", 1)[-1]
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server, [user])
        server.serialize_attachment(user)
        return Response(None, status=101, web_socket=client)

    async def websocket_message(self, ws: WebSocket, message: Any) -> None:
        for other in self.ctx.get_websockets():
            other.send(f"{ws.deserialize_attachment()}: {message}")

    async def websocket_close(self, ws: WebSocket, code: int, reason: str, was_clean: bool) -> None:
        for other in self.ctx.get_websockets():
            if other is not ws:
                other.send(f"{ws.deserialize_attachment()} left ({code})")
