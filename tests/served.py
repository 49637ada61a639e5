"""`fastbind serve CONFIG --port 0` in a child process, for the tests that talk to it over sockets."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r'^fastbind: serving "[^"]+" on http://127\.0\.0\.1:(\d+) \(pid (\d+)')
START_DEADLINE_S = 30.0


class Served:
    """One server process; its stderr goes to ``log``."""

    def __init__(self, config: Path, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as stderr:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastbind", "serve", str(config), "--port", "0", *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        ready, _, _ = select.select([self.proc.stdout], [], [], START_DEADLINE_S)
        line = self.proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        match = LISTENING.match(line)
        if match is None:
            self.kill()
            raise AssertionError(f"the server did not start: {line!r}\n{self.log_text()}")
        self.port, self.pid = int(match[1]), int(match[2])

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def rss_kb(self) -> int:
        """The server's resident memory now, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns the exit status and the seconds it took to exit."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
