"""Outbound fetch (docs/design.md, "Subrequests" and "Open connections") against a real aiohttp server, on both cores."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fetch_origin import WAIT_S, collect, fetches, free_port, origin, origin_server, until  # noqa: F401 (fixtures)

import fastbind
from fastbind import FetchError, Limits, Request, Response, Runtime, TooManySubrequestsError, fetch, remote
from fastbind.outbound.client import NetworkBody, OutboundClient
from fastbind.runtime import current_runtime


# -- fetch from Workers --------------------------------------------------------------


def test_fetch_from_a_worker_is_a_subrequest_with_a_streamed_body(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/hello"), headers={"x-trace": "1"})
        assert isinstance(resp.body, NetworkBody) and not resp.body.done
        assert resp.status == 200 and resp.ok
        assert resp.headers.get("x-origin") == "yes"
        assert current_runtime() is rt
        return Response(await resp.text() + " via " + ctx.worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://example.com/"))
            return await resp.text()

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)
    assert run(main()) == "hello via worker"
    (record,) = fetches(reports[0])
    assert (record.caller, record.target, record.depth, record.outcome) == (
        "worker", origin.url("/hello"), 1, "ok"
    )


def test_a_host_name_is_resolved(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(f"http://localhost:{origin.port}/hello")
        return Response(await resp.bytes())

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).text()

    assert run(main()) == "hello"


# -- redirects -----------------------------------------------------------------------


def test_each_redirect_is_a_subrequest_and_the_21st_raises(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        n = request.headers.get("x-n")
        resp = await fetch(origin.url(f"/redirect/{n}"))
        return Response(await resp.text())

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main(n: int) -> tuple[int, str]:
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/", headers={"x-n": str(n)}))
            return resp.status, await resp.text()

    assert run(main(3)) == (200, "arrived")
    assert [r.target for r in fetches(reports[0])] == [
        origin.url(f"/redirect/{n}") for n in (3, 2, 1, 0)
    ]
    assert run(main(20)) == (200, "arrived")
    assert len(fetches(reports[1])) == 21
    status, _ = run(main(21))
    assert status == 500
    assert isinstance(reports[2].error, TypeError) and str(reports[2].error) == "Too many redirects."
    assert len(fetches(reports[2])) == 21  # the 21st redirect is refused, not fetched


def test_redirects_spend_the_subrequest_budget(core, run, origin) -> None:
    reports, hook = collect()

    async def worker(request, env, ctx):
        await fetch(origin.url("/redirect/10"))
        return Response("unreachable")

    rt = Runtime(limits=Limits(subrequests=4), on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return (await rt.dispatch("worker", Request("https://e/"))).status

    assert run(main()) == 500
    assert isinstance(reports[0].error, TooManySubrequestsError)
    assert len(fetches(reports[0])) == 4 and origin.requests == 4


def test_manual_and_error_redirect_modes(core, run, origin) -> None:
    reports, hook = collect()
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/redirect/2"), redirect="manual")
        seen["manual"] = (resp.status, resp.headers.get("location"))
        await resp.aclose()
        with pytest.raises(FetchError, match=r'redirected \(302 to /redirect/1\) and redirect is "error"'):
            await fetch(origin.url("/redirect/2"), redirect="error")
        with pytest.raises(TypeError, match="redirect must be"):
            await fetch(origin.url("/redirect/2"), redirect="sometimes")
        return Response(None)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return (await rt.dispatch("worker", Request("https://e/"))).status

    assert run(main()) == 200
    assert seen["manual"] == (302, "/redirect/1")
    assert len(fetches(reports[0])) == 2 and origin.requests == 2


def test_303_turns_a_post_into_a_get_without_its_body(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(
            origin.url("/see-other"), method="POST", body=b"form",
            headers={"content-type": "application/x-www-form-urlencoded", "authorization": "t"},
        )
        return Response(await resp.bytes())

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    echoed = run(main())
    assert (echoed["method"], echoed["body"]) == ("GET", "")
    assert "content-type" not in echoed["headers"]
    assert echoed["headers"]["authorization"] == "t"  # same origin: kept


# -- bodies --------------------------------------------------------------------------


def test_the_response_body_streams_from_the_network(core, run, origin) -> None:
    seen: dict[str, Any] = {}

    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/stream"))
        chunks = resp.body.__aiter__()
        seen["first"] = await chunks.__anext__()
        seen["server_done_after_first"] = origin.stream_finished
        origin.finish_stream()
        seen["rest"] = b"".join([chunk async for chunk in chunks])
        seen["body_done"] = resp.body.done
        # A fetched Response can be returned as is: the caller streams it on.
        return await fetch(origin.url("/hello"))

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            return await resp.text()

    assert run(main()) == "hello"
    assert seen == {
        "first": b"first;", "server_done_after_first": False, "rest": b"second", "body_done": True,
    }


def test_aclose_drops_the_body_and_closes_its_connection(core, run, origin) -> None:
    async def worker(request, env, ctx):
        resp = await fetch(origin.url("/stream"))
        await resp.aclose()
        assert resp.body.done and resp.body_used
        await until(lambda: origin.disconnected == 1, "the server to see the connection closed")
        return Response("closed")

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).text()

    assert run(main()) == "closed"
    assert not origin.stream_finished


@pytest.mark.parametrize("kind", ["stream", "bytes", "memoryview", "str", "request"])
def test_request_bodies(core, run, origin, kind: str) -> None:
    async def chunks():
        for part in (b"one,", "two,", memoryview(b"three")):
            yield part
            await asyncio.sleep(0)

    async def worker(request, env, ctx):
        url = origin.url("/echo")
        if kind == "stream":
            resp = await fetch(url, method="POST", body=chunks())
        elif kind == "bytes":
            resp = await fetch(url, method="PUT", body=b"one,two,three")
        elif kind == "memoryview":
            resp = await fetch(url, method="POST", body=memoryview(b"xxone,two,three")[2:])
        elif kind == "str":
            resp = await fetch(url, method="POST", body="one,two,three")
        else:
            # fetch(request) sends a Request as it is, and uses its body up.
            outgoing = Request(url, method="POST", headers=request.headers, body=request.body)
            resp = await fetch(outgoing)
            assert outgoing.body_used
        return Response(await resp.bytes(), headers={"content-type": "application/json"})

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            incoming = Request("https://e/", method="POST", body=chunks(), headers={"x-in": "1", "host": "e"})
            return await (await rt.dispatch("worker", incoming)).json()

    echoed = run(main())
    assert echoed["body"] == "one,two,three"
    headers = echoed["headers"]
    if kind in ("stream", "request"):
        assert headers.get("transfer-encoding") == "chunked"
    else:
        assert headers.get("content-length") == "13"
    if kind == "str":
        assert headers["content-type"] == "text/plain;charset=UTF-8"
    else:
        assert "content-type" not in headers  # aiohttp would add one; fetch does not
    if kind == "request":
        assert headers["x-in"] == "1" and headers["host"] == f"127.0.0.1:{origin.port}"


def test_decoded_bodies_lose_their_encoding_headers_and_empty_ones_are_none(core, run, origin) -> None:
    async def worker(request, env, ctx):
        zipped = await fetch(origin.url("/gzip"))
        no_content = await fetch(origin.url("/status/204"))
        head = await fetch(origin.url("/hello"), method="HEAD")
        return Response.json({
            "text": await zipped.text(),
            "encoding": zipped.headers.get("content-encoding"),
            "length": zipped.headers.get("content-length"),
            "204": [no_content.status, no_content.body],
            "head": [head.status, head.body, head.headers.get("content-length")],
        })

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == {
        "text": "unzipped", "encoding": None, "length": None,
        "204": [204, None], "head": [200, None, "5"],
    }


# -- errors --------------------------------------------------------------------------


def test_network_errors_name_the_url(core, run, origin) -> None:
    reports, hook = collect()
    refused = f"http://127.0.0.1:{free_port()}/nobody-home"

    async def worker(request, env, ctx):
        with pytest.raises(FetchError) as refused_info:
            await fetch(refused)
        with pytest.raises(FetchError) as slow_info:
            await fetch(origin.url("/slow"), timeout=0.2)
        with pytest.raises(FetchError) as default_info:
            await fetch(origin.url("/slow"))  # the Runtime's fetch_timeout
        with pytest.raises(FetchError) as dns_info:
            await fetch("http://no-such-host.invalid/x", timeout=5)
        return Response.json([str(e.value) for e in (refused_info, slow_info, default_info, dns_info)])

    rt = Runtime(on_pipeline_end=hook, fetch_timeout=0.3)
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            resp = await rt.dispatch("worker", Request("https://e/"))
            await until(lambda: origin.disconnected == 2, "the timed-out fetches to hang up")
            return await resp.json()

    refused_msg, slow_msg, default_msg, dns_msg = run(main())
    assert refused_msg.startswith(f"Fetch to {refused} failed: could not connect to 127.0.0.1:")
    assert slow_msg == f"Fetch to {origin.url('/slow')} failed: timed out after 0.2 s waiting for the server to send data."
    assert "timed out after 0.3 s" in default_msg
    assert dns_msg.startswith("Fetch to http://no-such-host.invalid/x failed:")
    assert [r.outcome for r in fetches(reports[0])] == ["error"] * 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", 'Fetch API cannot load: unsupported scheme "ftp"'),
        ("file:///etc/passwd", 'Fetch API cannot load: unsupported scheme "file"'),
        ("/relative", "Invalid URL: /relative"),
        ("http://[::1/", "Invalid URL: http://[::1/"),
        ("http://host:99999/", "Invalid URL: http://host:99999/"),
        ("http://exa mple.com/", "Invalid URL: http://exa mple.com/"),
        ("not a url", "Invalid URL: not a url"),
        ("https://", "Invalid URL: https://"),
    ],
)
def test_bad_urls_raise_type_error(core, run, url: str, message: str) -> None:
    async def worker(request, env, ctx):
        messages = []
        for init in ({}, {"headers": {"x-a": "1"}}):  # with init, a Request is built first
            with pytest.raises(TypeError) as info:
                await fetch(url, **init)
            messages.append(str(info.value))
        return Response.json(messages)

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            return await (await rt.dispatch("worker", Request("https://e/"))).json()

    assert run(main()) == [message, message]


def test_timeouts_must_be_positive_numbers() -> None:
    bad_values: list[Any] = [0, -1, "5", True, float("inf")]
    for bad in bad_values:
        with pytest.raises(ValueError, match="positive number of seconds"):
            Runtime(fetch_timeout=bad)


# -- sessions and clients ------------------------------------------------------------


def test_one_session_per_runtime_closed_by_aclose(core, run, origin) -> None:
    sessions = []

    async def worker(request, env, ctx):
        await (await fetch(origin.url("/hello"))).aclose()
        sessions.append(current_runtime().extension(OutboundClient).session())
        return Response(None)

    rt = Runtime()
    rt.add_worker("worker", worker)

    async def main():
        async with rt:
            for _ in range(3):
                await rt.dispatch("worker", Request("https://e/"))
            assert not sessions[0].closed

    run(main())
    assert len(set(map(id, sessions))) == 1
    assert sessions[0].closed


def test_outside_a_worker_fetch_is_a_plain_client(run, origin) -> None:
    async def main():
        resp = await fetch(origin.url("/hello"))
        body = resp.body
        text = await resp.text()
        assert body.done
        return resp.status, text, current_runtime()

    assert run(main()) == (200, "hello", None)


# -- a pipeline across processes -----------------------------------------------------


PEER_CONFIG = Path(__file__).with_name("fetch_peer") / "fastbind.toml"
SERVING = re.compile(r'serving "api" on http://127\.0\.0\.1:(?P<port>\d+) \(pid (?P<pid>\d+)\)')


@pytest.fixture(scope="module")
def peer() -> Iterator[int]:
    """A second process, ``fastbind serve`` of tests/fetch_peer/fastbind.toml; yields its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastbind", "serve", str(PEER_CONFIG), "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        first = proc.stdout.readline() if ready else ""
        match = SERVING.search(first)
        if match is None:
            raise RuntimeError(f"fastbind serve did not start: {first!r}")
        yield int(match["port"])
    finally:
        proc.send_signal(signal.SIGTERM)  # a graceful shutdown, as in production
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)
        proc.stdout.close()


