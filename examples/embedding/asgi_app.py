"""fastbind under an ASGI server, built on the raw embedding API (fastbind.embed).

The ASGI scope already holds the request's parts as bytes (method, path, header
pairs), so the app only assembles the URL, hands everything to a ``RawDispatcher`` and
sends back what it returns: no intermediate dict, no Headers built twice. Request and
response bodies stream: a single-message request body is passed as the bytes object
ASGI delivered, a longer one as an async iterator over ``receive()``.

    uvicorn asgi_app:app --app-dir examples/embedding      # any ASGI server will do
    python examples/embedding/asgi_app.py [--port 8000]    # the same, with uvicorn
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastbind import Request, Response, Runtime, WorkerEntrypoint
from fastbind.asgi import request_url
from fastbind.embed import RawDispatcher, RawRequestBody

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FastbindASGI:
    """An ASGI 3 application that serves every HTTP request with one fastbind Worker."""

    def __init__(self, runtime: Runtime, entry: str) -> None:
        self.runtime = runtime
        self.raw = RawDispatcher(runtime, entry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not served by this app
            raise RuntimeError(f"FastbindASGI serves HTTP only, not {scope['type']!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _request_body(receive)
        status, headers, response_body = await self.raw(
            scope["method"], request_url(scope), scope["headers"], body
        )
        if isinstance(response_body, (bytes, bytearray, memoryview)):
            data = response_body if type(response_body) is bytes else bytes(response_body)
            if not any(name == b"content-length" for name, _ in headers):
                headers.append((b"content-length", b"%d" % len(data)))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:  # a streamed body: send each chunk as it comes, then end the pipeline
            async for chunk in response_body:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            closer = getattr(response_body, "aclose", None)
            if closer is not None:
                await closer()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.runtime.validate()  # a wrong binding fails the startup, not a request
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _request_body(receive: Receive) -> RawRequestBody:
    message = await receive()
    first: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return first  # the whole body in one message: handed on as it is
    return _more_body(first, receive)


async def _more_body(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("The client went away before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


# -- a demo Runtime: a gateway that asks an auth Worker who the user is ----------------


class Auth(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer demo":
            return Response("unauthorized", status=401)
        return Response(None, headers={"x-user": "42"})


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    # Only the headers go to auth: the body stays readable here.
    auth: Response = await env.AUTH.fetch(request.url, headers=request.headers)
    if not auth.ok:
        return auth
    if request.method == "POST":
        return Response.json({"user": auth.headers.get("x-user"), "got": await request.json()})
    return Response.json({"user": auth.headers.get("x-user"), "url": request.url})


def build_runtime() -> Runtime:
    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"})
    rt.add_worker("auth", Auth)
    return rt


app = FastbindASGI(build_runtime(), "gateway")


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the demo gateway with uvicorn.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", lifespan="on")
