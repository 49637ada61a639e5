"""The connection gate (docs/design.md, "Open connections" and "Lifecycle"): FIFO, never failing, cancellation-safe, per pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fetch_origin import collect, fetches, origin, origin_server, until  # noqa: F401 (fixtures)

from fastbind import Limits, Request, Response, Runtime, fetch, remote
from fastbind.outbound.gate import ConnectionGate, gate_for


# -- the gate on its own -------------------------------------------------------------


def test_gate_is_fifo_and_cancellation_neither_takes_nor_leaks_a_slot(run) -> None:
    async def main() -> None:
        gate = ConnectionGate(2)
        await gate.acquire()
        await gate.acquire()
        order: list[str] = []

        async def take(name: str) -> None:
            await gate.acquire()
            order.append(name)

        tasks: dict[str, asyncio.Task[None]] = {}
        for name in "abcd":
            tasks[name] = asyncio.create_task(take(name))
            queued = len(tasks)
            await until(lambda: gate.waiting == queued, f"{name} queued")
        tasks["b"].cancel()  # cancelled while queued: leaves the queue
        await asyncio.gather(tasks["b"], return_exceptions=True)
        assert (gate.active, gate.waiting) == (2, 3)

        gate.release()  # handed to "a"
        await tasks["a"]
        gate.release()  # handed to "c", which is cancelled before it runs: passes it to "d"
        tasks["c"].cancel()
        await asyncio.gather(tasks["c"], tasks["d"], return_exceptions=True)
        assert tasks["c"].cancelled() and order == ["a", "d"]
        assert (gate.active, gate.waiting) == (2, 0)

        newcomer = asyncio.create_task(take("late"))
        await until(lambda: gate.waiting == 1, "the newcomer queued")
        gate.release()
        await newcomer
        for _ in range(2):
            gate.release()
        assert (gate.active, gate.waiting) == (0, 0)
        with pytest.raises(RuntimeError):
            gate.release()

    run(main())


def test_one_gate_per_pipeline_gone_with_it(core) -> None:
    from fastbind.outbound import gate as gate_module

    first = core.PipelineContext("a", Limits(open_connections=3))
    second = core.PipelineContext("b", Limits())
    assert gate_for(first) is gate_for(first)
    assert gate_for(first) is not gate_for(second)
    assert (gate_for(first).limit, gate_for(second).limit) == (3, 6)
    before = len(gate_module._gates)
    first.close()
    second.close()
    del first, second
    assert len(gate_module._gates) == before - 2


# -- the gate under fetches from Workers ---------------------------------------------


def test_twenty_fetches_from_three_workers_never_exceed_six_awaiting_headers(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def fetcher(request, env, ctx):
        n = int(request.headers.get("x-n"))
        responses = await asyncio.gather(
            *(fetch(origin.url(f"/held?i={ctx.worker}{i}")) for i in range(n))
        )
        return Response.json([await r.text() for r in responses])

    async def pong(request, env, ctx):
        return Response("pong")

    async def gateway(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        calls = asyncio.gather(
            env.A.fetch("https://a/", headers={"x-n": "7"}),
            env.B.fetch("https://b/", headers={"x-n": "7"}),
            env.C.fetch("https://c/", headers={"x-n": "6"}),
        )
        await until(lambda: origin.inflight == 6 and gate.waiting == 14, "6 held and 14 queued")
        # The gate is full, yet a binding call goes straight through.
        answer = await env.PONG.fetch("https://pong/")
        seen["during_binding"] = (origin.inflight, gate.active, gate.waiting, await answer.text())
        origin.open_gate()
        results = await calls
        seen["after"] = (gate.active, gate.waiting)
        return Response.json([await r.json() for r in results])

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("gateway", gateway, services={"A": "a", "B": "b", "C": "c", "PONG": "pong"})
    for name in ("a", "b", "c"):
        rt.add_worker(name, fetcher)
    rt.add_worker("pong", pong)

    async def main():
        async with rt:
            resp = await rt.dispatch("gateway", Request("https://example.com/"))
            return await resp.json()

    bodies = run(main())
    assert [len(b) for b in bodies] == [7, 7, 6]
    assert sorted(sum(bodies, [])) == sorted(origin.arrivals)
    assert origin.requests == 20
    assert origin.peak == 6
    assert seen["during_binding"] == (6, 6, 14, "pong")
    assert seen["after"] == (0, 0)
    records = fetches(reports[0])
    assert len(records) == 20 and {r.outcome for r in records} == {"ok"}
    assert sorted(r.caller for r in records) == ["a"] * 7 + ["b"] * 7 + ["c"] * 6


def test_queued_fetches_reach_the_network_in_the_order_they_queued(core, run, origin) -> None:
    async def worker(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        tasks = [asyncio.create_task(fetch(origin.url("/held?i=first")))]
        await until(lambda: origin.inflight == 1, "the first fetch held")
        for i in range(5):
            tasks.append(asyncio.create_task(fetch(origin.url(f"/held?i={i}"))))
            await until(lambda: gate.waiting == i + 1, f"fetch {i} queued")
        origin.open_gate()
        return Response.json([await r.text() for r in await asyncio.gather(*tasks)])

    rt = Runtime(limits=Limits(open_connections=1))
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == ["first", "0", "1", "2", "3", "4"]
    assert origin.arrivals == ["first", "0", "1", "2", "3", "4"]
    assert origin.peak == 1


def test_a_fetch_cancelled_while_queued_leaves_the_queue(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        held = [asyncio.create_task(fetch(origin.url(f"/held?i={i}"))) for i in range(6)]
        await until(lambda: origin.inflight == 6, "6 fetches held")
        queued = asyncio.create_task(fetch(origin.url("/held?i=queued")))
        await until(lambda: gate.waiting == 1, "the 7th fetch queued")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        seen["after_cancel"] = (queued.cancelled(), gate.active, gate.waiting)
        origin.open_gate()
        texts = [await r.text() for r in await asyncio.gather(*held)]
        seen["after"] = (gate.active, gate.waiting)
        return Response.json(texts)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == [str(i) for i in range(6)]
    assert seen["after_cancel"] == (True, 6, 0)
    assert seen["after"] == (0, 0)
    assert origin.requests == 6 and "queued" not in origin.arrivals
    outcomes = [r.outcome for r in fetches(reports[0])]
    assert sorted(outcomes) == ["canceled"] + ["ok"] * 6


def test_the_pipeline_ending_cancels_an_in_flight_fetch(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        seen["gate"] = gate_for(ctx.pipeline)
        seen["task"] = asyncio.create_task(fetch(origin.url("/held?i=orphan")))
        await until(lambda: origin.inflight == 1, "the fetch to reach the server")
        return Response("done before the fetch")

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            assert await resp.text() == "done before the fetch"
            # The server sees the connection go away: the fetch did not run on.
            await until(lambda: origin.disconnected == 1, "the server to see the disconnect")

    run(main())
    assert seen["task"].cancelled()
    assert (seen["gate"].active, seen["gate"].waiting) == (0, 0)
    assert [r.outcome for r in fetches(reports[0])] == ["canceled"]
    assert origin.inflight == 0


def test_a_remote_binding_is_gated_like_any_fetch(core, run, origin) -> None:
    seen: dict[str, Any] = {}

    async def gateway(request, env, ctx):
        gate = gate_for(ctx.pipeline)
        tasks = [asyncio.create_task(env.ORIGIN.fetch(f"https://any/held?i={i}")) for i in range(3)]
        await until(lambda: origin.inflight == 2 and gate.waiting == 1, "2 held and 1 queued")
        seen["state"] = (gate.active, gate.waiting)
        origin.open_gate()
        return Response.json([await r.text() for r in await asyncio.gather(*tasks)])

    rt = Runtime(limits=Limits(open_connections=2))
    rt.add_worker("gateway", gateway, services={"ORIGIN": remote(origin.url(""))})

    async def main():
        async with rt:
            return await (await rt.dispatch("gateway", Request("https://e/"))).json()

    assert run(main()) == ["0", "1", "2"]
    assert seen["state"] == (2, 1) and origin.peak == 2
