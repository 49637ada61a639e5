"""``fastbind serve --workers N``: N server processes on one port (SO_REUSEPORT), supervised.

The parent loads the config once (so errors show before anything is served), reserves
the port, and forks N children, each of which listens on its own SO_REUSEPORT socket and
serves the whole set of Workers: the kernel spreads connections
between them. Each child has a slot, 0..N-1, which owns a share of the Durable Objects
(cluster/placement.py): a child that dies is replaced by a new one in the same slot,
which serves the same objects from the same storage. The parent only watches: SIGTERM
or SIGINT is passed on to every child as SIGTERM, and the parent exits once they have
drained (0 when every child ended cleanly). A second signal kills what is left.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ("supervise", "reserve_port")

logger = logging.getLogger("fastbind.server")

# A child that dies this soon after starting, this many times in a row, means the
# problem is not transient (the port is taken, the code fails at start): stop trying.
_QUICK_DEATH_S = 2.0
_QUICK_DEATHS_MAX = 5
_READY_TIMEOUT_S = 60.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it holds the port (0: picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def supervise(
    processes: int,
    serve_child: Callable[[Callable[[], None], int], int],
    *,
    on_ready: Callable[[list[int]], None],
    kill_after: float,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Run ``serve_child(ready, slot)`` in ``processes`` forked children until a signal.

    ``slot`` is the child's number, 0..processes-1; a child that dies is replaced in
    its slot. Each child calls ``ready()`` once it listens; ``on_ready(pids)`` runs in the parent
    when all have. ``kill_after``: seconds after the stop signal before children still
    running are killed. ``on_exit(pid)`` runs in the parent as each child is reaped (the
    metrics forget its gauges). Returns the parent's exit code.
    """
    wake_r, wake_w = os.pipe()
    ready_r, ready_w = os.pipe()
    for fd in (wake_r, wake_w, ready_r):
        os.set_blocking(fd, False)
    state = _Supervision(processes, serve_child, wake_r, wake_w, ready_r, ready_w)
    state.on_exit = on_exit
    previous = {
        signum: signal.signal(signum, state.on_signal)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
    }
    old_wakeup = signal.set_wakeup_fd(wake_w)
    try:
        return state.run(on_ready, kill_after)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in (wake_r, wake_w, ready_r, ready_w):
            os.close(fd)


class _Supervision:
    def __init__(self, processes: int, serve_child: Callable[[Callable[[], None], int], int],
                 wake_r: int, wake_w: int, ready_r: int, ready_w: int) -> None:
        self.processes = processes
        self.serve_child = serve_child
        self.wake_r, self.wake_w = wake_r, wake_w
        self.ready_r, self.ready_w = ready_r, ready_w
        self.children: dict[int, float] = {}  # pid -> start time
        self.slots: dict[int, int] = {}  # pid -> slot
        self.ready: set[int] = set()
        self.stopping_since: float | None = None
        self.failed = False
        self.quick_deaths = 0
        self.on_exit: Callable[[int], None] | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGCHLD:
            return  # the wakeup fd already woke the loop: children are reaped there
        if self.stopping_since is None:
            self._stop()
        else:
            self._signal_children(signal.SIGKILL)  # a second signal: do not wait

    def _stop(self) -> None:
        self.stopping_since = time.monotonic()
        self._signal_children(signal.SIGTERM)

    def run(self, on_ready: Callable[[list[int]], None], kill_after: float) -> int:
        for slot in range(self.processes):
            self._spawn(slot)
        announced = False
        started = time.monotonic()
        while self.children:
            select.select([self.wake_r, self.ready_r], [], [], 0.5)
            _drain(self.wake_r)
            for pid in _read_pids(self.ready_r):
                self.ready.add(pid)
            self._reap()
            now = time.monotonic()
            if not announced and self.stopping_since is None:
                if self.ready >= set(self.children) and len(self.ready) >= self.processes:
                    announced = True
                    on_ready(sorted(self.children))
                elif now - started > _READY_TIMEOUT_S:
                    logger.error("the worker processes did not start listening in time")
                    self.failed = True
                    self._stop()
            if self.stopping_since is not None and now - self.stopping_since > kill_after:
                self._signal_children(signal.SIGKILL)
        return 1 if self.failed else 0

    def _spawn(self, slot: int) -> None:
        # Signals stay blocked across fork so that no handler of the parent runs in the child.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                # The parent passes SIGINT on as SIGTERM; a terminal's Ctrl-C reaches
                # the whole process group, and a second signal would force the child.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for fd in (self.wake_r, self.wake_w, self.ready_r):
                    os.close(fd)
                ready_w = self.ready_w

                def ready() -> None:
                    os.write(ready_w, b"%d\n" % os.getpid())

                code = self.serve_child(ready, slot)
            except BaseException:
                logging.getLogger("fastbind.server").exception("worker process failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[pid] = time.monotonic()
        self.slots[pid] = slot

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            slot = self.slots.pop(pid, 0)
            if started is None:
                continue
            if self.on_exit is not None:
                self.on_exit(pid)
            self.ready.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping_since is not None:
                if code != 0:
                    self.failed = True
                continue
            lived = time.monotonic() - started
            self.quick_deaths = self.quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
            how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
            if self.quick_deaths >= _QUICK_DEATHS_MAX:
                logger.error("worker process %d %s; it keeps failing at start, stopping", pid, how)
                self.failed = True
                self._stop()
                continue
            logger.warning("worker process %d %s; starting a new one in its slot (%d)", pid, how, slot)
            self._spawn(slot)

    def _signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _read_pids(fd: int) -> list[int]:
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
    return [int(line) for line in data.split()]
