"""Tenant Workers each in a process of their own (``isolation = "process"``).

A tenant's process (``child.py``) is started on its first request, serves that one
Worker over HTTP on a loopback port, and is reached the way a remote binding is: an
outbound fetch from the gateway (``outbound.fetch.send``), inside a child invocation
named after the tenant, so the ledger shows the dispatch and the hop. Each process has
a memory cap (``resource.setrlimit(RLIMIT_DATA)``, ``memory_mb``, the interpreter's own
~60 MB included); one that goes past it exits, its request raises WorkerMemoryLimitError in the dispatcher (503 if uncaught),
and the next request starts it again. Processes unused for ``idle_s`` are stopped, and
at most ``max_loaded`` run at once (the least recently used idle one makes room).

Only the gateway can call a tenant's process: each gets a random token on its stdin,
which every request must carry. Per-call limits and props travel as headers, which the
gateway strips from what the dispatcher forwards and the process strips again before
the tenant sees the request. A process gets none of the gateway's environment
variables beyond those Python and fastbind need (``PATH``, ``PYTHONPATH``, locale,
``FASTBIND_*``); its stdin is its lifeline: when the gateway goes, it stops.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..bindings import RemoteBinding
from ..core.binding_fetch import MANUAL, fetch_with_options, redirect_follower
from ..errors import (
    ConfigError,
    FastbindError,
    FetchError,
    ResourceLimitError,
    WorkerCpuLimitError,
    WorkerMemoryLimitError,
)
from ..outbound.client import outgoing_headers
from ..outbound.fetch import send
from ..request import Request
from .namespace import RELOAD_CHECK_S, DispatchNamespace, check_limits, lower
from .tenants import NOT_FOUND, tenant_handle_name

if TYPE_CHECKING:
    from .extension import DispatchNamespaces

__all__ = ("ProcessTenants", "ProcessFetcher", "HEADER_PREFIX", "EXIT_MEMORY")

logger = logging.getLogger("fastbind")

HEADER_PREFIX = "x-fastbind-"   # gateway <-> tenant process; never passed on to a tenant
TOKEN_HEADER = HEADER_PREFIX + "tenant-token"
URL_HEADER = HEADER_PREFIX + "url"
CPU_HEADER = HEADER_PREFIX + "cpu-ms"
SUBREQUESTS_HEADER = HEADER_PREFIX + "subrequests"
PROPS_HEADER = HEADER_PREFIX + "props"
LIMIT_HEADER = HEADER_PREFIX + "limit"   # the process's answer when the tenant went past one
EXIT_MEMORY = 3   # a tenant process's exit status after a MemoryError
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
_ENV_KEPT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT", "TMPDIR")
_monotonic = time.monotonic


class TenantProcess:
    """One tenant Worker's process."""

    __slots__ = ("name", "proc", "port", "token", "busy", "last_used", "started", "exited")

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.token = secrets.token_urlsafe(24)
        self.busy = 0
        self.last_used = _monotonic()
        self.started: asyncio.Future[TenantProcess] | None = None
        self.exited: asyncio.Future[int] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class ProcessFetcher:
    """``env.DISPATCHER.get(name)`` of a process-isolated namespace: ``fetch`` only.

    Awaiting ``fetch(...)`` starts the tenant's process if need be and sends it the
    request; a tenant's uncaught exception comes back as its 500 answer (exceptions do
    not cross processes).
    """

    __slots__ = ("_tenants", "_name", "_handle", "_cpu_ms", "_subrequests", "_props", "check_at")

    def __init__(self, tenants: ProcessTenants, name: str, handle: Any, cpu_ms: Any,
                 subrequests: Any, props: Any) -> None:
        self._tenants = tenants
        self._name = name
        self._handle = handle
        self._cpu_ms = cpu_ms
        self._subrequests = subrequests
        self._props = props
        self.check_at = _monotonic() + RELOAD_CHECK_S

    def fetch(
        self, input: Any, *, method: str | None = None, headers: Any = None, body: Any = None,
        redirect: Any = "follow", timeout: Any = None, cf: Any = None,
    ) -> Any:
        """As a binding's fetch: the same options, a redirect the tenant answers followed
        through the same binding by default (each hop a call of its own)."""
        return fetch_with_options(
            self, self._handle.name, input, method, headers, body, redirect, timeout, cf, _start_call,
        )

    def call(self, request: Request) -> Any:
        """One call of the tenant with ``request``: a child invocation named after it
        (depth, one subrequest, its ledger entry) that sends the request to its process."""
        tenants = self._tenants
        args = (self._name, request, self._cpu_ms, self._subrequests, self._props)
        return tenants.core.call_child(self._handle, "binding", tenants.forward, args, None, True)

    def with_call(self, cpu_ms: Any, subrequests: Any, props: Any) -> ProcessFetcher:
        return ProcessFetcher(self._tenants, self._name, self._handle, cpu_ms, subrequests, props)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise TypeError(
            f'Worker "{self._handle.name}" runs in a process of its own '
            '(isolation = "process"): it serves fetch() only, not RPC.'
        )

    def __repr__(self) -> str:
        return f"<ProcessFetcher {self._handle.name}>"


