"""`fastbind serve` against clients that do not play along: back-pressure, closing, half-close, shutdown.

Servers run tests/hardening_app (large plain answers, a busy loop, a sleep) as real
processes on 127.0.0.1; their memory is read from /proc.
"""

from __future__ import annotations

import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from served import Served, Servers

HERE = Path(__file__).resolve().parent
APP = HERE / "hardening_app" / "fastbind.toml"
LIMITED = HERE / "hardening_app" / "limited.toml"  # [limits] cpu_ms = 300
MiB = 1024 * 1024
WRITE_TIMEOUT_S = 2.0
RSS_GROWTH_MAX_KB = 32 * 1024


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Servers]:
    with Servers(APP, logs=tmp_path, teardown=signal.SIGKILL) as start:
        yield start


def request(path: str, *lines: str, version: str = "1.1") -> bytes:
    head = f"GET {path} HTTP/{version}\r\nHost: t\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return head.encode()


def read_until_closed(sock: socket.socket, deadline_s: float = 10.0) -> bytes:
    chunks, end = [], time.monotonic() + deadline_s
    sock.settimeout(deadline_s)
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def warm_up(server: Served) -> None:
    """Serve a few large answers to a client that reads them, so that the allocator has grown."""
    with server.connect() as sock:
        sock.sendall(request(f"/big?size={16 * MiB}", "Connection: close"))
        assert len(read_until_closed(sock)) > 16 * MiB


def stalled_client(server: Served, payload: bytes) -> socket.socket:
    """A client that sends ``payload`` and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no growing receive window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(payload)
    return sock


def watch_until_closed(server: Served, sock: socket.socket, deadline_s: float) -> tuple[float, int]:
    """Seconds until the server closed ``sock`` (seen without reading it) and the server's
    largest resident memory meanwhile, in KiB."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLERR | select.POLLHUP)
    start, peak = time.monotonic(), server.rss_kb()
    while not poller.poll(50):
        peak = max(peak, server.rss_kb())
        assert time.monotonic() - start < deadline_s, f"the connection is still open after {deadline_s}s"
    return time.monotonic() - start, max(peak, server.rss_kb())


def test_a_client_that_pipelines_large_answers_and_never_reads(serve: Servers) -> None:
    server = serve("--write-timeout", str(WRITE_TIMEOUT_S))
    warm_up(server)
    before = server.rss_kb()
    sock = stalled_client(server, request(f"/big?size={MiB}") * 200)  # 200 MiB of answers asked for
    with sock:
        took, peak = watch_until_closed(server, sock, WRITE_TIMEOUT_S + 10)
    assert peak - before < RSS_GROWTH_MAX_KB, f"the server grew by {(peak - before) // 1024} MiB"
    assert took <= WRITE_TIMEOUT_S + 1.0
    with server.connect() as sock:  # and it serves on
        sock.sendall(request("/", "Connection: close"))
        assert status_of(read_until_closed(sock)) == 200


@pytest.mark.parametrize("payload", [
    request(f"/big?size={16 * MiB}", "Connection: close"),
    request(f"/big?size={16 * MiB}", version="1.0"),
    request(f"/big?size={16 * MiB}") + b"GET /refused HTTP/1.1\r\nHost t\r\n\r\n",  # then a 400
], ids=["connection-close", "http-1.0", "refusal"])
def test_a_client_that_stops_reading_a_closing_connection(serve: Servers, payload: bytes) -> None:
    server = serve("--write-timeout", str(WRITE_TIMEOUT_S))
    warm_up(server)
    before = server.rss_kb()
    with stalled_client(server, payload) as sock:
        took, peak = watch_until_closed(server, sock, WRITE_TIMEOUT_S + 10)
    assert peak - before < RSS_GROWTH_MAX_KB, f"the server grew by {(peak - before) // 1024} MiB"
    assert took <= WRITE_TIMEOUT_S + 1.0


