"""Hops between processes, in one test process: real servers on 127.0.0.1 and unix sockets.

Two Runtimes stand for two processes (slots of one node, or two servers joined by a
remote binding), each served by a real ``Server``; calls between them are real HTTP
requests. Both cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fastbind import (
    CpuLimitExceeded,
    DurableObject,
    FastbindError,
    Limits,
    Request,
    Response,
    Runtime,
    SubrequestDepthError,
    WebSocketPair,
    current_invocation,
    remote,
)
from fastbind.cluster.node import NodeSetup
from fastbind.durable import DurableObjects
from fastbind.http.server import Server
from fastbind.outbound.hop import HopKey
from fastbind.outbound.remote import RemoteBindings
from fastbind.websocket import CloseEvent

KEY = HopKey("hop tests: a shared secret of enough bytes")


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"


class Box(DurableObject):
    """What the tests call in the other process."""

    seen: list[int]

    def __init__(self, state: Any, env: Any) -> None:
        super().__init__(state, env)
        self.seen = []

    async def echo(self, *args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    async def slot(self) -> int:
        return int(self.env.SLOT)

    async def boom(self) -> None:
        raise ValueError("boom in the object")

    async def append(self, n: int) -> list[int]:
        self.seen.append(n)
        return list(self.seen)

    async def limits(self) -> tuple[int, int, str]:
        inv = current_invocation()
        assert inv is not None
        return inv.depth, inv.pipeline.cpu_limit_ns, inv.pipeline.pipeline_id

    async def fetch(self, request: Request) -> Response:
        if request.headers.get("upgrade") == "websocket":
            client, server = WebSocketPair()
            self.state.accept_websocket(server)
            return Response(None, status=101, web_socket=client)
        if request.url.endswith("/stream"):
            async def chunks() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield b"part%d " % i
            return Response(chunks(), headers={"x-slot": str(self.env.SLOT)})
        body = await request.text()
        return Response(f"{request.method} {request.url} {body}", status=201, headers={"x-slot": str(self.env.SLOT)})

    async def websocket_message(self, ws: Any, message: Any) -> None:
        ws.send(f"echo {message}")


async def _gateway(request: Request, env: Any, ctx: Any) -> Response:
    return Response("unused")


def _box_runtime(slot: int, reports: list[Any]) -> Runtime:
    rt = Runtime(limits=Limits(cpu_ms=5000), on_pipeline_end=reports.append)
    rt.add_worker("gateway", _gateway, vars={"SLOT": slot}, durable_objects={"BOXES": Box})
    return rt


class TwoSlots:
    """Two Runtimes joined as slots 0 and 1 of one node, each served for real."""

    def __init__(self) -> None:
        self.setup = NodeSetup(slots=2, port=0)
        self.reports: list[list[Any]] = [[], []]
        self.runtimes = [_box_runtime(slot, self.reports[slot]) for slot in range(2)]
        self.servers: list[Server] = []

    async def __aenter__(self) -> TwoSlots:
        for slot, rt in enumerate(self.runtimes):
            self.setup.join(rt, slot)
            server = Server(rt, "gateway")
            await server.start("127.0.0.1", 0)
            await server.listen_unix(**self.setup.sockets(slot))
            self.servers.append(server)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            await server.shutdown(5.0)
        self.setup.close()

    def stub_in_slot(self, slot: int, prefix: str = "box") -> Any:
        """A stub, made in slot 0's Runtime, of an object that lives in ``slot``."""
        ns = self.runtimes[0].extension(DurableObjects).namespaces[0]
        router = self.runtimes[0].extension(DurableObjects).router
        for i in range(100):
            oid = ns.id_from_name(f"{prefix}{i}")
            if router.placement.slot_of(oid.raw) == slot:  # type: ignore[union-attr]
                return ns.get(oid)
        raise AssertionError("no id of that slot")

    async def in_slot_0(self, body: Any) -> Any:
        """Run ``body(ctx)`` as a Worker of slot 0 (stubs are used inside invocations)."""
        result: list[Any] = []

        async def worker(request: Request, env: Any, ctx: Any) -> Response:
            result.append(await body(ctx))
            return Response("ok")

        rt = self.runtimes[0]
        handle = rt.core.WorkerHandle("caller", worker)
        handle.env = None
        response = await rt.entry_for(handle)(Request("http://t/"))
        assert response.status == 200, await response.text()
        return result[0]


