"""``fastbind bench``: a binding round trip and an RPC call beside their floors and in-process HTTP peers."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from time import perf_counter_ns
from types import ModuleType
from typing import Any

from . import core as cores
from .bench_report import TARGETS, CaseResult, Target, check_targets, machine, paired_ratio, plot, report, table
from .request import Request
from .entrypoint import WorkerEntrypoint
from .response import Response
from .runtime import Runtime

__all__ = (
    "CALLS",
    "URL",
    "CALLS_HEADER",
    "ELAPSED_HEADER",
    "Batch",
    "Opener",
    "PeerMissing",
    "child",
    "calls_of",
    "elapsed_response",
    "binding_parent",
    "floor_parent",
    "RpcChild",
    "RPC_ARG",
    "rpc_parent",
    "rpc_sync_parent",
    "method_parent",
    "sync_method_parent",
    "runtime_on",
    "round_trip_runtime",
    "rpc_runtime",
    "timed_dispatch",
    "dispatcher",
    "asgi_hello",
    "call_asgi",
    "open_raw_asgi",
    "open_httpx",
    "open_aiohttp",
    "Case",
    "CaseResult",
    "measure",
    "check_targets",
    "paired_ratio",
    "plot",
    "report",
    "table",
    "core_cases",
    "Target",
    "TARGETS",
    "pinned",
    "machine",
    "main",
)

CALLS = 1000  # calls per batch: one dispatch of a timing parent, well inside the 10,000 subrequest budget
MAX_CALLS = 10_000  # Limits().subrequests: what one invocation may make
URL = "https://example.com/bench"
CALLS_HEADER = "x-calls"  # the one header of the forwarded Request: how many calls the parent makes
ELAPSED_HEADER = "x-elapsed-ns"  # how the parent reports the time its calls took

Batch = Callable[[int], Awaitable[int]]  # makes ``calls`` calls and returns the ns they took
Opener = Callable[[AsyncExitStack], Awaitable[Batch]]


class PeerMissing(Exception):
    """A peer's library is not installed (or a core is not built): its case is skipped."""


# --- fastbind: Workers that time their own calls ------------------------------------
# Each batch is one dispatch of a parent Worker that makes K calls in a loop and reports
# the time of the loop alone, so the cost of dispatch itself stays out of the figure.


async def child(request: Request, env: Any, ctx: Any) -> Response:
    """The Worker every round trip reaches: a small Response, nothing read."""
    return Response("ok")


def calls_of(request: Request) -> int:
    """How many calls a timing parent makes: its request's one header."""
    return int(request.headers.get(CALLS_HEADER) or CALLS)


def elapsed_response(start: int) -> Response:
    """What a timing parent answers: the ns since ``start`` in a header."""
    return Response(None, headers={ELAPSED_HEADER: str(perf_counter_ns() - start)})


async def binding_parent(request: Request, env: Any, ctx: Any) -> Response:
    """K binding calls with the Request the parent was given (no body: forwarded again and again)."""
    calls = calls_of(request)
    start = perf_counter_ns()
    for _ in range(calls):
        await env.CHILD.fetch(request)
    return elapsed_response(start)


async def floor_parent(request: Request, env: Any, ctx: Any) -> Response:
    """The floor: the same K calls as a direct await of the same child, same objects."""
    calls = calls_of(request)
    start = perf_counter_ns()
    for _ in range(calls):
        await child(request, env, ctx)
    return elapsed_response(start)


# --- RPC: a method of a WorkerEntrypoint, through a binding or called directly -------

RPC_ARG = 7  # what every RPC call passes, and gets back: an int crosses as it is


class RpcChild(WorkerEntrypoint):
    """The WorkerEntrypoint every RPC call reaches: methods that hand back their int."""

    async def value(self, n: int) -> int:
        return n

    def value_sync(self, n: int) -> int:
        return n


async def rpc_parent(request: Request, env: Any, ctx: Any) -> Response:
    """K RPC calls of an async method: a new RpcChild, a child invocation, a ledger entry each."""
    calls = calls_of(request)
    start = perf_counter_ns()
    for _ in range(calls):
        await env.CHILD.value(RPC_ARG)
    return elapsed_response(start)


async def method_parent(request: Request, env: Any, ctx: Any) -> Response:
    """The floor of RPC: the same K calls of the same async method on one existing instance."""
    calls = calls_of(request)
    instance = RpcChild(ctx, env)
    start = perf_counter_ns()
    for _ in range(calls):
        await instance.value(RPC_ARG)
    return elapsed_response(start)


async def rpc_sync_parent(request: Request, env: Any, ctx: Any) -> Response:
    """K RPC calls of a sync method: the call is still awaited, as over any binding."""
    calls = calls_of(request)
    start = perf_counter_ns()
    for _ in range(calls):
        await env.CHILD.value_sync(RPC_ARG)
    return elapsed_response(start)


async def sync_method_parent(request: Request, env: Any, ctx: Any) -> Response:
    """The floor of a sync RPC method: a plain call of it on one existing instance."""
    calls = calls_of(request)
    instance = RpcChild(ctx, env)
    start = perf_counter_ns()
    for _ in range(calls):
        instance.value_sync(RPC_ARG)
    return elapsed_response(start)