async def _start_call(fetcher: ProcessFetcher, request: Request, mode: int, origin: Any) -> Any:
    """binding_fetch's ``start_call`` for a tenant's process: the call, then its redirects."""
    response = await fetcher.call(request)
    if mode != MANUAL:
        follower = redirect_follower(fetcher, origin, mode, response, _start_call)
        if follower is not None:
            return await follower
    return response


class ProcessTenants:
    """The tenant set of a namespace whose Workers run in processes of their own."""

    def __init__(self, extension: DispatchNamespaces, namespace: DispatchNamespace) -> None:
        self._namespace = namespace
        self._runtime = namespace.runtime
        self.core = self._runtime.core
        options = namespace.options
        self._options = options
        self._where = f'Dispatch namespace "{options.name}"'
        self._fetchers: dict[str, ProcessFetcher] = {}
        self._processes: OrderedDict[str, TenantProcess] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- the binding ------------------------------------------------------------------------

    def make_get(self) -> Callable[..., Any]:
        return self.get

    def get(self, name: str, limits: Mapping[str, Any] | None = None, props: Any = None) -> Any:
        fetcher = self._fetchers.get(name)
        if fetcher is None or _monotonic() >= fetcher.check_at:
            if self._namespace.source(name) is None:
                self._fetchers.pop(name, None)
                return NOT_FOUND
            handle = self.core.WorkerHandle.for_target(tenant_handle_name(self._options.name, name), None)
            fetcher = self._fetchers[name] = ProcessFetcher(
                self, name, handle, self._options.cpu_ms, self._options.subrequests, None
            )
        if limits is None and props is None:
            return fetcher
        try:
            cpu_ms, subrequests = check_limits(self._where + " get()", limits)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return fetcher.with_call(
            lower(self._options.cpu_ms, cpu_ms), lower(self._options.subrequests, subrequests), props
        )

    def forget(self, name: str) -> None:
        self._fetchers.pop(name, None)
        process = self._processes.pop(name, None)
        if process is not None:
            self._stop(process)

    def loaded(self) -> tuple[str, ...]:
        return tuple(name for name, p in self._processes.items() if p.alive)

    async def forward(
        self, ctx: Any, name: str, request: Request, cpu_ms: Any, subrequests: Any, props: Any
    ) -> Any:
        """Send ``request`` to tenant ``name``'s process (the child invocation's code)."""
        process = await self._ready(name)
        headers = [h for h in outgoing_headers(request.headers) if not h[0].startswith(HEADER_PREFIX)]
        headers += [(TOKEN_HEADER, process.token), (URL_HEADER, request.url)]
        if cpu_ms is not None:
            headers.append((CPU_HEADER, repr(float(cpu_ms))))
        if subrequests is not None:
            headers.append((SUBREQUESTS_HEADER, str(subrequests)))
        if props is not None:
            headers.append((PROPS_HEADER, orjson.dumps(dict(props)).decode()))
        process.busy += 1
        try:
            response = await send(
                self._runtime, ctx, f"http://127.0.0.1:{process.port}/", request.method,
                headers, request.body, "manual",
            )
        except FetchError as exc:
            raise await self._failure(process, exc) from exc
        finally:
            process.busy -= 1
            process.last_used = _monotonic()
        if response.headers.get(LIMIT_HEADER) == "cpu":
            await response.aclose()
            raise WorkerCpuLimitError()
        return response

    async def _failure(self, process: TenantProcess, exc: FetchError) -> BaseException:
        """Why a request to ``process`` failed: it went past its memory cap, it ended
        otherwise, or the network error itself (it still runs)."""
        exited = process.exited
        if exited is not None:
            try:
                code = await asyncio.wait_for(asyncio.shield(exited), 2.0)
            except asyncio.TimeoutError:
                return exc
            if code == EXIT_MEMORY:
                logger.error('%s (Worker "%s")', WorkerMemoryLimitError(), tenant_handle_name(self._options.name, process.name))
                return WorkerMemoryLimitError()
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            return ResourceLimitError(
                f'Worker "{tenant_handle_name(self._options.name, process.name)}" stopped ({how}).'
            )
        return exc

    # -- processes --------------------------------------------------------------------------

    async def _ready(self, name: str) -> TenantProcess:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._abandon()  # processes of a loop that has stopped (tests run several)
            self._loop = loop
        process = self._processes.get(name)
        if process is None or (process.started is not None and process.started.done() and not process.alive):
            found = self._namespace.source(name)
            if found is None:
                raise FastbindError(f'Worker "{tenant_handle_name(self._options.name, name)}" was deleted.')
            process = TenantProcess(name)
            self._make_room()
            self._processes[name] = process
            process.started = self._detached(self._start(process, found))
        self._processes.move_to_end(name)
        process.last_used = _monotonic()
        assert process.started is not None
        # Shielded: a pipeline that goes away does not stop a start other requests wait for.
        return await asyncio.shield(process.started)

    def _detached(self, coro: Any) -> asyncio.Task[Any]:
        """A task of no pipeline (a fresh context): a caller that goes away does not cancel it."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _start(self, process: TenantProcess, found: Any) -> TenantProcess:
        source, own_vars = found
        options = self._options
        config = {
            "namespace": options.name,
            "tenant": process.name,
            "path": None if source.path is None else str(source.path),
            "source": source.text,
            "vars": {**options.vars, **own_vars},
            # Only remote bindings cross (check_options refuses the others).
            "services": {b: d.url for b, d in options.services.items() if isinstance(d, RemoteBinding)},
            "memory_mb": options.memory_mb,
            "token": process.token,
        }
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT or k.startswith("FASTBIND_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # where fastbind is found here
        proc = process.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastbind.namespaces.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            cwd=str(options.directory) if options.directory is not None else None,
        )
        process.exited = self._detached(proc.wait())
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(orjson.dumps(config) + b"\n")  # the stdin stays open: the lifeline
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        word, _, rest = line.decode(errors="replace").strip().partition(" ")
        if word != "ready":
            self._stop(process)
            self._processes.pop(process.name, None)
            detail = rest if word == "error" else "it did not start"
            raise ConfigError(
                f'Worker "{tenant_handle_name(options.name, process.name)}" could not be started: {detail}'
            )
        process.port = int(rest)
        self._schedule_reaper()
        return process

    def _make_room(self) -> None:
        """At most ``max_loaded`` processes: stop the least recently used idle one."""
        live = [p for p in self._processes.values() if p.alive or not (p.started and p.started.done())]
        if len(live) < self._options.max_loaded:
            return
        for process in live:
            if process.busy == 0 and process.alive:
                self._processes.pop(process.name, None)
                self._stop(process)
                return

    def _stop(self, process: TenantProcess) -> None:
        proc = process.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.terminate()  # the process serves what it has, then stops (SIGTERM)
        except ProcessLookupError:
            return
        self._detached(self._wait_stopped(proc))

    @staticmethod
    async def _wait_stopped(proc: asyncio.subprocess.Process) -> None:
        """Wait for a process told to stop (killed after STOP_TIMEOUT_S), then close its
        stdin: the loop lets the process's transport go only once every pipe is closed."""
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()

    def _schedule_reaper(self) -> None:
        if self._reaper is None and self._loop is not None:
            interval = min(self._options.idle_s / 2, 5.0)
            self._reaper = self._loop.call_later(interval, self._reap)

    def _reap(self) -> None:
        """Stop the processes unused for ``idle_s``."""
        self._reaper = None
        now = _monotonic()
        for name, process in list(self._processes.items()):
            if not process.alive and process.started is not None and process.started.done():
                del self._processes[name]
            elif process.alive and process.busy == 0 and now - process.last_used >= self._options.idle_s:
                del self._processes[name]
                self._stop(process)
        if self._processes:
            self._schedule_reaper()

    def _abandon(self) -> None:
        """Processes started on another loop cannot be awaited here: signal them by pid."""
        for process in self._processes.values():
            proc = process.proc
            if proc is not None and proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._processes.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    async def aclose(self) -> None:
        """Stop every process and wait for them (killed after STOP_TIMEOUT_S)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._abandon()
            return
        procs = [p.proc for p in self._processes.values() if p.proc is not None and p.proc.returncode is None]
        self._processes.clear()
        for proc in procs:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
            self._detached(self._wait_stopped(proc))
        # Every process stopping, these and those stopped before, is reaped (each bounded
        # by STOP_TIMEOUT_S); what is still running after that (a start) is cancelled.
        tasks = set(self._background)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S + 1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
