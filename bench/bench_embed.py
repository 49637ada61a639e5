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

Each is timed per call over many calls on one uvloop loop, in rounds that take turns
(binding, raw, dispatch, binding, ...) after a warm-up round; the figures are the
best round of each (the least disturbed by the rest of the machine).

    python bench/bench_embed.py [--calls 100000] [--rounds 5]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_embed.py     # on the pure twin

Timings on a small shared machine are noisy; ``bench/callgrind_embed.py`` counts the
instructions per call of the same three cases, which do not move between runs.
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


async def time_calls(calls: int, step: Callable[[], Awaitable[Any]]) -> float:
    """Nanoseconds per ``await step()``, over ``calls`` calls."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        await step()
    return (time.perf_counter_ns() - start) / calls


async def main(calls: int, rounds: int) -> dict[str, Any]:
    # The binding loop makes every call of a round from one invocation: lift its budget.
    rt = Runtime(limits=Limits(subrequests=calls + 10))
    best = {"binding": float("inf"), "raw": float("inf"), "dispatch": float("inf")}

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        forward = Request(URL, headers=[(n.decode(), v.decode()) for n, v in RAW_HEADERS])
        fetch = env.LEAF.fetch
        best["binding"] = min(best["binding"], await time_calls(calls, lambda: fetch(forward)))
        return Response(None)

    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    raw = RawDispatcher(rt, "leaf")
    prebuilt = Request(URL, headers=[(n.decode(), v.decode()) for n, v in RAW_HEADERS])

    # Rounds interleave the three, so that a busy moment of the machine weighs on
    # all of them alike; the first round warms up and is not counted.
    for round_ in range(rounds + 1):
        if round_ == 1:
            best = dict.fromkeys(best, float("inf"))
        await rt.dispatch("caller", Request(URL))
        best["raw"] = min(best["raw"], await time_calls(
            calls, lambda: raw(b"GET", URL, RAW_HEADERS, b"")))
        best["dispatch"] = min(best["dispatch"], await time_calls(
            calls, lambda: rt.dispatch("leaf", prebuilt)))
    return {**best, "implementation": rt.implementation}


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
