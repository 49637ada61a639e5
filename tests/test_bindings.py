"""Semantics of a binding call (docs/design.md, "The contract"), on both cores."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import fastbind

from fastbind import (
    ConfigError,
    Limits,
    Request,
    Response,
    Runtime,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerEntrypoint,
)
from fastbind import core as cores
from fastbind.errors import BODY_USED_MESSAGE, DEPTH_MESSAGE


def parent_and_child(run: Any, parent: Any, child: Any) -> tuple[int, Any]:
    """Dispatch to Worker ``parent``, which has ``child`` bound as C: the status and JSON body."""
    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        resp = await rt.dispatch("parent", Request("https://e/"))
        return resp.status, await resp.json()

    return run(main())


def collect() -> tuple[list[Any], Any]:
    reports: list[Any] = []
    return reports, reports.append


def test_function_and_class_workers(core, run) -> None:
    class Auth(WorkerEntrypoint):
        async def fetch(self, request):
            assert self.env.MODE == "test" and self.ctx.depth == 2
            return Response("ok", headers={"x-user": "42"})

    async def gateway(request, env, ctx):
        r = await env.AUTH.fetch(request)
        return Response.json({"user": r.headers.get("x-user"), "mode": env["MODE"]})

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"}, vars={"MODE": "prod"})
    rt.add_worker("auth", Auth, vars={"MODE": "test"})

    async def main():
        resp = await rt.dispatch("gateway", Request("https://example.com/login"))
        return resp.status, await resp.json()

    assert run(main()) == (200, {"user": "42", "mode": "prod"})
    assert rt.implementation == core.IMPLEMENTATION


def test_child_runs_in_the_callers_task_and_sees_the_url_as_sent(core, run) -> None:
    seen = {}

    async def child(request, env, ctx):
        seen["task"] = asyncio.current_task()
        seen["url"] = request.url
        return Response(None)

    async def parent(request, env, ctx):
        seen["parent_task"] = asyncio.current_task()
        await env.C.fetch("http://any-host.invalid:1234/p?q=1#f")
        return Response(None)

    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)
    run(rt.dispatch("parent", Request("https://e/")))
    assert seen["task"] is seen["parent_task"]
    assert seen["url"] == "http://any-host.invalid:1234/p?q=1#f"


@pytest.mark.parametrize("kind", ["bytes", "memoryview", "stream"])
def test_zero_copy_through_three_hops(core, run, kind: str) -> None:
    payload = b"x" * 100_000
    if kind == "bytes":
        body: Any = payload
    elif kind == "memoryview":
        body = memoryview(payload)
    else:
        async def stream():
            for _ in range(10):
                yield payload
        body = stream()
    seen: list[Any] = []

    async def hop(request, env, ctx):
        seen.append(request.body)
        if "NEXT" in env:
            return await env.NEXT.fetch(request)
        data = await request.bytes()
        return Response(str(len(data)))

    rt = Runtime()
    rt.add_worker("a", hop, services={"NEXT": "b"})
    rt.add_worker("b", hop, services={"NEXT": "c"})
    rt.add_worker("c", hop)

    async def main():
        resp = await rt.dispatch("a", Request("https://e/", method="POST", body=body))
        return await resp.text()

    expected = len(payload) * (10 if kind == "stream" else 1)
    assert run(main()) == str(expected)
    assert len(seen) == 3 and all(b is body for b in seen)


def test_passing_a_request_marks_it_used(core, run) -> None:
    async def child(request, env, ctx):
        return Response(await request.bytes())

    async def parent(request, env, ctx):
        await env.C.fetch(request)
        assert request.body_used
        with pytest.raises(TypeError) as info:
            await request.bytes()
        assert str(info.value) == BODY_USED_MESSAGE
        with pytest.raises(TypeError, match="Body has already been used"):
            env.C.fetch(request)
        return Response("done")

    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        resp = await rt.dispatch("parent", Request("https://e/", method="POST", body=b"x"))
        return resp.status, await resp.text()

    assert run(main()) == (200, "done")


def test_headers_are_copied_shallowly(core, run) -> None:
    async def child(request, env, ctx):
        request.headers.set("x-added", "child")
        request.headers.delete("x-keep")
        return Response(None)

    async def parent(request, env, ctx):
        await env.C.fetch(request)
        return Response.json({"added": request.headers.get("x-added"), "keep": request.headers.get("x-keep")})

    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        resp = await rt.dispatch("parent", Request("https://e/", headers={"x-keep": "1"}))
        return await resp.json()

    assert run(main()) == {"added": None, "keep": "1"}

def test_a_returned_response_is_the_callers_own(core, run) -> None:
    # The child keeps its Response and changes it after returning: the caller's is a
    # copy (headers copied on write), with the same body object; the child's is used.
    kept: dict[str, Any] = {}

    async def stream() -> Any:
        yield b"streamed"

    async def child(request, env, ctx):
        body = stream()
        response = kept["response"] = Response(body, status=201, headers={"x-child": "1"})
        kept["body"] = body

        async def later() -> None:
            await asyncio.sleep(0)
            response.headers.set("x-child", "changed")
            response.headers.set("x-late", "1")
            response.status = 500

        ctx.wait_until(later())
        return response

    async def parent(request, env, ctx):
        response = await env.C.fetch(request)
        response.headers.set("x-parent", "1")  # nor does the parent's change reach the child
        await asyncio.sleep(0.01)  # the child's wait_until work has run
        child_response = kept["response"]
        return Response.json({
            "distinct": response is not child_response,
            "same body": response.body is kept["body"],
            "child's used": child_response.body_used,
            "status": response.status,
            "headers": dict(response.headers.items()),
            "child's headers": dict(child_response.headers.items()),
            "text": await response.text(),
        })

    status, seen = parent_and_child(run, parent, child)
    assert status == 200
    assert seen == {
        "distinct": True, "same body": True, "child's used": True, "status": 201,
        "headers": {"x-child": "1", "x-parent": "1"},
        "child's headers": {"x-child": "changed", "x-late": "1"},
        "text": "streamed",
    }


def test_a_returned_response_subclass_keeps_its_class(core, run) -> None:
    class Tagged(Response):
        pass

    async def child(request, env, ctx):
        response = Tagged("ok")
        response.tag = "t"  # type: ignore[attr-defined]
        return response

    async def parent(request, env, ctx):
        response = await env.C.fetch(request)
        return Response.json([type(response).__name__, response.tag, await response.text()])

    assert parent_and_child(run, parent, child) == (200, ["Tagged", "t", "ok"])


def test_forwarded_request_headers_assigned_a_dict_or_pairs(core, run) -> None:
    # request.headers is a plain field: a Worker may assign a dict or pairs to it. The
    # child still gets a Headers (made as Headers(...) makes it) on both cores, and a
    # value Headers(...) refuses is its TypeError in the caller.
    async def child(request, env, ctx):
        assert type(request.headers).__name__ == "Headers"
        request.headers.set("x-child", "1")
        return Response(request.headers.get("x-a"))

    async def parent(request, env, ctx):
        request.headers = assigned = {"X-A": "dict"}
        first = await (await env.C.fetch(request)).text()
        assert request.headers is assigned and assigned == {"X-A": "dict"}  # the child's copy
        request.headers = [("x-a", "pairs")]
        second = await (await env.C.fetch(request)).text()
        request.headers = 5
        try:
            await env.C.fetch(request)
        except TypeError as exc:
            refused = str(exc)
        return Response.json([first, second, refused])

    status, (first, second, refused) = parent_and_child(run, parent, child)
    assert status == 200
    assert (first, second) == ("dict", "pairs")
    assert refused == "Headers init must be a mapping or pairs, not int"



def make_chain(limit: int | None = None) -> tuple[Runtime, list[int]]:
    started: list[int] = []

    async def chain(request, env, ctx):
        started.append(ctx.depth)
        remaining = int(request.headers.get("x-remaining"))
        if remaining == 0:
            return Response(str(ctx.depth))
        return await env.SELF.fetch(request.url, headers={"x-remaining": str(remaining - 1)})

    rt = Runtime(limits=Limits(depth=limit) if limit else None)
    rt.add_worker("chain", chain, services={"SELF": "chain"})
    return rt, started


def test_depth_limit_is_32_including_the_first_worker(core, run) -> None:
    rt, started = make_chain()

    async def go(n: int):
        resp = await rt.dispatch("chain", Request("https://e/", headers={"x-remaining": str(n)}))
        return resp.status, await resp.text()

    assert run(go(31)) == (200, "32")  # 1 top-level + 31 hops = depth 32
    started.clear()
    status, _ = run(go(32))  # would run depth 33
    assert status == 500
    assert max(started) == 32  # the child at depth 33 never started


def test_depth_error_raises_in_the_caller(core, run) -> None:
    caught: list[BaseException] = []

    async def rec(request, env, ctx):
        if ctx.depth == 3:
            try:
                await env.SELF.fetch(request)
            except SubrequestDepthError as exc:
                caught.append(exc)
                return Response("caught")
        return await env.SELF.fetch(request)

    rt = Runtime(limits=Limits(depth=3))
    rt.add_worker("rec", rec, services={"SELF": "rec"})

    async def main():
        resp = await rt.dispatch("rec", Request("https://e/"))
        return await resp.text()

    assert run(main()) == "caught"
    assert str(caught[0]) == DEPTH_MESSAGE


def test_sequential_calls_do_not_add_depth(core, run) -> None:
    depths: list[int] = []

    async def child(request, env, ctx):
        depths.append(ctx.depth)
        return Response(None)

    async def parent(request, env, ctx):
        for _ in range(50):
            await env.C.fetch(request)
        return Response(None)

    rt = Runtime(limits=Limits(depth=2))
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)
    resp = run(rt.dispatch("parent", Request("https://e/")))
    assert resp.status == 200 and depths == [2] * 50


def test_subrequest_budget_is_per_invocation(core, run) -> None:
    started: list[str] = []
    errors: list[str] = []

    async def leaf(request, env, ctx):
        started.append("leaf")
        return Response(None)

    async def middle(request, env, ctx):
        started.append("middle")
        for _ in range(3):  # its own budget of 3, not its caller's
            await env.LEAF.fetch(request)
        return Response(None)

    async def top(request, env, ctx):
        for _ in range(3):
            await env.MIDDLE.fetch(request)
        try:
            await env.MIDDLE.fetch(request)
        except TooManySubrequestsError as exc:
            errors.append(str(exc))
        return Response(None)

    reports, hook = collect()
    rt = Runtime(limits=Limits(subrequests=3), on_pipeline_end=hook)
    rt.add_worker("top", top, services={"MIDDLE": "middle"})
    rt.add_worker("middle", middle, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    assert run(rt.dispatch("top", Request("https://e/"))).status == 200
    assert errors == ["Too many subrequests."]
    assert started.count("middle") == 3 and started.count("leaf") == 9
    assert len(reports[0].subrequests) == 12


def test_exceptions_propagate_with_type_and_message(core, run) -> None:
    class Boom(Exception):
        pass

    async def child(request, env, ctx):
        raise Boom("bad thing in child")

    async def parent(request, env, ctx):
        try:
            await env.C.fetch(request)
        except Boom as exc:
            return Response(f"caught {type(exc).__name__}: {exc}")
        return Response("no")

    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        return await (await rt.dispatch("parent", Request("https://e/"))).text()

    assert run(main()) == "caught Boom: bad thing in child"


def test_uncaught_exception_becomes_500_and_is_logged(core, run, caplog) -> None:
    async def child(request, env, ctx):
        raise ValueError("kaput")

    async def parent(request, env, ctx):
        return await env.C.fetch(request)

    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)
    with caplog.at_level(logging.ERROR, logger="fastbind"):
        resp = run(rt.dispatch("parent", Request("https://e/")))
    assert resp.status == 500
    assert any("parent" in r.getMessage() and r.exc_info and "kaput" in str(r.exc_info[1]) for r in caplog.records)


def test_handler_returning_a_non_response(core, run) -> None:
    async def bad(request, env, ctx):
        return {"not": "a response"}

    async def parent(request, env, ctx):
        try:
            await env.BAD.fetch(request)
        except TypeError as exc:
            return Response(str(exc))
        return Response("no")

    rt = Runtime()
    rt.add_worker("parent", parent, services={"BAD": "bad"})
    rt.add_worker("bad", bad)

    async def main():
        return await (await rt.dispatch("parent", Request("https://e/"))).text()

    assert run(main()) == 'Worker "bad" fetch handler returned dict, expected a Response'
    assert run(rt.dispatch("bad", Request("https://e/"))).status == 500


def test_ledger_is_readable_after_dispatch(core, run) -> None:
    async def ok(request, env, ctx):
        return Response(None)

    async def fails(request, env, ctx):
        raise RuntimeError("x")

    async def top(request, env, ctx):
        await env.OK.fetch(request)
        try:
            await env.FAILS.fetch(request)
        except RuntimeError:
            pass
        return Response(None, status=204)

    reports, hook = collect()
    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("top", top, services={"OK": "ok", "FAILS": "fails"})
    rt.add_worker("ok", ok)
    rt.add_worker("fails", fails)
    resp = run(rt.dispatch("top", Request("https://e/")))
    assert resp.status == 204
    (report,) = reports
    assert report.entry == "top" and report.status == 204 and report.duration_ns > 0
    rows = [(r.caller, r.target, r.kind, r.depth, r.outcome) for r in report.subrequests]
    assert rows == [("top", "ok", "binding", 2, "ok"), ("top", "fails", "binding", 2, "error")]
    assert all(r.duration_ns >= 0 and r.start_ns >= report.start_ns for r in report.subrequests)
    assert report.subrequests[0].as_dict()["outcome"] == "ok"


def test_ledger_times_are_nanoseconds_on_the_monotonic_clock(core, run) -> None:
    # The compiled core stamps entries with the CPU's time-stamp counter where it can and
    # converts when the ledger is read: the figures must still be monotonic nanoseconds.
    async def slow(request, env, ctx):
        await asyncio.sleep(0.02)
        return Response(None)

    async def top(request, env, ctx):
        await env.SLOW.fetch(request)
        await env.SLOW.fetch(request)
        return Response(None)

    reports, hook = collect()
    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("top", top, services={"SLOW": "slow"})
    rt.add_worker("slow", slow)
    before = time.monotonic_ns()
    run(rt.dispatch("top", Request("https://e/")))
    after = time.monotonic_ns()
    (report,) = reports
    first, second = report.subrequests
    for record in (first, second):
        assert 15_000_000 <= record.duration_ns <= after - before
        assert before <= record.start_ns <= after - record.duration_ns
    assert second.start_ns >= first.start_ns + first.duration_ns
    assert before <= report.start_ns <= first.start_ns
    assert first.start_ns + first.duration_ns + second.duration_ns <= report.start_ns + report.duration_ns
    assert report.start_ns + report.duration_ns <= after


def test_ledger_keeps_every_entry_of_a_long_pipeline_in_order(core, run) -> None:
    # 300 entries span several of the compiled ledger's blocks (8, 16, 32, ... entries).
    async def leaf(request, env, ctx):
        if request.headers.get("x-fail"):
            raise ValueError("no")
        return Response(None)

    async def top(request, env, ctx):
        for i in range(300):
            try:
                await env.LEAF.fetch("https://e/", headers={"x-fail": "1"} if i % 7 == 0 else None)
            except ValueError:
                pass
        return Response(None)

    reports, hook = collect()
    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("top", top, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    run(rt.dispatch("top", Request("https://e/")))
    (report,) = reports
    outcomes = [r.outcome for r in report.subrequests]
    assert outcomes == ["error" if i % 7 == 0 else "ok" for i in range(300)]
    starts = [r.start_ns for r in report.subrequests]
    assert starts == sorted(starts)


def test_spawned_tasks_belong_to_the_spawning_invocation(core, run) -> None:
    seen: list[tuple[str, int]] = []

    async def child(request, env, ctx):
        seen.append((ctx.worker, ctx.depth))
        return Response(None)

    async def middle(request, env, ctx):
        # gather spawns tasks: their binding calls are this invocation's subrequests
        await asyncio.gather(*(env.C.fetch(request) for _ in range(3)))
        await asyncio.create_task(env.C.fetch(request))
        return Response(str(ctx.subrequests))

    async def top(request, env, ctx):
        r = await env.M.fetch(request)
        return Response(f"{await r.text()} {ctx.subrequests}")

    rt = Runtime()
    rt.add_worker("top", top, services={"M": "middle"})
    rt.add_worker("middle", middle, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        return await (await rt.dispatch("top", Request("https://e/"))).text()

    assert run(main()) == "4 1"
    assert seen == [("child", 3)] * 4


def test_isolation_env_and_counters(core, run) -> None:
    async def child(request, env, ctx):
        return Response(None)

    async def probe(request, env, ctx):
        out = {}
        with pytest.raises(AttributeError) as info:
            env.OTHER  # noqa: B018 - bound only to another Worker
        out["missing"] = str(info.value)
        with pytest.raises(AttributeError):
            env["SECRET"]
        for attr, value in (("depth", 0), ("subrequests", 0)):
            with pytest.raises(AttributeError):
                setattr(ctx, attr, value)
        with pytest.raises(AttributeError):
            env.C = None
        out["depth"] = ctx.depth
        return Response.json(out)

    rt = Runtime()
    rt.add_worker("probe", probe, services={"C": "child"})
    rt.add_worker("other", probe, services={"OTHER": "child"}, vars={"SECRET": "s"})
    rt.add_worker("child", child)

    async def main():
        return await (await rt.dispatch("probe", Request("https://e/"))).json()

    out = run(main())
    assert out["missing"] == 'Worker "probe" has no binding or var named "OTHER".'
    assert out["depth"] == 1


def test_config_errors(core, run) -> None:
    async def h(request, env, ctx):
        return Response(None)

    def sync_handler(request, env, ctx):
        return Response(None)

    rt = Runtime()
    rt.add_worker("gateway", h, services={"AUTH": "auth"})
    with pytest.raises(ConfigError, match='A Worker named "gateway" is already defined.'):
        rt.add_worker("gateway", h)
    with pytest.raises(ConfigError, match="WorkerEntrypoint subclass or an async function"):
        rt.add_worker("sync", sync_handler)
    with pytest.raises(ConfigError, match="WorkerEntrypoint subclass or an async function"):
        rt.add_worker("obj", object())
    msg = 'Worker "gateway" binding "AUTH" refers to a service "auth", but no such service is defined.'
    with pytest.raises(ConfigError) as info:
        rt.validate()
    assert str(info.value) == msg
    with pytest.raises(ConfigError) as info:  # raised out of dispatch, never a 500
        run(rt.dispatch("gateway", Request("https://e/")))
    assert str(info.value) == msg
    rt.add_worker("auth", h)  # any order: resolved on first use
    assert run(rt.dispatch("gateway", Request("https://e/"))).status == 200
    with pytest.raises(ConfigError, match='No Worker named "nope"'):
        run(rt.dispatch("nope", Request("https://e/")))
    with pytest.raises(ConfigError, match="both as a binding and a var"):
        rt.add_worker("x", h, services={"A": "auth"}, vars={"A": "1"})


def test_limits_validation() -> None:
    for kwargs in ({"depth": 0}, {"subrequests": -1}, {"open_connections": 1.5}, {"wait_until_s": -1}):
        with pytest.raises(ValueError):
            Limits(**kwargs)
    with pytest.raises(TypeError):
        Runtime(limits={"depth": 3})  # type: ignore[arg-type]


def test_core_objects_cannot_be_built_or_changed_from_python(core) -> None:
    for cls in (core.InvocationContext, core.BindingCall, core.SubrequestRecord):
        if core.IMPLEMENTATION == "c":
            with pytest.raises(TypeError):
                cls()
    if core.IMPLEMENTATION == "c":
        slot_type = core.ExecutionSlot
        with pytest.raises(TypeError):
            slot_type()


def test_call_child_runs_any_callable_as_a_child_invocation(core, run) -> None:
    reports, hook = collect()
    seen: list[tuple[str, int]] = []
    target = core.WorkerHandle.for_target("counter", None)

    async def bump(ctx, state, by):
        seen.append((ctx.worker, ctx.depth))
        state["n"] += by
        return dict(state)

    def sync_value(ctx):
        return [ctx.depth]

    async def top(request, env, ctx):
        state = {"n": 1}
        snapshot = await core.call_child(target, "object", bump, (state, 2))
        snapshot["n"] = 100  # isolated: the caller got a copy
        depth = await core.call_child(target, "object", sync_value)
        with pytest.raises(TypeError, match="expected a Response"):
            await core.call_child(target, "object", sync_value, http=True)
        return Response.json({"state": state, "depth": depth})

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("top", top)

    async def main():
        return await (await rt.dispatch("top", Request("https://e/"))).json()

    assert run(main()) == {"state": {"n": 3}, "depth": [2]}
    assert seen == [("counter", 2)]
    assert [(r.target, r.kind, r.outcome) for r in reports[0].subrequests] == [
        ("counter", "object", "ok"), ("counter", "object", "ok"), ("counter", "object", "error")
    ]


def test_a_streamed_body_runs_as_the_top_level_invocation(core, run) -> None:
    async def child(request, env, ctx):
        return Response(f"chunk at depth {ctx.depth}")

    async def top(request, env, ctx):
        async def body():
            for _ in range(2):  # read after dispatch returned, in the reader's task
                part = await env.C.fetch("https://e/")
                yield (await part.text() + ";").encode()

        return Response(body())

    reports, hook = collect()
    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("top", top, services={"C": "child"})
    rt.add_worker("child", child)

    async def main():
        resp = await rt.dispatch("top", Request("https://e/"))
        assert not reports  # the pipeline lives while its body is read
        return await resp.text()

    assert run(main()) == "chunk at depth 2;chunk at depth 2;"
    assert [(r.caller, r.target) for r in reports[0].subrequests] == [("top", "child")] * 2


def test_fetch_takes_every_form_of_call(core, run) -> None:
    # env.X.fetch(request) takes the compiled core's C entry point; a URL, keywords
    # and wrong calls take Fetcher.fetch's own parsing, with the same meaning.
    seen: list[tuple[str, str, bytes | None]] = []

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        seen.append((request.method, request.url, await request.bytes() if request.body else None))
        return Response("ok")

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        fetch = env.LEAF.fetch
        assert fetch.__self__ is env.LEAF and "fetch" in repr(fetch)
        await fetch(Request("https://e/a"))
        await fetch("https://e/b")
        await fetch("https://e/c", method="POST", body=b"c")
        await fetch(input=Request("https://e/d"))
        await fetch(Request("https://e/e"), headers={"x-e": "1"})
        for bad in ((), (Request("https://e/"), "extra")):
            with pytest.raises(TypeError):
                fetch(*bad)
        with pytest.raises(TypeError):
            fetch("https://e/", bogus=1)
        return Response("done")

    rt = Runtime()
    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    assert run(rt.dispatch("caller", Request("https://e/"))).status == 200
    assert seen == [("GET", "https://e/a", None), ("GET", "https://e/b", None),
                    ("POST", "https://e/c", b"c"), ("GET", "https://e/d", None),
                    ("GET", "https://e/e", None)]


def test_fetch_with_a_url_gives_what_request_of_that_url_gives(core, run) -> None:
    # The compiled core builds the child's Request for a plain http(s) URL itself; it
    # must be what Request(url) is, and every other URL must meet Request's own checks.
    urls = ["https://e/a?b=1#c", "http://h:8080/", "http://h/\x01", "ftp://files.example/x",
            "HTTPS://E/upper", "https://e/caf\xe9", "https://e/a b", "http:///path", "http://h:80"]
    seen: list[tuple[Any, ...]] = []

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        seen.append((type(request), request.url, request.method, list(request.headers),
                     request.body, request.body_used))
        request.headers.set("x-child", "1")  # its own headers, never shared
        return Response("ok")

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        for url in urls:
            await env.LEAF.fetch(url)
        for bad in ("https://e a/", "https://", "http://h:99999/", "/relative"):
            with pytest.raises(TypeError, match="Invalid URL"):
                env.LEAF.fetch(bad)
        return Response("done")

    rt = Runtime()
    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    assert run(rt.dispatch("caller", Request("https://e/"))).status == 200
    expected = []
    for url in urls:
        r = Request(url)
        expected.append((Request, r.url, r.method, list(r.headers), r.body, r.body_used))
    assert seen == expected


def test_a_binding_call_driven_by_next_ends_in_stop_iteration_with_the_response(core, run) -> None:
    # From CPython 3.12 the interpreter drives `await call` through tp_iternext, so the
    # call's end is a StopIteration carrying the child's Response (3.11 uses am_send).
    # next() takes the same slot on every version; the compiled core with its fast
    # paths raises it from C, with no traceback of its own functions.
    async def child(request, env, ctx):
        await asyncio.sleep(0)  # one step that yields, then the return
        return Response("from child")

    async def parent(request, env, ctx):
        steps = env.C.fetch(request).__await__()  # the compiled core: the call itself
        assert next(steps) is None  # the child's bare yield, passed out as it is
        try:
            next(steps)
        except StopIteration as stop:
            response = stop.value
            assert stop.args == (response,)
            tb, files = stop.__traceback__, set()
            while tb is not None:
                files.add(tb.tb_frame.f_code.co_filename)
                tb = tb.tb_next
            from_c = core is cores.compiled and fastbind.core_info()["fast_paths"]
            return Response.json([await response.text(), not from_c or files == {__file__}])
        raise AssertionError("the call did not end")

    assert parent_and_child(run, parent, child) == (200, ["from child", True])
