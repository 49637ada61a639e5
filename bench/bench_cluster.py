"""Durable Objects across processes: `fastbind serve --workers 1` against `--workers 2`.

The workload is a counter Durable Object over 100 ids: each request increments the
counter its path names (``GET /inc/<n>``: the gateway Worker calls ``stub.increment()``,
an RPC call that reads and writes the object's storage in a SQLite file). With two
processes each id lives in one of them, so about half the calls land in the process
that does not own their object and are forwarded to the one that does.

Both servers run side by side, in alternating rounds, loaded by the same Python
generator (asyncio, keep-alive connections); the figure is the CPU all server
processes used per request (user + system, from /proc), with requests per second
beside it. On a machine with two CPUs the load generator shares them with the
servers, so throughput scaling is reported, not judged; the goal is CPU per request
with two processes at most 1.25x that of one (forwarding stays cheap).

Then the cost of one call, caller and owner together (CPU of both processes per call):
an RPC call to an object in the same process, against the same call forwarded to an
object owned by another process (its call channel), at 1 and at 16 calls in flight,
and a ``stub.fetch`` forwarded (an HTTP request to the owner's server socket).

    python bench/bench_cluster.py [--duration 4] [--rounds 3] [--connections 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKERS = '''
from fastbind import DurableObject, Response


class Counter(DurableObject):
    async def increment(self) -> int:
        value = (await self.state.storage.get("value") or 0) + 1
        await self.state.storage.put("value", value)
        return value

    async def fetch(self, request):
        return Response(str(await self.increment()))


async def gateway(request, env, ctx):
    name = request.url.rsplit("/", 1)[1]
    return Response(str(await env.COUNTERS.get_by_name(name).increment()))
'''

CONFIG = '''
[[workers]]
name = "gateway"
main = "bench_cluster_workers:gateway"
durable_objects = [{ binding = "COUNTERS", class_name = "Counter" }]
'''

LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+) \(pid (\d+)(?:, \d+ worker processes: ([\d, ]+))?")
IDS = 100


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServeProcess:
    def __init__(self, folder: Path, workers: int) -> None:
        self.workers = workers
        data = folder / f"data{workers}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastbind", "serve", str(folder / "fastbind.toml"), "--port", "0",
             "--workers", str(workers), "--durable-dir", str(data)],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = LISTENING.search(line)
        if match is None:
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")
        self.port = int(match[1])
        self.pids = [int(match[2])] + ([int(p) for p in match[3].split(", ")] if match[3] else [])

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _load(port: int, duration: float, connections: int) -> int:
    """Keep-alive GETs of /inc/<n> over ``connections`` connections for ``duration`` s."""
    stop_at = time.perf_counter() + duration
    done = 0

    async def client(number: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = number
        try:
            while time.perf_counter() < stop_at:
                writer.write(b"GET /inc/c%d HTTP/1.1\r\nHost: bench\r\n\r\n" % (i % IDS))
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"the server answered {head!r}")
                length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
                await reader.readexactly(length)
                done += 1
                i += connections
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(connections)))
    return done


def serve_rounds(folder: Path, duration: float, rounds: int, connections: int) -> dict[str, Any]:
    import uvloop

    servers = {workers: ServeProcess(folder, workers) for workers in (1, 2)}
    figures: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    try:
        for server in servers.values():
            uvloop.run(_load(server.port, 1.0, connections))  # warm up: every object made
        for round_number in range(rounds):
            for workers in ((1, 2) if round_number % 2 == 0 else (2, 1)):
                server = servers[workers]
                cpu_before = server.cpu_seconds()
                begin = time.perf_counter()
                count = uvloop.run(_load(server.port, duration, connections))
                elapsed = time.perf_counter() - begin
                cpu_us = (server.cpu_seconds() - cpu_before) / count * 1e6
                figures[workers].append((cpu_us, count / elapsed))
                print(f"  round {round_number + 1} --workers {workers}: {cpu_us:6.1f} CPU us/request, "
                      f"{count / elapsed:7.0f} requests/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    result: dict[str, Any] = {}
    for workers, samples in figures.items():
        result[f"workers_{workers}"] = {
            "cpu_us_per_request": statistics.median(s[0] for s in samples),
            "requests_per_s": statistics.median(s[1] for s in samples),
            "samples": samples,
        }
    # The ratio of each round's pair, then their median: two samples taken next to each other.
    pairs = [b[0] / a[0] for a, b in zip(figures[1], figures[2])]
    result["cpu_ratio"] = statistics.median(pairs)
    result["rps_ratio"] = result["workers_2"]["requests_per_s"] / result["workers_1"]["requests_per_s"]
    return result


CALLS = '''
import asyncio, json, os, sys, time
sys.path.insert(0, sys.argv[1])
import uvloop
from fastbind import Request, Response, Runtime
from fastbind.cluster.node import NodeSetup
from fastbind.durable import DurableObjects
from fastbind.http.server import Server
from bench_cluster_workers import Counter


def runtime():
    rt = Runtime(durable_dir=None)

    async def unused(request, env, ctx):
        return Response("")

    rt.add_worker("gateway", unused, durable_objects={"COUNTERS": Counter})
    return rt


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


setup = NodeSetup(slots=2, port=0)
owner = os.fork()
if owner == 0:
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: go when the parent goes
    rt = runtime()
    setup.join(rt, 1)

    async def serve():
        server = Server(rt, "gateway")
        await server.start("127.0.0.1", 0)
        await server.listen_unix(**setup.sockets(1))
        await asyncio.sleep(3600)

    uvloop.run(serve())
    os._exit(0)

try:
    rt = runtime()
    router = setup.join(rt, 0)
    rt.validate()  # builds the Workers' env, and so the namespace
    ns = rt.extension(DurableObjects).namespaces[0]
    names = {slot: [n for n in (f"c{i}" for i in range(400))
                    if router.placement.slot_of(ns.id_from_name(n).raw) == slot][:50]
             for slot in (0, 1)}
except BaseException:
    os.kill(owner, 9)
    raise
N = int(sys.argv[2])


async def measure(slot, in_flight, how):
    stubs = [ns.get_by_name(n) for n in names[slot]]

    async def caller(request, env, ctx):
        gate = asyncio.Semaphore(in_flight)

        async def one(i):
            async with gate:
                stub = stubs[i % len(stubs)]
                if how == "fetch":
                    await (await stub.fetch("http://bench/")).text()
                else:
                    await stub.increment()

        for start in range(0, N, 5000):  # a pipeline's budget is 10,000 subrequests
            await asyncio.gather(*[one(i) for i in range(start, min(N, start + 5000))])
        return Response("")

    handle = rt.core.WorkerHandle("caller", caller)
    handle.env = None
    entry = rt.entry_for(handle)
    await entry(Request("http://bench/"))  # warm up
    before, owner_before = time.process_time(), cpu(owner)
    await entry(Request("http://bench/"))
    return (time.process_time() - before + cpu(owner) - owner_before) / N * 1e6


async def main():
    await asyncio.sleep(1.0)
    results = {}
    for label, slot, in_flight, how in (
        ("in_process_rpc", 0, 1, "rpc"), ("forwarded_rpc_1", 1, 1, "rpc"), ("forwarded_rpc_16", 1, 16, "rpc"),
        ("in_process_fetch", 0, 1, "fetch"), ("forwarded_fetch_1", 1, 1, "fetch"),
    ):
        samples = [await measure(slot, in_flight, how) for _ in range(3)]
        results[label] = sorted(samples)[1]
    print(json.dumps(results))


try:
    uvloop.run(main())
finally:
    os.kill(owner, 9)
    setup.close()
'''


def call_costs(folder: Path, calls: int) -> dict[str, float]:
    script = folder / "bench_cluster_calls.py"
    script.write_text(CALLS)
    proc = subprocess.run([sys.executable, str(script), str(folder), str(calls)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the call benchmark failed:\n{proc.stderr}")
    costs: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per round (default: 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating (default: 3)")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections (default: 50)")
    parser.add_argument("--calls", type=int, default=4000, help="calls per sample of the call costs (default: 4000)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastbind-bench-cluster-") as tmp:
        folder = Path(tmp)
        (folder / "bench_cluster_workers.py").write_text(WORKERS)
        (folder / "fastbind.toml").write_text(CONFIG)
        print(f"Durable Object counter over {IDS} ids, {args.connections} connections, "
              f"{args.rounds} rounds of {args.duration:g} s each:")
        served = serve_rounds(folder, args.duration, args.rounds, args.connections)
        print("One call, caller and owner CPU together (median of 3 samples):")
        costs = call_costs(folder, args.calls)
    one, two = served["workers_1"], served["workers_2"]
    print()
    print("| | CPU us per request | requests/s |")
    print("|---|---|---|")
    print(f"| --workers 1 | {one['cpu_us_per_request']:.1f} | {one['requests_per_s']:.0f} |")
    print(f"| --workers 2 | {two['cpu_us_per_request']:.1f} | {two['requests_per_s']:.0f} |")
    verdict = "met" if served["cpu_ratio"] <= 1.25 else "NOT met"
    print(f"\nCPU per request, 2 processes over 1: {served['cpu_ratio']:.2f}x (median of the rounds' ratios; "
          f"goal <= 1.25x: {verdict}); requests/s {served['rps_ratio']:.2f}x")
    print()
    print("| call | CPU us per call (caller + owner) | x in-process |")
    print("|---|---|---|")
    base = {"rpc": costs["in_process_rpc"], "fetch": costs["in_process_fetch"]}
    for label, value in costs.items():
        kind = "fetch" if "fetch" in label else "rpc"
        print(f"| {label.replace('_', ' ')} | {value:.1f} | {value / base[kind]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"serve": served, "calls": costs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
