"""Soak `fastbind serve`: mixed traffic with injected faults for a while, then counters and memory at rest.

    python bench/soak.py                       # 60 seconds, 32 concurrent clients
    python bench/soak.py --seconds 600 --concurrency 64 --json

The server runs bench/soak_app/fastbind.toml: a gateway over a child that, on request,
answers, raises, hangs until the client disconnects, stalls until fastbind's hang
detector answers, gets cancelled by the gateway's deadline, recurses past the depth
limit, spends past its subrequest budget, leaves tasks running, overruns wait_until,
or streams a body that the client drops half way; and clients that ask for a 16 MB
answer and never read it (the server must reset them at --write-timeout) or
half-close after their request (they must still get their answer). The soak reports what it sent, the
faults it injected, the errors it saw by kind (in answers and in the server's log),
the server's live counters once traffic stops, and its resident memory after warm-up
and at the end. It exits 1 when an answer was not the one its fault calls for, when
the counters do not return to rest, or when memory grew past --max-rss-growth-mb.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

APP = Path(__file__).resolve().parent / "soak_app" / "fastbind.toml"
LISTENING = re.compile(r'^fastbind: serving "gateway" on (http://127\.0\.0\.1:\d+) \(pid (\d+)')
AT_REST = {"pipelines": 1, "invocations": 1, "tasks": 0}  # the /_status request itself
HANG_MESSAGE_START = "The Workers runtime canceled this request"
STREAM_BYTES = 200 * 1024
CLIENT_GIVES_UP_S = 0.2  # on a Worker that hangs: well past what an answer takes
STALL_WAIT_S = 10.0  # the hang detector answers within about two of its 1 s looks
WRITE_TIMEOUT_S = 1.0
BIG_BYTES = 16 * 1024 * 1024  # soak_app's /big


# -- the server -------------------------------------------------------------------------------


class SoakServer:
    """`fastbind serve bench/soak_app/fastbind.toml` in a child process, its log in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastbind", "serve", str(APP), "--port", "0",
             "--read-timeout", "5", "--keep-alive-timeout", "5", "--shutdown-timeout", "5",
             "--write-timeout", str(WRITE_TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        match = LISTENING.match(line)
        if match is None:
            self.stop()
            raise SystemExit(f"soak: the server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url, self.pid = match[1], int(match[2])

    def memory_kb(self, field_name: str) -> int:
        """VmRSS (resident now) or VmHWM (resident at its peak) from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{field_name} is not in /proc/{self.pid}/status")

    def logged(self) -> Counter[str]:
        """The server's log records by level, message and, for a traceback, its exception."""
        kinds: Counter[str] = Counter()
        text = self.log.read_text(errors="replace")
        for record in re.split(r"(?m)^(?=fastbind: )", text):
            if not record.startswith("fastbind: "):
                continue
            lines = record.rstrip().splitlines()
            kind = lines[0].removeprefix("fastbind: ")
            if len(lines) > 1 and lines[1].startswith("Traceback"):
                kind += f" [{lines[-1]}]"
            kinds[kind] += 1
        return kinds

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


# -- the traffic ------------------------------------------------------------------------------

Session = aiohttp.ClientSession
# A request kind: sends one request, returns what came of it as a label, and whether
# that is what its fault calls for.
Send = Callable[[Session, str, random.Random], Awaitable[tuple[str, bool]]]


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    fault: str | None  # the fault the request injects; None for a plain request
    send: Send


async def get(session: Session, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers.get("x-fault", ""), await response.text()


async def send_ok(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    status, _, text = await get(session, base + "/ok")
    return f"{status}", (status, text) == (200, "ok")


async def send_upload(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    body = rng.randbytes(rng.randrange(1, 64 * 1024))
    async with session.post(base + "/upload", data=body) as response:
        text = await response.text()
    return f"{response.status}", (response.status, text) == (200, hashlib.sha256(body).hexdigest())


def expect(path: str, status: int, fault: str) -> Send:
    """A request whose answer is ``status`` with ``x-fault: fault`` (or a 500 from fastbind)."""

    async def send(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
        got, got_fault, text = await get(session, base + path)
        label = f"{got} {got_fault}" if got_fault else f"{got} {text.splitlines()[0][:40] if text else ''}"
        return label, got == status and got_fault == fault

    return send


async def send_stall(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    try:
        async with asyncio.timeout(STALL_WAIT_S):
            status, _, text = await get(session, base + "/stall")
    except TimeoutError:
        return "no answer from the hang detector", False
    return f"{status} hang detected", status == 500 and text.startswith(HANG_MESSAGE_START)


async def send_and_disconnect(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    try:
        async with asyncio.timeout(CLIENT_GIVES_UP_S):
            status, _, _ = await get(session, base + "/hang")
    except TimeoutError:
        return "client disconnected", True
    return f"{status} from a Worker that hangs", False


async def send_stream(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    async with session.get(base + "/stream") as response:
        if rng.random() < 0.5:
            data = await response.read()
            return f"{response.status}", (response.status, len(data)) == (200, STREAM_BYTES)
        await response.content.readexactly(rng.randrange(1, STREAM_BYTES // 2))
        response.close()  # drop the connection half way through the body
        return "client disconnected mid-stream", response.status == 200


async def raw_connection(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no growing window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock)


async def read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What arrives until the server closes; and whether it reset the connection."""
    chunks = []
    try:
        while chunk := await reader.read(1 << 20):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


async def send_never_read(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    reader, writer = await raw_connection(base)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: soak\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(WRITE_TIMEOUT_S + 2.0)  # reads nothing meanwhile
        async with asyncio.timeout(10):
            data, reset = await read_to_end(reader)
    finally:
        writer.close()
    cut = reset and len(data) < BIG_BYTES
    return ("slow reader reset" if cut else f"slow reader got {len(data)} bytes"), cut


async def send_half_close(session: Session, base: str, rng: random.Random) -> tuple[str, bool]:
    reader, writer = await raw_connection(base)
    try:
        writer.write(b"GET /ok HTTP/1.1\r\nHost: soak\r\n\r\n")
        writer.write_eof()  # sends nothing more, still reads
        async with asyncio.timeout(10):
            data, reset = await read_to_end(reader)
    finally:
        writer.close()
    answered = data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok") and not reset
    return ("half-close answered" if answered else f"half-close got {data[:40]!r}"), answered


KINDS = [
    Kind("ok", 30, None, send_ok),
    Kind("upload", 10, None, send_upload),
    Kind("raise", 8, "child raises", expect("/raise", 500, "")),
    Kind("hang", 6, "child hangs, client disconnects", send_and_disconnect),
    Kind("stall", 1, "child stalls forever", send_stall),
    Kind("cancel", 8, "child cancelled by a deadline", expect("/cancel", 504, "child-cancelled")),
    Kind("deep", 8, "depth limit", expect("/deep", 508, "depth-limit")),
    Kind("many", 8, "subrequest limit", expect("/many", 429, "subrequest-limit")),
    Kind("spawn", 6, "tasks left running", expect("/spawn", 200, "")),
    Kind("wait", 6, "wait_until overrun", expect("/wait", 200, "")),
    Kind("stream", 9, None, send_stream),
    Kind("slow-reader", 1, "client never reads its answer", send_never_read),
    Kind("half-close", 4, "client half-closes after its request", send_half_close),
]


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # answers 4xx/5xx and client errors, by kind
    unexpected: Counter[str] = field(default_factory=Counter)

    def record(self, kind: Kind, label: str, expected: bool) -> None:
        self.sent[kind.name] += 1
        self.outcomes[f"{kind.name}: {label}"] += 1
        if kind.fault is not None:
            self.faults[kind.fault] += 1
        if label.startswith("client disconnected"):
            self.faults["client disconnected"] += 1
        if label[:1] in ("4", "5") or label.startswith("client error"):
            self.errors[label] += 1
        if not expected:
            self.unexpected[f"{kind.name}: {label}"] += 1


async def client(session: Session, base: str, rng: random.Random, until: float, tally: Tally) -> None:
    weights = [kind.weight for kind in KINDS]
    while time.monotonic() < until:
        kind = rng.choices(KINDS, weights)[0]
        try:
            label, expected = await kind.send(session, base, rng)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            label, expected = f"client error {type(exc).__name__}", False
        tally.record(kind, label, expected)


async def sample_rss(server: SoakServer, until: float, every_s: float, samples: list[int]) -> None:
    """The server's resident memory every ``every_s`` seconds: a leak shows as a steady climb."""
    while time.monotonic() < until:
        await asyncio.sleep(min(every_s, max(0.0, until - time.monotonic())))
        samples.append(server.memory_kb("VmRSS"))


async def traffic(server: SoakServer, seconds: float, concurrency: int, seed: int,
                  samples: list[int] | None = None) -> Tally:
    tally = Tally()
    master = random.Random(seed)
    until = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        clients = [client(session, server.url, random.Random(master.random()), until, tally)
                   for _ in range(concurrency)]
        sampler = [] if samples is None else [sample_rss(server, until, max(1.0, seconds / 10), samples)]
        await asyncio.gather(*clients, *sampler)
    return tally


async def counters_at_rest(base: str, patience_s: float) -> dict[str, int]:
    """The live counters once pending work (wait_until, cancelled pipelines) has ended."""
    deadline = time.monotonic() + patience_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(base + "/_status") as response:
                if response.status != 200:
                    raise RuntimeError(f"/_status answered {response.status}: {await response.text()}")
                counters: dict[str, int] = (await response.json())["counters"]
            if counters == AT_REST or time.monotonic() > deadline:
                return counters
            await asyncio.sleep(0.2)


# -- the run ------------------------------------------------------------------------------------


def soak(seconds: float, warmup: float, concurrency: int, seed: int, max_growth_kb: int,
         log: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fastbind-soak-") as folder:
        server = SoakServer(log or Path(folder) / "server.log")
        try:
            rss_boot = server.memory_kb("VmRSS")
            warmed = asyncio.run(traffic(server, warmup, concurrency, seed))  # the allocator settles
            asyncio.run(counters_at_rest(server.url, 30))
            rss_start, logged_before = server.memory_kb("VmRSS"), server.logged()
            samples: list[int] = []
            began = time.monotonic()
            tally = asyncio.run(traffic(server, seconds, concurrency, seed + 1, samples))
            elapsed = time.monotonic() - began
            counters = asyncio.run(counters_at_rest(server.url, 30))
            rss_end, rss_peak = server.memory_kb("VmRSS"), server.memory_kb("VmHWM")
            logged = server.logged() - logged_before
        finally:
            exit_code = server.stop()
    requests = sum(tally.sent.values())
    result = {
        "seconds": round(elapsed, 1), "concurrency": concurrency, "seed": seed,
        "requests": requests, "requests_per_s": round(requests / elapsed),
        "faults_injected": dict(tally.faults.most_common()),
        "errors_by_kind": dict(tally.errors.most_common()),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "unexpected": dict((tally.unexpected + warmed.unexpected).most_common()),
        "server_log": dict(logged.most_common()),
        "counters_at_end": counters,
        "rss_kb": {"boot": rss_boot, "start": rss_start, "end": rss_end, "peak": rss_peak,
                   "growth": rss_end - rss_start, "during": samples},
        "server_exit_code": exit_code,
    }
    result["passed"] = (not result["unexpected"] and counters == AT_REST and rss_end - rss_start <= max_growth_kb
                        and exit_code == 0)
    return result


def report(result: dict[str, Any]) -> str:
    rss = result["rss_kb"]
    lines = [
        f"soak: {result['requests']:,} requests in {result['seconds']} s "
        f"({result['requests_per_s']:,}/s, {result['concurrency']} clients, seed {result['seed']})",
        "faults injected:",
        *(f"  {count:>8,}  {name}" for name, count in result["faults_injected"].items()),
        "errors by kind (answers and client errors):",
        *(f"  {count:>8,}  {name}" for name, count in result["errors_by_kind"].items()),
        "outcomes (request kind: answer):",
        *(f"  {count:>8,}  {name}" for name, count in result["outcomes"].items()),
        "unexpected outcomes (warm-up included):" if result["unexpected"] else "unexpected outcomes: none",
        *(f"  {count:>8,}  {name}" for name, count in result["unexpected"].items()),
        "server log during the soak:" if result["server_log"] else "server log during the soak: empty",
        *(f"  {count:>8,}  {name}" for name, count in result["server_log"].items()),
        f"live counters at the end: {result['counters_at_end']} (at rest: {AT_REST})",
        f"RSS: {rss['boot'] / 1024:.1f} MB at boot, {rss['start'] / 1024:.1f} MB after warm-up, "
        f"{rss['end'] / 1024:.1f} MB at the end ({rss['growth'] / 1024:+.1f} MB), peak {rss['peak'] / 1024:.1f} MB",
        "RSS during the soak, MB: " + ", ".join(f"{kb / 1024:.1f}" for kb in rss["during"]),
        f"server exit code after SIGTERM: {result['server_exit_code']}",
        "PASSED" if result["passed"] else "FAILED",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the measured traffic runs (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="traffic before the start figures (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=20_261_126, help="seed of the traffic mix")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="fail if resident memory grows more than this from warm-up to the end (default 50)")
    parser.add_argument("--log", type=Path, help="keep the server's log in this file (default: discarded)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    result = soak(options.seconds, options.warmup, options.concurrency, options.seed,
                  int(options.max_rss_growth_mb * 1024), options.log)
    print(json.dumps(result, indent=2) if options.json else report(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
