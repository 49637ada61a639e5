"""``fastbind serve --reload``: restart the server when its config or Workers' code changes.

For development. The parent process listens once and keeps the socket (so the port
never changes and connections made during a restart wait in its backlog); it runs
``fastbind serve ... --fd N`` as a child on that socket, watches the config file's
folder (and any ``--reload-dir``) with the ``watchfiles`` library (an optional extra:
``pip install 'fastbind[reload]'``), and on a change of a ``.py`` or ``.toml`` file
stops the child with SIGTERM (a graceful shutdown) and starts a new one, which
imports everything afresh. SIGTERM or SIGINT to the parent stops both.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ("MISSING", "listen", "watch_and_serve", "available")

MISSING = "fastbind serve --reload needs watchfiles: pip install 'fastbind[reload]'"
_POLL_MS = 500  # how often the parent looks at its child while nothing changes


def available() -> bool:
    """Whether watchfiles is installed (``fastbind[reload]``)."""
    return importlib.util.find_spec("watchfiles") is not None


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), inheritable by a child."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def watch_and_serve(
    child_args: Sequence[str], sock: socket.socket, folders: Sequence[Path], *, stop_timeout: float,
    debounce_ms: int = 300,
) -> int:
    """Run ``python -m fastbind serve *child_args --fd N`` and restart it on changes in ``folders``.

    Returns 0 once stopped by a signal, 1 if the last child had failed by then.
    """
    try:
        import watchfiles
    except ImportError:
        raise ImportError(MISSING) from None
    command = [sys.executable, "-m", "fastbind", "serve", *child_args, "--fd", str(sock.fileno())]
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    watch_filter = watchfiles.PythonFilter(extra_extensions=(".toml",))
    child = _start(command, sock)
    reported = False
    try:
        for changes in watchfiles.watch(
            *folders, watch_filter=watch_filter, stop_event=stop, debounce=debounce_ms,
            rust_timeout=_POLL_MS, yield_on_timeout=True, raise_interrupt=False,
        ):
            if not changes:  # a poll: has the child failed?
                code = child.poll()
                if code is not None and not reported:
                    reported = True
                    _say(f"the server exited with code {code}; waiting for a change to start it again")
                continue
            names = sorted({os.path.relpath(path) for _, path in changes})
            _say(f"reloading: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} changed")
            _stop(child, stop_timeout)
            child = _start(command, sock)
            reported = False
    finally:
        _stop(child, stop_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if reported else 0


def _start(command: list[str], sock: socket.socket) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, pass_fds=(sock.fileno(),))


def _stop(child: subprocess.Popen[bytes], timeout: float) -> int | None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode


def _say(message: str) -> None:
    print(f"fastbind: {message}", file=sys.stderr, flush=True)
