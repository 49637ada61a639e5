"""ASGI ``websocket`` connections both ways (``fastbind.asgi``'s WebSocket half).

- ``serve``: an ASGI server's WebSocket connection becomes an upgrade request to the
  served Worker; its 101 answer is accepted and its socket relayed to the ASGI messages
  until either side closes. Any other answer refuses the connection (with the answer
  itself where the server speaks the ASGI "websocket.http.response" extension).
- ``mounted``: an upgrade request to a Worker made of an ASGI app runs the app with a
  ``websocket`` scope; when it accepts, the Worker answers 101 with the other end of a
  pair the app's messages are relayed to; when it closes first, a 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from ..headers import Headers
from ..request import Request
from ..response import Response
from ..websocket import CloseEvent, ErrorEvent, WebSocket, WebSocketPair

__all__ = ("serve", "mounted")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HANDSHAKE = frozenset(("sec-websocket-accept", "sec-websocket-protocol", "upgrade", "connection",
                        "content-length", "date"))


async def serve(
    dispatch: Callable[[Request], Awaitable[Response]], request: Request, scope: MutableMapping[str, Any],
    receive: Receive, send: Send,
) -> None:
    """Serve one ASGI WebSocket connection with ``dispatch`` (the Worker's entry)."""
    if (await receive())["type"] != "websocket.connect":
        return
    response = await dispatch(request)
    end = response.web_socket
    if response.status != 101 or end is None:
        await _refuse(scope, send, response)
        return
    end.accept()
    protocol = response.headers.get("sec-websocket-protocol")
    extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers if n not in _HANDSHAKE]
    await send({"type": "websocket.accept", "subprotocol": protocol, "headers": extra})
    incoming = asyncio.ensure_future(_from_asgi(receive, end))
    try:
        while True:
            event = await end.receive()
            if isinstance(event, CloseEvent):
                code = 1011 if event.code in (1005, 1006) else event.code
                if not incoming.done():
                    await send({"type": "websocket.close", "code": code, "reason": event.reason})
                return
            if isinstance(event, ErrorEvent):
                continue
            await send({"type": "websocket.send", "text": event} if type(event) is str
                       else {"type": "websocket.send", "bytes": event})
    finally:
        incoming.cancel()


async def _from_asgi(receive: Receive, end: WebSocket) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            if end.ready_state == 1:
                end.send(text if text is not None else message.get("bytes") or b"")
        elif kind == "websocket.disconnect":
            end.relay_close(int(message.get("code", 1005)), str(message.get("reason") or ""))
            return


async def _refuse(scope: MutableMapping[str, Any], send: Send, response: Response) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({
            "type": "websocket.http.response.start", "status": response.status,
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers],
        })
        await send({"type": "websocket.http.response.body", "body": await response.bytes()})
    else:
        await response.aclose()
        await send({"type": "websocket.close", "code": 1008, "reason": f"refused with {response.status}"})


async def mounted(app: Callable[..., Awaitable[None]], request: Request, state: dict[str, Any] | None) -> Response:
    """Run ``app`` for an upgrade request; answer 101 with a relayed socket once it accepts."""
    url = urlsplit(request.url)
    offered = [p.strip() for v in request.headers.get_all("sec-websocket-protocol") for p in v.split(",") if p.strip()]
    scope: MutableMapping[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss" if url.scheme == "https" else "ws",
        "path": unquote(url.path or "/"),
        "raw_path": (url.path or "/").encode("latin-1", "replace"),
        "query_string": url.query.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in request.headers],
        "client": None,
        "server": (url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80)),
        "subprotocols": offered,
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    worker_end, app_end = WebSocketPair()
    app_end.accept()
    answer: asyncio.Future[tuple[str | None, list[tuple[str, str]]] | None] = asyncio.get_running_loop().create_future()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        event = await app_end.receive()
        if isinstance(event, CloseEvent):
            return {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
        if isinstance(event, ErrorEvent):
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        return {"type": "websocket.receive", "text": event} if type(event) is str else {
            "type": "websocket.receive", "bytes": event}

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.get("headers") or ()]
            if not answer.done():
                answer.set_result((message.get("subprotocol"), headers))
        elif kind == "websocket.send":
            if app_end.ready_state == 1:
                text = message.get("text")
                app_end.send(text if text is not None else message.get("bytes") or b"")
        elif kind == "websocket.close":
            if not answer.done():
                answer.set_result(None)  # closed before accepting: the upgrade is refused
            else:
                app_end.relay_close(int(message.get("code", 1000)), str(message.get("reason") or ""))

    # A task of the invocation: it lives while the pipeline does (held open by the 101).
    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda done: None if answer.done() else answer.set_result(None))
    accepted = await answer
    if accepted is None:
        return Response("WebSocket connection refused by the application\n", status=403)
    subprotocol, headers = accepted
    answer_headers = Headers(headers)
    if subprotocol:
        answer_headers.set("sec-websocket-protocol", subprotocol)
    task.add_done_callback(lambda done: app_end.relay_close(1000) if app_end.ready_state == 1 else None)
    return Response(None, status=101, headers=answer_headers, web_socket=worker_end)
