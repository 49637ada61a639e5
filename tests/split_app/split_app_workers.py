"""A Worker that answers with the request it saw: method, URL, headers and body."""

from __future__ import annotations

from typing import Any

from fastbind import Request, Response


async def describe(request: Request, env: Any, ctx: Any) -> Response:
    body = await request.bytes()
    return Response.json({
        "method": request.method, "url": request.url,
        "headers": [list(item) for item in request.headers], "body": body.hex(),
    })
