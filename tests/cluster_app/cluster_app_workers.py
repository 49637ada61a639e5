"""Workers of the cluster tests: a counter Durable Object, a gateway to it, and a loop
through remote bindings."""

from __future__ import annotations

import os
from typing import Any

from fastbind import DurableObject, DurableObjectUnavailableError, Request, Response, SubrequestDepthError


class Counter(DurableObject):
    """One per id; its answers name the process it lives in."""

    async def fetch(self, request: Request) -> Response:
        return Response(f"{await self.increment()} {os.getpid()}")

    async def increment(self, by: int = 1) -> int:
        value = (await self.state.storage.get("value") or 0) + by
        await self.state.storage.put("value", value)
        return int(value)

    async def value(self) -> int:
        return int(await self.state.storage.get("value") or 0)

    async def where(self) -> int:
        return os.getpid()


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    """``/<action>/<name>``: inc, get, where (the pid of the object's process), pid (this one's)."""
    action, _, name = request.url.split("/", 3)[3].partition("/")
    if action == "pid":
        return Response(str(os.getpid()))
    stub = env.COUNTERS.get_by_name(name)
    try:
        if action == "inc":
            return Response(str(await stub.increment()))
        if action == "get":
            return Response(str(await stub.value()))
        if action == "where":
            return Response(str(await stub.where()))
        if action == "fetch":
            return await stub.fetch(request)
    except DurableObjectUnavailableError as exc:
        return Response(f"unavailable: {exc}", status=503)
    if action == "loop":
        return await loop(request, env, ctx)
    return Response("no such action", status=404)


async def loop(request: Request, env: Any, ctx: Any) -> Response:
    """Calls the other node's gateway through a remote binding, which calls back, and so on."""
    try:
        return await env.OTHER.fetch(request)
    except SubrequestDepthError as exc:
        return Response(
            f"stopped at depth {ctx.depth} on {os.getpid()} pipeline {ctx.pipeline.pipeline_id}",
            headers={"x-chain": " > ".join(exc.chain[:3])},
        )
