"""fastbind under a plain asyncio.Protocol server, built on the raw embedding API.

A tiny HTTP/1.0-style server: httptools parses each request into bytes (method, URL,
header pairs, body), a ``RawDispatcher`` serves it, and the response is written back
and the connection closed (HTTP/1.0 framing: a streamed body ends when the connection
does, so no chunked encoding is needed). A client that goes away cancels its request's
pipeline (docs/design.md, "Lifecycle").

    python examples/embedding/httptools_server.py [--port 8080]
    curl -H 'authorization: Bearer demo' http://127.0.0.1:8080/me
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from http import HTTPStatus
from typing import Any, cast

import httptools
import uvloop

from fastbind import Request, Response, Runtime, WorkerEntrypoint
from fastbind.embed import RawDispatcher, RawResponseBody

logger = logging.getLogger(__name__)


class RawHTTPProtocol(asyncio.Protocol):
    """One connection: parse one request, serve it with ``raw``, answer, close."""

    def __init__(self, raw: RawDispatcher) -> None:
        self._raw = raw
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host = b"localhost"
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_error(HTTPStatus.NOT_IMPLEMENTED)
        except httptools.HttpParserError:
            self._reply_error(HTTPStatus.BAD_REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: its pipeline is cancelled too

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if name.lower() == b"host":
            self._host = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._task is not None:  # one request per connection
            return
        method = self._parser.get_method()
        url = "http://" + self._host.decode("latin-1") + self._url.decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._task = asyncio.get_running_loop().create_task(
            self._serve(method, url, self._headers, body)
        )

    async def _serve(self, method: bytes, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        assert self._transport is not None
        try:
            status, response_headers, response_body = await self._raw(method, url, headers, body)
        except Exception:  # a Worker's own errors are 500 responses already: this is fastbind's
            logger.exception("Could not serve %s %s", method.decode("latin-1"), url)
            self._reply_error(HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        head = [b"HTTP/1.0 %d %s\r\n" % (status, _reason(status))]
        head += [name + b": " + value + b"\r\n" for name, value in response_headers]
        head.append(b"connection: close\r\n")
        if isinstance(response_body, (bytes, bytearray, memoryview)):
            head.append(b"content-length: %d\r\n\r\n" % len(response_body))
            self._transport.write(b"".join(head))
            self._transport.write(response_body)
        else:
            head.append(b"\r\n")
            self._transport.write(b"".join(head))
            await _write_stream(self._transport, response_body)
        self._transport.close()

    def _reply_error(self, status: HTTPStatus) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(
                b"HTTP/1.0 %d %s\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                % (status.value, status.phrase.encode())
            )
            self._transport.close()


async def _write_stream(transport: asyncio.Transport, body: RawResponseBody) -> None:
    assert not isinstance(body, (bytes, bytearray, memoryview))
    try:
        async for chunk in body:
            transport.write(chunk)
    finally:
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()  # ends the pipeline even if the client went away mid-stream


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def serve(runtime: Runtime, entry: str, host: str = "127.0.0.1", port: int = 8080) -> asyncio.Server:
    """Start serving Worker ``entry`` on ``host:port`` (0: any free port); returns the server."""
    raw = RawDispatcher(runtime, entry)
    runtime.validate()
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: RawHTTPProtocol(raw), host, port)


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
    return Response.json({"user": auth.headers.get("x-user"), "url": request.url})


def build_runtime() -> Runtime:
    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"})
    rt.add_worker("auth", Auth)
    return rt


async def main(host: str, port: int) -> None:
    server = await serve(build_runtime(), "gateway", host, port)
    print("serving on", *(s.getsockname() for s in server.sockets))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the demo gateway over HTTP/1.0.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
