"""Runtime: the Worker registry, binding resolution and top-level dispatch."""

from __future__ import annotations

import asyncio
import sys
from functools import partial
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from . import _impl, hangwatch
from .bindings import RemoteBinding, ServiceBinding, normalize_binding
from .durable import DEFAULT_IDLE_S, DurableObjects, check_declarations
from .entrypoint import WorkerEntrypoint
from .errors import CPU_LIMIT_MESSAGE, ConfigError, CpuLimitExceeded, FastbindError
from .http_body import BodyReadError
from .http_client import DEFAULT_FETCH_TIMEOUT, check_timeout
from .lifecycle import PipelineStream, end_pipeline, logger
from .limits import Limits
from .passthrough import OriginalRequest, check_origin, pass_through
from .request import Request
from .response import Response
from .watchdog import watchdog

__all__ = ("Runtime", "PipelineReport", "current_runtime")

_PLAIN_BODIES = (bytes, str, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class PipelineReport:
    """What one finished pipeline did: given to ``Runtime(on_pipeline_end=...)``."""

    entry: str
    status: int | None
    start_ns: int
    duration_ns: int
    subrequests: tuple[Any, ...]  # SubrequestRecord: caller, target, kind, depth, ...
    error: BaseException | None
    cpu_ns: int | None = None  # the pipeline's CPU, when Limits.cpu_ms or measure_cpu is set


@dataclass(slots=True)
class _WorkerSpec:
    name: str
    handler: Any
    services: dict[str, ServiceBinding | RemoteBinding]
    vars: dict[str, Any]
    entrypoints: dict[str, Any]
    durable_objects: dict[str, type] = field(default_factory=dict)


def _has_factory(factory: Any, implementation: str) -> bool:
    while factory is not None:
        if getattr(factory, "fastbind_implementation", None) == implementation:
            return True
        factory = getattr(factory, "previous", None)
    return False


class Runtime:
    """Holds Workers and their bindings; ``dispatch`` serves one top-level request.

    Workers may be added in any order: bindings are resolved on first use (the first
    ``dispatch`` or an explicit ``validate()``), and a ConfigError raises from there.
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        origin: Any = None,
        on_pipeline_end: Callable[[PipelineReport], Any] | None = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        durable_dir: str | PathLike[str] | None = None,
        durable_idle_s: float | None = DEFAULT_IDLE_S,
    ) -> None:
        if limits is None:
            limits = Limits()
        elif not isinstance(limits, Limits):
            raise TypeError(f"limits must be a fastbind.Limits, not {type(limits).__name__}")
        self._limits = limits
        self._origin = origin
        # Default of fetch(timeout=...) in this Runtime's Workers, in seconds.
        self.fetch_timeout = check_timeout(fetch_timeout, "Runtime fetch_timeout")
        self._core = core = _impl.core
        # What every top-level request shares, prepared once (the core's dispatch driver).
        self._plan = core.DispatchPlan(
            self, limits, validate=self.validate, lookup=self._handle_for,
            finish=self._finish_dispatch, report=self._report_ok,
            install_factory=self._install_task_factory, watch_hang=hangwatch.watch,
            watch_cpu=partial(watchdog.watch, core),
        )
        self._plan.origin = None if origin is None else OriginalRequest
        self.on_pipeline_end = on_pipeline_end
        self._specs: dict[str, _WorkerSpec] = {}
        self._handles: dict[str, Any] = {}
        self._resolved = False
        self._closers: list[Callable[[], Any]] = []
        self._fetch_session: Any = None  # (loop, aiohttp session) of fetch(): http_client.session_for
        # Durable Object storage: one SQLite file per namespace under durable_dir (in
        # memory without one); objects idle for durable_idle_s seconds leave memory.
        self._durable = DurableObjects(self, durable_dir, durable_idle_s)

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def on_pipeline_end(self) -> Callable[[PipelineReport], Any] | None:
        """Called with a PipelineReport when each pipeline has ended (None: no report)."""
        return self._plan.hook  # type: ignore[no-any-return]

    @on_pipeline_end.setter
    def on_pipeline_end(self, hook: Callable[[PipelineReport], Any] | None) -> None:
        self._plan.hook = hook

    @property
    def _resolved(self) -> bool:
        return bool(self._plan.resolved)

    @_resolved.setter
    def _resolved(self, value: bool) -> None:
        self._plan.resolved = value

    @property
    def implementation(self) -> str:
        """"c" when the compiled core runs this Runtime, "py" for the pure twin."""
        return str(self._core.IMPLEMENTATION)

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def add_worker(
        self,
        name: str,
        handler: Any,
        *,
        services: Mapping[str, Any] | None = None,
        vars: Mapping[str, Any] | None = None,
        entrypoints: Mapping[str, Any] | None = None,
        durable_objects: Mapping[str, type] | None = None,
    ) -> None:
        """Register Worker ``name``: a WorkerEntrypoint subclass or ``async def (request, env, ctx)``.

        ``services`` maps binding names to a Worker name, ``fastbind.service(...)`` or
        ``fastbind.remote(url)``; ``vars`` are plain values; ``entrypoints`` names extra
        WorkerEntrypoint classes that bindings may pick (by default, those exported by
        the module that defines ``handler``); ``durable_objects`` maps binding names
        to Durable Object classes (see ``fastbind.durable``).
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A Worker name must be a non-empty str, not {name!r}.")
        if name in self._specs:
            raise ConfigError(f'A Worker named "{name}" is already defined.')
        try:
            handle = self._core.WorkerHandle(name, handler)
        except TypeError:
            raise ConfigError(
                f'Worker "{name}" handler must be a WorkerEntrypoint subclass or an async '
                f"function (request, env, ctx), not {handler!r}."
            ) from None
        bindings = {}
        for binding, spec in (services or {}).items():
            if not isinstance(binding, str) or not binding:
                raise ConfigError(f'Worker "{name}" has a binding with an invalid name {binding!r}.')
            bindings[binding] = normalize_binding(name, binding, spec)
        vars = dict(vars or {})
        for key in vars:
            if not isinstance(key, str) or not key:
                raise ConfigError(f'Worker "{name}" has a var with an invalid name {key!r}.')
            if key in bindings:
                raise ConfigError(f'Worker "{name}" defines "{key}" both as a binding and a var.')
        durable = check_declarations(name, durable_objects)
        for binding in durable:
            if binding in bindings or binding in vars:
                raise ConfigError(
                    f'Worker "{name}" defines "{binding}" both as a Durable Object namespace '
                    "and as a binding or var."
                )
        named = dict(entrypoints or {})
        for ep_name, ep in named.items():
            if not (isinstance(ep, type) and issubclass(ep, WorkerEntrypoint)):
                raise ConfigError(
                    f'Worker "{name}" entrypoint "{ep_name}" must be a WorkerEntrypoint subclass, not {ep!r}.'
                )
        self._specs[name] = _WorkerSpec(name, handler, bindings, vars, named, durable)
        self._handles[name] = handle
        self._resolved = False

    @classmethod
    def from_config(cls, path: str | PathLike[str]) -> Runtime:
        """A Runtime built from a ``fastbind.toml`` file (DESIGN.md section 4).

        Raises ConfigError, naming the file, the Worker and the key, when it is wrong.
        """
        from .config import load_config

        return load_config(path, runtime_class=cls)

    def validate(self) -> None:
        """Resolve every binding; raise ConfigError naming the first that is wrong."""
        core = self._core
        envs = {}
        self._entry_handles: dict[tuple[str, str], Any] = {}
        for spec in self._specs.values():
            values: dict[str, Any] = dict(spec.vars)
            for binding, target in spec.services.items():
                values[binding] = self._make_binding(core, spec.name, binding, target)
            for binding, cls in spec.durable_objects.items():
                values[binding] = self._durable.namespace(spec.name, binding, cls, self._handles[spec.name])
            envs[spec.name] = core.Env(spec.name, values)
        for name, env in envs.items():
            self._handles[name].env = env
        for (service, _), handle in self._entry_handles.items():
            handle.env = envs[service]  # a named entrypoint runs with its Worker's env
        check_origin(self._origin, self._specs)
        self._resolved = True

    def _make_binding(self, core: Any, worker: str, binding: str, target: Any) -> Any:
        if isinstance(target, RemoteBinding):
            from .remote import RemoteFetcher

            return RemoteFetcher(self, binding, target.url)
        handle = self._handles.get(target.service)
        if handle is None:
            raise ConfigError(
                f'Worker "{worker}" binding "{binding}" refers to a service '
                f'"{target.service}", but no such service is defined.'
            )
        if target.entrypoint is not None:
            handle = self._entrypoint_handle(core, worker, binding, target)
        return core.Fetcher(handle, binding, target.props or None)

    def _entrypoint_handle(self, core: Any, worker: str, binding: str, target: Any) -> Any:
        key = (target.service, target.entrypoint)
        handle = self._entry_handles.get(key)
        if handle is not None:
            return handle
        spec = self._specs[target.service]
        cls = spec.entrypoints.get(target.entrypoint)
        if cls is None:
            module = sys.modules.get(getattr(spec.handler, "__module__", ""), None)
            cls = getattr(module, target.entrypoint, None)
        if not (isinstance(cls, type) and issubclass(cls, WorkerEntrypoint)):
            raise ConfigError(
                f'Worker "{worker}" binding "{binding}" refers to service "{target.service}" '
                f'with a named entrypoint "{target.entrypoint}", but "{target.service}" has '
                "no such named entrypoint."
            )
        handle = self._entry_handles[key] = core.WorkerHandle(target.service, cls)
        return handle

    def _install_task_factory(self, loop: asyncio.AbstractEventLoop) -> None:
        current = loop.get_task_factory()
        if not _has_factory(current, self._core.IMPLEMENTATION):
            loop.set_task_factory(self._core.make_task_factory(current))

    async def dispatch(self, name: str, request: Request) -> Response:
        """Serve one top-level request with Worker ``name`` and return its Response.

        The pipeline lives until the Response's body is consumed or closed; cancelling
        the awaiting task cancels the pipeline; a hung pipeline gets a 500 (see
        ``fastbind.lifecycle`` for the rules).
        """
        if not self._plan.resolved:
            self.validate()
        handle = self._handles.get(name)
        if handle is None:
            raise ConfigError(f'No Worker named "{name}" is defined.')
        # The core's driver (DispatchPlan.call) refuses a dispatch from inside a
        # Worker, opens the pipeline, runs the root invocation in this task and ends
        # the pipeline in the common case; the other endings come to _finish_dispatch.
        return await self._plan.call(handle, request)  # type: ignore[no-any-return]

    def _handle_for(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            raise ConfigError(f'No Worker named "{name}" is defined.')
        return handle

    async def _finish_dispatch(
        self,
        pipeline: Any,
        original: OriginalRequest | None,
        response: Response | None,
        exc: BaseException | None,
        hung: bool,
    ) -> Response:
        """End a top-level request other than the common way (the core's driver calls it).

        ``response`` is what the root invocation returned, or ``exc`` what it raised;
        ``hung`` is the hang detector's verdict. Returns the Response ``dispatch``
        gives, or raises the caller's cancellation.
        """
        name = pipeline.entry
        error: BaseException | None = None
        gone: BaseException | None = None  # the caller went away (or the process is stopping)
        if exc is None:
            pass
        elif isinstance(exc, asyncio.CancelledError):
            gone = exc
        elif isinstance(exc, CpuLimitExceeded):
            error = exc
            response = self._cpu_exceeded(name)
        elif isinstance(exc, Exception):
            error = exc
            if not hung:
                try:
                    response = await self._uncaught(pipeline, name, original, exc)
                except BaseException as late:  # cancelled while passing through
                    response, gone = None, late
        else:
            gone = exc
        if hung:
            task = asyncio.current_task()
            assert task is not None
            if task.uncancel() == 0:  # the cancel was the hang verdict's alone: answer for it
                if response is not None:
                    await response.aclose()
                gone, error = None, hangwatch.WorkerHangError()
                response = _hung_response()
            elif gone is None:  # the caller cancelled too, and the Worker swallowed it
                gone = asyncio.CancelledError()
        if gone is not None:
            done = self._reporter(pipeline, None, gone)
            await end_pipeline(
                pipeline, done, cancel_wait_until=not isinstance(gone, asyncio.CancelledError)
            )
            raise gone
        assert response is not None
        if pipeline.cpu_exceeded and error is None:  # over budget in its last step
            response = self._cpu_exceeded(name)
        done = self._reporter(pipeline, response.status, error)
        rbody = response.body
        if rbody is None or isinstance(rbody, _PLAIN_BODIES):
            if pipeline.idle:  # nothing left to cancel or wait for
                pipeline.close()
                done()
            else:
                await end_pipeline(pipeline, done)
        else:
            response.body = PipelineStream(
                rbody, lambda: end_pipeline(pipeline, done), pipeline.root
            )
        return response

    def _report_ok(self, pipeline: Any, status: int) -> None:
        """Report a pipeline that ended the common way (the core's driver calls it)."""
        self._reporter(pipeline, status, None)()

    def _reporter(self, pipeline: Any, status: int | None, error: BaseException | None) -> Callable[[], None]:
        hook = self.on_pipeline_end
        limited = pipeline.cpu_limit_ns >= 0
        if hook is None and not limited:
            return _nothing

        def report() -> None:
            if limited:
                watchdog.unwatch()
            if hook is None:
                return
            try:
                hook(PipelineReport(
                    pipeline.entry, status, pipeline.start_ns, pipeline.duration_ns,
                    pipeline.ledger, error, pipeline.cpu_ns if pipeline.cpu_enabled else None,
                ))
            except Exception:
                logger.exception("on_pipeline_end hook raised")

        return report

    async def _uncaught(
        self, pipeline: Any, name: str, original: OriginalRequest | None, exc: Exception
    ) -> Response:
        root = pipeline.root
        if original is not None and root is not None and root.passes_through_on_exception:
            logger.warning('Worker "%s" raised %r; passing the request through to the origin', name, exc)
            return await pass_through(self, original)
        if isinstance(exc, BodyReadError):
            # The client's doing (it went away, went silent or sent too much), not a
            # fault of the Worker: no traceback, not an error of this server.
            logger.warning('Worker "%s" could not read its request body: %s', name, exc)
        else:
            logger.error('Uncaught exception in Worker "%s"', name, exc_info=exc)
        return Response(
            "Internal Server Error", status=500, headers={"content-type": "text/plain; charset=utf-8"}
        )

    def _cpu_exceeded(self, name: str) -> Response:
        logger.error('%s (Worker "%s")', CPU_LIMIT_MESSAGE, name)
        return Response(
            CPU_LIMIT_MESSAGE, status=503, headers={"content-type": "text/plain; charset=utf-8"}
        )

    def live_counts(self) -> dict[str, int]:
        """Process-wide counters that return to zero when every pipeline has ended."""
        return dict(self._core.live_counts())

    def add_closer(self, closer: Callable[[], Any]) -> None:
        self._closers.append(closer)

    async def aclose(self) -> None:
        """Release what the Runtime holds (e.g. the outbound HTTP session)."""
        closers, self._closers = self._closers, []
        for closer in closers:
            result = closer()
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _nothing() -> None:
    return None


def _hung_response() -> Response:
    # The verdict was logged by the detector when it cancelled the pipeline.
    return Response(
        hangwatch.HANG_MESSAGE, status=500, headers={"content-type": "text/plain; charset=utf-8"}
    )


def current_runtime() -> Runtime | None:
    """The Runtime whose pipeline the running code belongs to, or None outside one."""
    from . import _core_py, _impl

    for core in (_impl.compiled, _core_py):
        if core is not None:
            inv = core.current_invocation()
            if inv is not None:
                return inv.pipeline.owner  # type: ignore[no-any-return]
    return None
