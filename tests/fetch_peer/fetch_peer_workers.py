"""Workers of the second process in tests/test_fetch.py: it answers with what it received."""

from __future__ import annotations

import os
from typing import Any

from fastbind import Request, Response, WorkerEntrypoint


class Api(WorkerEntrypoint):
    """The entry Worker: echoes the request, after a binding call of its own."""

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


async def names(request: Request, env: Any, ctx: Any) -> Response:
    return Response("ada")
