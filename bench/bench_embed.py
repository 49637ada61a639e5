"""Raw embedding round trip vs. a binding round trip, side by side in one process.

Both sides reach the same Worker, which returns a small Response:

- ``binding``: inside a running Worker, ``await env.LEAF.fetch(request)`` with one
  prebuilt GET Request (no body), called again and again: a child invocation at
  depth 2, the cheapest path fastbind has between two Workers.
- ``raw``: ``await raw(b"GET", url, headers, b"")`` on a ``RawDispatcher``: the parts
  of a request as an HTTP parser gives them (bytes method, str URL, four bytes header
  pairs) in, ``(status, headers, body)`` out. Each call is a whole top-level request:
  it builds the Request, opens and ends a pipeline, and converts the Response.
- ``dispatch``: ``await runtime.dispatch("leaf", request)`` with a prebuilt Request,
  to show what the top-level dispatch itself costs apart from the raw conversions.

Each is timed per call over many calls, after a warm-up, on one uvloop loop; the
figures are the best of several rounds (the least disturbed by the machine).

    python bench/bench_embed.py [--calls 100000] [--rounds 5]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_embed.py     # on the pure twin
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from fastbind import Limits, Request, Response, Runtime
from fastbind.embed import RawDispatcher

URL = "https://example.com/api/items?page=2"
RAW_HEADERS = [
    (b"host", b"example.com"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"application/json"),
    (b"x-request-id", b"4f0c2a"),
]


async def leaf(request: Request, env: Any, ctx: Any) -> Response:
    return Response(b'{"ok":true}', headers={"content-type": "application/json"})


def per_call_ns(calls: int, rounds: int, step: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[float]]:
    async def measure() -> float:
        for _ in range(min(calls, 2000)):
            await step()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(calls):
                await step()
            best = min(best, (time.perf_counter_ns() - start) / calls)
        return best

    return measure


async def main(calls: int, rounds: int) -> dict[str, float]:
    # The binding loop makes every call from one invocation: lift its budget.
    rt = Runtime(limits=Limits(subrequests=(calls + 2000) * rounds + 2000))
    results: dict[str, float] = {}

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        forward = Request(URL, headers=[(n.decode(), v.decode()) for n, v in RAW_HEADERS])
        fetch = env.LEAF.fetch
        results["binding"] = await per_call_ns(calls, rounds, lambda: fetch(forward))()
        return Response(None)

    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    await rt.dispatch("caller", Request(URL))

    raw = RawDispatcher(rt, "leaf")
    results["raw"] = await per_call_ns(calls, rounds, lambda: raw(b"GET", URL, RAW_HEADERS, b""))()

    prebuilt = Request(URL, headers=[(n.decode(), v.decode()) for n, v in RAW_HEADERS])
    results["dispatch"] = await per_call_ns(calls, rounds, lambda: rt.dispatch("leaf", prebuilt))()
    results["implementation"] = rt.implementation  # type: ignore[assignment]
    return results


def report(results: dict[str, Any]) -> None:
    binding = results["binding"]
    print(f"core: {results['implementation']}")
    for name in ("binding", "raw", "dispatch"):
        print(f"  {name:9s} {results[name] / 1000:7.2f} us/call  {results[name] / binding:5.2f}x binding")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report(uvloop.run(main(args.calls, args.rounds)))
