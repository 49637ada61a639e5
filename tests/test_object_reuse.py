"""What the hot path reuses stays correct: pooled Request/Headers blocks, Env's name cache,
the StopIteration that ends a call.

The compiled core keeps freed Request and Headers blocks for the child copies it makes
on each binding call, and Env remembers the names it was asked for by identity. From
CPython 3.12 it also raises one StopIteration again and again at the end of its calls.
These tests run the same cases on both cores: the twin has none of it, and must agree.
"""

from __future__ import annotations

import gc
import sys
import weakref
from dataclasses import dataclass
from typing import Any

import fastbind
from fastbind import Headers, Request, Response, Runtime, WorkerEntrypoint


FAST = fastbind.core_info()["fast_paths"]  # FASTBIND_FAST_PATHS


def make_body() -> bytes:
    return bytes(bytearray(b"payload " * 16))  # a fresh object: its refcount is ours alone


def test_forwarded_requests_release_what_they_hold(core, run) -> None:
    body = make_body()
    before = sys.getrefcount(body)
    seen: list[int] = []

    async def child(request: Request, env: Any, ctx: Any) -> Response:
        seen.append(sys.getrefcount(request.body))
        request.headers.set("x-child", "1")
        return Response("ok")

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        for _ in range(200):  # more than a pool holds, so blocks are reused and freed
            forwarded = Request("https://example.com/", method="POST", body=body,
                                headers={"x-a": "1"})
            await env.CHILD.fetch(forwarded)
            assert forwarded.headers.get("x-child") is None  # the child had its own copy
        return Response("done")

    rt = Runtime()
    rt.add_worker("parent", parent, services={"CHILD": "child"})
    rt.add_worker("child", child)
    response = run(rt.dispatch("parent", Request("https://example.com/")))
    assert response.status == 200
    gc.collect()
    assert sys.getrefcount(body) == before  # every copy let go of the body
    assert len(seen) == 200 and seen[0] == seen[-1]  # no copy outlived its call


def test_subclasses_of_pooled_classes_free_all_their_parts(core) -> None:
    finalized: list[str] = []

    class TracedRequest(Request):
        __slots__ = ("tag",)

        def __del__(self) -> None:
            finalized.append(self.tag)

    class TracedHeaders(Headers):
        __slots__ = ("note",)

    body = make_body()
    before = sys.getrefcount(body)
    request = TracedRequest("https://example.com/", method="POST", body=body)
    request.tag = "first"
    request.headers = TracedHeaders({"a": "1"})
    request.headers.note = make_body()
    del request
    gc.collect()
    assert finalized == ["first"]
    assert sys.getrefcount(body) == before


def test_pooled_objects_in_a_reference_cycle_are_collected(core) -> None:
    body = make_body()
    before = sys.getrefcount(body)

    class Stream:
        def __init__(self) -> None:
            self.owner: Request | None = None

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

    for _ in range(100):
        stream = Stream()
        request = Request("https://example.com/", method="POST", body=stream,
                          headers={"x-body": "stream"})
        stream.owner = request  # request -> body -> request
        request.headers.append("x-ref", "1")
        keep = body  # noqa: F841 - only the body's refcount matters
        del request, stream
    gc.collect()
    assert sys.getrefcount(body) == before + 1  # ``keep`` alone


def test_env_answers_each_name_after_many_names(core, run) -> None:
    names = [f"VAR_{i}" for i in range(40)]  # more names than the cache has entries

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        values = []
        for _ in range(3):
            for name in names:
                values.append(getattr(env, name))
        # Interned names from code and strings built at run time give the same answers.
        assert env.VAR_3 == "value-3" and getattr(env, "".join(["VAR_", "3"])) == "value-3"
        return Response.json(values)

    rt = Runtime()
    rt.add_worker("w", worker, vars={name: f"value-{i}" for i, name in enumerate(names)})
    response = run(rt.dispatch("w", Request("https://example.com/")))
    assert run(response.json()) == [f"value-{i}" for i in range(40)] * 3


def test_a_finalizer_added_to_a_pooled_class_later_still_runs(core, monkeypatch) -> None:
    finalized: list[str] = []
    monkeypatch.setattr(Headers, "__del__", lambda self: finalized.append(self.get("x") or ""),
                        raising=False)
    headers = Headers({"x": "gone"})
    del headers
    gc.collect()
    assert finalized == ["gone"]


def test_an_ended_pipeline_is_freed_without_the_collector(core, run) -> None:
    # The root invocation refers to its pipeline and the pipeline to its root: the
    # pipeline lets its root go when it ends, so reference counting frees both and
    # no request leaves work behind for the garbage collector.
    import weakref

    from fastbind.embed import RawDispatcher

    seen: list[Any] = []

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        seen.append(weakref.ref(ctx.pipeline))  # the root invocation refers to it
        return Response("ok")

    rt = Runtime()
    rt.add_worker("leaf", leaf)
    raw = RawDispatcher(rt, "leaf")
    gc.disable()
    try:
        assert run(rt.dispatch("leaf", Request("https://example.com/"))).status == 200
        assert run(raw(b"GET", "https://example.com/", [(b"host", b"example.com")], b""))[0] == 200
        assert len(seen) == 2
        assert [ref() for ref in seen] == [None, None]
    finally:
        gc.enable()