def test_rpc_values_and_exceptions_cross_processes(core: Any, run: Any) -> None:
    async def go() -> None:
        async with TwoSlots() as node:
            stub = node.stub_in_slot(1)
            local = node.stub_in_slot(0)
            when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
            args = (1, "a", b"x", (1, 2), {1, 2}, frozenset({3}), Point(1, 2), Color.RED, when,
                    datetime.date(2026, 1, 2), 2**80, 1.5, None, True, {"$": 1, 2: "b"}, bytearray(b"y"))

            async def calls(ctx: Any) -> Any:
                assert await stub.slot() == 1 and await local.slot() == 0
                echoed = await stub.echo(*args, key=[1, {"k": "v"}])
                special = await stub.echo(math.inf)
                with pytest.raises(ValueError, match="boom in the object"):
                    await stub.boom()
                with pytest.raises(TypeError, match="does not implement the method"):
                    await stub.missing()
                with pytest.raises(TypeError, match="Cannot pass a value of type object"):
                    await stub.echo(object())
                return echoed, special

            echoed, special = await node.in_slot_0(calls)
            assert echoed == (args, {"key": [1, {"k": "v"}]})
            assert [type(a) for a in echoed[0]] == [type(a) for a in args]
            assert special == ((math.inf,), {})

    run(go())


def test_the_input_gate_keeps_one_callers_order_across_processes(core: Any, run: Any) -> None:
    async def go() -> None:
        async with TwoSlots() as node:
            stub = node.stub_in_slot(1, "order")

            async def calls(ctx: Any) -> Any:
                return await asyncio.gather(*[stub.append(n) for n in range(50)])

            results = await node.in_slot_0(calls)
            assert results[-1] == list(range(50))
            assert [len(r) for r in results] == list(range(1, 51))

    run(go())


def test_fetch_streams_and_websockets_reach_an_object_in_another_process(core: Any, run: Any) -> None:
    async def go() -> None:
        async with TwoSlots() as node:
            stub = node.stub_in_slot(1, "fetch")

            async def calls(ctx: Any) -> Any:
                posted = await stub.fetch("https://example.com/a?b=c", method="POST", body="hello")
                streamed = await stub.fetch("https://example.com/stream")
                socket_answer = await stub.fetch("https://example.com/ws", headers={"Upgrade": "websocket"})
                ws = socket_answer.web_socket
                ws.accept()
                ws.send("hi")
                message = await ws.receive()
                ws.close(1000, "done")
                closed = await ws.receive()
                return (posted.status, posted.headers.get("x-slot"), await posted.text(),
                        streamed.headers.get("x-slot"), await streamed.text(),
                        socket_answer.status, message, isinstance(closed, CloseEvent))

            assert await node.in_slot_0(calls) == (
                201, "1", "POST https://example.com/a?b=c hello", "1", "part0 part1 part2 ", 101, "echo hi", True,
            )

    run(go())


def test_the_pipeline_travels_with_a_forwarded_call(core: Any, run: Any) -> None:
    async def go() -> None:
        async with TwoSlots() as node:
            stub = node.stub_in_slot(1, "ledger")

            async def calls(ctx: Any) -> Any:
                return ctx.pipeline.pipeline_id, await stub.limits()

            caller_id, (depth, cpu_limit_ns, callee_id) = await node.in_slot_0(calls)
            await asyncio.sleep(0.05)
            assert depth == 2 and callee_id == caller_id
            assert 0 < cpu_limit_ns <= 5000 * 1_000_000
            (caller_report,) = [r for r in node.reports[0] if r.entry == "caller"]
            assert caller_report.pipeline_id == caller_id
            (entry,) = caller_report.subrequests
            assert (entry.kind, entry.depth, entry.outcome) == ("durable_object", 2, "ok")
            (owner_report,) = node.reports[1]
            assert owner_report.pipeline_id == caller_id and owner_report.depth == 2
            assert owner_report.entry.startswith("Box:")

    run(go())


# -- remote bindings ------------------------------------------------------------------------


class TwoServers:
    """Runtime A binds Runtime B by URL; both served on 127.0.0.1."""

    def __init__(self, b_worker: Any, *, a_limits: Limits | None = None, b_limits: Limits | None = None,
                 b_key: HopKey | None = KEY) -> None:
        self.reports_a: list[Any] = []
        self.reports_b: list[Any] = []
        self.b = Runtime(limits=b_limits, on_pipeline_end=self.reports_b.append)
        self.b.add_worker("b", b_worker)
        self.b.extension(RemoteBindings).key = b_key
        self.a_limits = a_limits
        self.server_b = Server(self.b, "b")

    async def __aenter__(self) -> TwoServers:
        await self.server_b.start("127.0.0.1", 0)
        port = self.server_b.addresses[0][1]
        self.a = Runtime(limits=self.a_limits, on_pipeline_end=self.reports_a.append)

        async def a(request: Request, env: Any, ctx: Any) -> Response:
            try:
                answer = await env.B.fetch(request)
            except (SubrequestDepthError, FastbindError, CpuLimitExceeded) as exc:
                return Response(f"{type(exc).__name__}: {exc}", status=599)
            return Response(f"{await answer.text()} | {ctx.pipeline.pipeline_id}", status=answer.status)

        self.a.add_worker("a", a, services={"B": remote(f"http://127.0.0.1:{port}")})
        self.a.extension(RemoteBindings).key = KEY
        return self

    async def call(self) -> tuple[int, str]:
        response = await self.a.dispatch("a", Request("http://t/x?y=1"))
        return response.status, await response.text()

    async def __aexit__(self, *exc: object) -> None:
        await self.a.aclose()
        await self.server_b.shutdown(5.0)


