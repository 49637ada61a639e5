"""``ctx.pass_through_on_exception()`` with each kind of ``Runtime(origin=...)`` (docs/design.md, "Exceptions")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fastbind import ConfigError, Request, Response, Runtime
from fastbind.outbound.passthrough import origin_url

URL = "https://example.com/shop/cart?item=7"


class Seen:
    """A callable origin that answers with what it received."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response("from the origin", status=203, headers={"x-origin": "yes"})


async def failing(request, env, ctx):
    ctx.pass_through_on_exception()
    request.headers.set("x-changed-by-worker", "1")  # the origin must not see this
    raise RuntimeError("the Worker broke")


def test_a_callable_origin_gets_the_original_request(core, run) -> None:
    origin = Seen()
    body = b"payload"

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", failing)
        request = Request(URL, method="POST", headers={"x-a": "1"}, body=body)
        resp = await rt.dispatch("w", request)
        assert (resp.status, await resp.text()) == (203, "from the origin")

    run(main())
    [seen] = origin.requests
    assert (seen.method, seen.url, list(seen.headers)) == ("POST", URL, [("x-a", "1")])
    assert seen.body is body  # the body object itself, not a copy


def test_without_the_call_an_exception_is_a_500(core, run, caplog) -> None:
    origin = Seen()

    async def worker(request, env, ctx):
        raise RuntimeError("the Worker broke")

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", worker)
        resp = await rt.dispatch("w", Request(URL))
        assert resp.status == 500

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert origin.requests == []
    assert 'Uncaught exception in Worker "w"' in caplog.text


def test_a_call_from_a_child_counts_for_the_top_level_request(core, run) -> None:
    origin = Seen()

    async def child(request, env, ctx):
        ctx.pass_through_on_exception()
        return Response("child")

    async def root(request, env, ctx):
        await env.CHILD.fetch(URL)
        raise RuntimeError("the Worker broke")

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("root", root, services={"CHILD": "child"})
        rt.add_worker("child", child)
        resp = await rt.dispatch("root", Request(URL))
        assert resp.status == 203

    run(main())


def test_a_worker_of_the_runtime_as_origin(core, run) -> None:
    async def legacy(request, env, ctx):
        return Response(f"legacy saw {request.method} {request.url} {await request.text()}")

    async def main() -> None:
        reports: list[Any] = []
        rt = Runtime(origin="legacy", on_pipeline_end=reports.append)
        rt.add_worker("w", failing)
        rt.add_worker("legacy", legacy)
        resp = await rt.dispatch("w", Request(URL, method="PUT", body="hello"))
        assert await resp.text() == f"legacy saw PUT {URL} hello"
        assert sorted(r.entry for r in reports) == ["legacy", "w"]  # two top-level requests

    run(main())


def test_an_origin_worker_that_fails_too_gets_a_500_not_a_loop(core, run, caplog) -> None:
    async def main() -> None:
        rt = Runtime(origin="w")
        rt.add_worker("w", failing)
        resp = await rt.dispatch("w", Request(URL))
        assert resp.status == 500

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert "The origin itself failed" in caplog.text


def test_a_stream_not_yet_read_is_passed_through(core, run) -> None:
    origin = Seen()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed"

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", failing)
        stream = chunks()
        resp = await rt.dispatch("w", Request(URL, method="POST", body=stream))
        assert resp.status == 203
        assert origin.requests[0].body is stream
        assert await origin.requests[0].bytes() == b"streamed"

    run(main())


def test_a_stream_the_worker_read_cannot_be_passed_through(core, run, caplog) -> None:
    origin = Seen()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed"

    async def reads_then_fails(request, env, ctx):
        ctx.pass_through_on_exception()
        await request.bytes()
        raise RuntimeError("the Worker broke")

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", reads_then_fails)
        resp = await rt.dispatch("w", Request(URL, method="POST", body=chunks()))
        assert resp.status == 500

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert origin.requests == [] and "streamed body was already read" in caplog.text


def test_bytes_the_worker_read_are_still_passed_through(core, run) -> None:
    origin = Seen()

    async def reads_then_fails(request, env, ctx):
        ctx.pass_through_on_exception()
        assert await request.bytes() == b"data"
        raise RuntimeError("the Worker broke")

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", reads_then_fails)
        resp = await rt.dispatch("w", Request(URL, method="POST", body=b"data"))
        assert resp.status == 203
        assert await origin.requests[0].bytes() == b"data"

    run(main())


def test_an_origin_that_fails_is_a_502(core, run, caplog) -> None:
    async def broken(request: Request) -> Response:
        raise ConnectionError("origin down")

    async def main() -> None:
        rt = Runtime(origin=broken)
        rt.add_worker("w", failing)
        resp = await rt.dispatch("w", Request(URL))
        assert (resp.status, await resp.text()) == (502, "Bad Gateway")

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert "The origin failed to serve GET " + URL in caplog.text


def test_a_url_origin_is_fetched(core, run) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            status=201,
            text=f"{request.method} {request.path_qs} {request.headers.get('x-a')} {body.decode()}",
            headers={"location": "/elsewhere"},  # passed back as is, not followed
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/base/shop/cart", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        rt = Runtime(origin=f"http://127.0.0.1:{port}/base/")
        rt.add_worker("w", failing)
        try:
            request = Request(URL, method="POST", headers={"x-a": "1"}, body=b"data")
            resp = await rt.dispatch("w", request)
            assert resp.status == 201
            assert await resp.text() == "POST /base/shop/cart?item=7 1 data"
            assert resp.headers.get("location") == "/elsewhere"
        finally:
            await rt.aclose()
            await runner.cleanup()

    run(main())


def test_origin_url_keeps_the_path_and_query() -> None:
    assert origin_url("http://o:81", URL) == "http://o:81/shop/cart?item=7"
    assert origin_url("https://o/base/", URL) == "https://o/base/shop/cart?item=7"
    assert origin_url("https://o/base", "https://x") == "https://o/base/"


@pytest.mark.parametrize(
    "origin, message",
    [
        ("nobody", 'Runtime origin "nobody" is neither an http(s) URL nor the name of a Worker'),
        ("ftp://files.example.com", "is not a valid http(s) URL"),
        (42, "Runtime origin must be an http(s) URL, the name of a Worker or an async callable"),
    ],
)
def test_a_wrong_origin_is_a_config_error(core, run, origin, message) -> None:
    async def worker(request, env, ctx):
        return Response("ok")

    async def main() -> None:
        rt = Runtime(origin=origin)
        rt.add_worker("w", worker)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await rt.dispatch("w", Request(URL))

    run(main())
