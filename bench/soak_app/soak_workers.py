"""Soak Workers: a gateway that answers for its child's faults, and a child that fails in every way asked of it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

from fastbind import Request, Response, SubrequestDepthError, TooManySubrequestsError, WorkerEntrypoint
from fastbind.runtime import current_runtime

CANCEL_AFTER_S = 0.05
STREAM_CHUNKS = 200
BIG_BYTES = 16 * 1024 * 1024  # more than the kernel's socket buffers hold on loopback


def path_of(url: str) -> str:
    rest = url.partition("://")[2]
    slash = rest.find("/")
    return "/" if slash < 0 else rest[slash:].partition("?")[0]


def fault(status: int, kind: str) -> Response:
    """A response that says which fault the gateway caught, for the soak's tally."""
    return Response(kind, status=status, headers={"x-fault": kind})


class Gateway(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        path = path_of(request.url)
        if path == "/_status":
            runtime = current_runtime()
            assert runtime is not None
            return Response.json({"pid": os.getpid(), "counters": runtime.live_counts()})
        if path == "/cancel":
            # The gateway's own deadline cancels the child in the middle of its work.
            try:
                async with asyncio.timeout(CANCEL_AFTER_S):
                    return await self.env.CHILD.fetch(request.url.replace("/cancel", "/slow"))
            except TimeoutError:
                return fault(504, "child-cancelled")
        try:
            return await self.env.CHILD.fetch(request)
        except SubrequestDepthError:
            return fault(508, "depth-limit")
        except TooManySubrequestsError:
            return fault(429, "subrequest-limit")
        # Anything else the child raises is uncaught here: fastbind answers 500.


class Child(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        path = path_of(request.url)
        if path == "/ok":
            return Response("ok")
        if path == "/big":  # a large plain answer, for a client that never reads it
            return Response(b"b" * BIG_BYTES)
        if path == "/upload":
            data = await request.bytes()
            return Response(hashlib.sha256(data).hexdigest())
        if path == "/raise":
            raise RuntimeError("injected fault")
        if path == "/hang":
            await asyncio.sleep(3600)  # a timer keeps it alive: only the client's disconnect ends it
        if path == "/stall":
            await asyncio.Event().wait()  # nothing can ever set it: fastbind's hang detector answers
        if path == "/slow":
            await asyncio.sleep(10)
        if path.startswith("/deep"):
            return await self.env.SELF.fetch(request.url)  # until the depth limit
        if path == "/many":
            for _ in range(100):  # past the subrequest budget
                await (await self.env.SELF.fetch("https://soak/ok")).aclose()
        if path == "/spawn":
            for _ in range(3):  # left running: the end of the pipeline cancels them
                asyncio.get_running_loop().create_task(asyncio.sleep(60))
            return Response("spawned")
        if path == "/wait":
            self.ctx.wait_until(asyncio.sleep(0.01))
            self.ctx.wait_until(asyncio.sleep(60))  # past wait_until_s: cancelled
            return Response("waiting")
        if path == "/stream":
            return Response(chunks(), headers={"content-length": str(STREAM_CHUNKS * 1024)})
        return Response("not found", status=404)


async def chunks() -> AsyncIterator[bytes]:
    for _ in range(STREAM_CHUNKS):
        yield b"c" * 1024
        await asyncio.sleep(0)
