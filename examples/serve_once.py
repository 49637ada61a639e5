"""Start `fastbind serve` on the bookshop example, send it one real request, print the answer.

    python examples/serve_once.py [PATH]        # PATH defaults to /api/books

The server runs as a child process on a free port of 127.0.0.1 (``--port 0``; its first
line says where it listens); the request goes through the gateway Worker, which asks
the auth Worker about the bearer token and forwards to the books Worker. The server
is then stopped with SIGTERM, which it answers by draining and exiting with code 0.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "fastbind.toml"
LISTENING = re.compile(r"on (http://\S+) ")


def main(path: str = "/api/books") -> int:
    server = subprocess.Popen(
        [sys.executable, "-m", "fastbind", "serve", str(CONFIG), "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # fastbind: serving "gateway" on http://127.0.0.1:PORT (pid N)
        match = LISTENING.search(line)
        if match is None:
            print("the server did not start:", line or "(no output)", file=sys.stderr)
            return 1
        print(line.strip())
        request = urllib.request.Request(match[1] + path, headers={"authorization": "Bearer demo-token"})
        print(f"GET {path}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:  # a 4xx or 5xx is an answer too
            status, headers, body = error.code, error.headers, error.read()
        print(status)
        for name, value in headers.items():
            print(f"{name}: {value}")
        print()
        print(body.decode())
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"server stopped with exit code {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
