"""The chat example: ``/`` is the page, ``/room/NAME`` the WebSocket of room NAME.

The gateway sends a WebSocket upgrade to the room's Durable Object, which accepts the
socket, tags it with the user's name and relays every message to every socket of the
room; everything else goes to the pages Worker.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastbind import DurableObject, Request, Response, WebSocket, WebSocketPair


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    url = urlsplit(request.url)
    if url.path.startswith("/room/"):
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("this is a WebSocket endpoint\n", status=426)
        room = url.path[len("/room/"):] or "lobby"
        answer: Response = await env.ROOMS.get_by_name(room).fetch(request)
    else:
        answer = await env.PAGES.fetch(request)
    return answer


class ChatRoom(DurableObject):
    """One room: its sockets, and the last messages for those who join later."""

    async def fetch(self, request: Request) -> Response:
        user = (parse_qs(urlsplit(request.url).query).get("user") or ["someone"])[0][:40]
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server, [user])
        server.serialize_attachment({"user": user})
        for line in await self.ctx.storage.get("history") or []:
            server.send(json.dumps(line))
        await self._broadcast({"user": "*", "text": f"{user} joined"})
        return Response(None, status=101, web_socket=client)

    async def websocket_message(self, ws: WebSocket, message: Any) -> None:
        text = message if isinstance(message, str) else message.decode(errors="replace")
        await self._broadcast({"user": ws.deserialize_attachment()["user"], "text": text[:1000]})

    async def websocket_close(self, ws: WebSocket, code: int, reason: str, was_clean: bool) -> None:
        await self._broadcast({"user": "*", "text": f"{ws.deserialize_attachment()['user']} left"})

    async def _broadcast(self, line: dict[str, str]) -> None:
        history = (await self.ctx.storage.get("history") or [])[-49:] + [line]
        await self.ctx.storage.put("history", history)
        for ws in self.ctx.get_websockets():
            ws.send(json.dumps(line))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastbind chat</title>
<style>body{font:16px system-ui;margin:2em;max-width:40em}#log{list-style:none;padding:0}
#log li{padding:.2em 0}form{display:flex;gap:.5em}input{flex:1;font:inherit}</style></head>
<body><h1>fastbind chat</h1>
<p>Room <b id="room"></b>, you are <b id="me"></b>.</p>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something"><button>Send</button></form>
<script>
const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const me = params.get("user") || "guest" + Math.floor(Math.random() * 1000);
document.getElementById("room").textContent = room;
document.getElementById("me").textContent = me;
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(`${scheme}//${location.host}/room/${encodeURIComponent(room)}?user=${encodeURIComponent(me)}`);
ws.onopen = () => document.body.dataset.connected = "yes";
ws.onmessage = (event) => {
  const line = JSON.parse(event.data);
  const item = document.createElement("li");
  item.textContent = line.user === "*" ? line.text : `${line.user}: ${line.text}`;
  document.getElementById("log").appendChild(item);
};
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) { ws.send(input.value); input.value = ""; }
};
</script></body></html>
"""


async def pages(request: Request, env: Any, ctx: Any) -> Response:
    if urlsplit(request.url).path != "/":
        return Response("not found\n", status=404)
    return Response(PAGE, headers={"content-type": "text/html; charset=utf-8"})
