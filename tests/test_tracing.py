"""fastbind.tracing: spans from the ledger, checked with the OpenTelemetry SDK's in-memory exporter.

A gateway -> binding -> RPC -> fetch pipeline on both cores; the fetch goes to a real
aiohttp origin on 127.0.0.1 that echoes the headers it received (the traceparent out).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fetch_origin import origin, origin_server  # noqa: F401 (fixtures)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fastbind
from fastbind import Request, Response, Runtime, WorkerEntrypoint
from fastbind.tracing import instrument, uninstrument

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class Data(WorkerEntrypoint):
    async def lookup(self, url: str) -> dict[str, Any]:
        response = await fastbind.fetch(url, headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        return dict(await response.json())


class Api(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        echoed = await self.env.DATA.lookup(request.headers.get("x-origin"))
        return Response.json(echoed, status=201)


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    return await env.API.fetch(request)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), [s.name for s in finished]
    return named


def test_a_pipeline_is_a_tree_of_spans_that_continues_the_incoming_trace(core, run, origin, spans) -> None:
    provider, exporter = spans
    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"API": "api"})
    rt.add_worker("api", Api, services={"DATA": "data"})
    rt.add_worker("data", Data)
    instrument(rt, provider)
    url = origin.url("/echo")
    incoming = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"

    async def main() -> tuple[int, Any]:
        request = Request("https://example.com/me", headers={"traceparent": incoming, "x-origin": url})
        response = await rt.dispatch("gateway", request)
        answer = response.status, await response.json()
        await rt.aclose()
        return answer

    status, echoed = run(main())
    assert status == 201
    named = by_name(exporter.get_finished_spans())
    assert set(named) == {"gateway", "binding api", "rpc data", f"fetch {url}"}
    root, binding, rpc, fetch = named["gateway"], named["binding api"], named["rpc data"], named[f"fetch {url}"]

    # One trace, the incoming one; parents by the call tree.
    for span in named.values():
        assert span.context.trace_id == int(INCOMING_TRACE, 16)
    assert root.parent is not None and root.parent.span_id == int(INCOMING_SPAN, 16)
    assert root.parent.is_remote
    assert binding.parent.span_id == root.context.span_id
    assert rpc.parent.span_id == binding.context.span_id
    assert fetch.parent.span_id == rpc.context.span_id
    assert root.kind == trace.SpanKind.SERVER and fetch.kind == trace.SpanKind.CLIENT
    assert binding.kind == trace.SpanKind.INTERNAL

    # The fetch sent its own span as the parent, in place of the traceparent the Worker set.
    sent = echoed["headers"]["traceparent"]
    assert sent == f"00-{INCOMING_TRACE}-{fetch.context.span_id:016x}-01"

    assert dict(root.attributes) == {
        "fastbind.target": "gateway", "fastbind.kind": "request", "fastbind.depth": 1,
        "fastbind.outcome": "ok", "http.request.method": "GET", "url.full": "https://example.com/me",
        "http.response.status_code": 201,
    }
    assert dict(binding.attributes) == {
        "fastbind.caller": "gateway", "fastbind.target": "api", "fastbind.kind": "binding",
        "fastbind.depth": 2, "fastbind.outcome": "ok", "http.response.status_code": 201,
    }
    assert dict(rpc.attributes) == {
        "fastbind.caller": "api", "fastbind.target": "data", "fastbind.kind": "rpc",
        "fastbind.depth": 3, "fastbind.outcome": "ok",
    }
    assert dict(fetch.attributes) == {
        "fastbind.caller": "data", "fastbind.target": url, "fastbind.kind": "fetch",
        "fastbind.depth": 3, "fastbind.outcome": "ok", "http.response.status_code": 200, "url.full": url,
    }
    # Times: each child inside its parent.
    assert root.start_time <= binding.start_time <= rpc.start_time <= fetch.start_time
    assert fetch.end_time <= rpc.end_time <= binding.end_time <= root.end_time

    uninstrument(rt, rt.observers[0])
    exporter.clear()
    run(main())
    assert exporter.get_finished_spans() == ()


def test_concurrent_children_are_parented_exactly(core, run, spans) -> None:
    """Two calls in flight at once, each making its own: the ledger's parent index decides."""
    provider, exporter = spans

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        await asyncio.gather(env.A.fetch("https://x/"), env.B.fetch("https://x/"))
        return Response("ok")

    def middle(leaf: str) -> Any:
        async def worker(request: Request, env: Any, ctx: Any) -> Response:
            await asyncio.sleep(0)  # the other call runs its first step meanwhile
            return await env.LEAF.fetch(request)

        return worker

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        return Response("leaf", status=202)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"A": "a", "B": "b"})
    rt.add_worker("a", middle("leaf_a"), services={"LEAF": "leaf_a"})
    rt.add_worker("b", middle("leaf_b"), services={"LEAF": "leaf_b"})
    rt.add_worker("leaf_a", leaf)
    rt.add_worker("leaf_b", leaf)
    instrument(rt, provider)
    reports: list[Any] = []
    rt.on_pipeline_end = reports.append

    async def main() -> None:
        response = await rt.dispatch("gateway", Request("https://example.com/"))
        await response.text()

    run(main())
    named = by_name(exporter.get_finished_spans())
    assert named["binding leaf_a"].parent.span_id == named["binding a"].context.span_id
    assert named["binding leaf_b"].parent.span_id == named["binding b"].context.span_id
    assert named["binding a"].parent.span_id == named["gateway"].context.span_id
    assert named["binding leaf_a"].attributes["http.response.status_code"] == 202
    # The ledger itself: entries interleave, their parents say who called whom.
    ledger = [(r.index, r.parent, r.caller, r.target) for r in reports[0].subrequests]
    assert sorted(ledger) == ledger
    assert {(r[2], r[3]) for r in ledger} == {("gateway", "a"), ("gateway", "b"), ("a", "leaf_a"), ("b", "leaf_b")}
    index = {target: i for i, _, _, target in ledger}
    for i, parent, caller, target in ledger:
        assert parent == (-1 if caller == "gateway" else index[caller])


