"""The Workers the benchmarks time: chains, fan-outs, bodies through hops, JSON, dispatch.

Every timing parent makes ``x-calls`` calls in a loop inside one invocation and reports
the time of the loop alone (``fastbind.benchmark.timed_dispatch`` reads it), so that
dispatching the parent stays out of the figure. Each has a floor twin that does the
same with direct awaits of the same functions.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from types import ModuleType
from typing import Any

import orjson

from fastbind import Limits, Request, Response, Runtime
from fastbind.benchmark import (
    CALLS_HEADER,
    URL,
    binding_parent,
    calls_of,
    child,
    elapsed_response,
    runtime_on,
    timed_dispatch,
)

Handler = Callable[[Request, Any, Any], Awaitable[Response]]
MB = 1 << 20


def direct_parent(target: Handler) -> Handler:
    """A timing parent that awaits ``target(request, env, ctx)`` directly, K times."""

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        calls = calls_of(request)
        start = perf_counter_ns()
        for _ in range(calls):
            await target(request, env, ctx)
        return elapsed_response(start)

    return parent


# --- a chain: parent -> hop -> ... -> child, each hop a binding call -------------------


async def hop(request: Request, env: Any, ctx: Any) -> Response:
    """Forward the request to the next Worker and hand back its Response."""
    response: Response = await env.NEXT.fetch(request)
    return response


def chain_runtime(core: ModuleType | None, depth: int) -> Runtime:
    """Worker ``chain``: K calls, each ``depth`` nested binding calls deep (the last reaches ``child``).

    The timing parent runs at depth 1, so the child of a depth-32 chain runs at 33:
    the Runtime's depth limit is raised to fit.
    """
    rt = runtime_on(core, limits=Limits(depth=max(32, depth + 1)))
    rt.add_worker("chain", binding_parent, services={"CHILD": "hop1" if depth > 1 else "child"})
    for i in range(1, depth):
        rt.add_worker(f"hop{i}", hop, services={"NEXT": f"hop{i + 1}" if i + 1 < depth else "child"})
    rt.add_worker("child", child)
    rt.add_worker("direct", direct_parent(direct_chain(depth)))
    return rt


def direct_chain(depth: int) -> Handler:
    """The floor of a chain: ``depth`` coroutines awaiting one another, down to ``child``."""
    target: Handler = child
    for _ in range(depth - 1):
        target = _direct_hop(target)
    return target


def _direct_hop(target: Handler) -> Handler:
    async def direct_hop(request: Request, env: Any, ctx: Any) -> Response:
        return await target(request, env, ctx)

    return direct_hop


# --- a fan-out: K calls made as gathers of ``width`` parallel calls ---------------------


def fan_out_runtime(core: ModuleType | None, width: int) -> Runtime:
    """Workers ``fan_out`` (binding calls) and ``direct`` (coroutines), gathered ``width`` at a time."""

    async def fan_out(request: Request, env: Any, ctx: Any) -> Response:
        fetch = env.CHILD.fetch
        gathers = max(1, calls_of(request) // width)
        start = perf_counter_ns()
        for _ in range(gathers):
            await asyncio.gather(*[fetch(request) for _ in range(width)])
        return elapsed_response(start)

    async def direct(request: Request, env: Any, ctx: Any) -> Response:
        gathers = max(1, calls_of(request) // width)
        start = perf_counter_ns()
        for _ in range(gathers):
            await asyncio.gather(*[child(request, env, ctx) for _ in range(width)])
        return elapsed_response(start)

    rt = runtime_on(core)
    rt.add_worker("fan_out", fan_out, services={"CHILD": "child"})
    rt.add_worker("direct", direct)
    rt.add_worker("child", child)
    return rt


# --- a body through hops: POST it, the last Worker echoes it, the parent reads it -------


_bodies: dict[int, bytes] = {}


def body_of(size: int) -> bytes:
    """``size`` zero bytes, built once per run: building 100 MB is not what is timed."""
    if size not in _bodies:
        _bodies[size] = bytes(size)
    return _bodies[size]


async def echo(request: Request, env: Any, ctx: Any) -> Response:
    """Answer with the request's body: the same object comes back (zero copy)."""
    return Response(await request.bytes())


