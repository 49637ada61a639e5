"""Load benchmark: `fastbind serve` (gateway Worker + one binding hop) vs uvicorn (raw ASGI hello).

Both servers answer ``GET /`` with the 13 bytes ``Hello, world!``, side by side in one
run, on 127.0.0.1 only:

- ``fastbind``: ``python -m fastbind serve`` with a gateway Worker that calls an auth
  Worker through a service binding and answers with the user it names: two Workers,
  one pipeline, one subrequest per request.
- ``uvicorn``: ``python -m uvicorn`` with ``--loop uvloop --http httptools`` serving a
  raw ASGI 3 app (no framework, no hop): the floor of Python ASGI serving.
- ``leaf`` (with ``--leaf``): ``fastbind serve --entry hello``, one Worker answering
  with no binding hop, to show what the hop costs.
- ``granian-rsgi`` and ``granian-asgi``, when granian is installed: granian (its HTTP
  layer in Rust) serving a raw RSGI hello and the ASGI hello, one process, one runtime
  thread, on uvloop: a peer whose HTTP path is compiled.
- ``floor`` (with ``--floor``): an asyncio Protocol on uvloop that answers every read
  with the same canned bytes, parsing nothing: what the loop and the kernel cost, the
  ceiling any Python server on this machine stays under.

The load comes from ``wrk`` when it is on PATH (``apt-get install wrk``), else from a
Python generator (asyncio, keep-alive connections; it is slower than the servers, so
its figures say less). Rounds alternate between the servers so that the machine's
load weighs on all alike. Each server's figures are given for its best round (the one
least disturbed by whatever else the machine runs) and as the median of its rounds,
with the CPU time the server process used per request (from /proc): on a machine
that other programs share, requests per CPU second compare the servers more steadily
than requests per second do.
With two or more CPUs, the servers are pinned to CPU 0 and the load generator to the
others.

uvicorn is not a dependency of fastbind: ``pip install uvicorn`` first.

    python bench/bench_server.py [--duration 5] [--rounds 5] [--connections 64] [--leaf]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_server.py    # fastbind on the pure twin
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HELLO = b"Hello, world!"

CONFIG = """
[[workers]]
name = "gateway"
main = "bench_workers:gateway"
services = [{ binding = "AUTH", service = "auth" }]

[[workers]]
name = "auth"
main = "bench_workers:Auth"

[[workers]]
name = "hello"
main = "bench_workers:hello"
"""

WORKERS = '''
from fastbind import Response, WorkerEntrypoint


class Auth(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(None, headers={"x-user": "42"})


async def hello(request, env, ctx):
    return Response(b"Hello, world!", headers={"content-type": "text/plain", "x-user": "42"})


async def gateway(request, env, ctx):
    auth = await env.AUTH.fetch(request)
    return Response(b"Hello, world!", headers={"content-type": "text/plain", "x-user": auth.headers.get("x-user")})
'''

FLOOR = '''
import asyncio, sys, uvloop

ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: 13\\r\\nx-user: 42\\r\\n\\r\\nHello, world!"


class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(ANSWER)


async def main():
    server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()


uvloop.run(main())
'''

ASGI_HELLO = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13"), (b"x-user", b"42")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''


RSGI_HELLO = '''
async def app(scope, protocol):
    protocol.response_bytes(200, [("content-type", "text/plain"), ("x-user", "42")], b"Hello, world!")
'''


@dataclass
class Result:
    requests_per_s: float
    p99_ms: float
    requests: int
    cpu_us: float = 0.0  # the server's CPU (user + system) per request, in microseconds


class Server:
    def __init__(self, name: str, label: str, argv: list[str], cwd: Path, port: int, cpus: set[int] | None) -> None:
        self.name = name
        self.label = label
        self.port = port
        # Pinned before it runs: a server's own worker processes (granian's) inherit the CPUs.
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} did not start") from None
                time.sleep(0.05)
        body = _get(self.port)
        if body != HELLO:
            raise SystemExit(f"{self.name} answered {body!r}, not {HELLO!r}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def cpu_seconds(self) -> float:
        """User and system CPU the server process and its children have used so far (Linux /proc)."""
        ticks = 0
        pending = [self.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += map(int, (task / "children").read_text().split())
            except OSError:  # (a process that has just ended)
                continue
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int) -> bytes:
    """The body of ``GET /`` (framed by its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if match is None:
            raise SystemExit(f"an answer without Content-Length: {head!r}")
        while len(body) < int(match[1]):
            body += sock.recv(65536)
    return body


# -- load generators --------------------------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_COUNT = re.compile(r"(\d+) requests in ")
_WRK_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, duration: float, connections: int, threads: int, cpus: set[int] | None) -> Result:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    rps = _WRK_RPS.search(proc.stdout)
    p99 = _WRK_P99.search(proc.stdout)
    count = _WRK_COUNT.search(proc.stdout)
    if (proc.returncode != 0 or rps is None or p99 is None or count is None
            or "Non-2xx" in proc.stdout or "Socket errors" in proc.stdout):
        raise SystemExit(f"wrk failed or saw errors:\n{proc.stdout}{proc.stderr}")
    return Result(float(rps[1]), float(p99[1]) * _UNIT_MS[p99[2]], int(count[1]))