def test_a_half_closed_client_is_answered(serve: Servers) -> None:
    server = serve()
    with server.connect() as sock:
        sock.sendall(request("/sleep?s=0.2") + request("/"))  # two requests, then the client's FIN
        sock.shutdown(socket.SHUT_WR)
        data = read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert data.endswith(b"hello")
    assert b"connection: close" in data.lower()


@pytest.mark.parametrize("payload, status", [
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip,\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"g" * 4096 + b"\r\n" * 3, 413),
    (b"HEAD / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"h" * 4096 + b"\r\n" * 3, 413),
], ids=["two-transfer-encoding-lines", "a-list-split-over-two-lines", "chunked-get-over-max-body",
        "chunked-head-over-max-body"])
def test_framing_refusals(serve: Servers, payload: bytes, status: int) -> None:
    server = serve("--max-body", "1K")
    with server.connect() as sock:
        sock.sendall(payload)
        assert status_of(read_until_closed(sock)) == status


def test_an_http_0_9_request_line_is_refused_at_once(serve: Servers) -> None:
    server = serve("--read-timeout", "30")
    with server.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"GET /nine\r\n")  # and waits, as an HTTP/0.9 client does
        data = read_until_closed(sock)
        took = time.monotonic() - start
    assert status_of(data) == 400 and b"no HTTP/1.x version" in data
    assert took < 5  # not the read timeout's 408


def test_shutdown_that_cuts_requests_exits_1(serve: Servers) -> None:
    server = serve("--shutdown-timeout", "0.5")
    with server.connect() as sock:
        sock.sendall(request("/sleep?s=30"))
        time.sleep(0.3)  # the request is in flight
        code, took = server.stop(), server.exit_seconds
    assert code == 1
    assert took < 0.5 + 1.0


def test_shutdown_that_finishes_every_request_exits_0(serve: Servers) -> None:
    server = serve("--shutdown-timeout", "5")
    with server.connect() as sock:
        sock.sendall(request("/sleep?s=0.3"))
        time.sleep(0.1)
        code = server.stop()
        assert status_of(read_until_closed(sock)) == 200
    assert code == 0


def test_a_busy_loop_is_answered_503_and_the_server_serves_on(serve: Servers) -> None:
    server = serve(config=LIMITED)  # the default limit works the same way, at 30 s
    with server.connect() as busy:
        busy.sendall(request("/spin", "Connection: close"))
        data = read_until_closed(busy, 20)
    assert status_of(data) == 503 and data.endswith(b"Worker exceeded CPU time limit.")
    with server.connect() as sock:
        sock.sendall(request("/", "Connection: close"))
        assert status_of(read_until_closed(sock)) == 200
    assert server.stop() == 0


def test_sigterm_is_honoured_while_a_worker_busy_loops(serve: Servers) -> None:
    server = serve("--shutdown-timeout", "1")  # the default config: its CPU limit is 30 s
    with server.connect() as busy:
        busy.sendall(request("/spin"))
        time.sleep(0.5)  # the loop's thread is stuck in the Worker
        code, took = server.stop(timeout=15), server.exit_seconds
        data = read_until_closed(busy)
    assert took <= 1 + 1.0
    assert code == 1  # a request was cut
    assert data == b""  # cancelled at the deadline, as every request the shutdown cuts
    assert "Traceback" not in server.stderr_text()


@pytest.mark.soak
def test_a_busy_loop_is_answered_503_under_the_default_limit(serve: Servers) -> None:
    # 30 s of CPU: run with -m soak.
    server = serve()
    with server.connect() as busy:
        start = time.monotonic()
        busy.sendall(request("/spin", "Connection: close"))
        data = read_until_closed(busy, 60)
        took = time.monotonic() - start
    # Answered by the 30 s CPU limit: not before 30 s, and however late a loaded host lets the
    # loop's thread gather its CPU seconds (read_until_closed bounds the wait at 60 s).
    assert status_of(data) == 503 and took >= 30
    with server.connect() as sock:
        sock.sendall(request("/", "Connection: close"))
        assert status_of(read_until_closed(sock)) == 200
    assert server.stop() == 0
