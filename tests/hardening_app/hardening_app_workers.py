"""A Worker for the hardening tests: large plain answers, a busy loop, a sleep."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastbind import Request, Response


async def app(request: Request, env: Any, ctx: Any) -> Response:
    url = urlsplit(request.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    if url.path == "/big":  # a new plain body per request, as a Worker that builds its answer makes
        return Response(b"x" * int(query["size"]))
    if url.path == "/spin":
        while True:  # never yields: only the CPU limit or the shutdown's deadline stops it
            pass
    if url.path == "/sleep":
        await asyncio.sleep(float(query["s"]))
        return Response("slept")
    return Response("hello")