def run_python_load(url: str, duration: float, connections: int) -> Result:
    """Keep-alive GETs from ``connections`` asyncio connections for ``duration`` seconds."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def client(stop_at: float, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    async def main() -> Result:
        latencies: list[float] = []
        begin = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(client(begin + duration, latencies) for _ in range(connections))),
            duration + 30,
        )
        elapsed = time.perf_counter() - begin
        latencies.sort()
        return Result(len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)] * 1000, len(latencies))

    import uvloop

    return uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round (default: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server, alternating (default: 5)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default: 64)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default: 2)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default: wrk if installed)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load to separate CPUs")
    parser.add_argument("--leaf", action="store_true", help="also measure fastbind serving one Worker, no hop")
    parser.add_argument("--floor", action="store_true", help="also measure a canned-answer Protocol (the ceiling)")
    args = parser.parse_args(argv)

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise SystemExit("uvicorn is not installed (pip install uvicorn): it is the server compared against")
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    if args.load == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    server_cpus = {cpus[0]} if pin else None
    load_cpus = set(cpus[1:]) if pin else None
    threads = max(1, min(4, len(load_cpus or cpus or [0])))

    def load(url: str, duration: float) -> Result:
        if use_wrk:
            return run_wrk(url, duration, args.connections, threads, load_cpus)
        return run_python_load(url, duration, args.connections)

    with tempfile.TemporaryDirectory(prefix="fastbind-bench-") as tmp:
        folder = Path(tmp)
        (folder / "fastbind.toml").write_text(CONFIG)
        (folder / "bench_workers.py").write_text(WORKERS)
        (folder / "bench_hello.py").write_text(ASGI_HELLO)
        (folder / "bench_floor.py").write_text(FLOOR)
        (folder / "bench_rsgi.py").write_text(RSGI_HELLO)
        servers: list[Server] = []
        try:
            port = _free_port()
            servers.append(Server(
                "fastbind", "fastbind serve (gateway Worker + 1 binding hop)",
                [sys.executable, "-m", "fastbind", "serve", "fastbind.toml", "--port", str(port)],
                folder, port, server_cpus,
            ))
            if args.leaf:
                port = _free_port()
                servers.append(Server(
                    "leaf", "fastbind serve (one Worker, no hop)",
                    [sys.executable, "-m", "fastbind", "serve", "fastbind.toml", "--entry", "hello",
                     "--port", str(port)],
                    folder, port, server_cpus,
                ))
            port = _free_port()
            servers.append(Server(
                "uvicorn", "uvicorn + httptools + uvloop (raw ASGI hello, no hop)",
                [sys.executable, "-m", "uvicorn", "bench_hello:app", "--port", str(port), "--loop", "uvloop",
                 "--http", "httptools", "--no-access-log", "--log-level", "warning", "--lifespan", "off"],
                folder, port, server_cpus,
            ))
            if importlib.util.find_spec("granian") is not None:
                for interface, app, what in (("rsgi", "bench_rsgi:app", "raw RSGI hello"),
                                             ("asgi", "bench_hello:app", "raw ASGI hello")):
                    port = _free_port()
                    servers.append(Server(
                        f"granian-{interface}", f"granian, Rust HTTP ({what}, no hop)",
                        [sys.executable, "-m", "granian", "--interface", interface, app, "--port", str(port),
                         "--loop", "uvloop", "--no-ws", "--workers", "1", "--runtime-threads", "1",
                         "--log-level", "warning"],
                        folder, port, server_cpus,
                    ))
            if args.floor:
                port = _free_port()
                servers.append(Server(
                    "floor", "canned answer, no parsing (the ceiling)",
                    [sys.executable, "bench_floor.py", str(port)], folder, port, server_cpus,
                ))
            generator = f"wrk -t{threads} -c{args.connections}" if use_wrk else f"python asyncio, {args.connections} connections"
            placement = f"servers on CPU {cpus[0]}, load on CPU {','.join(map(str, sorted(load_cpus or ())))}" if pin else "not pinned"
            print(f"bench_server: {args.rounds} rounds x {args.duration:g} s per server, {generator}, {placement}")
            for server in servers:
                load(server.url, args.warmup)
            results: dict[str, list[Result]] = {s.name: [] for s in servers}
            for round_number in range(args.rounds):
                for server in servers if round_number % 2 == 0 else reversed(servers):
                    cpu_before = server.cpu_seconds()
                    result = load(server.url, args.duration)
                    result.cpu_us = (server.cpu_seconds() - cpu_before) / max(1, result.requests) * 1e6
                    results[server.name].append(result)
                    print(f"  round {round_number + 1} {server.name:9} {result.requests_per_s:10,.0f} req/s"
                          f"  p99 {result.p99_ms:6.2f} ms  {result.cpu_us:6.1f} CPU us/request", flush=True)
        finally:
            for server in servers:
                server.stop()

    print()
    print(f"{'':58} {'best round':>22}   {'median of rounds':>22}   {'server CPU':>12}")
    print(f"{'server':58} {'req/s':>10} {'p99':>11}   {'req/s':>10} {'p99':>11}   {'us/request':>12}")
    best, median, cpu = {}, {}, {}
    for server in servers:
        rounds = results[server.name]
        top = max(rounds, key=lambda r: r.requests_per_s)
        best[server.name] = top.requests_per_s
        median[server.name] = statistics.median(r.requests_per_s for r in rounds)
        cpu[server.name] = statistics.median(r.cpu_us for r in rounds)
        p99 = statistics.median(r.p99_ms for r in rounds)
        print(f"{server.label:58} {top.requests_per_s:10,.0f} {top.p99_ms:8.2f} ms   "
              f"{median[server.name]:10,.0f} {p99:8.2f} ms   {cpu[server.name]:12.1f}")
    # CPU per request is what the server itself costs: unlike requests/s it hardly
    # moves when other programs take turns on the same CPU.
    for name, label in (("fastbind", "fastbind"), ("leaf", "fastbind one Worker")):
        if name in best:
            print(f"ratio {label} / uvicorn: requests/s {best[name] / best['uvicorn']:.2f}x best, "
                  f"{median[name] / median['uvicorn']:.2f}x median; "
                  f"requests per CPU second {cpu['uvicorn'] / cpu[name]:.2f}x")
            if "floor" in cpu:
                print(f"ratio {label} / canned answer: CPU per request {cpu[name] / cpu['floor']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
