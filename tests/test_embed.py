"""The raw embedding API (fastbind.embed) and the two embedding examples, on both cores."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fastbind import ConfigError, Request, Response, Runtime
from fastbind.embed import RawDispatcher, raw_request, raw_response

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "embedding"


def load_example(name: str) -> ModuleType:
    module_name = f"fastbind_example_{name}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return module


# -- raw_request / raw_response ---------------------------------------------------------


def test_raw_request_decodes_parser_output() -> None:
    body = memoryview(b"payload")
    request = raw_request(
        b"POST", "https://example.com/a?b=1",
        [(b"Host", b"example.com"), (b"X-Caf\xe9", b"cr\xe8me"), [b"accept", b"*/*"]],  # type: ignore[list-item]
        body,
    )
    assert type(request) is Request and request.method == "POST"
    assert request.url == "https://example.com/a?b=1"
    assert list(request.headers) == [
        ("host", "example.com"), ("x-caf\xe9", "cr\xe8me"), ("accept", "*/*"),
    ]
    assert request.body is body and not request.body_used


def test_raw_request_methods_bodies_and_urls() -> None:
    assert raw_request("get", "http://h/", [], None).method == "GET"
    assert raw_request(b"PURGE", "http://h/", [], b"").method == "PURGE"
    assert raw_request(b"GET", "http://h/", [], b"").body is None
    assert raw_request(b"GET", "ws://h/socket", [], None).url == "ws://h/socket"  # full check
    with pytest.raises(TypeError, match="Invalid HTTP method"):
        raw_request(b"GE T", "http://h/", [], None)
    for bad in ("/relative", "https://", "http://h a/", "http://h:99999/"):
        with pytest.raises(TypeError, match="Invalid URL"):
            raw_request(b"GET", bad, [], None)
    with pytest.raises(TypeError, match="pairs of bytes"):
        raw_request(b"GET", "http://h/", [("host", "h")], None)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Request body must be"):
        raw_request(b"POST", "http://h/", [], 42)  # type: ignore[arg-type]


def test_raw_response_encodes_headers_and_hands_the_body_over() -> None:
    body = bytearray(b"data")
    response = Response(body, status=203, headers=[("X-A", "1"), ("x-name", "Zo\xeb"), ("x-emoji", "\u2603")])
    status, headers, out = raw_response(response)
    assert (status, out) == (203, body) and out is body and response.body_used
    assert headers == [(b"x-a", b"1"), (b"x-name", b"Zo\xeb"), (b"x-emoji", "\u2603".encode())]
    assert raw_response(Response("h\xe9"))[2] == "h\xe9".encode()
    assert raw_response(Response(None))[2] == b""


# -- RawDispatcher on a Runtime ---------------------------------------------------------


def test_round_trip_through_a_binding(core: Any, run: Any) -> None:
    seen: dict[str, Any] = {}
    reports: list[Any] = []

    async def child(request: Request, env: Any, ctx: Any) -> Response:
        seen["child_body"] = request.body
        return Response(request.body, headers={"x-depth": str(ctx.depth)})

    async def entry(request: Request, env: Any, ctx: Any) -> Response:
        seen["headers"] = list(request.headers)
        return await env.CHILD.fetch(request)

    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("entry", entry, services={"CHILD": "child"})
    rt.add_worker("child", child)
    raw = RawDispatcher(rt, "entry")
    payload = b"x" * 1000
    status, headers, body = run(raw(b"PUT", "http://h/p", [(b"Content-Type", b"a/b")], payload))
    assert (status, headers) == (200, [(b"x-depth", b"2")])
    assert body is payload and seen["child_body"] is payload  # zero copy both ways
    assert seen["headers"] == [("content-type", "a/b")]
    assert len(reports) == 1 and [r.target for r in reports[0].subrequests] == ["child"]
    assert (raw.entry, raw.runtime) == ("entry", rt)


def test_dispatcher_converts_as_raw_request_and_raw_response_do(core: Any, run: Any) -> None:
    # The dispatcher's fast path (in the compiled core) must give what the two
    # conversions give: names of any case, common or not, latin-1 values both ways.
    seen: list[Any] = []

    async def echo(request: Request, env: Any, ctx: Any) -> Response:
        seen.append((request.method, request.url, list(request.headers), request.body))
        return Response("ok", headers=[("X-Seen", str(len(request.headers))),
                                       ("Content-Type", "text/plain"), ("x-echo", "caf\xe9"),
                                       ("x-wide", "\u20ac")])

    rt = Runtime()
    rt.add_worker("echo", echo)
    raw = RawDispatcher(rt, "echo")
    parts: list[Any] = [
        (b"GET", "https://h.test/p?q=1", [(b"Host", b"h.test"), (b"USER-AGENT", b"t/1"),
                                          (b"x-Custom-Name", b"caf\xe9"), (b"accept", b"")], b""),
        (b"OPTIONS", "http://h.test/", [], None),
        (b"PURGE", "http://h.test/", ((b"a", b"b"),), b"x"),
        ("get", "https://h.test/", [[b"host", b"h"]], b""),
        (b"POST", "wss://h.test/s", [], b"payload"),
    ]
    for method, url, headers, body in parts:
        status, out_headers, out_body = run(raw(method, url, headers, body))
        expected = raw_request(method, url, headers, body)
        assert seen.pop() == (expected.method, expected.url, list(expected.headers), expected.body)
        assert (status, out_headers, out_body) == raw_response(
            Response("ok", headers=[("x-seen", str(len(expected.headers))),
                                    ("content-type", "text/plain"), ("x-echo", "caf\xe9"),
                                    ("x-wide", "\u20ac")])
        )
    with pytest.raises(TypeError, match="Invalid URL"):
        run(raw(b"GET", "http://h .test/", [], None))
    assert rt.live_counts()["pipelines"] == 0


def test_raw_headers_read_late_are_those_of_the_call(core: Any, run: Any) -> None:
    # What the Worker reads is what the host passed, whatever the host did to its list
    # after the call, forwarded through a binding or handed back in the response.
    seen: dict[str, Any] = {}

    async def child(request: Request, env: Any, ctx: Any) -> Response:
        seen["child"] = list(request.headers)
        request.headers.set("x-child", "1")
        return Response("ok")

    async def entry(request: Request, env: Any, ctx: Any) -> Response:
        await asyncio.sleep(0)
        await env.CHILD.fetch(request)  # before this Worker has read its headers
        seen["entry"] = list(request.headers)
        return Response("ok", headers=request.headers)

    rt = Runtime()
    rt.add_worker("entry", entry, services={"CHILD": "child"})
    rt.add_worker("child", child)
    raw = RawDispatcher(rt, "entry")
    headers = [(b"Host", b"h.test"), (b"X-Caf\xe9", b"cr\xe8me")]
    pending = raw(b"GET", "https://h.test/", headers, b"")
    headers[0] = (b"host", b"changed.test")
    headers.append((b"x-late", b"1"))
    status, out_headers, _ = run(pending)
    expected = [("host", "h.test"), ("x-caf\xe9", "cr\xe8me")]
    assert seen == {"child": expected, "entry": expected}
    assert (status, out_headers) == (200, [(b"host", b"h.test"), (b"x-caf\xe9", b"cr\xe8me"),
                                           (b"content-type", b"text/plain;charset=UTF-8")])


def test_raw_headers_never_read_go_back_decoded(core: Any, run: Any) -> None:
    # A Worker that hands its request's Headers object (never read, still raw) back
    # as its response's: the host gets the names lower-cased, as from any Response.
    async def mirror(request: Request, env: Any, ctx: Any) -> Response:
        response = Response("ok")
        response.headers = request.headers
        return response

    rt = Runtime()
    rt.add_worker("mirror", mirror)
    raw = RawDispatcher(rt, "mirror")
    for pairs in ([(b"X-A", b"1"), (b"Caf\xe9", b"cr\xe8me")], ((b"X-A", b"1"), (b"Caf\xe9", b"cr\xe8me"))):
        status, headers, body = run(raw(b"GET", "https://h.test/", pairs, b""))
        assert (status, headers, body) == (200, [(b"x-a", b"1"), (b"caf\xe9", b"cr\xe8me")], b"ok")


def test_response_headers_written_as_literals_and_ones_that_change(core: Any, run: Any) -> None:
    # The compiled core hands the same (bytes, bytes) pair out again for a header made
    # of the same two str objects each time (a literal in the Worker's code); a value
    # that changes, or one equal but made anew, or a long one, is encoded each time.
    long_value = "v" * 300
    answers = iter(range(1000))

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        n = next(answers)
        return Response("ok", headers=[
            ("content-type", "application/json"),
            ("x-count", str(n)),
            ("x-made", "".join(["ab", "c"])),  # equal each time, a new object each time
            ("x-long", long_value),
        ])

    rt = Runtime()
    rt.add_worker("w", worker)
    raw = RawDispatcher(rt, "w")
    first = run(raw(b"GET", "https://h.test/", [], b""))[1]
    second = run(raw(b"GET", "https://h.test/", [], b""))[1]
    expected = [(b"content-type", b"application/json"), (b"x-made", b"abc"), (b"x-long", long_value.encode())]
    assert [pair for pair in first if pair[0] != b"x-count"] == expected
    assert [pair for pair in second if pair[0] != b"x-count"] == expected
    assert (first[1], second[1]) == ((b"x-count", b"0"), (b"x-count", b"1"))
    if rt.implementation == "c":
        assert second[2] is not first[2] and second[3] is not first[3]

    # The literal's pair is kept: asked of a Worker that answers with it alone, since the
    # table is direct-mapped and another header's pair may take the slot it had above.
    async def literal(request: Request, env: Any, ctx: Any) -> Response:
        return Response("ok", headers=[("content-type", "application/json")])

    rt.add_worker("literal", literal)
    raw = RawDispatcher(rt, "literal")
    first = run(raw(b"GET", "https://h.test/", [], b""))[1]
    second = run(raw(b"GET", "https://h.test/", [], b""))[1]
    assert first == second == [(b"content-type", b"application/json")]
    if rt.implementation == "c":
        assert second[0] is first[0]


def test_str_bodies_literal_changing_long_and_not_ascii(core: Any, run: Any) -> None:
    # The compiled core keeps the UTF-8 bytes of a short str body made of the same object
    # each time (a literal); a body that changes, a long one and one beyond ASCII are
    # encoded each time, as raw_response does.
    long_body = "x" * 300
    answers = iter(range(1000))

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        kind = request.url.rsplit("/", 1)[1]
        if kind == "literal":
            return Response("ok")
        if kind == "changing":
            return Response(f"n={next(answers)}")
        if kind == "long":
            return Response(long_body)
        return Response("caf\u00e9 \u2615")

    rt = Runtime()
    rt.add_worker("w", worker)
    raw = RawDispatcher(rt, "w")

    def body(kind: str) -> Any:
        return run(raw(b"GET", f"https://h.test/{kind}", [], b""))[2]

    first, second = body("literal"), body("literal")
    assert first == second == b"ok"
    assert (body("changing"), body("changing")) == (b"n=0", b"n=1")
    long_first, long_second = body("long"), body("long")
    assert long_first == long_second == long_body.encode()
    assert body("other") == "caf\u00e9 \u2615".encode() == body("other")
    if rt.implementation == "c":
        assert second is first  # the literal's bytes, kept
        assert long_second is not long_first


def test_response_parts_a_worker_keeps_are_left_as_they_were(core: Any, run: Any) -> None:
    # A Response that nobody else holds gives the answer its header list (the compiled
    # core converts the pairs in place); one that the Worker keeps, or whose Headers or
    # list it keeps, or of a subclass (whose __del__ may read it), is left as it was.
    kept = Response("kept", headers={"content-type": "text/plain", "x-a": "1"})
    # bytes bodies: a str body would add its content type to each list
    shared_headers = Response(b"h", headers={"x-b": "2"}).headers
    held: list[Any] = []

    class Noted(Response):
        __slots__ = ()

        def __del__(self) -> None:  # runs as the Response is freed, after the answer
            held.append(list(self.headers.items()))

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        kind = request.url.rsplit("/", 1)[1]
        if kind == "kept":
            return kept
        if kind == "noted":
            return Noted(b"n", headers={"x-d": "4"})
        if kind == "headers":
            response = Response(b"h")
            response.headers = shared_headers  # the same object (Headers(...) would copy)
            return response
        response = Response(b"fresh", headers={"x-c": "3"})
        if kind == "list":
            held.append(response.headers._items)
        return response

    rt = Runtime()
    rt.add_worker("w", worker)
    raw = RawDispatcher(rt, "w")

    def call(kind: str) -> Any:
        return run(raw(b"GET", f"https://h.test/{kind}", [], b""))

    for _ in range(2):
        kept.body_used = False
        assert call("kept") == (200, [(b"content-type", b"text/plain"), (b"x-a", b"1")], b"kept")
        assert list(kept.headers.items()) == [("content-type", "text/plain"), ("x-a", "1")]
        assert call("headers") == (200, [(b"x-b", b"2")], b"h")
        assert list(shared_headers.items()) == [("x-b", "2")]
        assert call("list") == (200, [(b"x-c", b"3")], b"fresh")
        assert held[-1] == [("x-c", "3")]
        assert call("noted") == (200, [(b"x-d", b"4")], b"n")
        assert held[-1] == [("x-d", "4")]
        status, headers, body = call("fresh")
        assert (status, headers, body) == (200, [(b"x-c", b"3")], b"fresh")
        assert type(headers) is list and all(type(pair) is tuple for pair in headers)


def test_dispatcher_takes_keywords_and_reports_bad_calls(core: Any, run: Any) -> None:
    # Positional calls take the compiled core's C entry point; keywords and wrong
    # calls take the regular one, with the same meaning and Python's own errors.
    seen: list[Any] = []

    async def echo(request: Request, env: Any, ctx: Any) -> Response:
        seen.append((request.method, request.body))
        return Response("ok")

    rt = Runtime()
    rt.add_worker("echo", echo)
    raw = RawDispatcher(rt, "echo")
    url = "https://h.test/"
    assert run(raw(b"POST", url, [], b"a"))[0] == 200
    assert run(raw(b"POST", url, [], body=b"b"))[0] == 200
    assert run(raw(method=b"GET", url=url, headers=[]))[0] == 200
    assert run(raw(b"GET", url, []))[0] == 200
    assert seen == [("POST", b"a"), ("POST", b"b"), ("GET", None), ("GET", None)]
    with pytest.raises(TypeError, match="headers|at least 3 positional"):
        raw(b"GET", url)
    with pytest.raises(TypeError, match="positional argument|takes at most"):
        raw(b"GET", url, [], b"", None)
    with pytest.raises(TypeError, match="unexpected keyword argument|'bogus'"):
        raw(b"GET", url, [], bogus=1)
    assert rt.live_counts()["pipelines"] == 0


def test_streams_keep_the_pipeline_until_read(core: Any, run: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def upload() -> AsyncIterator[bytes]:
        yield b"up"

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        assert await request.bytes() == b"up"
        return Response(chunks())

    rt = Runtime()
    rt.add_worker("w", worker)

    async def go() -> tuple[int, int, list[bytes]]:
        status, _, body = await RawDispatcher(rt, "w")(b"POST", "http://h/", [], upload())
        assert not isinstance(body, (bytes, bytearray, memoryview))
        open_before = rt.live_counts()["pipelines"]
        got = [chunk async for chunk in body]
        return status, open_before, got

    assert run(go()) == (200, 1, [b"a", b"b"])


def test_errors_are_those_of_dispatch(core: Any, run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: Request, env: Any, ctx: Any) -> Response:
        raise RuntimeError("boom")

    rt = Runtime()
    rt.add_worker("broken", broken)
    status, _, body = run(RawDispatcher(rt, "broken")(b"GET", "http://h/", [], None))
    assert (status, body) == (500, b"Internal Server Error")
    with pytest.raises(ConfigError, match='No Worker named "nope"'):
        run(RawDispatcher(rt, "nope")(b"GET", "http://h/", [], None))
    with pytest.raises(TypeError, match="needs a fastbind.Runtime"):
        RawDispatcher(object(), "x")  # type: ignore[arg-type]


# -- examples/embedding: ASGI ---------------------------------------------------------------


async def call_asgi(app: Any, scope: dict[str, Any], body_parts: list[bytes]) -> list[dict[str, Any]]:
    incoming = [
        {"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
        for i, part in enumerate(body_parts or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def asgi_scope(method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": headers, "server": ("127.0.0.1", 8000),
    }


def test_asgi_app_in_process(core: Any, run: Any) -> None:
    example = load_example("asgi_app")
    app = example.FastbindASGI(example.build_runtime(), "gateway")
    auth = [(b"host", b"api.test"), (b"authorization", b"Bearer demo")]

    sent = run(call_asgi(app, asgi_scope("GET", "/me", auth, b"x=1"), []))
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b'{"user":"42","url":"http://api.test/me?x=1"}'
    sent = run(call_asgi(app, asgi_scope("POST", "/me", auth), [b'{"a":', b" [1]}"]))
    assert sent[1]["body"] == b'{"user":"42","got":{"a":[1]}}'
    sent = run(call_asgi(app, asgi_scope("GET", "/", [(b"host", b"x")]), []))
    assert (sent[0]["status"], sent[1]["body"]) == (401, b"unauthorized")
    assert example.request_url({"scheme": "https", "headers": [], "server": ("h", 443), "path": "/p"}) == "https://h/p"


async def http_get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_asgi_app_under_uvicorn(core: Any, run: Any) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    example = load_example("asgi_app")
    app = example.FastbindASGI(example.build_runtime(), "gateway")

    async def go() -> list[tuple[int, bytes]]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(500):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            assert server.started
            return [
                await http_get(port, b"GET /me HTTP/1.1\r\nhost: api.test\r\n"
                               b"authorization: Bearer demo\r\nconnection: close\r\n\r\n"),
                await http_get(port, b"GET / HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n\r\n"),
            ]
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()

    assert run(go()) == [
        (200, b'{"user":"42","url":"http://api.test/me"}'),
        (401, b"unauthorized"),
    ]


# -- examples/embedding: asyncio.Protocol on httptools ---------------------------------------


def test_httptools_server(core: Any, run: Any) -> None:
    example = load_example("httptools_server")

    async def go() -> list[tuple[int, bytes]]:
        server = await example.serve(example.build_runtime(), "gateway", "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return [
                await http_get(port, b"GET /me?q=1 HTTP/1.0\r\nHost: api.test\r\n"
                               b"Authorization: Bearer demo\r\n\r\n"),
                await http_get(port, b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n"),
                await http_get(port, b"NOT HTTP AT ALL\r\n\r\n"),
            ]
        finally:
            server.close()
            await server.wait_closed()

    assert run(go()) == [
        (200, b'{"user":"42","url":"http://api.test/me?q=1"}'),
        (401, b"unauthorized"),
        (400, b""),
    ]


def test_closing_the_awaiting_coroutine_ends_the_pipeline(core: Any, run: Any) -> None:
    # Not a cancellation: the coroutine awaiting the call is closed while the Worker
    # waits. The pipeline ends as far as it can without awaiting: its tasks are
    # cancelled by a supervisor, and it is reported once they have ended.
    reports: list[Any] = []

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        async def background() -> None:
            await asyncio.sleep(100)

        asyncio.ensure_future(background())
        await asyncio.sleep(100)
        return Response("never")

    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("w", worker)
    raw = RawDispatcher(rt, "w")

    async def go() -> None:
        for call in (lambda: rt.dispatch("w", Request("https://h/")),
                     lambda: raw(b"GET", "https://h/", [], None)):
            async def caller(call: Any = call) -> Any:
                return await call()

            coro = caller()
            coro.send(None)  # runs until the Worker waits
            coro.close()
            for _ in range(5):
                await asyncio.sleep(0)

    run(go())
    assert rt.live_counts() == {"pipelines": 0, "invocations": 0, "tasks": 0}
    assert [(r.status, type(r.error)) for r in reports] == [(None, GeneratorExit)] * 2
