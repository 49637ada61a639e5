"""A second fastbind process for test_fetch.py: serves a Runtime over HTTP on 127.0.0.1.

``fastbind serve`` is being written separately; until it lands, a few lines of
aiohttp.web that call ``runtime.dispatch`` stand in for it. Prints the port on
its first line of stdout and serves until its stdin is closed.
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvloop
from aiohttp import web

from fastbind import Request, Response, Runtime, WorkerEntrypoint

# Headers that frame one HTTP message; the bridge lets aiohttp set its own.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))


class Api(WorkerEntrypoint):
    """The entry Worker: answers with what it received, after a binding call of its own."""

    async def fetch(self, request: Request) -> Response:
        names = await self.env.NAMES.fetch(request.url)
        return Response.json({
            "pid": os.getpid(),
            "url": request.url,
            "method": request.method,
            "body": await request.text(),
            "from": request.headers.get("x-from"),
            "name": await names.text(),
            "depth": self.ctx.depth,
        })


async def names(request: Request, env: object, ctx: object) -> Response:
    return Response("ada")


def build_runtime() -> Runtime:
    runtime = Runtime()
    runtime.add_worker("api", Api, services={"NAMES": "names"})
    runtime.add_worker("names", names)
    return runtime


def bridge(runtime: Runtime) -> web.Application:
    async def handle(req: web.Request) -> web.Response:
        body = req.content.iter_any() if req.body_exists else None
        request = Request(str(req.url), method=req.method, headers=list(req.headers.items()), body=body)
        response = await runtime.dispatch("api", request)
        headers = [(n, v) for n, v in response.headers if n not in _FRAMING]
        return web.Response(status=response.status, headers=headers, body=await response.bytes())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def main() -> None:
    async with build_runtime() as runtime:
        runner = web.AppRunner(bridge(runtime))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main())
