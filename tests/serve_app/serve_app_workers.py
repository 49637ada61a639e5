"""Workers for tests/test_server.py: each path exercises one behaviour of `fastbind serve`.

Files under $FASTBIND_TEST_MARKS record what happened inside the server process
(a Worker started, was cancelled, finished its wait_until work), so that a test can
see it from outside.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastbind import Request, Response, WorkerEntrypoint

CHUNK = bytes(range(256)) * 256  # 64 KiB


def mark(name: str, text: str = "") -> None:
    Path(os.environ["FASTBIND_TEST_MARKS"], name).write_text(text)


class Leaf(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        url = urlsplit(request.url)
        if url.path == "/slow":  # a child at depth 2 that outlives its client
            name = parse_qs(url.query)["id"][0]
            mark(name + ".started")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                mark(name + ".cancelled")
                raise
            return Response("slept")
        return Response("hello from leaf", headers={"x-leaf": "1"})


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    url = urlsplit(request.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    path = url.path
    if path == "/hello":
        leaf = await env.LEAF.fetch(request.url)
        return Response(await leaf.text(), headers={"x-leaf": leaf.headers.get("x-leaf") or ""})
    if path == "/echo":
        return Response(request.body, headers={"content-type": "application/octet-stream"})
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        body = request.body
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview, str)):
            async for chunk in body:
                digest.update(chunk)
                size += len(chunk)
            kind = "stream"
        else:
            data = await request.bytes()
            digest.update(data)
            size = len(data)
            kind = "bytes"
        return Response.json({"size": size, "sha256": digest.hexdigest(), "kind": kind})
    if path == "/download":
        return Response(_pattern(int(query["size"]), query.get("id")), headers={"content-type": "application/octet-stream"})
    if path == "/sized-stream":
        return Response(_pattern(int(query["size"])), headers={"content-length": query["size"]})
    if path == "/slow":
        return await env.LEAF.fetch(request)  # type: ignore[no-any-return]
    if path == "/empty":
        return Response(None)
    if path == "/in-task":  # its first step runs in its task too (started eagerly on 3.12+)
        async with asyncio.timeout(5):  # (RuntimeError outside a task)
            return Response(str(asyncio.current_task() is not None))
    if path == "/sleep":
        mark(query["id"] + ".started")
        await asyncio.sleep(float(query["s"]))
        ctx.wait_until(_later(query["id"]))
        return Response("slept " + query["s"])
    if path == "/pid":
        return Response(str(os.getpid()))
    if path == "/request":
        body = await request.text()
        return Response.json({
            "method": request.method, "url": request.url, "body": body,
            "headers": [list(item) for item in request.headers],
            "cf": [request.cf["httpProtocol"], request.cf["country"]],
        })
    if path == "/status":
        code = int(query["code"])
        return Response(None if code in (204, 304) else f"status {code}", status=code)
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/unicode-header":
        return Response("ok", headers={"x-name": "café ✓"})
    return Response("not found", status=404)


async def _pattern(size: int, name: str | None = None) -> AsyncIterator[bytes]:
    try:
        while size > 0:
            chunk = CHUNK if size >= len(CHUNK) else CHUNK[:size]
            size -= len(chunk)
            yield chunk
    finally:
        if name is not None:
            mark(name + ".closed")  # read to its end, or closed by the server


async def _later(name: str) -> None:
    await asyncio.sleep(0.5)
    mark(name + ".later")