def test_a_remote_binding_continues_the_callers_pipeline(core: Any, run: Any) -> None:
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        pipeline = ctx.pipeline
        return Response(f"{ctx.depth} {pipeline.pipeline_id} {pipeline.cpu_limit_ns} {request.url}")

    async def go() -> None:
        async with TwoServers(b, a_limits=Limits(cpu_ms=2000)) as pair:
            status, text = await pair.call()
            await asyncio.sleep(0.05)
            remote_part, _, caller_id = text.partition(" | ")
            depth, callee_id, cpu_limit_ns, url = remote_part.split(" ")
            assert status == 200 and depth == "2" and callee_id == caller_id
            assert 0 < int(cpu_limit_ns) <= 2000 * 1_000_000
            assert url.endswith("/x?y=1")
            (report_a,) = pair.reports_a
            (report_b,) = pair.reports_b
            assert report_a.pipeline_id == report_b.pipeline_id == caller_id and report_b.depth == 2
            (entry,) = report_a.subrequests
            assert (entry.kind, entry.status, entry.outcome) == ("fetch", 200, "ok")

    run(go())


def test_a_redirect_answered_through_a_remote_binding_is_followed_without_the_hop_headers(
    core: Any, run: Any
) -> None:
    # The hop headers are signed for the first URL: sent on to the Location they would
    # be refused there (or handed to whoever that is); the redirected request is plain.
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        if "/landed" in request.url:
            hop = sorted(name for name, _ in request.headers.items() if name.startswith("fastbind-"))
            return Response(f"landed depth {ctx.depth} hop headers {hop}")
        return Response(None, status=302, headers={"location": "/landed"})

    async def go() -> None:
        async with TwoServers(b) as pair:
            status, text = await pair.call()
            assert (status, text.partition(" | ")[0]) == (200, "landed depth 1 hop headers []")

    run(go())


def test_a_workers_own_fastbind_error_header_does_not_reach_the_caller_as_fastbinds(core: Any, run: Any) -> None:
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        # As a Worker that passes on an answer it got from another fastbind server.
        return Response("passed on", headers={"fastbind-error": "refused"})

    async def go() -> None:
        async with TwoServers(b) as pair:
            status, text = await pair.call()
            assert (status, text.partition(" | ")[0]) == (200, "passed on")

    run(go())


def test_a_receiver_with_a_lower_depth_limit_refuses_in_the_callers_terms(core: Any, run: Any) -> None:
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        return Response("reached")

    async def go() -> None:
        async with TwoServers(b, b_limits=Limits(depth=1)) as pair:
            status, text = await pair.call()
            assert status == 599 and text.startswith("SubrequestDepthError: Subrequest depth limit exceeded")

    run(go())


def test_hops_to_a_server_without_the_secret_are_refused(core: Any, run: Any) -> None:
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        return Response("reached")

    async def go() -> None:
        async with TwoServers(b, b_key=None) as pair:
            status, text = await pair.call()
            assert status == 599 and "refused the call" in text and "FASTBIND_CLUSTER_SECRET" in text
        async with TwoServers(b, b_key=HopKey("another secret, of enough bytes")) as pair:
            status, text = await pair.call()
            assert status == 599 and "does not match" in text
            assert pair.reports_b == []  # B's Worker never ran

    run(go())


def test_a_cpu_budget_spent_in_the_other_process_stops_the_caller(core: Any, run: Any) -> None:
    async def b(request: Request, env: Any, ctx: Any) -> Response:
        end = os.times().user + 5  # a busy loop that the budget cuts short
        while os.times().user < end:
            pass
        return Response("finished")

    async def go() -> None:
        async with TwoServers(b, a_limits=Limits(cpu_ms=300)) as pair:
            status, text = await pair.call()
            assert status == 599 and text == "CpuLimitExceeded: Worker exceeded CPU time limit."

    run(go())
