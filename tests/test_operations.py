"""Operating `fastbind serve`: TLS, reload, metrics, access logs, traces, exit on SIGTERM.

Each server is a real ``python -m fastbind serve`` process on 127.0.0.1 serving a small
app written to a temporary folder, talked to by real clients (aiohttp, raw sockets);
every wait is bounded and every process is stopped.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from served import LISTENING, Served, Servers

TIMEOUT = 15.0

CONFIG = """
[[workers]]
name = "gateway"
main = "ops_workers:gateway"
services = [{ binding = "SELF", service = "gateway" }, { binding = "LEAF", service = "leaf" }]

[[workers]]
name = "leaf"
main = "ops_workers:leaf"
"""

WORKERS = '''
import asyncio
import os

from fastbind import Response

ANSWER = "{answer}"


async def gateway(request, env, ctx):
    path = request.url.split("/", 3)[3]
    if path == "slow":
        open(os.environ["OPS_MARKS"], "a").write("slow started\\n")
        await asyncio.sleep(30)
    if path == "loop":
        return await env.SELF.fetch(request)
    if path == "leaf":
        return await env.LEAF.fetch(request)
    if path == "scheme":
        return Response(request.url.split(":", 1)[0])
    return Response(ANSWER)


async def leaf(request, env, ctx):
    return Response("leaf", status=202)
'''


def write_app(folder: Path, answer: str = "one") -> Path:
    (folder / "fastbind.toml").write_text(CONFIG)
    (folder / "ops_workers.py").write_text(WORKERS.replace("{answer}", answer))
    return folder / "fastbind.toml"


def marks(served: Served) -> Path:
    """The file the gateway's /slow route writes when it starts."""
    return served.config.parent / "marks"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    with Servers(teardown=signal.SIGKILL, timeout=TIMEOUT) as servers:
        def start(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> Served:
            config = config or write_app(tmp_path)
            return servers(*args, config=config, env={"OPS_MARKS": str(config.parent / "marks"), **(env or {})})

        yield start


async def get(url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT), **kwargs) as response:
            return response.status, await response.text()


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(folder / "cert.pem", append=True)
    cert.private_key_pem.write_to_path(folder / "key.pem")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["http/1.1"])
    return folder, client


@pytest.mark.parametrize("workers", ["1", "2"])
def test_https_with_a_trusted_certificate(serve, certificate, workers: str) -> None:
    folder, client = certificate
    served = serve("--ssl-certfile", str(folder / "cert.pem"), "--ssl-keyfile", str(folder / "key.pem"),
                   "--workers", workers)
    assert served.url.startswith("https://")

    async def main() -> list[tuple[int, str]]:
        answers = [await get(served.url + "/", ssl=client), await get(served.url + "/scheme", ssl=client)]
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a client that does not trust it
            await get(served.url + "/", ssl=ssl.create_default_context())
        return answers

    assert asyncio.run(main()) == [(200, "one"), (200, "https")]  # request.url says https
    # ALPN: the server picks http/1.1.
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    assert served.stop() == 0


def test_a_certificate_that_cannot_be_read_fails_before_serving(tmp_path: Path) -> None:
    config = write_app(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "fastbind", "serve", str(config), "--port", "0",
         "--ssl-certfile", str(tmp_path / "missing.pem")],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"fastbind: cannot use the TLS certificate {tmp_path / 'missing.pem'}: ")


# -- reload --------------------------------------------------------------------------


def test_reload_restarts_on_a_changed_module_and_serves_the_new_answer(serve, tmp_path: Path) -> None:
    config = write_app(tmp_path, answer="one")
    served = serve("--reload", config=config)
    assert asyncio.run(get(served.url + "/")) == (200, "one")
    time.sleep(0.3)  # the watcher is set up while the child starts; give it a moment
    write_app(tmp_path, answer="two")
    second = served.next_line()  # the new child says where it serves: the same port
    assert LISTENING.match(second) and f":{served.port} " in second
    assert asyncio.run(get(served.url + "/")) == (200, "two")
    assert any("reloading: " in line and "ops_workers.py" in line for line in served.stderr)
    assert served.stop() == 0


