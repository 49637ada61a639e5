"""WebSocket benchmark: echo round trips per server CPU second, and memory per idle socket.

Side by side in one run, on 127.0.0.1 only, servers pinned to CPU 0 and the load to the
other CPUs (with two or more):

- ``fastbind``: ``fastbind serve`` with a gateway Worker that forwards the upgrade
  through a service binding to an echo Worker (``return await env.ECHO.fetch(request)``;
  the echo Worker accepts its end of a WebSocketPair and sends back what it receives).
- ``uvicorn``: uvicorn (uvloop, httptools, the websockets library's sans-I/O protocol)
  serving a raw ASGI echo app: no framework, no hop.

The load: ``--connections`` clients (the websockets library's asyncio client) each send a
message and wait for its echo, over and over, for ``--duration`` seconds per round;
rounds alternate between the servers. The figure is echo round trips per second of the
server process's own CPU time (from /proc), which stays put on a shared machine where
round trips per second do not. Then ``--idle`` idle sockets are opened to each server
and its resident memory growth per socket is reported (the kernel's socket buffers are
not in it).

    python bench/bench_websocket.py [--duration 5] [--rounds 3] [--connections 64] [--idle 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = '''
import asyncio
from fastbind import Response, WebSocketPair

async def gateway(request, env, ctx):
    return await env.ECHO.fetch(request)

async def echo(request, env, ctx):
    client, server = WebSocketPair()
    server.accept()

    async def run():
        async for message in server:
            server.send(message)

    asyncio.ensure_future(run())
    return Response(None, status=101, web_socket=client)
'''

CONFIG = '''
[[workers]]
name = "gateway"
main = "bench_ws_workers:gateway"
services = [{ binding = "ECHO", service = "echo" }]

[[workers]]
name = "echo"
main = "bench_ws_workers:echo"
'''

ASGI_ECHO = '''
async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Served:
    def __init__(self, name: str, argv: list[str], cwd: Path, port: int, cpu: int | None) -> None:
        self.name = name
        self.port = port
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = subprocess.Popen(prefix + argv, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_raise_file_limit)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _echo_load(port: int, connections: int, duration: float) -> int:
    from websockets.asyncio.client import connect

    count = 0
    stop_at = time.monotonic() + duration

    async def client() -> None:
        nonlocal count
        async with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            while time.monotonic() < stop_at:
                await ws.send("ping")
                await ws.recv()
                count += 1

    await asyncio.gather(*(client() for _ in range(connections)))
    return count


async def _idle_sockets(served: Served, idle: int) -> float:
    from websockets.asyncio.client import connect

    before = served.rss()
    sockets = []
    for start in range(0, idle, 500):  # in batches: the accept queue stays short
        batch = await asyncio.gather(*(
            connect(f"ws://127.0.0.1:{served.port}/echo", compression=None, ping_interval=None)
            for _ in range(min(500, idle - start))
        ))
        sockets += batch
    await asyncio.sleep(1.0)
    after = served.rss()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return (after - before) / idle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--idle", type=int, default=10_000)
    args = parser.parse_args(argv)
    _raise_file_limit()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) > 1 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench_ws_workers.py").write_text(WORKERS)
        (folder / "fastbind.toml").write_text(CONFIG)
        (folder / "asgi_echo.py").write_text(ASGI_ECHO)
        commands = {
            "fastbind": lambda port: [sys.executable, "-m", "fastbind", "serve", "fastbind.toml",
                                      "--port", str(port), "--ws-ping-interval", "600"],
            "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "asgi_echo:app", "--port", str(port),
                                     "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
                                     "--log-level", "warning", "--ws-ping-interval", "600",
                                     "--limit-concurrency", "100000", "--backlog", "20000"],
        }
        rates: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                port = _free_port()
                served = Served(name, command(port), folder, port, server_cpu)
                try:
                    cpu0 = served.cpu_seconds()
                    count = asyncio.run(_echo_load(port, args.connections, args.duration))
                    rates[name].append(count / max(served.cpu_seconds() - cpu0, 1e-9))
                finally:
                    served.stop()
        per_socket: dict[str, float] = {}
        if args.idle:
            for name, command in commands.items():
                port = _free_port()
                served = Served(name, command(port), folder, port, server_cpu)
                try:
                    per_socket[name] = asyncio.run(_idle_sockets(served, args.idle))
                finally:
                    served.stop()
    print(f"echo round trips per server CPU second, {args.connections} connections, "
          f"{args.rounds} rounds of {args.duration:g} s (median, min-max)")
    for name, values in rates.items():
        print(f"  {name:9s} {statistics.median(values):10,.0f}  ({min(values):,.0f}-{max(values):,.0f})")
    ratio = statistics.median(rates["fastbind"]) / statistics.median(rates["uvicorn"])
    print(f"  fastbind (gateway + binding hop + echo Worker) / uvicorn raw ASGI echo: {ratio:.2f}x")
    for name, value in per_socket.items():
        print(f"memory per idle socket ({args.idle:,} sockets), {name}: {value / 1024:,.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
