"""A tenant Worker's own process (``isolation = "process"``): ``python -m fastbind.namespaces.child``.

Started by the gateway (``process.py``), which writes one JSON line on its stdin: the
namespace and tenant names, the tenant's file or source, its vars and remote bindings,
its memory cap and the token every request must carry. The process then caps its
data size (``resource.setrlimit(RLIMIT_DATA)``), holds the tenant in a namespace of
its own (so it is reloaded when its file changes, as in the gateway), serves it over
HTTP/1.1 on a free loopback port, and prints ``ready <port>`` (or ``error <why>``).

Each request runs the tenant through ``get(name, limits=..., props=...)`` with the
limits and props the gateway sent. A tenant past its ``cpu_ms`` is answered with 503
and the ``x-fastbind-limit: cpu`` header; a MemoryError ends the process at once with
exit status 3 (the gateway answers for it). The process stops on SIGTERM, and when its
stdin (the gateway) closes.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from ..errors import WorkerCpuLimitError
from ..http.server import run
from ..request import Request
from ..response import Response
from ..runtime import Runtime
from .extension import add_namespace
from .process import (
    CPU_HEADER,
    EXIT_MEMORY,
    HEADER_PREFIX,
    LIMIT_HEADER,
    PROPS_HEADER,
    SUBREQUESTS_HEADER,
    TOKEN_HEADER,
    URL_HEADER,
)
from .tenants import Unavailable

__all__ = ("main",)

ENTRY = "fastbind-tenant-entry"
# The process's data (heap, anonymous mappings, thread stacks), not its whole address
# space: shared libraries and reserved-but-unused arenas would eat an RLIMIT_AS cap.
MEMORY_LIMIT = getattr(resource, "RLIMIT_DATA", resource.RLIMIT_AS)
_TEXT = {"content-type": "text/plain; charset=utf-8"}


def _memory_error(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, MemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _out_of_memory() -> None:
    """The tenant went past its cap: stop now (nothing of it is trusted to run on)."""
    sys.stderr.write("fastbind: tenant Worker exceeded its memory cap; its process stops\n")
    sys.stderr.flush()
    os._exit(EXIT_MEMORY)


def make_entry(tenant: str, token: str) -> Any:
    """The process's entry Worker: checks the token, then calls the tenant."""
    expected = token.encode()

    async def entry(request: Request, env: Any, ctx: Any) -> Response:
        given = request.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(given.encode(), expected):
            return Response("Forbidden", status=403, headers=_TEXT)
        headers = request.headers
        cpu_ms = headers.get(CPU_HEADER)
        subrequests = headers.get(SUBREQUESTS_HEADER)
        props = headers.get(PROPS_HEADER)
        limits = {}
        if cpu_ms is not None:
            limits["cpu_ms"] = float(cpu_ms)
        if subrequests is not None:
            limits["subrequests"] = int(subrequests)
        url = headers.get(URL_HEADER) or request.url
        own = [(k, v) for k, v in headers.items() if not k.startswith(HEADER_PREFIX)]
        forwarded = Request(url, method=request.method, headers=own, body=request.body)
        fetcher = env.NAMESPACE.get(
            tenant, limits=limits or None, props=None if props is None else orjson.loads(props)
        )
        try:
            response: Response = await fetcher.fetch(forwarded)
        except WorkerCpuLimitError as exc:
            return Response(str(exc), status=503, headers={**_TEXT, LIMIT_HEADER: "cpu"})
        except BaseException as exc:
            if _memory_error(exc):
                _out_of_memory()
            raise
        for name in {k for k in response.headers.keys() if k.startswith(HEADER_PREFIX)}:
            response.headers.delete(name)  # only this process speaks in those headers
        return response

    return entry


def _lifeline() -> None:
    """Stop when the gateway goes (its end of stdin closes)."""
    while os.read(0, 4096):  # the file descriptor itself: no lock held at shutdown
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    config = orjson.loads(sys.stdin.buffer.readline())
    try:
        runtime = _runtime(config)
    except Exception as exc:  # the gateway reports it: the Worker cannot be started
        print("error", f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return 1
    cap = config["memory_mb"] * 1024 * 1024
    resource.setrlimit(MEMORY_LIMIT, (cap, cap))
    threading.Thread(target=_lifeline, daemon=True).start()

    def ready(server: Any) -> None:
        asyncio.get_running_loop().set_exception_handler(_loop_exception)
        print("ready", server.addresses[0][1], flush=True)
        # The gateway reads nothing more from stdout: what the tenant prints goes to
        # stderr (the gateway's), not into a pipe that would fill and block it.
        os.dup2(2, 1)

    return run(runtime, ENTRY, host="127.0.0.1", port=0, on_ready=ready)


def _runtime(config: dict[str, Any]) -> Runtime:
    """The process's Runtime: the tenant in a namespace of its own, and the entry Worker."""
    namespace, tenant = config["namespace"], config["tenant"]
    runtime = Runtime()
    ns = add_namespace(runtime, namespace, vars=config["vars"], services=config["services"], max_loaded=1)
    ns.put(tenant, Path(config["path"]) if config["path"] is not None else config["source"])
    loaded = ns.tenants.get(tenant)  # loaded now, before the cap: a broken Worker says why
    if isinstance(loaded, Unavailable):
        raise loaded.error
    runtime.add_worker(ENTRY, make_entry(tenant, config["token"]), dispatch_namespaces={"NAMESPACE": namespace})
    runtime.validate()
    return runtime


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if _memory_error(context.get("exception")):
        _out_of_memory()
    loop.default_exception_handler(context)


if __name__ == "__main__":
    sys.exit(main())