def test_reload_is_refused_with_workers(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastbind", "serve", str(write_app(tmp_path)), "--reload", "--workers", "2"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert out.returncode == 2
    assert out.stderr == "fastbind: --reload restarts one server process; it cannot be used with --workers N.\n"


# -- metrics -------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    status, text = asyncio.run(get(f"http://127.0.0.1:{port}/metrics"))
    assert status == 200
    samples = {}
    for line in text.splitlines():
        if line.startswith("fastbind_") and not line.split("{")[0].endswith("_created"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_after_known_traffic(serve, workers: str) -> None:
    port = free_port()
    served = serve("--workers", workers, "--metrics", f"127.0.0.1:{port}", "--max-body", "10")

    async def traffic() -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for path in ["/", "/", "/", "/leaf", "/leaf", "/loop"]:
                async with session.get(served.url + path) as response:
                    statuses.append(response.status)
            async with session.post(served.url + "/", data=b"x" * 100) as response:
                statuses.append(response.status)
        return statuses

    assert asyncio.run(traffic()) == [200, 200, 200, 202, 202, 500, 413]
    expected = {
        'fastbind_requests_total{status="200",worker="gateway"}': 3.0,
        'fastbind_requests_total{status="202",worker="gateway"}': 2.0,
        'fastbind_requests_total{status="500",worker="gateway"}': 1.0,
        'fastbind_requests_total{status="413",worker="gateway"}': 1.0,
        'fastbind_request_duration_seconds_count{worker="gateway"}': 7.0,
        'fastbind_subrequests_total{caller="gateway",kind="binding",outcome="ok",target="leaf",tenant=""}': 2.0,
        # /loop: gateway calls itself until depth 32; the 31 calls made all end in the error.
        'fastbind_subrequests_total{caller="gateway",kind="binding",outcome="error",target="gateway",tenant=""}': 31.0,
        'fastbind_limit_exceeded_total{limit="depth"}': 1.0,
        'fastbind_limit_exceeded_total{limit="max_body"}': 1.0,
        "fastbind_open_pipelines": 0.0,
    }
    # A process counts a request as its answer goes out: with several, a scrape answered
    # by another one may come a moment before the count (bounded wait).
    deadline = time.monotonic() + TIMEOUT
    while True:
        samples = scrape(port)
        if {name: samples.get(name) for name in expected} == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {name: samples.get(name) for name in expected} == expected
    assert {n for n in samples if n.startswith(("fastbind_requests_total", "fastbind_subrequests_total",
                                                "fastbind_limit_exceeded_total"))} <= set(expected)
    assert asyncio.run(get(f"http://127.0.0.1:{port}/other"))[0] == 404
    assert served.stop() == 0


def test_open_pipelines_counts_a_request_in_flight(serve) -> None:
    port = free_port()
    served = serve("--metrics", f"127.0.0.1:{port}")

    async def main() -> tuple[float, float]:
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(session.get(served.url + "/slow"))
            deadline = time.monotonic() + TIMEOUT
            while not marks(served).exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            during = (await asyncio.to_thread(scrape, port))["fastbind_open_pipelines"]
            slow.cancel()
        await asyncio.sleep(0.2)
        return during, (await asyncio.to_thread(scrape, port))["fastbind_open_pipelines"]

    assert asyncio.run(main()) == (1.0, 0.0)
    served.stop()


# -- access logs ---------------------------------------------------------------------


def test_access_log_lines_for_a_client_gone_and_a_refusal(serve) -> None:
    served = serve("--access-log", "--max-header-size", "1K")
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        deadline = time.monotonic() + TIMEOUT
        while not marks(served).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    gone = served.next_line()  # the client closed while its Worker ran
    assert re.fullmatch(r'127\.0\.0\.1:\d+ "GET /slow HTTP/1\.1" 499 0 \d+\.\dms', gone), gone
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    refused = served.next_line()  # refused before any Worker ran
    assert re.fullmatch(r'127\.0\.0\.1:\d+ "- - HTTP/1\.1" 431 \d+ \d+\.\dms', refused), refused
    assert served.stop() == 0


def test_json_logs(serve) -> None:
    served = serve("--access-log", "--log-format", "json")
    assert asyncio.run(get(served.url + "/loop"))[0] == 500
    line = json.loads(served.next_line())
    assert line["type"] == "access" and line["worker"] == "gateway"
    assert (line["method"], line["target"], line["status"], line["version"]) == ("GET", "/loop", 500, "1.1")
    assert set(line) == {"time", "type", "worker", "client", "method", "target", "version", "status", "bytes",
                         "duration_ms"}
    served.stop()
    records = [json.loads(text) for text in served.stderr if text.startswith("{")]
    (error,) = [r for r in records if r["level"] == "error"]
    assert error["logger"] == "fastbind" and "Subrequest depth limit exceeded (Limits.depth = 32)" in error["message"]


# -- traces --------------------------------------------------------------------------


def test_otel_exports_the_spans_of_each_pipeline(serve) -> None:
    served = serve("--otel", env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ops-test"})
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert asyncio.run(get(served.url + "/leaf", headers={"traceparent": traceparent})) == (202, "leaf")
    assert served.stop() == 0  # the provider is shut down: its spans are written
    spans = json.loads("[" + "".join(served.stdout[1:]).replace("}\n{", "},\n{") + "]")
    names = {span["name"]: span for span in spans}
    assert set(names) == {"gateway", "binding leaf"}
    assert {span["context"]["trace_id"] for span in spans} == {"0x4bf92f3577b34da6a3ce929d0e0e4736"}
    assert names["gateway"]["parent_id"] == "0x00f067aa0ba902b7"
    assert names["binding leaf"]["parent_id"] == names["gateway"]["context"]["span_id"]
    assert names["binding leaf"]["attributes"]["http.response.status_code"] == 202
    assert names["gateway"]["resource"]["attributes"]["service.name"] == "ops-test"


# -- SIGTERM -------------------------------------------------------------------------


@pytest.mark.parametrize("traffic", [False, True])
def test_an_idle_server_exits_at_once_on_sigterm(serve, traffic: bool) -> None:
    served = serve()

    async def then_stop() -> float:
        async with aiohttp.ClientSession() as session:
            if traffic:  # a request served, its keep-alive connection left open and idle
                async with session.get(served.url + "/leaf") as response:
                    await response.read()
            start = time.monotonic()
            served.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(served.proc.wait, TIMEOUT)
            assert code == 0
            return time.monotonic() - start

    assert asyncio.run(then_stop()) < 0.3


def test_a_reloaded_child_gets_every_option_but_where_to_listen() -> None:
    from fastbind import cli

    options = cli._parser().parse_args([
        "serve", "app.toml", "--reload", "--reload-dir", "x", "--port", "0", "--access-log",
        "--log-format", "json", "--metrics", "127.0.0.1:9100", "--max-body", "1K", "--otel",
    ])
    assert cli._child_args(options) == [
        "app.toml", "--access-log", "--log-format", "json", "--otel", "--metrics", "127.0.0.1:9100",
        "--max-body", "1024",
    ]
