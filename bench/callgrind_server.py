"""Instructions per request of a server answering ``GET /`` on a keep-alive connection,
counted by callgrind: `fastbind serve`'s gateway with one binding hop, its one-Worker
leaf, uvicorn's raw ASGI hello and the canned answer (``bench_server.py``'s servers).

Each server runs in a process of its own under ``valgrind --tool=callgrind`` (the client,
a plain socket sending one request at a time, is a child process valgrind does not
watch), twice: answering N = --requests and N = 5 x --requests requests after a warm-up;
the difference of the two totals over the difference of N is the count per request
(start-up and imports cancel out). The server's own CPU watchdog thread is counted too.

    python bench/callgrind_server.py [--requests 1000] [--servers hop,leaf,uvicorn,floor]
    FASTBIND_NO_EXTENSIONS=1 python bench/callgrind_server.py --servers leaf   # the pure path

Needs valgrind on PATH (and uvicorn for its case).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_server  # bench/: the script's own directory is on sys.path
import callgrind_count

SERVERS = ("hop", "leaf", "uvicorn", "floor")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
WARM_UP = 200


def client(port: int, count: int) -> None:
    """Send ``count`` requests one at a time, each once the answer before it is whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        for _ in range(count):
            sock.sendall(REQUEST)
            data = b""
            while not data.endswith(bench_server.HELLO):
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                data += chunk


async def serve(server: str, folder: Path, listening: socket.socket) -> None:
    """Serve on ``listening`` until the client process (given its port and count) ends."""
    loop = asyncio.get_running_loop()
    if server in ("hop", "leaf"):
        from fastbind.config import load_config
        from fastbind.http.server import Server

        runtime = load_config(folder / "fastbind.toml")
        httpd = Server(runtime, "gateway" if server == "hop" else "hello")
        await httpd.start(sock=listening)
        stop = httpd.shutdown
    elif server == "uvicorn":
        import uvicorn

        sys.path.insert(0, str(folder))
        config = uvicorn.Config("bench_hello:app", loop="none", http="httptools", lifespan="off",
                                access_log=False, log_level="warning")
        front = uvicorn.Server(config)
        serving = asyncio.ensure_future(front.serve(sockets=[listening]))
        while not front.started:
            await asyncio.sleep(0.01)

        async def stop() -> None:
            front.should_exit = True
            await serving
    else:
        answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nx-user: 42\r\n\r\nHello, world!"

        class Canned(asyncio.Protocol):
            def connection_made(self, transport):  # type: ignore[no-untyped-def]
                self.transport = transport

            def data_received(self, data):  # type: ignore[no-untyped-def]
                self.transport.write(answer)

        canned = await loop.create_server(Canned, sock=listening)

        async def stop() -> None:
            canned.close()

    port = listening.getsockname()[1]
    for count in (WARM_UP, int(os.environ["CALLGRIND_SERVER_REQUESTS"])):
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--client", str(port), str(count))
        if await child.wait() != 0:
            raise SystemExit("the client failed")
    await stop()


def run_server(server: str, folder: str) -> None:
    import uvloop

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    uvloop.run(serve(server, Path(folder), listening))


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        client(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if sys.argv[1:2] == ["--run"]:
        run_server(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="N (default: 1000)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"of {', '.join(SERVERS)}")
    args = parser.parse_args()
    callgrind_count.require_valgrind()
    counts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fastbind-callgrind-") as tmp:
        folder = Path(tmp)
        (folder / "fastbind.toml").write_text(bench_server.CONFIG)
        (folder / "bench_workers.py").write_text(bench_server.WORKERS)
        (folder / "bench_hello.py").write_text(bench_server.ASGI_HELLO)
        for server in args.servers.split(","):
            totals = []
            for n in (args.requests, 5 * args.requests):
                env = {"CALLGRIND_SERVER_REQUESTS": str(n), "PYTHONPATH": os.pathsep.join(
                    filter(None, [tmp, os.environ.get("PYTHONPATH", "")]))}
                totals.append(callgrind_count.instructions(__file__, [server, tmp], folder / f"{server}.{n}.out", env))
            counts[server] = (totals[1] - totals[0]) / (4 * args.requests)
            print(f"{server:8} {counts[server]:10,.0f} instructions per request", flush=True)
    if "floor" in counts:
        for server in ("hop", "leaf", "uvicorn"):
            if server in counts:
                print(f"{server} / canned answer: {counts[server] / counts['floor']:.2f}x")
    if "uvicorn" in counts:
        for server in ("hop", "leaf"):
            if server in counts:
                print(f"uvicorn / {server}: {counts['uvicorn'] / counts[server]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
