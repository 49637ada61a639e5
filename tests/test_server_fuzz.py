"""Raw-socket fuzz of `fastbind serve` on 127.0.0.1: hostile input gets its 4xx or a closed connection, and serving goes on.

One server process (tests/fuzz_app) takes every test here. Each hostile request runs on
its own connection and is followed by well-formed requests that must get a 200; the
seeded campaign mixes hostile and good connections concurrently, then checks that the
server's live counters return to rest and its memory to near where it started.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from served import Served

APP = Path(__file__).resolve().parent / "fuzz_app" / "fastbind.toml"
SEED = 20_261_126
MAX_BODY = 256 * 1024
READ_TIMEOUT_S = 1.0
# Short timeouts end every connection soon after its last byte, so a case can read to
# the end of the connection; the deadline is several times longer and only catches a
# server that holds a connection it should have closed.
SERVER_ARGS = ["--read-timeout", str(READ_TIMEOUT_S), "--keep-alive-timeout", "0.5",
               "--max-body", str(MAX_BODY)]
CASE_DEADLINE_S = 6.0
START_DEADLINE_S = 20.0
RSS_MARGIN_KB = 20 * 1024
AT_REST = {"pipelines": 1, "invocations": 1, "tasks": 0}  # the /_counters request itself
REJECTIONS = {400, 408, 413, 431, 505}


def errors_since(server: Served, offset: int) -> list[str]:
    """ERROR records logged after ``offset`` of the server's log.

    A Worker whose request body cannot be read to its end (the client went silent,
    went away or sent more than --max-body) raises BodyReadError: the client's
    doing, logged as a warning, so not among them.
    """
    assert server.log is not None
    with server.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    records = re.split(r"(?m)^(?=fastbind: )", text)
    return [record for record in records if record.startswith("fastbind: ERROR")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    proc = Served(APP, SERVER_ARGS, tmp_path_factory.mktemp("fuzz") / "server.log", entry="gateway",
                  scheme="http", timeout=START_DEADLINE_S)
    try:
        yield proc
        proc.assert_alive()
    finally:
        proc.close()


# -- reading what the server sends -----------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Outcome:
    """Everything one connection received, read until the server closed it."""

    replies: list[Reply] = field(default_factory=list)
    reset: bool = False  # the server reset the connection (it closed with input unread)
    data: bytes = b""

    def statuses(self) -> list[int]:
        return [reply.status for reply in self.replies]


STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")


def parse_replies(data: bytes) -> list[Reply]:
    """Split ``data`` into responses; raise AssertionError on anything that is not HTTP/1.1."""
    replies, pos = [], 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"an unfinished response head: {data[pos:pos + 200]!r}"
        lines = data[pos:end].split(b"\r\n")
        match = STATUS_LINE.fullmatch(lines[0])
        assert match, f"not a status line: {lines[0][:200]!r}"
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip(), f"a malformed response header: {line!r}"
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        pos, status = end + 4, int(match[1])
        if status == 100:
            replies.append(Reply(status, headers, b""))
            continue
        if "content-length" in headers:
            length = int(headers["content-length"])
            body, pos = data[pos:pos + length], pos + length
            assert len(body) == length, f"a body cut short: {len(body)} of {length} bytes"
        elif headers.get("transfer-encoding") == "chunked":
            body, pos = _dechunk(data, pos)
        else:  # the body runs to the end of the connection
            body, pos = data[pos:], len(data)
        replies.append(Reply(status, headers, body))
    return replies


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    parts = []
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end], 16)
        pos = line_end + 2
        if size == 0:
            return b"".join(parts), data.index(b"\r\n", pos) + 2
        parts.append(data[pos:pos + size])
        pos += size + 2


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashes or loses its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def exchange(server: Served, payload: bytes) -> Outcome:
    """Send ``payload`` on a new connection and read until the server closes it."""
    outcome = Outcome()
    with socket.create_connection(("127.0.0.1", server.port), timeout=CASE_DEADLINE_S) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent: what it answered is still to be read
        deadline = time.monotonic() + CASE_DEADLINE_S
        chunks = []
        while True:
            assert time.monotonic() < deadline, f"the connection is still open after {CASE_DEADLINE_S}s"
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                outcome.reset = True
                break
            except socket.timeout:
                raise AssertionError(f"the connection is still open after {CASE_DEADLINE_S}s") from None
            if not chunk:
                break
            chunks.append(chunk)
    outcome.data = b"".join(chunks)
    outcome.replies = parse_replies(outcome.data)
    return outcome


def good_request(path: str, body: bytes = b"", *, close: bool = True) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


def check_echo(reply: Reply, path: str, body: bytes) -> None:
    assert reply.status == 200, f"{reply.status}: {reply.body[:300]!r}"
    assert json.loads(reply.body) == {
        "method": "POST", "path": path, "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
    }


def assert_still_serving(server: Served, rng: random.Random, count: int = 1) -> None:
    for _ in range(count):
        body = rng.randbytes(rng.randrange(0, 4096))
        outcome = exchange(server, good_request("/good", body))
        assert len(outcome.replies) == 1, outcome
        check_echo(outcome.replies[0], "/good", body)


def seen(server: Served) -> dict[str, Any]:
    reply = exchange(server, b"GET /_seen HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n").replies[0]
    return json.loads(reply.body)  # type: ignore[no-any-return]


def counters(server: Served) -> dict[str, int]:
    reply = exchange(server, b"GET /_counters HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n").replies[0]
    return json.loads(reply.body)  # type: ignore[no-any-return]


def wait_at_rest(server: Served) -> dict[str, int]:
    """The live counters once every pipeline of earlier connections has ended (bounded wait)."""
    deadline = time.monotonic() + 15
    while (now := counters(server)) != AT_REST and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


# -- hostile requests, one per connection ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    payload: bytes
    status: int


H = b"Host: fuzz.test\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"


def smuggle(headers: bytes, body: bytes) -> bytes:
    return b"POST /front HTTP/1.1\r\n" + H + headers + b"\r\n" + body + SMUGGLED


MALFORMED = [
    Case("tls-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)), 400),
    Case("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    Case("nul-in-method", b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    Case("long-method", b"M" * 100 + b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    Case("junk-after-version", b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    Case("bad-protocol", b"GET / HTTX/1.1\r\n" + H + b"\r\n", 400),
    Case("lf-line-ends", b"GET / HTTP/1.1\nHost: fuzz.test\n\n", 400),
    Case("non-ascii-target", b"GET /\xff\xfe HTTP/1.1\r\n" + H + b"\r\n", 400),
    Case("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two-hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", 400),
    Case("host-with-userinfo", b"GET / HTTP/1.1\r\nHost: a@evil.test\r\n\r\n", 400),
    Case("host-with-path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    Case("header-without-colon", b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", 400),
    Case("empty-header-name", b"GET / HTTP/1.1\r\n" + H + b": v\r\n\r\n", 400),
    Case("non-ascii-header-name", b"GET / HTTP/1.1\r\n" + H + b"\x80bad: 1\r\n\r\n", 400),
    Case("control-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x0bb\x7f\r\n\r\n", 400),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
]

SMUGGLING = [
    Case("cl-and-te", smuggle(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-and-cl", smuggle(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400),
    Case("two-cl-differ", smuggle(b"Content-Length: 5\r\nContent-Length: 0\r\n", b"hello"), 400),
    Case("two-cl-same", smuggle(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    Case("cl-list", smuggle(b"Content-Length: 5, 5\r\n", b"hello"), 400),
    Case("cl-signed", smuggle(b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl-negative", smuggle(b"Content-Length: -1\r\n", b""), 400),
    Case("cl-overflow", smuggle(b"Content-Length: 99999999999999999999999\r\n", b""), 400),
    Case("cl-nul", smuggle(b"Content-Length: 5\x00\r\n", b"hello"), 400),
    Case("te-chunked-identity", smuggle(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400),
    Case("te-space-before-colon", smuggle(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    Case("cl-space-before-colon", smuggle(b"Content-Length : 0\r\n", b""), 400),
    Case("te-twice", smuggle(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"), 400),
    Case("te-chunked-twice", smuggle(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-obs-fold", smuggle(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-vertical-tab", smuggle(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-xchunked", smuggle(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-quoted", smuggle(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 400),
    Case("te-identity", smuggle(b"Transfer-Encoding: identity\r\n", b""), 400),
]

BAD_CHUNKS = [
    Case(f"chunk-{name}", b"POST /chunks HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body, 400)
    for name, body in [
        ("size-not-hex", b"Z\r\nhello\r\n0\r\n\r\n"),
        ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("size-space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("size-overflow", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("data-too-long", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("lf-only", b"5\nhello\n0\n\n"),
        ("nul-extension", b"5;\x00\r\nhello\r\n0\r\n\r\n"),
        ("bad-trailer", b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n"),
    ]
]

FLOODS = [
    Case("129-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"\r\n", 431),
    Case("5000-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(5000)) + b"\r\n", 431),
    Case("70k-header", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    Case("70k-target", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
    Case("70k-name", b"GET / HTTP/1.1\r\n" + H + b"X" * 70_000 + b": v\r\n\r\n", 431),
    Case("declared-body-too-big", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    Case("chunked-body-too-big", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
         + (b"8000\r\n" + b"z" * 0x8000 + b"\r\n") * 9 + b"0\r\n\r\n", 413),
]

VERSIONS = [
    Case("no-version", b"GET /versionless\r\n" + H + b"\r\n", 400),
    Case("http-0.9", b"GET /versionless HTTP/0.9\r\n" + H + b"\r\n", 400),
    Case("http-2.0", b"GET /versionless HTTP/2.0\r\n" + H + b"\r\n", 505),
    Case("http-9.9", b"GET /versionless HTTP/9.9\r\n" + H + b"\r\n", 400),  # llhttp knows no 9.x
]

HOSTILE = MALFORMED + SMUGGLING + BAD_CHUNKS + FLOODS + VERSIONS


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_a_hostile_request_gets_its_status_or_a_closed_connection(server: Served, case: Case) -> None:
    outcome = exchange(server, case.payload)
    # A server that refuses a request closes at once, maybe with input unread: the kernel
    # then resets the connection, which can drop the answer. Either is a refusal.
    assert outcome.statuses() == [case.status] or (outcome.reset and not outcome.replies), outcome
    if outcome.replies:
        assert outcome.replies[0].headers.get("connection") == "close"
    assert_still_serving(server, random.Random(case.id))


def test_a_smuggled_request_is_never_served(server: Served) -> None:
    before = seen(server)["paths"].get("/smuggled", 0)
    for case in SMUGGLING:
        exchange(server, case.payload)
    assert seen(server)["paths"].get("/smuggled", 0) == before == 0


INJECTIONS = [
    b"GET /inject HTTP/1.1\r\n" + H + b"X-A: 1\rX-Injected-Cr: 1\r\n\r\n",
    b"GET /inject HTTP/1.1\r\n" + H + b"X-A: 1\nX-Injected-Lf: 1\r\n\r\n",
    b"GET /inject HTTP/1.1\r\n" + H + b"X-A: 1\x00X-Injected-Nul: 1\r\n\r\n",
    b"GET /inject\rX-Injected-Target: 1 HTTP/1.1\r\n" + H + b"\r\n",
    # With no version after it, a bare LF would end an HTTP/0.9 request line and start a header.
    b"GET /inject\nX-Injected-Target: 1 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /inject HTTP/1.1\r\nHost: fuzz.test\rX-Injected-Host: 1\r\n\r\n",
]


def test_cr_lf_or_nul_from_a_client_never_reach_a_binding_request(server: Served) -> None:
    before = seen(server)
    for payload in INJECTIONS:
        outcome = exchange(server, payload)
        assert outcome.statuses() == [400], outcome
    after = seen(server)
    assert after["injected"] == before["injected"] == {}
    assert after["paths"].get("/inject", 0) == before["paths"].get("/inject", 0)
    # Percent-encoded, the same bytes are only characters of the URL.
    outcome = exchange(server, good_request("/inject%0d%0aX-Injected:%201"))
    assert outcome.statuses() == [200] and seen(server)["injected"] == {}


BAD_AUTHORITIES = ["http://", "HTTPS://", "http:///x", "http://?q", "http://user@evil.test/x", "http://[bad/x"]


@pytest.mark.parametrize("target", BAD_AUTHORITIES)
def test_an_absolute_target_without_a_valid_host_is_refused(server: Served, target: str) -> None:
    # Its URL would fail Request()'s own checks, or name a host other than the one it seems to.
    outcome = exchange(server, f"GET {target} HTTP/1.1\r\n".encode() + H + b"Connection: close\r\n\r\n")
    assert outcome.statuses() == [400], outcome


# -- slow and vanishing clients --------------------------------------------------------------


def test_stalled_heads_time_out_while_others_are_served(server: Served) -> None:
    stalled = []
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=CASE_DEADLINE_S)
        sock.sendall(b"GET /slow HTTP/1.1\r\n" + H + b"X-Slow-%d: " % i)
        stalled.append(sock)
    try:
        assert_still_serving(server, random.Random(1), count=20)
        for sock in stalled:
            data = b""
            while chunk := sock.recv(65536):  # bounded by the socket's timeout
                data += chunk
            assert [r.status for r in parse_replies(data)] == [408]
    finally:
        for sock in stalled:
            sock.close()


def test_a_head_trickled_byte_by_byte_is_cut_off(server: Served) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S / 4) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"X-Trickle: ")
        # Each byte comes well within the read timeout, but the head as a whole may take
        # only that long: the server answers long before five read timeouts have passed.
        data = b""
        for _ in range(20):
            try:
                data = sock.recv(65536)
                break
            except socket.timeout:
                sock.sendall(b"a")
        assert [r.status for r in parse_replies(data)] == [408]


def test_the_body_of_a_get_is_dropped_before_a_worker_sees_it(server: Served) -> None:
    # A Worker forwarding the request as it is (Request(request, ...)) would be refused
    # a GET with a body; the server reads and drops it instead.
    payload = b"GET /as-given/x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    outcome = exchange(server, payload)
    assert outcome.statuses() == [200], outcome
    assert json.loads(outcome.replies[0].body)["length"] == 0


# -- the seeded campaign -------------------------------------------------------------------------

TEMPLATES = [
    b"GET /t/get?q=1 HTTP/1.1\r\n" + H + b"Accept: */*\r\nConnection: close\r\n\r\n",
    b"POST /t/post HTTP/1.1\r\n" + H + b"Content-Length: 11\r\nConnection: close\r\n\r\nhello world",
    b"POST /t/chunked HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"PUT /t/expect HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    b"GET /t/a HTTP/1.1\r\n" + H + b"\r\nGET /t/b HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    b"GET http://fuzz.test:8080/t/absolute?q=1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
]
INSERTS = [b"\r", b"\n", b"\0", b" ", b":", b"\r\n", b"\xff", b"0", b"\t", b",", b"\r\n\r\n", b"9"]


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = rng.choice(INSERTS)
        elif kind == 2:
            del data[at:at + rng.randint(1, 12)]
        elif kind == 3:
            data[at:at] = data[at:at + rng.randint(1, 40)]
        else:
            del data[at:]  # truncated: the server waits, then answers 408
    return bytes(data)


@dataclass
class Plan:
    kind: str
    payload: bytes = b""
    expect: set[int] = field(default_factory=set)
    body: bytes = b""  # of a good request, to check the echo


def plan_campaign(rng: random.Random, count: int) -> list[Plan]:
    plans = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.25:
            body = rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000]))
            plans.append(Plan("good", good_request(f"/good/{i}", body), {200}, body))
        elif roll < 0.70:
            payload = mutate(rng, rng.choice(TEMPLATES))
            if b"HEAD" not in payload:  # a HEAD answer has no body: the reader would misframe
                plans.append(Plan("mutated", payload, REJECTIONS | {100, 200}))
        elif roll < 0.80:
            case = rng.choice(HOSTILE)
            plans.append(Plan("hostile", case.payload, {case.status}))
        elif roll < 0.88:
            size = rng.randrange(1000, MAX_BODY)
            head = b"POST /reset HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % size
            plans.append(Plan("reset-mid-body", head + rng.randbytes(rng.randrange(size))))
        elif roll < 0.94:
            plans.append(Plan("reset-mid-response", b"GET /stream/300 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
        else:
            head = b"GET /gone HTTP/1.1\r\n" + H + b"X-Partial: "
            plans.append(Plan("gone-mid-head", head[: rng.randrange(5, len(head))]))
    return plans


def reset_connection(sock: Any, writer: asyncio.StreamWriter) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def run_plan(port: int, plan: Plan, rng: random.Random) -> str | None:
    """Carry out one connection of the campaign; returns what went wrong, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    try:
        writer.write(plan.payload)
        if plan.kind == "gone-mid-head":
            await asyncio.sleep(rng.random() * 0.05)
            writer.close()
            return None
        if plan.kind == "reset-mid-body":
            await asyncio.sleep(rng.random() * 0.05)
            reset_connection(sock, writer)
            return None
        if plan.kind == "reset-mid-response":
            await asyncio.wait_for(reader.readexactly(rng.randrange(1, 20_000)), CASE_DEADLINE_S)
            reset_connection(sock, writer)
            return None
        data, reset = b"", False
        try:
            async with asyncio.timeout(CASE_DEADLINE_S):
                while chunk := await reader.read(65536):
                    data += chunk
        except ConnectionResetError:
            reset = True
        except TimeoutError:
            return f"still open after {CASE_DEADLINE_S}s, received {data[:200]!r}"
        try:
            replies = parse_replies(data)
        except (AssertionError, ValueError) as exc:
            return f"not HTTP: {exc}"
        statuses = [reply.status for reply in replies]
        if not set(statuses) <= plan.expect:
            return f"statuses {statuses}, expected among {sorted(plan.expect)}: {data[:300]!r}"
        if plan.kind == "good":
            if statuses != [200]:
                return f"a good request got {statuses}{' and a reset' if reset else ''}"
            try:
                check_echo(replies[0], plan.payload.split(b" ", 2)[1].decode(), plan.body)
            except AssertionError as exc:
                return f"wrong echo: {exc}"
        return None
    except (ConnectionResetError, BrokenPipeError):
        return None if plan.kind != "good" else "a good request's connection was reset"
    finally:
        writer.transport.abort()


