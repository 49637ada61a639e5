"""A gateway that forwards every request through a binding, and an echo that says what arrived."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastbind import Request, Response
from fastbind.runtime import current_runtime

# What the Workers saw, for the test to ask after a hostile request: which paths were
# served (a smuggled request must never be) and whether a header it tried to inject
# ever reached a Worker.
SEEN_PATHS: Counter[str] = Counter()
INJECTED: Counter[str] = Counter()


def path_of(url: str) -> str:
    """The path of an absolute URL; never raises, whatever the client sent."""
    rest = url.partition("://")[2]
    slash = rest.find("/")
    return "/" if slash < 0 else rest[slash:].partition("?")[0]


async def chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"s" * 1024
        await asyncio.sleep(0)


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    path = path_of(request.url)
    if path == "/_counters":
        runtime = current_runtime()
        assert runtime is not None
        return Response.json(runtime.live_counts())
    if path == "/_seen":
        return Response.json({"paths": SEEN_PATHS, "injected": INJECTED})
    SEEN_PATHS[path] += 1
    if path.startswith("/stream/"):
        return Response(chunks(int(path.rsplit("/", 1)[1] or 0)))
    if path.startswith("/as-given/"):
        # Forward the request object itself with one more header, as a gateway does.
        headers = request.headers.copy()
        headers.set("x-gateway", "1")
        return await env.ECHO.fetch(Request(request, headers=headers))
    # Rebuild the request through the public constructors: whatever the server
    # accepted from the client must pass Request's and Headers' own checks.
    body = None if request.method in ("GET", "HEAD") else request.body
    forwarded = Request(request.url, method=request.method, headers=request.headers.items(), body=body)
    return await env.ECHO.fetch(forwarded)


async def echo(request: Request, env: Any, ctx: Any) -> Response:
    data = await request.bytes()
    for name, _ in request.headers:
        if name.startswith("x-injected"):
            INJECTED[name] += 1
    return Response.json({
        "method": request.method, "path": path_of(request.url),
        "length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    })