def runtime_on(core: ModuleType | None, **kwargs: Any) -> Runtime:
    """A Runtime run by ``core`` (``cores.compiled`` or ``cores.twin``) whatever the default is."""
    if core is None:
        raise PeerMissing("the compiled core is not built")
    previous = cores.impl
    cores.impl = core  # read once, by Runtime.__init__: the Runtime keeps its core
    try:
        return Runtime(**kwargs)
    finally:
        cores.impl = previous


def round_trip_runtime(core: ModuleType | None) -> Runtime:
    """Workers ``binding`` and ``floor`` that time K calls of ``child`` each way."""
    rt = runtime_on(core)
    rt.add_worker("binding", binding_parent, services={"CHILD": "child"})
    rt.add_worker("floor", floor_parent)
    rt.add_worker("child", child)
    return rt


def rpc_runtime(core: ModuleType | None) -> Runtime:
    """Workers ``rpc``, ``rpc_sync``, ``method`` and ``sync_method`` that time K calls of RpcChild's methods."""
    rt = runtime_on(core)
    rt.add_worker("rpc", rpc_parent, services={"CHILD": "rpc_child"})
    rt.add_worker("rpc_sync", rpc_sync_parent, services={"CHILD": "rpc_child"})
    rt.add_worker("method", method_parent)
    rt.add_worker("sync_method", sync_method_parent)
    rt.add_worker("rpc_child", RpcChild)
    return rt


async def timed_dispatch(rt: Runtime, worker: str, calls: int) -> int:
    """Dispatch one batch to timing parent ``worker``; the ns its ``calls`` calls took."""
    response = await rt.dispatch(worker, Request(URL, headers={CALLS_HEADER: str(calls)}))
    elapsed = response.headers.get(ELAPSED_HEADER)
    if response.status != 200 or elapsed is None:  # it failed (logged): no figure to give
        raise RuntimeError(f'Timing parent "{worker}" answered {response.status} without a time.')
    return int(elapsed)


def dispatcher(make_runtime: Callable[[], Runtime], worker: str) -> Opener:
    """Open a case that dispatches batches to timing parent ``worker`` of a new Runtime."""

    async def open_(stack: AsyncExitStack) -> Batch:
        rt = make_runtime()  # raises PeerMissing when its core is not built
        return lambda calls: timed_dispatch(rt, worker, calls)

    return open_


# --- peers: the same round trip through the ASGI and HTTP stacks users have today ----


Message = MutableMapping[str, Any]  # an ASGI scope or event