class WeakResponse(Response):
    """A Response that takes weak references (a subclass without __slots__)."""


@dataclass
class Result:
    """An RPC result (a dataclass: passed as a copy) that takes weak references."""

    n: int


def end_of(call: Any) -> StopIteration:
    """The StopIteration that ends ``call`` when next() drives it (it must end at once)."""
    try:
        next(call.__await__())
    except StopIteration as stop:
        return stop
    raise AssertionError("the call did not end at its first step")


def parent_and_child(run: Any, parent: Any, child: Any) -> tuple[int, Any]:
    """Dispatch to Worker ``parent``, which has ``child`` bound as C: the status and JSON body."""
    rt = Runtime()
    rt.add_worker("parent", parent, services={"C": "child"})
    rt.add_worker("child", child)

    async def main() -> tuple[int, Any]:
        response = await rt.dispatch("parent", Request("https://example.com/"))
        return response.status, await response.json()

    return run(main())


def test_the_end_of_a_call_keeps_nothing_it_carried_alive(core, run) -> None:
    # The value of a binding call, of an RPC call and of a dispatch is gone once its
    # awaiter dropped it: the StopIteration the compiled core raises again on 3.12+
    # lets go of it when the call is freed.
    refs: list[weakref.ref[Any]] = []

    async def child(request: Request, env: Any, ctx: Any) -> Response:
        response = WeakResponse("from child")
        refs.append(weakref.ref(response))
        return response

    class Calc(WorkerEntrypoint):
        async def make(self) -> Result:
            return Result(7)

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        response = await env.CHILD.fetch(request)
        text = await response.text()
        del response
        result = await env.CALC.make()  # the caller's copy
        refs.append(weakref.ref(result))
        assert result == Result(7)
        del result
        return Response.json([text] + [ref() is None for ref in refs])

    async def top(request: Request, env: Any, ctx: Any) -> Response:
        response = WeakResponse("top")
        refs.append(weakref.ref(response))
        return response

    rt = Runtime()
    rt.add_worker("parent", parent, services={"CHILD": "child", "CALC": "calc"})
    rt.add_worker("child", child)
    rt.add_worker("calc", Calc)
    rt.add_worker("top", top)

    async def main() -> tuple[Any, bool]:
        response = await rt.dispatch("parent", Request("https://example.com/"))
        answer = await response.json()
        response = await rt.dispatch("top", Request("https://example.com/"))
        assert await response.text() == "top"
        del response
        return answer, refs[-1]() is None

    assert run(main()) == (["from child", True, True], True)


def test_a_kept_stop_iteration_is_not_reused(core, run) -> None:
    # Calls driven by next(): an exception its catcher kept still carries its own value
    # after later calls, and one that was dropped comes back with nothing of its past
    # (no notes, no earlier traceback).
    async def child(request: Request, env: Any, ctx: Any) -> Response:
        return Response(request.url.rsplit("/", 1)[1])

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        first = end_of(env.C.fetch("https://example.com/first"))
        noted = end_of(env.C.fetch("https://example.com/noted"))
        noted.add_note("seen by a test")
        del noted
        second = end_of(env.C.fetch("https://example.com/second"))
        tb = second.__traceback__
        return Response.json([
            await first.value.text(), first.args == (first.value,),
            await second.value.text(), getattr(second, "__notes__", None),
            # From end_of's frame; with the fast paths, raised from C: no frame of the core.
            tb is not None and tb.tb_frame.f_code is end_of.__code__ and (tb.tb_next is None or not FAST),
            second.__context__ is None and second.__cause__ is None,
        ])

    assert parent_and_child(run, parent, child) == (200, ["first", True, "second", None, True, True])


def test_a_cycle_through_the_stop_iteration_of_a_call_is_collected(core, run) -> None:
    # A caller of next() ties the call's StopIteration args to its value in a cycle and
    # drops both; a collection in between made the kept instance's args look immutable
    # to the collector. The cycle must still be found.
    refs: list[weakref.ref[Any]] = []

    async def child(request: Request, env: Any, ctx: Any) -> Response:
        return WeakResponse("x")

    async def parent(request: Request, env: Any, ctx: Any) -> Response:
        end_of(env.C.fetch("https://example.com/a"))  # the instance a later call reuses
        gc.collect()
        stop = end_of(env.C.fetch("https://example.com/b"))
        response = stop.value
        response.cycle = [stop.args]  # args -> response -> list -> args
        refs.append(weakref.ref(response))
        del stop, response
        gc.collect()
        return Response.json(refs[0]() is None)

    assert parent_and_child(run, parent, child) == (200, True)
