"""Access-log lines of the HTTP server: one per request, as text or as JSON.

Every request gets a line: those a Worker answered, those the server refused before
any Worker ran (400, 408, 413, 431...), and those whose client went away before the
answer was out, shown with status 499 as nginx shows them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .exchange import AccessLog, Exchange

__all__ = ("CLIENT_GONE", "FORMATS", "access_line", "json_line", "writer", "combine")

CLIENT_GONE = 499  # the status logged for a client that went away before its answer was out
FORMATS = ("text", "json")


def _fields(connection: Any, ex: Exchange, status: int, sent: int) -> tuple[str, str, str, float]:
    peer = connection.peer
    client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
    request = ex.request
    method = request.method if request is not None else "-"
    target = ex.target.decode("latin-1") if ex.target else "-"
    took = (time.perf_counter() - ex.start) * 1000 if ex.start else 0.0
    return client, method, target, took


def access_line(connection: Any, ex: Exchange, status: int, sent: int) -> str:
    """``client "METHOD target HTTP/1.1" status bytes time``, as the server has always printed it."""
    client, method, target, took = _fields(connection, ex, status, sent)
    return f'{client} "{method} {target} HTTP/{ex.version}" {status} {sent} {took:.1f}ms\n'


def json_line(worker: str) -> Callable[[Any, Exchange, int, int], str]:
    """One JSON object per line, for log collectors (``--log-format json``)."""

    def line(connection: Any, ex: Exchange, status: int, sent: int) -> str:
        client, method, target, took = _fields(connection, ex, status, sent)
        return orjson.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "type": "access",
            "worker": worker,
            "client": client,
            "method": method,
            "target": target,
            "version": ex.version,
            "status": status,
            "bytes": sent,
            "duration_ms": round(took, 3),
        }).decode() + "\n"

    return line


def writer(log_format: str, worker: str) -> AccessLog:
    """The access log of ``fastbind serve``: lines in ``log_format`` on stdout."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    format_line = access_line if log_format == "text" else json_line(worker)

    def write(connection: Any, ex: Exchange, status: int, sent: int) -> None:
        sys.stdout.write(format_line(connection, ex, status, sent))

    return write


def combine(logs: Sequence[AccessLog]) -> AccessLog | None:
    """One AccessLog that calls each of ``logs`` (None when there is none)."""
    if not logs:
        return None
    if len(logs) == 1:
        return logs[0]

    def each(connection: Any, ex: Exchange, status: int, sent: int) -> None:
        for log in logs:
            log(connection, ex, status, sent)

    return each
