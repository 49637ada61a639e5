"""What the hot path reuses stays correct: pooled Request/Headers blocks, Env's name cache.

The compiled core keeps freed Request and Headers blocks for the child copies it makes
on each binding call, and Env remembers the names it was asked for by identity. These
tests run the same cases on both cores: the twin has neither, and must agree.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from fastbind import Headers, Request, Response, Runtime


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
