"""What a new user reads when something goes wrong: each message asserted, on both cores."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest

from fastbind import Limits, Request, Response, Runtime, SubrequestDepthError
from fastbind.errors import BODY_USED_MESSAGE, collapse_chain


def test_reading_a_request_passed_to_a_binding_names_clone(core, run) -> None:
    seen: list[BaseException] = []

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        await env.AUTH.fetch(request)
        try:
            await request.text()
        except TypeError as exc:
            seen.append(exc)
        return Response("ok")

    async def cloned(request: Request, env: Any, ctx: Any) -> Response:
        await env.AUTH.fetch(request.clone())  # what the note says to do
        return Response(await request.text())

    async def auth(request: Request, env: Any, ctx: Any) -> Response:
        return Response(await request.text())

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"})
    rt.add_worker("cloned", cloned, services={"AUTH": "auth"})
    rt.add_worker("auth", auth)

    async def main() -> str:
        await (await rt.dispatch("gateway", Request("https://e/", method="POST", body=b"hi"))).text()
        response = await rt.dispatch("cloned", Request("https://e/", method="POST", body=b"hi"))
        return await response.text()

    assert run(main()) == "hi"
    (error,) = seen
    assert str(error) == BODY_USED_MESSAGE  # Cloudflare's words, exact
    assert str(error) == (
        "Body has already been used. It can only be used once. Use tee() first if you need to read it twice."
    )
    (note,) = error.__notes__
    assert "request.clone()" in note and "has no tee()" in note
    assert "request.clone()" in "".join(traceback.format_exception(error))  # shown with the traceback


def test_reading_a_response_twice_names_response_clone() -> None:
    import asyncio

    async def main() -> None:
        response = Response("x")
        await response.text()
        with pytest.raises(TypeError) as caught:
            await response.text()
        assert str(caught.value) == BODY_USED_MESSAGE
        assert "response.clone()" in caught.value.__notes__[0]

    asyncio.run(main())


def test_forwarding_a_used_request_again_names_clone(core, run) -> None:
    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        await env.AUTH.fetch(request)
        await env.AUTH.fetch(request)  # its body went with the first call
        return Response("unreachable")

    async def auth(request: Request, env: Any, ctx: Any) -> Response:
        return Response("ok")

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"})
    rt.add_worker("auth", auth)
    errors: list[BaseException | None] = []
    rt.on_pipeline_end = lambda report: errors.append(report.error)

    async def main() -> int:
        response = await rt.dispatch("gateway", Request("https://e/", method="POST", body=b"hi"))
        return response.status

    assert run(main()) == 500
    (error,) = errors
    assert isinstance(error, TypeError) and str(error) == BODY_USED_MESSAGE
    assert "request.clone()" in error.__notes__[0]


def test_a_worker_calling_itself_logs_one_entry_with_the_chain(core, run, caplog) -> None:
    async def router(request: Request, env: Any, ctx: Any) -> Response:
        return await env.SELF.fetch(request)

    rt = Runtime()
    rt.add_worker("router", router, services={"SELF": "router"})
    caplog.set_level(logging.ERROR, logger="fastbind")

    async def main() -> int:
        return (await rt.dispatch("router", Request("https://e/"))).status

    assert run(main()) == 500
    records = [r for r in caplog.records if r.name.startswith("fastbind")]
    assert len(records) == 1
    text = records[0].getMessage()
    first = text.splitlines()[0]
    assert first == (
        'Uncaught exception in Worker "router": Subrequest depth limit exceeded (Limits.depth = 32): '
        'router -> router -> ... -> router -> router (32); its call to "router" was refused.'
    )
    assert records[0].exc_info is None  # no second, uncollapsed traceback
    assert text.count("return await env.SELF.fetch(request)") <= 2  # the repeated call once, the refused one
    assert "more times]" in text
    assert len(text.splitlines()) <= 25  # not ~100 lines
    assert text.splitlines()[-1].startswith("fastbind.errors.SubrequestDepthError: Subrequest depth limit exceeded.")


def test_depth_error_keeps_cloudflares_message_and_carries_the_chain(core, run) -> None:
    async def a(request: Request, env: Any, ctx: Any) -> Response:
        return await env.B.fetch(request)

    async def b(request: Request, env: Any, ctx: Any) -> Response:
        return await env.A.fetch(request)

    rt = Runtime(limits=Limits(depth=5))
    rt.add_worker("a", a, services={"B": "b"})
    rt.add_worker("b", b, services={"A": "a"})
    errors: list[Any] = []
    rt.on_pipeline_end = lambda report: errors.append(report.error)

    async def main() -> None:
        await (await rt.dispatch("a", Request("https://e/"))).text()

    run(main())
    (error,) = errors
    assert isinstance(error, SubrequestDepthError)
    assert str(error).startswith("Subrequest depth limit exceeded. This request recursed through Workers too many times.")
    assert error.chain == ("a", "b", "a", "b", "a") and error.target == "b" and error.limit == 5
    assert error.describe() == (
        'Subrequest depth limit exceeded (Limits.depth = 5): a -> b -> a -> b -> a; its call to "b" was refused.'
    )
    assert collapse_chain(("g",) + ("r",) * 31) == "g -> r -> ... -> r -> r (32)"


def test_the_cpu_limit_log_says_where_the_worker_was_stopped(core, run, caplog) -> None:
    rt = Runtime(limits=Limits(cpu_ms=20))

    async def hog(request: Request, env: Any, ctx: Any) -> Response:
        total = 0
        while True:
            total += 1  # stopped here

    rt.add_worker("hog", hog)
    caplog.set_level(logging.ERROR, logger="fastbind")

    async def main() -> int:
        return (await rt.dispatch("hog", Request("https://e/"))).status

    assert run(main()) == 503
    (message,) = [r.getMessage() for r in caplog.records if "CPU time limit" in r.getMessage()]
    line = hog.__code__.co_firstlineno
    assert message.startswith('Worker exceeded CPU time limit. (Worker "hog", stopped at ')
    assert f"{__file__}:" in message and message.endswith(" in hog)")
    stopped = int(message.rsplit(":", 1)[1].split()[0])
    assert line + 2 <= stopped <= line + 3  # the loop's lines
