"""One outbound fetch through ``fastbind.fetch`` vs. a plain aiohttp ``session.get``, side by side.

Both sides GET the same small response from the same local aiohttp.web server, which
runs in a process of its own (uvloop, 127.0.0.1), and read its body to the end:

- ``aiohttp``: ``async with session.get(url) as resp: await resp.read()`` on one
  ``aiohttp.ClientSession()`` with its defaults, as an application would write it.
- ``aiohttp+t``: the same with fetch()'s timeout policy (30 s to connect and for
  each wait for data, ``sock_read``), to tell the price of that policy, a timer
  re-armed on every read, from the price of fastbind itself.
- ``fastbind``: inside a running Worker, ``resp = await fetch(url)`` then
  ``await resp.bytes()``: a subrequest charged to the invocation, a slot of the
  pipeline's connection gate, a fastbind Response with a streamed body, on the
  Runtime's shared session. Each dispatch makes ``--batch`` fetches in a row, so
  the figure is the cost of a fetch, not of a top-level request.

Requests go one after another on one keep-alive connection, so each figure is a
whole round trip: client, loopback and server, as a Worker waits for it. Small VMs
are noisy, so the two run in many short rounds, alternating, on one uvloop loop
after a warm-up; the ratio is the median over rounds of fastbind's time over the
aiohttp round next to it, for wall time and for the client process's CPU time
(which leaves out the server, so it shows fastbind's own overhead most sharply).
Goal: fastbind within 1.1x of aiohttp.

    python bench/bench_fetch.py [--calls 300] [--rounds 40] [--batch 100]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_fetch.py      # on the pure twin
"""

from __future__ import annotations

import argparse
import asyncio
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from fastbind import Limits, Request, Response, Runtime, fetch
from fastbind.outbound.client import client_timeout
from fastbind.runtime import DEFAULT_FETCH_TIMEOUT_S as DEFAULT_FETCH_TIMEOUT

BODY = b'{"id":42,"name":"ada","roles":["admin"]}'


# -- the server, in a process of its own ------------------------------------------------


def serve() -> None:
    async def item(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/item", item)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    uvloop.run(main())


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        raise RuntimeError("the benchmark server did not start")
    return proc, int(proc.stdout.readline())


# -- the two clients ----------------------------------------------------------------------


def aiohttp_round(session: aiohttp.ClientSession, url: str) -> Callable[[int], Awaitable[None]]:
    async def run(calls: int) -> None:
        for _ in range(calls):
            async with session.get(url) as resp:
                body = await resp.read()
            assert body == BODY

    return run


def fastbind_round(runtime: Runtime, batch: int) -> Callable[[int], Awaitable[None]]:
    request = Request("https://bench.internal/")

    async def run(calls: int) -> None:
        for _ in range(calls // batch):
            resp = await runtime.dispatch("client", request)
            assert resp.status == 200, resp.status

    return run


def client_worker(url: str, batch: int) -> Callable[..., Awaitable[Response]]:
    async def client(request: Request, env: Any, ctx: Any) -> Response:
        for _ in range(batch):
            resp = await fetch(url)
            body = await resp.bytes()
            assert body == BODY
        return Response(None)

    return client


# -- measuring ----------------------------------------------------------------------------


async def per_call_us(run: Callable[[int], Awaitable[None]], calls: int) -> tuple[float, float]:
    """Wall and CPU microseconds per call over ``calls`` calls."""
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    await run(calls)
    return (time.perf_counter_ns() - wall) / calls / 1000, (time.process_time_ns() - cpu) / calls / 1000


async def bench(url: str, calls: int, rounds: int, batch: int) -> dict[str, list[tuple[float, float]]]:
    runtime = Runtime(limits=Limits(subrequests=batch))
    runtime.add_worker("client", client_worker(url, batch))
    same_policy = aiohttp.ClientSession(timeout=client_timeout(DEFAULT_FETCH_TIMEOUT))
    async with aiohttp.ClientSession() as session, same_policy, runtime:
        cases = {
            "aiohttp": aiohttp_round(session, url),
            "aiohttp+t": aiohttp_round(same_policy, url),
            "fastbind": fastbind_round(runtime, batch),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for run in cases.values():  # warm-up: connections, caches, allocator
            await run(max(batch, 1000))
        for i in range(rounds):
            # Alternate which goes first, so neither always runs in the other's wake.
            order = list(cases.items()) if i % 2 == 0 else list(cases.items())[::-1]
            for name, run in order:
                results[name].append(await per_call_us(run, calls))
    return results


def paired_ratio(rounds: list[tuple[float, float]], base: list[tuple[float, float]], i: int) -> float:
    """Median over rounds of one case's time over the base case's, measured side by side."""
    return statistics.median(r[i] / b[i] for r, b in zip(rounds, base))


def report(results: dict[str, list[tuple[float, float]]]) -> None:
    base = results["aiohttp"]
    print(f"{'case':<10} {'wall us':>8} {'x aiohttp':>10} {'cpu us':>8} {'x aiohttp':>10}   (medians over rounds)")
    for name, rounds in results.items():
        wall = statistics.median(w for w, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        print(f"{name:<10} {wall:>8.1f} {paired_ratio(rounds, base, 0):>10.3f} "
              f"{cpu:>8.1f} {paired_ratio(rounds, base, 1):>10.3f}")
    same_policy = results["aiohttp+t"]
    print(f"fastbind over aiohttp+t (same timeout policy): wall x "
          f"{paired_ratio(results['fastbind'], same_policy, 0):.3f}, cpu x "
          f"{paired_ratio(results['fastbind'], same_policy, 1):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="fetches per round")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=100, help="fetches per dispatch")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.calls % args.batch:
        parser.error("--calls must be a multiple of --batch")

    from fastbind import core as cores

    proc, port = start_server()
    try:
        results = uvloop.run(bench(f"http://127.0.0.1:{port}/item", args.calls, args.rounds, args.batch))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    core = "compiled" if cores.impl is cores.compiled else "pure"
    print(f"GET of a {len(BODY)}-byte body, read to the end; {args.rounds} rounds x {args.calls} calls "
          f"each; fastbind core: {core}; Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
          f"uvloop {uvloop.__version__}")
    report(results)


if __name__ == "__main__":
    main()