async def asgi_hello(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """A raw ASGI app answering what ``child`` answers."""
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": b"ok"})


_ASGI_HEADERS = [(CALLS_HEADER.encode(), str(CALLS).encode())]


async def call_asgi(app: Any) -> tuple[int, bytes]:
    """One request to ``app`` with a hand-built scope, receive and send, as a server makes them."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "https", "path": "/bench", "raw_path": b"/bench", "query_string": b"",
        "root_path": "", "headers": _ASGI_HEADERS, "server": ("example.com", 443), "client": None,
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages[0]["status"], messages[1]["body"]


async def open_raw_asgi(stack: AsyncExitStack) -> Batch:
    async def batch(calls: int) -> int:
        start = perf_counter_ns()
        for _ in range(calls):
            await call_asgi(asgi_hello)
        return perf_counter_ns() - start

    return batch


async def open_httpx(stack: AsyncExitStack) -> Batch:
    try:
        import httpx
    except ImportError:
        raise PeerMissing("httpx is not installed (pip install httpx)") from None
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_hello)))
    headers = {CALLS_HEADER: str(CALLS)}

    async def batch(calls: int) -> int:
        start = perf_counter_ns()
        for _ in range(calls):
            await client.get(URL, headers=headers)  # the body is read before it returns
        return perf_counter_ns() - start

    return batch


async def open_aiohttp(stack: AsyncExitStack) -> Batch:
    try:
        import aiohttp
        from aiohttp import web
    except ImportError:
        raise PeerMissing("aiohttp is not installed (pip install aiohttp)") from None

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/bench", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)  # loopback only
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/bench"
    session = await stack.enter_async_context(aiohttp.ClientSession())
    headers = {CALLS_HEADER: str(CALLS)}

    async def batch(calls: int) -> int:
        start = perf_counter_ns()
        for _ in range(calls):
            async with session.get(url, headers=headers) as response:
                await response.read()
        return perf_counter_ns() - start

    return batch


# --- measuring ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One way of making a call: ``role`` is "floor", "fastbind" or "peer"; ``ref`` the
    case it is compared with (the floor that makes the same kind of call)."""

    name: str
    role: str
    open: Opener
    short: str = ""  # the heading of its ratio column, for the floor and peers
    ref: str = ""  # "" for a floor: itself


async def measure(cases: Sequence[Case], calls: int, rounds: int, sample_ns: int) -> list[CaseResult]:
    """ns per call of each case: the cases take turns, one sample each per round.

    Taking turns makes a busy moment of the machine weigh on all cases alike; a sample
    is as many batches of ``calls`` as fill ``sample_ns``, so that fast cases are not
    timed over a fraction of a millisecond.
    """
    results = [CaseResult(case.name, case.role, case.short, ref=case.ref) for case in cases]
    batches: dict[int, tuple[Batch, int]] = {}
    async with AsyncExitStack() as stack:
        for i, case in enumerate(cases):
            try:
                batch = await case.open(stack)
            except PeerMissing as missing:
                results[i].skipped = str(missing)
                continue
            await batch(calls)  # warm-up: caches, lazy imports, connection set-up
            once = max(await batch(calls), 1)
            batches[i] = batch, max(1, min(1000, sample_ns // once))
        live = list(batches)
        for round_ in range(rounds):
            gc.collect()  # what earlier rounds left is not collected inside one case's sample
            shift = round_ % len(live) if live else 0
            for i in live[shift:] + live[:shift]:
                batch, repeat = batches[i]
                total = 0
                for _ in range(repeat):
                    total += await batch(calls)
                results[i].samples.append(total / (repeat * calls))
    return results


def core_cases() -> list[Case]:
    """The core comparison of ``fastbind bench``."""
    awaited, method = "direct await", "direct method call"
    return [
        Case(awaited, "floor", dispatcher(lambda: round_trip_runtime(cores.impl), "floor"), "floor"),
        Case("binding [c]", "fastbind", dispatcher(lambda: round_trip_runtime(cores.compiled), "binding"), ref=awaited),
        Case("binding [py]", "fastbind", dispatcher(lambda: round_trip_runtime(cores.twin), "binding"), ref=awaited),
        Case(method, "floor", dispatcher(lambda: rpc_runtime(cores.impl), "method"), "method"),
        Case("rpc [c]", "fastbind", dispatcher(lambda: rpc_runtime(cores.compiled), "rpc"), ref=method),
        Case("rpc [py]", "fastbind", dispatcher(lambda: rpc_runtime(cores.twin), "rpc"), ref=method),
        Case("raw ASGI by hand", "peer", open_raw_asgi, "raw ASGI", ref=awaited),
        Case("httpx ASGITransport", "peer", open_httpx, "httpx", ref=awaited),
        Case("aiohttp loopback", "peer", open_aiohttp, "aiohttp", ref=awaited),
    ]


# --- measuring where it is steady ----------------------------------------------------

@contextmanager
def pinned(cpu: int | None) -> Iterator[int | None]:
    """Keep this thread on one CPU while it measures (Linux), then as it was: yields the CPU.

    ``cpu`` None picks the last CPU the process may use (the first usually takes the
    most interrupts); -1 leaves the thread free and yields None. A thread that moves
    between CPUs starts again on cold caches, and which case that lands on is chance.
    """
    if cpu == -1 or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    allowed = os.sched_getaffinity(0)
    if cpu is None:
        cpu = max(allowed)
    elif cpu not in allowed:
        raise ValueError(f"--cpu {cpu} is not a CPU this process may use: {sorted(allowed)}")
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)



# --- command line ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``fastbind bench``: print the core comparison; save it with ``--json``, chart it with ``--plot``."""
    parser = argparse.ArgumentParser(
        prog="fastbind bench",
        description="Time a binding round trip and an RPC call against their floors "
                    "(a direct await, a direct method call) and in-process HTTP peers.")
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per batch (one dispatch)")
    parser.add_argument("--rounds", type=int, default=21, help="samples per case; the median is shown")
    parser.add_argument("--sample-ms", type=float, default=20.0,
                        help="least time of one sample: fast cases repeat batches to fill it")
    parser.add_argument("--quick", action="store_true", help="a few short rounds (a smoke run)")
    parser.add_argument("--cpu", type=int, default=None,
                        help="the CPU to measure on (default: the last one allowed; -1: do not pin)")
    parser.add_argument("--json", metavar="FILE", help="save the figures as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="save a bar chart (needs matplotlib)")
    parser.add_argument("--targets", action="store_true",
                        help="also check the project's own targets (bench/README.md) and say which are met")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
        args.sample_ms = min(args.sample_ms, 1.0)
    if not 1 <= args.calls <= MAX_CALLS or args.rounds < 1:
        parser.error(f"--calls must be 1..{MAX_CALLS:,} (one invocation's subrequests), --rounds at least 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'fastbind[plot]'")
    import uvloop  # a dependency of fastbind: the figures are for the loop it serves on

    with ExitStack() as stack:
        try:
            cpu = stack.enter_context(pinned(args.cpu))
        except ValueError as bad:
            parser.error(str(bad))
        results = uvloop.run(measure(core_cases(), args.calls, args.rounds, int(args.sample_ms * 1e6)))
    print(table(results, args.calls, args.rounds, cpu, targets=args.targets))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report(results, args.calls, args.rounds, cpu, targets=args.targets), out, indent=2)
            out.write("\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
