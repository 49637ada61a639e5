"""Pure-Python twin of ``fastbind._core``: the same behaviour, no compiler needed."""

from __future__ import annotations

import asyncio
import inspect
import time
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from .entrypoint import WorkerEntrypoint
from .errors import (
    BODY_USED_MESSAGE,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from .request import Request
from .response import Response

__all__ = (
    "IMPLEMENTATION",
    "WorkerHandle",
    "PipelineContext",
    "SubrequestRecord",
    "InvocationContext",
    "Fetcher",
    "BindingCall",
    "current_invocation",
    "live_counts",
    "make_task_factory",
    "TaskFactory",
)

IMPLEMENTATION = "py"

_INVOCATION: ContextVar[InvocationContext | None] = ContextVar(
    "fastbind.invocation", default=None
)
_EMPTY_PROPS: MappingProxyType[str, Any] = MappingProxyType({})
_now = time.perf_counter_ns

# Counters that must return to zero once every pipeline has ended (DESIGN.md 2.7).
_live = {"pipelines": 0, "invocations": 0, "tasks": 0}


def live_counts() -> dict[str, int]:
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return dict(_live)


def current_invocation() -> InvocationContext | None:
    """The invocation whose code is running now, or None outside any Worker."""
    return _INVOCATION.get()


class WorkerHandle:
    """What the core needs to invoke one Worker: its name, handler and env."""

    __slots__ = ("_name", "_handler", "_is_class", "_fast_init", "env")

    def __init__(self, name: str, handler: Any) -> None:
        self._name = name
        self._handler = handler
        self.env: Any = None
        if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
            self._is_class = True
            # Skipping __init__ is only safe when nobody overrode it.
            self._fast_init = handler.__init__ is WorkerEntrypoint.__init__
        elif inspect.iscoroutinefunction(handler):
            self._is_class = False
            self._fast_init = False
        else:
            raise TypeError(name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def handler(self) -> Any:
        return self._handler

    def instantiate(self, ctx: InvocationContext) -> Any:
        cls = self._handler
        if self._fast_init:
            inst = object.__new__(cls)
            inst.ctx = ctx
            inst.env = self.env
            return inst
        return cls(ctx, self.env)

    def invoke(self, request: Any, ctx: InvocationContext) -> Any:
        if self._is_class:
            return self.instantiate(ctx).fetch(request)
        return self._handler(request, self.env, ctx)


class PipelineContext:
    """One top-level request and everything it reaches: limits, ledger, tasks."""

    __slots__ = (
        "_entry", "_max_depth", "_max_subrequests", "_open_connections",
        "_wait_until_s", "_ledger", "_tasks", "_waiting", "_running", "_closed",
        "_start_ns", "_root", "__weakref__",
    )

    def __init__(self, entry: str, limits: Any) -> None:
        self._entry = entry
        self._max_depth = limits.depth
        self._max_subrequests = limits.subrequests
        self._open_connections = limits.open_connections
        self._wait_until_s = limits.wait_until_s
        self._ledger: list[SubrequestRecord] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()
        self._running = 0
        self._closed = False
        self._start_ns = _now()
        self._root: InvocationContext | None = None
        _live["pipelines"] += 1

    entry = property(lambda self: self._entry)
    max_depth = property(lambda self: self._max_depth)
    max_subrequests = property(lambda self: self._max_subrequests)
    open_connections = property(lambda self: self._open_connections)
    wait_until_s = property(lambda self: self._wait_until_s)
    start_ns = property(lambda self: self._start_ns)
    running = property(lambda self: self._running)
    closed = property(lambda self: self._closed)
    root = property(lambda self: self._root)

    @property
    def ledger(self) -> tuple[SubrequestRecord, ...]:
        return tuple(self._ledger)

    def root_call(self, handle: WorkerHandle, request: Any) -> BindingCall:
        """The awaitable that runs the top-level Worker at depth 1."""
        if self._root is not None:
            raise FastbindError("This pipeline already has its top-level invocation")
        inv = InvocationContext(self, None, handle, 1, "request", _EMPTY_PROPS)
        self._root = inv
        return BindingCall(inv, request, True)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Account a task spawned by one of this pipeline's Workers."""
        if self._closed:
            return
        self._tasks.add(task)
        _live["tasks"] += 1
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.discard(task)
        elif task in self._waiting:
            self._waiting.discard(task)
        else:
            return
        _live["tasks"] -= 1

    def keep_alive(self, task: asyncio.Task[Any]) -> None:
        """Move an adopted task to the wait_until set: it outlives the response."""
        if task in self._tasks:
            self._tasks.discard(task)
            self._waiting.add(task)

    def take_tasks(self) -> list[asyncio.Task[Any]]:
        """Pending tasks to cancel when the response is done (not wait_until ones)."""
        return [t for t in self._tasks if not t.done()]

    def take_waiting(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._waiting if not t.done()]

    def close(self) -> None:
        """Mark the pipeline ended; it adopts nothing more."""
        if not self._closed:
            self._closed = True
            _live["pipelines"] -= 1

    def charge_fetch(self, caller: InvocationContext, target: str) -> SubrequestRecord:
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller._charge()
        rec = SubrequestRecord(caller._target, target, "fetch", caller._depth)
        self._ledger.append(rec)
        return rec


class SubrequestRecord:
    """One ledger entry: who called what, how deep, when, for how long, and how it ended."""

    __slots__ = ("_caller", "_target", "_kind", "_depth", "_start_ns", "_duration_ns", "_outcome")

    def __init__(self, caller: str | None, target: str, kind: str, depth: int) -> None:
        self._caller = caller
        self._target = target
        self._kind = kind
        self._depth = depth
        self._start_ns = _now()
        self._duration_ns = -1
        self._outcome: str | None = None

    caller = property(lambda self: self._caller)
    target = property(lambda self: self._target)
    kind = property(lambda self: self._kind)
    depth = property(lambda self: self._depth)
    start_ns = property(lambda self: self._start_ns)
    duration_ns = property(lambda self: self._duration_ns)
    outcome = property(lambda self: self._outcome)

    def finish(self, outcome: str) -> None:
        if self._outcome is None:
            self._duration_ns = _now() - self._start_ns
            self._outcome = outcome

    def as_dict(self) -> dict[str, Any]:
        return {
            "caller": self._caller, "target": self._target, "kind": self._kind,
            "depth": self._depth, "start_ns": self._start_ns,
            "duration_ns": self._duration_ns, "outcome": self._outcome,
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._caller}->{self._target} {self._kind} "
            f"depth={self._depth} outcome={self._outcome}>"
        )


class InvocationContext(SubrequestRecord):
    """One run of one Worker; also its ``ctx`` and, for a child, its ledger record."""

    __slots__ = ("_pipeline", "_parent", "_handle", "_props", "_subrequests", "_pass_through")

    def __init__(
        self,
        pipeline: PipelineContext,
        parent: InvocationContext | None,
        handle: WorkerHandle,
        depth: int,
        kind: str,
        props: Any,
    ) -> None:
        SubrequestRecord.__init__(
            self, None if parent is None else parent._target, handle._name, kind, depth
        )
        self._pipeline = pipeline
        self._parent = parent
        self._handle = handle
        self._props = props
        self._subrequests = 0
        self._pass_through = False

    pipeline = property(lambda self: self._pipeline)
    parent = property(lambda self: self._parent)
    worker = property(lambda self: self._target)
    subrequests = property(lambda self: self._subrequests)
    props = property(lambda self: self._props)
    env = property(lambda self: self._handle.env)
    passes_through_on_exception = property(lambda self: self._pass_through)

    def _charge(self) -> None:
        if self._subrequests >= self._pipeline._max_subrequests:
            raise TooManySubrequestsError()
        self._subrequests += 1

    def _child(self, handle: WorkerHandle, kind: str, props: Any) -> InvocationContext:
        pipeline = self._pipeline
        if self._depth >= pipeline._max_depth:
            raise SubrequestDepthError()
        self._charge()
        inv = InvocationContext(pipeline, self, handle, self._depth + 1, kind, props)
        pipeline._ledger.append(inv)
        return inv

    def wait_until(self, awaitable: Any) -> None:
        """Let ``awaitable`` run on after the response, up to ``Limits.wait_until_s``."""
        pipeline = self._pipeline
        if pipeline._closed:
            raise FastbindError("wait_until() called after the pipeline ended")
        token = _INVOCATION.set(self)
        try:
            task = asyncio.ensure_future(awaitable)
        finally:
            _INVOCATION.reset(token)
        if task not in pipeline._tasks:
            pipeline.adopt(task)
        pipeline.keep_alive(task)

    def pass_through_on_exception(self) -> None:
        """On an uncaught exception, forward the request to the Runtime's origin."""
        self._pass_through = True
        root = self._pipeline._root
        if root is not None:
            root._pass_through = True


class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place."""

    __slots__ = ("_target", "_binding", "_props")

    def __init__(self, target: WorkerHandle, binding: str, props: Any = None) -> None:
        self._target = target
        self._binding = binding
        self._props = _EMPTY_PROPS if not props else MappingProxyType(dict(props))

    @property
    def binding(self) -> str:
        return self._binding

    @property
    def target(self) -> str:
        return self._target._name

    def fetch(
        self, input: Any, *, method: Any = None, headers: Any = None, body: Any = None
    ) -> BindingCall:
        caller = _INVOCATION.get()
        if caller is None:
            raise FastbindError(
                f'env.{self._binding}.fetch() was called outside a fastbind invocation'
            )
        if type(input) is Request and method is None and headers is None and body is None:
            request = _forward(input)
        else:
            request = Request(input, method=method, headers=headers, body=body)
        inv = caller._child(self._target, "binding", self._props)
        return BindingCall(inv, request, True)

    def __repr__(self) -> str:
        return f"<Fetcher {self._binding} -> {self._target._name}>"


def _forward(src: Request) -> Request:
    """The child's copy of ``src``: same body object, headers copied, src marked used."""
    body = src.body
    if body is not None:
        if src.body_used:
            raise TypeError(BODY_USED_MESSAGE)
        src.body_used = True
    req = Request.__new__(Request)
    req.url = src.url
    req.method = src.method
    req.headers = src.headers.copy()
    req.body = body
    req.body_used = False
    return req


class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task."""

    __slots__ = ("_inv", "_request", "_http")

    def __init__(self, inv: InvocationContext, request: Any, http: bool) -> None:
        self._inv = inv
        self._request = request
        self._http = http

    @property
    def invocation(self) -> InvocationContext | None:
        return self._inv

    def __await__(self) -> Any:
        inv = self._inv
        if inv is None or inv._outcome is not None:
            raise RuntimeError("A binding call can be awaited only once")
        request = self._request
        self._request = None
        pipeline = inv._pipeline
        token = _INVOCATION.set(inv)
        pipeline._running += 1
        _live["invocations"] += 1
        try:
            result = yield from inv._handle.invoke(request, inv).__await__()
        except asyncio.CancelledError:
            inv.finish("canceled")
            raise
        except BaseException:
            inv.finish("error")
            raise
        finally:
            pipeline._running -= 1
            _live["invocations"] -= 1
            try:
                _INVOCATION.reset(token)
            except ValueError:  # closed from another context (e.g. by the GC)
                pass
        if self._http and not isinstance(result, Response):
            inv.finish("error")
            raise TypeError(
                f'Worker "{inv._target}" fetch handler returned '
                f"{type(result).__name__}, expected a Response"
            )
        inv.finish("ok")
        return result


class TaskFactory:
    """A loop task factory that accounts new tasks to the spawning invocation."""

    __slots__ = ("previous",)
    fastbind_implementation = IMPLEMENTATION

    def __init__(self, previous: Any = None) -> None:
        self.previous = previous

    def __call__(self, loop: Any, coro: Any, **kwargs: Any) -> Any:
        previous = self.previous
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        inv = _INVOCATION.get() if context is None else context.get(_INVOCATION)
        if inv is not None:
            inv._pipeline.adopt(task)
        return task


def make_task_factory(previous: Any) -> TaskFactory:
    return TaskFactory(previous)