def body_runtime(core: ModuleType | None, hops: int, body: bytes) -> Runtime:
    """Worker ``body``: K POSTs of ``body`` through ``hops`` binding calls and back.

    A body can be forwarded only once, so each call builds its Request, as a Worker
    sending a body would; the echo proves nothing was copied (the same object returns).
    """

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        calls = calls_of(request)
        fetch = env.CHILD.fetch
        echoed = b""
        start = perf_counter_ns()
        for _ in range(calls):
            response = await fetch(URL, method="POST", body=body)
            echoed = await response.bytes()
        elapsed = elapsed_response(start)
        if echoed is not body:
            raise AssertionError("the body was copied on its way through the hops")
        return elapsed

    rt = runtime_on(core)
    rt.add_worker("body", parent, services={"CHILD": "hop1" if hops > 1 else "echo"})
    for i in range(1, hops):
        rt.add_worker(f"hop{i}", hop, services={"NEXT": f"hop{i + 1}" if i + 1 < hops else "echo"})
    rt.add_worker("echo", echo)
    return rt


async def peak_growth(rt: Runtime, worker: str, calls: int) -> int:
    """Bytes allocated at the peak of one batch, above what was allocated before it.

    Objects that exist before (the body itself) are not counted: only what the calls add.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await timed_dispatch(rt, worker, calls)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


# --- JSON in, JSON out, with orjson ---------------------------------------------------

PAYLOAD = {"user": 42, "items": [1, 2, 3], "query": {"page": 2, "sort": "name"}, "active": True}
JSON_HEADERS = {"content-type": "application/json"}


async def json_child(request: Request, env: Any, ctx: Any) -> Response:
    data = await request.json()
    return Response.json({"user": data["user"], "count": len(data["items"]), "ok": True})


def json_runtime(core: ModuleType | None) -> Runtime:
    """Workers ``json`` (binding) and ``direct`` (direct await): K JSON round trips each."""

    async def through_binding(request: Request, env: Any, ctx: Any) -> Response:
        calls = calls_of(request)
        start = perf_counter_ns()
        for _ in range(calls):
            response = await env.CHILD.fetch(
                URL, method="POST", headers=JSON_HEADERS, body=orjson.dumps(PAYLOAD))
            await response.json()
        return elapsed_response(start)

    async def direct(request: Request, env: Any, ctx: Any) -> Response:
        calls = calls_of(request)
        start = perf_counter_ns()
        for _ in range(calls):
            call = Request(URL, method="POST", headers=JSON_HEADERS, body=orjson.dumps(PAYLOAD))
            response = await json_child(call, env, ctx)
            await response.json()
        return elapsed_response(start)

    rt = runtime_on(core)
    rt.add_worker("json", through_binding, services={"CHILD": "child"})
    rt.add_worker("direct", direct)
    rt.add_worker("child", json_child)
    return rt


# --- top-level dispatch, with and without ctx.wait_until ------------------------------


async def _after_the_response() -> None:
    return None


async def with_wait_until(request: Request, env: Any, ctx: Any) -> Response:
    ctx.wait_until(_after_the_response())
    return Response("ok")


def dispatch_runtime(core: ModuleType | None) -> Runtime:
    rt = runtime_on(core)
    rt.add_worker("plain", child)
    rt.add_worker("wait_until", with_wait_until)
    return rt


async def timed_top_level(rt: Runtime, worker: str, calls: int) -> int:
    """ns of ``calls`` top-level dispatches of ``worker``, until each pipeline has ended.

    wait_until work outlives the response: the batch ends when it is done too, so its
    cost is counted.
    """
    request = Request(URL, headers={CALLS_HEADER: str(calls)})
    start = perf_counter_ns()
    for _ in range(calls):
        await rt.dispatch(worker, request)
    while rt.live_counts()["pipelines"]:
        await asyncio.sleep(0)
    return perf_counter_ns() - start
