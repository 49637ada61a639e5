"""`fastbind serve` as a real process on 127.0.0.1, talked to by real clients.

Each server is ``python -m fastbind serve tests/serve_app/fastbind.toml --port 0``;
its first line says where it listens. Raw sockets cover pipelining and malformed
input, aiohttp the rest. Every wait is bounded and every process is stopped in a
fixture teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from served import Served, wait_until

APP = Path(__file__).resolve().parent / "serve_app" / "fastbind.toml"
CHUNK = bytes(range(256)) * 256  # what serve_app_workers streams
TIMEOUT = 15.0
MB = 1024 * 1024


class MarkedServer(Served):
    """A server of tests/serve_app, whose Workers touch files in ``marks`` as they go."""

    def __init__(self, marks: Path, *args: str) -> None:
        self.marks = marks
        super().__init__(APP, args, env={"FASTBIND_TEST_MARKS": str(marks)}, scheme="http",
                         timeout=TIMEOUT)

    def wait_for_mark(self, name: str) -> None:
        wait_until((self.marks / name).exists, f"{name} marked", TIMEOUT)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., MarkedServer]]:
    started: list[MarkedServer] = []

    def start(*args: str) -> MarkedServer:
        marks = tmp_path / f"marks{len(started)}"
        marks.mkdir()
        started.append(MarkedServer(marks, *args))
        return started[-1]

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarkedServer]:
    """One server shared by the tests that need no special options."""
    proc = MarkedServer(tmp_path_factory.mktemp("marks"), "--access-log")
    yield proc
    proc.kill()


# -- raw HTTP/1.1 over a socket --------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


def read_reply(reader: Any, head_only: bool = False) -> Reply:
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.lower(), value.strip()))
    reply = Reply(status, headers, b"")
    if head_only or status in (204, 304):
        return reply
    if reply.header("transfer-encoding") == "chunked":
        parts = []
        while size := int(reader.readline().split(b";")[0], 16):
            parts.append(reader.read(size))
            assert reader.read(2) == b"\r\n"
        assert reader.readline() == b"\r\n"
        reply.body = b"".join(parts)
    elif reply.header("content-length") is not None:
        reply.body = reader.read(int(reply.header("content-length") or 0))
    else:
        reply.body = reader.read()
    return reply


def exchange(server: MarkedServer, data: bytes, replies: int = 1) -> tuple[list[Reply], bytes]:
    """Send ``data`` on a new connection, read ``replies`` replies, then what follows until close."""
    with server.connect() as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        got = [read_reply(reader) for _ in range(replies)]
        rest = reader.read()  # b"" once the server closes
        return got, rest


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: test.local", *extra]) + "\r\n\r\n").encode()


# -- the basics ------------------------------------------------------------------------------------


def test_start_line_and_a_binding_hop(server: MarkedServer) -> None:
    assert server.first_line == f'fastbind: serving "gateway" on {server.url} (pid {server.pid})'
    (reply,), _ = exchange(server, get("/hello", "Connection: close"))
    assert reply.status == 200 and reply.body == b"hello from leaf"
    assert reply.header("x-leaf") == "1"
    assert reply.header("content-length") == "15"
    assert reply.header("connection") == "close"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", reply.header("date") or "")


def test_request_url_method_headers_and_body_reach_the_worker(server: MarkedServer) -> None:
    body = b'{"a": 1}'
    data = (
        b"PUT /request?x=1&y=%C3%A9 HTTP/1.1\r\nHost: api.example:8080\r\nX-Trace: abc\r\n"
        b"X-Trace: def\r\nContent-Length: 8\r\nConnection: close\r\n\r\n" + body
    )
    (reply,), _ = exchange(server, data)
    import json

    seen = json.loads(reply.body)
    assert seen["method"] == "PUT"
    assert seen["url"] == "http://api.example:8080/request?x=1&y=%C3%A9"
    assert seen["body"] == '{"a": 1}'
    assert ["x-trace", "abc"] in seen["headers"] and ["x-trace", "def"] in seen["headers"]
    assert seen["cf"] == ["HTTP/1.1", None]  # what the server knows; None for the rest
    # The URL as the URL standard writes it: host lower-cased, default port dropped, dots resolved.
    data = b"GET /x/../request HTTP/1.1\r\nHost: API.Example:80\r\nConnection: close\r\n\r\n"
    (reply,), _ = exchange(server, data)
    assert json.loads(reply.body)["url"] == "http://api.example/request"


def test_unknown_methods_reach_the_worker_as_they_are(server: MarkedServer) -> None:
    import json

    (reply,), _ = exchange(server, b"BREW /request HTTP/1.1\r\nHost: pot\r\nConnection: close\r\n\r\n")
    assert json.loads(reply.body)["method"] == "BREW"
    # Also one pipelined behind a known method, and one that arrives in two pieces.
    with server.connect() as sock:
        sock.sendall(get("/request") + b"PROPPATCHX /request HTTP/1.1\r\nHost: pot\r\n\r\n")
        reader = sock.makefile("rb")
        assert json.loads(read_reply(reader).body)["method"] == "GET"
        assert json.loads(read_reply(reader).body)["method"] == "PROPPATCHX"
        sock.sendall(b"SPL")
        time.sleep(0.05)
        sock.sendall(b"IT /request HTTP/1.1\r\nHost: pot\r\n\r\n")
        assert json.loads(read_reply(reader).body)["method"] == "SPLIT"


def test_keep_alive_reuses_one_connection(server: MarkedServer, run: Any) -> None:
    async def go() -> int:
        opened = 0

        async def on_connection(*_: Any) -> None:
            nonlocal opened
            opened += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_connection)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            for _ in range(5):
                async with session.get(server.url + "/hello?keep-alive",
                                       timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
                    assert resp.status == 200 and await resp.text() == "hello from leaf"
        return opened

    assert run(go()) == 1
    # The access log shows the five requests coming from one client port.
    lines: list[str] = []
    while len(lines) < 5:
        line = server.next_line()
        if "/hello?keep-alive" in line:
            lines.append(line)
    assert len({line.split()[0] for line in lines}) == 1
    assert re.fullmatch(r'127\.0\.0\.1:\d+ "GET /hello\?keep-alive HTTP/1\.1" 200 15 \d+\.\dms', lines[-1])


def test_pipelined_requests_are_answered_in_order(server: MarkedServer) -> None:
    data = (
        get("/sleep?id=pipe&s=0.2")  # the first is slowest: answers must still come in order
        + b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        + b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        + get("/hello")
        + get("/pid", "Connection: close")
    )
    replies, rest = exchange(server, data, replies=5)
    assert [r.status for r in replies] == [200] * 5
    assert replies[0].body == b"slept 0.2"
    assert replies[1].body.startswith(b'{"size":5,') and replies[2].body.startswith(b'{"size":3,')
    assert replies[3].body == b"hello from leaf"
    assert replies[4].body == str(server.pid).encode() and replies[4].header("connection") == "close"
    assert rest == b""


def test_a_request_runs_in_its_task_from_its_first_step(server: MarkedServer) -> None:
    # Answered at once (on 3.12+ within the read's callback) or after a wait, in order,
    # and each Worker sees its task (asyncio.timeout needs one) from its first step.
    data = get("/in-task") * 3 + get("/sleep?id=in-task&s=0.05") + get("/in-task") * 2
    replies, rest = exchange(server, data + get("/in-task", "Connection: close"), replies=7)
    assert [r.body for r in replies] == [b"True"] * 3 + [b"slept 0.05"] + [b"True"] * 3
    assert rest == b""


def test_a_flood_of_pipelined_requests_is_bounded(server: MarkedServer) -> None:
    # 2,000 requests in one write: past 256 queued on the connection, a 429 and a close,
    # so one socket read cannot queue an unbounded number of requests.
    replies, _ = exchange(server, get("/hello") * 2000, replies=258)
    statuses = [r.status for r in replies]
    assert statuses[:257] == [200] * 257
    assert statuses[257] == 429


def test_a_refusal_reaches_a_client_that_is_still_sending(server: MarkedServer) -> None:
    # The client floods, goes on sending, and reads only later: the server must not close
    # with its input unread (a reset, which can discard the answers in the client's
    # buffer) but half-close, drop what still comes, and close when the client does.
    with server.connect() as sock:
        sock.sendall(get("/hello") * 2000)
        for _ in range(20):
            time.sleep(0.01)
            try:
                sock.sendall(get("/hello") * 50)  # arrives after the 429
            except OSError:
                break  # already shut for writing on the server's side: fine either way
        time.sleep(0.3)  # the refusal and its close are long done by now
        reader = sock.makefile("rb")
        statuses = [read_reply(reader).status for _ in range(258)]
        assert reader.read() == b""  # the server's FIN, not a reset
    assert statuses[:257] == [200] * 257 and statuses[257] == 429


def test_upgrade_connect_and_other_request_targets(server: MarkedServer) -> None:
    import json

    # No protocol is switched to: after an Upgrade request, HTTP/1.1 goes on.
    replies, _ = exchange(server, b"GET /request HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                          + get("/request?after", "Connection: close"), replies=2)
    assert json.loads(replies[0].body)["headers"][-1] == ["upgrade", "websocket"]
    assert json.loads(replies[1].body)["url"] == "http://test.local/request?after"
    # After CONNECT the bytes are a tunnel's, not HTTP: answered, then closed.
    (reply,), rest = exchange(server, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + get("/pid"))
    assert reply.status == 404 and reply.header("connection") == "close" and rest == b""
    # The absolute form, as sent to a proxy, is the URL itself.
    (reply,), _ = exchange(server, b"GET http://other.example/request?q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert json.loads(reply.body)["url"] == "http://other.example/request?q"


def test_responses_with_no_body_head_and_errors(server: MarkedServer) -> None:
    data = (
        get("/status?code=204") + get("/status?code=304") + get("/status?code=418")
        + b"HEAD /download?size=1000 HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"
        + get("/boom") + get("/empty") + get("/unicode-header", "Connection: close")
    )
    with server.connect() as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        no_content = read_reply(reader)
        assert no_content.status == 204 and no_content.header("content-length") is None
        assert read_reply(reader).status == 304
        teapot = read_reply(reader)
        assert (teapot.status, teapot.body) == (418, b"status 418")
        head_stream = read_reply(reader, head_only=True)
        assert head_stream.status == 200 and head_stream.header("transfer-encoding") is None
        head = read_reply(reader, head_only=True)
        assert head.status == 200 and head.header("content-length") == "15"
        boom = read_reply(reader)
        assert (boom.status, boom.body) == (500, b"Internal Server Error")
        empty = read_reply(reader)
        assert (empty.status, empty.header("content-length"), empty.body) == (200, "0", b"")
        unicode = read_reply(reader)
        assert unicode.header("x-name") == "café ✓".encode().decode("latin-1")
        assert reader.read() == b""


def test_a_get_body_is_read_and_dropped(server: MarkedServer) -> None:
    import json

    # The Fetch API has no body on a GET: the Worker sees none, and the connection goes on.
    data = b"GET /request HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" + get("/pid", "Connection: close")
    replies, _ = exchange(server, data, replies=2)
    assert replies[0].status == 200 and json.loads(replies[0].body)["body"] == ""
    assert replies[1].body == str(server.pid).encode()


def test_http_1_0(server: MarkedServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /request HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reader = sock.makefile("rb")
        reply = read_reply(reader)
        assert reply.header("connection") == "keep-alive"
        assert b'"url":"http://127.0.0.1:' in reply.body  # no Host: the server's address
        sock.sendall(b"GET /download?size=70000 HTTP/1.0\r\n\r\n")  # a stream, no chunked in 1.0
        reply = read_reply(reader)
        assert reply.header("transfer-encoding") is None and reply.header("connection") == "close"
        assert reply.body == (CHUNK * 2)[:70000]


def test_expect_100_continue(server: MarkedServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\nExpect: 100-continue\r\n\r\n")
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(b"x" * 300000)
        reply = read_reply(reader)
        assert reply.body.startswith(b'{"size":300000,') and b'"kind":"stream"' in reply.body


# -- streaming both ways, memory stays flat ----------------------------------------------------------


def test_chunked_upload_of_50_mb_is_streamed(server: MarkedServer, run: Any) -> None:
    size = 50 * MB
    digest = hashlib.sha256()
    piece = os.urandom(256 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            digest.update(piece)
            yield piece

    async def go() -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/upload", data=body(),
                                    timeout=aiohttp.ClientTimeout(total=60)) as resp:
                assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
                return await resp.json()

    before = server.memory_kb("VmRSS")
    result = run(go())
    assert result == {"size": size, "sha256": digest.hexdigest(), "kind": "stream"}
    grown = server.memory_kb("VmHWM") - before
    assert grown < 20 * 1024, f"peak RSS grew by {grown} KiB for a 50 MiB body"


def test_chunked_download_of_50_mb_is_streamed(server: MarkedServer, run: Any) -> None:
    size = 50 * MB

    async def go() -> tuple[int, str, str | None]:
        digest, received = hashlib.sha256(), 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/download?size={size}",
                                   timeout=aiohttp.ClientTimeout(total=60)) as resp:
                async for chunk in resp.content.iter_chunked(1024 * 1024):
                    digest.update(chunk)
                    received += len(chunk)
                    if received < 4 * MB:
                        await asyncio.sleep(0.002)  # a slow reader at first: the server must wait
                return received, digest.hexdigest(), resp.headers.get("Transfer-Encoding")

    before = server.memory_kb("VmRSS")
    received, hexdigest, encoding = run(go())
    expected = hashlib.sha256()
    for _ in range(size // len(CHUNK)):
        expected.update(CHUNK)
    assert (received, hexdigest, encoding) == (size, expected.hexdigest(), "chunked")
    grown = server.memory_kb("VmHWM") - before
    assert grown < 20 * 1024, f"peak RSS grew by {grown} KiB for a 50 MiB body"


def test_content_length_bodies_both_ways(server: MarkedServer) -> None:
    payload = os.urandom(3 * MB)
    data = (
        f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
        + b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nsmol"
        + get("/sized-stream?size=100000")
        + f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    replies, _ = exchange(server, data, replies=4)
    assert replies[0].body == (
        b'{"size":%d,"sha256":"%s","kind":"stream"}' % (len(payload), hashlib.sha256(payload).hexdigest().encode())
    )
    assert b'"kind":"bytes"' in replies[1].body  # small and whole: handed over as bytes
    assert replies[2].header("content-length") == "100000" and replies[2].header("transfer-encoding") is None
    assert replies[2].body == (CHUNK * 2)[:100000]
    assert replies[3].body == payload  # echoed while it was still arriving


def test_an_unread_request_body_is_skipped_or_the_connection_closed(server: MarkedServer) -> None:
    # /hello never reads its body: a small rest is skipped and the connection goes on...
    with server.connect() as sock:
        sock.sendall(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
        reader = sock.makefile("rb")
        reply = read_reply(reader)  # answered while half the body is still to come
        assert reply.body == b"hello from leaf" and reply.header("connection") is None
        sock.sendall(b"y" * 500 + get("/pid", "Connection: close"))
        assert read_reply(reader).body == str(server.pid).encode()
    # ...a large one is not read: the response closes the connection.
    with server.connect() as sock:
        sock.sendall(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        reader = sock.makefile("rb")
        reply = read_reply(reader)
        assert reply.body == b"hello from leaf" and reply.header("connection") == "close"


# -- the client goes away -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_disconnect_cancels_the_pipeline(server: MarkedServer, how: str) -> None:
    sock = server.connect()
    name = f"gone-{how}"
    sock.sendall(get(f"/slow?id={name}"))
    server.wait_for_mark(f"{name}.started")
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A FIN alone could be a half-close: the server sends a 100 Continue, which a
    # closed socket answers with a reset.
    sock.close()
    server.wait_for_mark(f"{name}.cancelled")  # the child Worker, behind a binding, saw CancelledError
    (reply,), _ = exchange(server, get("/hello", "Connection: close"))
    assert reply.status == 200  # and the server serves on


def test_a_disconnect_closes_a_streamed_response(server: MarkedServer) -> None:
    sock = server.connect()
    sock.sendall(get(f"/download?size={10 * 1024 * MB}&id=endless"))
    assert sock.recv(65536)  # the head and the first chunks
    sock.close()
    server.wait_for_mark("endless.closed")  # the server closed the body's generator


# -- limits: 400, 408, 413, 431 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarkedServer]:
    proc = MarkedServer(tmp_path_factory.mktemp("strict"), "--max-body", "64K", "--max-header-size", "4K",
                        "--read-timeout", "0.4", "--keep-alive-timeout", "0.4")
    yield proc
    proc.kill()


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431, b"request head is larger"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431, b"larger than the server accepts"),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
         431, b"request head is larger"),
        (b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n", 413, b"larger than 65536 bytes"),
        (b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"8000\r\n" + b"x" * 0x8000 + b"\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n" + b"10\r\n" + b"x" * 16 + b"\r\n",
         413, b"larger than 65536 bytes"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, b"A Host header is required"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"More than one Host header"),
        (b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400, b"Invalid Host header"),
        (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400, b"Malformed request"),
        (b"GET / HTTP/1.1\r\nHost t\r\n\r\n", 400, b"Malformed request"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, b"Malformed request"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
         b"other than chunked are not supported"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, b"Malformed request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, b"Malformed request"),  # TLS to a plain port
        (b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505, b"HTTP/2.0 is not served here"),
        (b"GET /x HTTP/0.9\r\nHost: t\r\n\r\n", 400, b"no HTTP/1.x version"),
        (b"GET /x\r\nHost: t\r\n\r\n", 400, b"no HTTP/1.x version"),
        (b"GET http:///x HTTP/1.1\r\nHost: t\r\n\r\n", 400, b"names no valid host"),
        (b"CONNECT a/b:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400, b"names no valid host"),
    ],
    ids=["header", "url", "count", "content-length", "chunked", "no-host", "two-hosts", "bad-host",
         "request-line", "header-line", "chunk-size", "gzip-chunked", "two-lengths", "tls", "http-2", "http-0.9", "no-version",
         "absolute-no-host", "authority-bad-host"],
)
def test_limits_and_malformed_requests(strict: MarkedServer, data: bytes, status: int, reason: bytes) -> None:
    (reply,), rest = exchange(strict, data)
    assert reply.status == status, reply.body
    assert reason in reply.body
    assert reply.header("connection") == "close" and rest == b""


def test_earlier_pipelined_requests_are_answered_before_the_error(strict: MarkedServer) -> None:
    replies, rest = exchange(strict, get("/hello") + get("/pid") + b"GET / HTTP/1.1\r\n\r\n", replies=3)
    assert [r.status for r in replies] == [200, 200, 400]
    assert rest == b""


def test_a_slow_client_gets_408(strict: MarkedServer) -> None:
    for partial in (
        b"GET /hello HTTP/1.1\r\nHost: t\r\n",  # headers never end
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part",  # the body stalls
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
    ):
        with strict.connect() as sock:
            sock.sendall(partial)
            reader = sock.makefile("rb")
            reply = read_reply(reader)
            assert reply.status == 408 and reply.header("connection") == "close"
            assert reader.read() == b""


def test_a_head_trickled_byte_by_byte_is_cut_off(strict: MarkedServer) -> None:
    # Each byte comes well within the read timeout (0.4 s), but the head as a whole does not.
    with strict.connect() as sock:
        sock.settimeout(0.1)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Trickle: ")
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                sock.sendall(b"a")
                continue
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data


def test_an_idle_keep_alive_connection_is_closed(strict: MarkedServer) -> None:
    with strict.connect() as sock:
        sock.sendall(get("/hello"))
        reader = sock.makefile("rb")
        assert read_reply(reader).status == 200
        assert reader.read() == b""  # closed after the keep-alive timeout, without a response


# -- shutdown and processes ------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_work_then_exits_0(start_server: Callable[..., MarkedServer]) -> None:
    server = start_server("--shutdown-timeout", "10")
    idle = server.connect()  # an idle keep-alive connection is simply closed
    busy = server.connect()
    busy.sendall(get("/sleep?id=drain&s=0.5"))
    server.wait_for_mark("drain.started")
    server.proc.send_signal(signal.SIGTERM)
    reply = read_reply(busy.makefile("rb"))
    assert (reply.status, reply.body) == (200, b"slept 0.5")
    assert reply.header("connection") == "close"  # the last answer on this connection
    assert idle.recv(1) == b""
    assert server.proc.wait(timeout=TIMEOUT) == 0
    assert (server.marks / "drain.later").exists()  # its wait_until work ended first
    with pytest.raises(OSError):
        server.connect()  # no longer listening
    idle.close()
    busy.close()


def test_a_second_signal_cuts_the_drain_short(start_server: Callable[..., MarkedServer]) -> None:
    server = start_server()
    with server.connect() as sock:
        sock.sendall(get("/slow?id=stuck"))
        server.wait_for_mark("stuck.started")
        server.proc.send_signal(signal.SIGINT)  # the drain waits for /slow...
        time.sleep(0.2)
        assert server.proc.poll() is None
        server.proc.send_signal(signal.SIGINT)  # ...until a second signal
        assert server.proc.wait(timeout=TIMEOUT) == 1
        server.wait_for_mark("stuck.cancelled")
        assert sock.recv(1) == b""


def test_two_processes_share_the_port(start_server: Callable[..., MarkedServer]) -> None:
    server = start_server("--workers", "2")
    children = set(server.children)
    assert len(children) == 2, server.first_line
    seen: set[int] = set()
    for _ in range(400):  # the kernel spreads connections by their addresses
        (reply,), _ = exchange(server, get("/pid", "Connection: close"))
        seen.add(int(reply.body))
        if seen == children:
            break
    assert seen == children

    # A child that dies is replaced; the port keeps answering.
    victim = children.pop()
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(f"worker process {victim} was killed by signal 9; starting a new one")
    seen = set()
    for _ in range(400):
        (reply,), _ = exchange(server, get("/pid", "Connection: close"))
        seen.add(int(reply.body))
        if len(seen) == 2:
            break
    assert len(seen) == 2 and victim not in seen

    assert server.stop(signal.SIGTERM, timeout=TIMEOUT + 30) == 0
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_config_errors_are_reported_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "fastbind.toml"
    config.write_text('[[workers]]\nname = "gateway"\nmain = "nomod:x"\n')
    proc = subprocess.run([sys.executable, "-m", "fastbind", "serve", str(config), "--port", "0"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f'fastbind: {config}: Worker "gateway" main "nomod:x": no module named "nomod"')
    proc = subprocess.run([sys.executable, "-m", "fastbind", "serve", str(APP), "--port", "0", "--entry", "nope"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert '--entry "nope" is not a Worker of this file (its Workers: gateway, leaf).' in proc.stderr


def test_a_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            proc = subprocess.run(
                [sys.executable, "-m", "fastbind", "serve", str(APP), "--port", str(port), *extra],
                capture_output=True, text=True, timeout=TIMEOUT,
            )
            assert proc.returncode == 1 and proc.stdout == ""
            assert proc.stderr == f"fastbind: cannot listen on 127.0.0.1:{port}: Address already in use\n"