def test_a_remote_binding_reaches_a_worker_in_another_process(core, run, peer) -> None:
    reports, hook = collect()

    async def gateway(request, env, ctx):
        resp = await env.USERS.fetch(
            "https://users.internal/names?id=7#frag", method="POST", body=b"hi",
            headers={"x-from": "gateway"},
        )
        return Response(await resp.bytes(), status=resp.status)

    rt = Runtime(on_pipeline_end=hook)
    rt.add_worker("gateway", gateway, services={"USERS": remote(f"http://127.0.0.1:{peer}/v1/")})

    async def main():
        async with rt:
            resp = await rt.dispatch("gateway", Request("https://example.com/"))
            return resp.status, await resp.json()

    status, answer = run(main())
    assert status == 200
    assert answer == {
        "pid": answer["pid"], "url": f"http://127.0.0.1:{peer}/v1/names?id=7", "method": "POST",
        "body": "hi", "from": "gateway", "name": "ada", "depth": 1,
    }
    assert answer["pid"] != os.getpid()
    (record,) = reports[0].subrequests
    assert (record.kind, record.caller, record.target, record.outcome) == (
        "fetch", "gateway", f"http://127.0.0.1:{peer}/v1/names?id=7", "ok"
    )


def test_a_remote_binding_outside_a_worker_raises(core, run) -> None:
    from fastbind.outbound.remote import RemoteFetcher

    binding = RemoteFetcher(Runtime(), "USERS", "http://127.0.0.1:9/")
    assert binding.url_for("https://x/a/b?c=d#e") == "http://127.0.0.1:9/a/b?c=d"
    with pytest.raises(fastbind.FastbindError, match=r"env.USERS.fetch\(\) was called outside"):
        run(binding.fetch("https://x/"))


def test_a_remote_binding_needs_an_http_url() -> None:
    async def gateway(request, env, ctx):
        return Response(None)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"FILES": remote("ftp://files.example/")})
    with pytest.raises(fastbind.ConfigError, match='Remote binding "FILES" needs an http'):
        rt.validate()
