"""Raw embedding round trip vs. a binding round trip, side by side in one process.

Both sides reach the same Worker: by default a small JSON answer with a content-type
header, the request with four headers; with ``--worker minimal`` the smallest Worker
there is, ``Response("ok")``, and one request header (the raw round trip's own cost is
about the same either way, so its ratio is highest there):

- ``binding``: inside a running Worker, ``await env.LEAF.fetch(request)`` with one
  prebuilt GET Request (no body), called again and again: a child invocation at
  depth 2, the cheapest path fastbind has between two Workers.
- ``raw``: ``await raw(b"GET", url, headers, b"")`` on a ``RawDispatcher``: the parts
  of a request as an HTTP parser gives them (bytes method, str URL, four bytes header
  pairs) in, ``(status, headers, body)`` out. Each call is a whole top-level request:
  it builds the Request, opens and ends a pipeline, and converts the Response.
- ``dispatch``: ``await runtime.dispatch("leaf", request)`` with a prebuilt Request,
  to show what the top-level dispatch itself costs apart from the raw conversions.

Each is timed per call over --calls calls on one uvloop loop, in short rounds that
take turns (in an order that rotates) after a warm-up round. The ratio to the binding
round trip is taken in each round, between samples measured next to each other, and
the median of those is shown with its 10th-90th percentile spread: on a shared
machine, that is what stays put from run to run.

    python bench/bench_embed.py [--calls 2000] [--rounds 101] [--worker json|minimal]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_embed.py     # on the pure twin

Timings on a small shared machine are noisy; ``bench/callgrind_embed.py`` counts the
instructions per call of the same three cases, which do not move between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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


async def minimal_leaf(request: Request, env: Any, ctx: Any) -> Response:
    return Response("ok")


# What each --worker sends and answers: the Worker and the request's raw headers.
WORKERS = {
    "json": (leaf, RAW_HEADERS),
    "minimal": (minimal_leaf, [(b"accept", b"*/*")]),
}


async def time_calls(calls: int, step: Callable[[], Awaitable[Any]]) -> float:
    """Nanoseconds per ``await step()``, over ``calls`` calls."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        await step()
    return (time.perf_counter_ns() - start) / calls


CASES = ("binding", "raw", "dispatch")


async def main(calls: int, rounds: int, worker: str = "json") -> dict[str, Any]:
    leaf_worker, raw_headers = WORKERS[worker]
    rt = Runtime(limits=Limits(subrequests=calls + 10))
    samples: dict[str, list[float]] = {case: [] for case in CASES}

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        # One round of the binding case: ``calls`` calls from this invocation.
        forward = Request(URL, headers=[(n.decode(), v.decode()) for n, v in raw_headers])
        fetch = env.LEAF.fetch
        samples["binding"].append(await time_calls(calls, lambda: fetch(forward)))
        return Response(None)

    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf_worker)
    raw = RawDispatcher(rt, "leaf")
    prebuilt = Request(URL, headers=[(n.decode(), v.decode()) for n, v in raw_headers])

    async def binding_round() -> None:
        await rt.dispatch("caller", Request(URL))

    async def raw_round() -> None:
        samples["raw"].append(await time_calls(calls, lambda: raw(b"GET", URL, raw_headers, b"")))

    async def dispatch_round() -> None:
        samples["dispatch"].append(await time_calls(calls, lambda: rt.dispatch("leaf", prebuilt)))

    steps = {"binding": binding_round, "raw": raw_round, "dispatch": dispatch_round}
    # Short rounds that take turns, in an order that changes every round, so that a
    # busy moment of the machine weighs on the cases alike, and each round's ratios
    # compare samples measured next to each other. Round 0 warms up.
    for round_ in range(rounds + 1):
        for case in CASES[round_ % 3:] + CASES[:round_ % 3]:
            await steps[case]()
        if round_ == 0:
            for values in samples.values():
                values.clear()
    return {"samples": samples, "implementation": rt.implementation, "worker": worker}


def report(results: dict[str, Any]) -> None:
    samples = results["samples"]
    binding = samples["binding"]
    print(f"core: {results['implementation']}, worker: {results['worker']}, {len(binding)} rounds; "
          "ratios are the median of each round's ratio (p10-p90)")
    for name in CASES:
        values = samples[name]
        ratios = sorted(v / b for v, b in zip(values, binding))
        n = len(ratios)
        print(f"  {name:9s} {statistics.median(values) / 1000:7.2f} us/call (min {min(values) / 1000:.2f})"
              f"  {statistics.median(ratios):5.2f}x binding ({ratios[n // 10]:.2f}-{ratios[n * 9 // 10]:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--worker", choices=sorted(WORKERS), default="json",
                        help="the Worker both sides reach (see above)")
    args = parser.parse_args()
    report(uvloop.run(main(args.calls, args.rounds, args.worker)))