def test_a_failing_subrequest_is_an_error_span_and_a_new_trace_without_traceparent(core, run, spans) -> None:
    provider, exporter = spans

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        try:
            await env.BAD.fetch(request)
        except RuntimeError:
            pass
        return Response("fine")

    async def bad(request: Request, env: Any, ctx: Any) -> Response:
        raise RuntimeError("no")

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"BAD": "bad"})
    rt.add_worker("bad", bad)
    instrument(rt, provider)

    async def main() -> None:
        await (await rt.dispatch("gateway", Request("https://example.com/"))).text()

    run(main())
    named = by_name(exporter.get_finished_spans())
    assert named["gateway"].parent is None  # no traceparent came in: a new trace
    failed = named["binding bad"]
    assert failed.attributes["fastbind.outcome"] == "error"
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert "http.response.status_code" not in failed.attributes


def test_a_remote_binding_sends_the_traceparent_of_its_span(core, run, origin, spans) -> None:
    provider, exporter = spans

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        echoed = await env.FAR.fetch("https://anywhere.example/echo")
        return Response(await echoed.text())

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"FAR": fastbind.remote(origin.url(""))})
    instrument(rt, provider)

    async def main() -> Any:
        response = await rt.dispatch("gateway", Request("https://example.com/"))
        echoed = await response.json()
        await rt.aclose()
        return echoed

    echoed = run(main())
    named = by_name(exporter.get_finished_spans())
    far = named[f"fetch {origin.url('/echo')}"]
    assert far.parent.span_id == named["gateway"].context.span_id
    trace_id = f"{far.context.trace_id:032x}"
    version, sent_trace, sent_span, flags = echoed["headers"]["traceparent"].split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, f"{far.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


def test_an_observer_removed_mid_pipeline_still_sees_it_end(core, run, spans) -> None:
    provider, exporter = spans
    rt = Runtime()
    tracer: Any = None

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        uninstrument(rt, tracer)  # while this pipeline is open
        return Response("ok")

    rt.add_worker("w", worker)
    tracer = instrument(rt, provider)

    async def main() -> None:
        await (await rt.dispatch("w", Request("https://e/"))).text()
        await (await rt.dispatch("w", Request("https://e/"))).text()

    run(main())
    assert [span.name for span in exporter.get_finished_spans()] == ["w"]  # the first only