async def campaign(port: int, plans: list[Plan], seed: int, concurrency: int = 48) -> list[str]:
    limit = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)

    async def one(index: int, plan: Plan) -> str | None:
        async with limit:
            problem = await run_plan(port, plan, random.Random(rng.random()))
        return None if problem is None else f"#{index} {plan.kind} {plan.payload[:120]!r}: {problem}"

    results = await asyncio.gather(*(one(i, plan) for i, plan in enumerate(plans)))
    return [problem for problem in results if problem is not None]


def test_seeded_campaign_leaves_the_server_serving_at_rest_and_near_its_memory(server: Served) -> None:
    rng = random.Random(SEED)
    # Warm up with the same mix first, so that the baseline is memory the server keeps
    # for any traffic (allocator arenas, caches), not growth from this campaign.
    assert asyncio.run(campaign(server.port, plan_campaign(rng, 300), SEED)) == []
    assert wait_at_rest(server) == AT_REST
    assert server.log is not None
    baseline, log_offset = server.rss_kb(), server.log.stat().st_size
    problems = asyncio.run(campaign(server.port, plan_campaign(rng, 900), SEED + 1))
    assert problems == [], "\n".join(problems[:20]) + f"\n{server.stderr_tail()}"
    assert errors_since(server, log_offset) == []
    assert_still_serving(server, rng, count=20)
    assert wait_at_rest(server) == AT_REST
    server.assert_alive()
    assert server.rss_kb() <= baseline + RSS_MARGIN_KB, (baseline, server.rss_kb())
