"""`fastbind serve CONFIG --port 0` in a child process, for the tests that talk to it over sockets.

``Served`` starts one server, reads its first line (where it listens, its pid, its worker
processes), keeps what it prints (stdout always by a reader thread, stderr by another or
into a log file) and stops it; every wait is bounded. ``Servers`` starts several for one
test and stops every one of them at its end.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

LISTENING = re.compile(r'^fastbind: serving "(?P<entry>[^"]+)" on (?P<scheme>https?)://127\.0\.0\.1:(?P<port>\d+) '
                       r"\(pid (?P<pid>\d+)")
TIMEOUT = 20.0  # starting, stopping, a line, a log record, a mark: none takes this long on a sound server


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.01)


class Served:
    """One `fastbind serve` process (and its worker processes) and the lines it prints.

    ``stdout`` holds every line printed (the first one too); ``next_line`` takes them in
    turn after the first. Stderr goes to ``log`` when given, else into ``stderr``. ``entry``
    and ``scheme``, when given, are the Worker and scheme the first line must name.
    """

    def __init__(self, config: Path, args: Iterable[str] = (), log: Path | None = None, *,
                 env: dict[str, str] | None = None, port: int = 0, entry: str | None = None,
                 scheme: str | None = None, timeout: float = TIMEOUT) -> None:
        self.config, self.log, self.timeout = config, log, timeout
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.exit_seconds = 0.0  # how long the last stop() took
        self._lines: queue.Queue[str] = queue.Queue()
        command = [sys.executable, "-m", "fastbind", "serve", str(config), "--port", str(port), *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # A process group of its own: kill() ends the worker processes of --workers N too.
        if log is None:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=full_env, start_new_session=True)
        else:
            with log.open("wb") as stderr:  # the child has its own copy of the descriptor
                self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                             env=full_env, start_new_session=True)
        self._readers = [self._reader(self.proc.stdout, self.stdout, self._lines)]
        if log is None:
            self._readers.append(self._reader(self.proc.stderr, self.stderr, None))
        try:
            self.first_line = self.next_line(timeout)
            match = LISTENING.match(self.first_line)
            assert match, f"unexpected first line {self.first_line!r}; stderr: {self.stderr_text()}"
            assert entry in (None, match["entry"]), f"not serving {entry!r}: {self.first_line!r}"
            assert scheme in (None, match["scheme"]), f"not serving {scheme}: {self.first_line!r}"
        except BaseException:
            self.kill()
            raise
        self.port, self.pid, self.scheme = int(match["port"]), int(match["pid"]), match["scheme"]
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        # "(pid N, 2 worker processes: A, B)" with --workers 2
        self.children = [int(p) for p in re.findall(r"\d+", self.first_line.partition("worker processes:")[2])]

    @staticmethod
    def _reader(stream: IO[str] | None, lines: list[str], out: queue.Queue[str] | None) -> threading.Thread:
        def read() -> None:
            for line in stream:  # type: ignore[union-attr]
                lines.append(line)
                if out is not None:
                    out.put(line.rstrip("\n"))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    # -- what it prints ----------------------------------------------------------------------

    def next_line(self, timeout: float | None = None) -> str:
        """The next line of stdout, waited for at most ``timeout`` seconds."""
        timeout = self.timeout if timeout is None else timeout
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr_text()}") from None

    def stderr_text(self) -> str:
        if self.log is not None:
            return self.log.read_text(errors="replace")
        return "".join(self.stderr)

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float | None = None) -> None:
        """Wait until ``text`` appears in what the server wrote to stderr."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while text not in self.stderr_text():
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{self.stderr_text()}"
            time.sleep(0.02)

    # -- the process -------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A TCP connection to the server, Nagle off, every operation bounded by ``timeout``."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout if timeout is None else timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def memory_kb(self, field: str) -> int:
        """A memory figure of the server from /proc: VmRSS now, VmHWM its peak."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def rss_kb(self) -> int:
        return self.memory_kb("VmRSS")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}\n{self.stderr_tail()}"

    def stop(self, signum: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send ``signum`` and wait for the exit status; ``exit_seconds`` is how long it took.

        A server still running after ``timeout`` seconds is killed and the wait's error raised.
        """
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
            code = self.proc.wait(timeout=timeout)
            self.exit_seconds = time.monotonic() - start
            return code
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL if still running, and to the worker processes a killed parent left
        behind; then every pipe is read to its end and closed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=self.timeout)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: nothing was left
        self._close_pipes()

    def close(self, signum: int = signal.SIGTERM) -> None:
        """Stop at the end of a test: SIGTERM lets the parent stop its worker processes; SIGKILL if that hangs."""
        try:
            self.stop(signum)
        except subprocess.TimeoutExpired:
            pass  # stop() killed it

    def _close_pipes(self) -> None:
        for reader in self._readers:
            reader.join(timeout=self.timeout)  # what the server printed last is kept
        # A pipe still held by a stray grandchild is left to its daemon thread: closing a
        # stream another thread reads would block on its lock.
        if all(not reader.is_alive() for reader in self._readers):
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


class Servers:
    """Starts servers for one test with ``defaults`` (``env`` merged) and stops them all at its end.

    With ``logs`` (a folder), each server's stderr goes to a file of its own there;
    ``teardown`` is the signal that stops the servers still running at the end.
    """

    def __init__(self, config: Path | None = None, logs: Path | None = None,
                 teardown: int = signal.SIGTERM, **defaults: Any) -> None:
        self.config = config
        self.logs = logs
        self.teardown = teardown
        self.defaults = defaults
        self.started: list[Served] = []

    def __call__(self, *args: str, config: Path | None = None, **options: Any) -> Served:
        env = {**self.defaults.get("env", {}), **(options.pop("env", None) or {})}
        chosen = config or self.config
        assert chosen is not None, "no config: give one to Servers() or to this call"
        log = None if self.logs is None else self.logs / f"server{len(self.started)}.log"
        server = Served(chosen, args, log, **{**self.defaults, **options, "env": env})
        self.started.append(server)
        return server

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.started:
            server.close(self.teardown)
