"""Pure-Python twin of ``fastbind._core``: the same behaviour, no compiler needed."""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import inspect
import threading
import time
from contextvars import ContextVar
from types import FunctionType, MappingProxyType
from typing import Any

from .entrypoint import WorkerEntrypoint
from .env import Env
from .errors import (
    CpuLimitExceeded,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from .request import Request
from .request import forward_request as _forward
from .response import Response
from .rpc_values import (
    RESERVED_METHODS,
    SCALAR_TYPES,
    isolate,
    reserved_message,
    unknown_message,
)

__all__ = (
    "IMPLEMENTATION",
    "Env",
    "ExecutionSlot",
    "WorkerHandle",
    "PipelineContext",
    "SubrequestRecord",
    "OpenSubrequest",
    "InvocationContext",
    "Fetcher",
    "RpcMethod",
    "BindingCall",
    "TaskFactory",
    "call_child",
    "current_invocation",
    "live_counts",
    "make_task_factory",
    "SliceMeter",
    "watchdog_tick",
    "DispatchPlan",
    "RawEntry",
    "install_raw",
)

IMPLEMENTATION = "py"

_EMPTY_PROPS: MappingProxyType[str, Any] = MappingProxyType({})
_now = time.perf_counter_ns

# Counters that must return to zero once every pipeline has ended (DESIGN.md 2.7).
_live = {"pipelines": 0, "invocations": 0, "tasks": 0}


class ExecutionSlot:
    """Which invocation the code of one task is running now.

    The contextvar below holds one slot per task (the task factory gives each
    spawned task its own); a binding call swaps ``current`` around each step of
    its child instead of setting the contextvar, which would cost a new context
    mapping per call (DESIGN.md 2.8).
    """

    __slots__ = ("current", "segment_start")

    def __init__(self, current: InvocationContext | None = None) -> None:
        self.current = current
        self.segment_start = 0


_SLOT: ContextVar[ExecutionSlot | None] = ContextVar("fastbind.execution_slot", default=None)


# --- CPU metering (issue 8): the same rules as the compiled core ----------------
# A slice is one step of a task that runs a pipeline's code; its total comes from
# the thread CPU clock at the slice's edges, the split between invocations from the
# monotonic clock at binding-call switches.
class _SliceState:
    pipeline: PipelineContext | None = None
    cpu_start = 0
    slice_id = 0
    interrupted = 0
    thread = 0
    clock = time.CLOCK_THREAD_CPUTIME_ID


_slice = _SliceState()
# Two prototypes of one C function: raise a given exception, or withdraw (NULL).
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def _slice_open(pipeline: PipelineContext) -> bool:
    if _slice.pipeline is not None:
        return False
    _slice.pipeline = pipeline
    _slice.slice_id += 1
    _slice.thread = threading.get_ident()
    _slice.clock = time.pthread_getcpuclockid(_slice.thread)
    _slice.cpu_start = time.thread_time_ns()
    return True


def _slice_close(pipeline: PipelineContext) -> None:
    pipeline._cpu_ns += time.thread_time_ns() - _slice.cpu_start
    if pipeline._cpu_limit_ns >= 0 and pipeline._cpu_ns > pipeline._cpu_limit_ns:
        pipeline._cpu_exceeded = True
    if _slice.interrupted == _slice.slice_id:
        # The slice ended before the watchdog's exception was raised: withdraw it.
        _clear_async_exc(_slice.thread, None)
        _slice.interrupted = 0
    _slice.pipeline = None


def _meter_enter(slot: ExecutionSlot, leaving: InvocationContext | None, pipeline: PipelineContext) -> bool:
    opened = _slice_open(pipeline)
    now = _now()
    if leaving is not None and not opened:
        leaving._cpu_ns += now - slot.segment_start
    slot.segment_start = now
    return opened


def _meter_exit(slot: ExecutionSlot, leaving: InvocationContext | None, pipeline: PipelineContext, opened: bool) -> None:
    now = _now()
    if leaving is not None:
        leaving._cpu_ns += now - slot.segment_start
    slot.segment_start = now
    if opened:
        _slice_close(pipeline)


def watchdog_tick() -> bool:
    """Interrupt the running slice if its pipeline is past ``cpu_ms`` (see _core.pyx)."""
    pipeline = _slice.pipeline
    if pipeline is None or pipeline._cpu_limit_ns < 0 or _slice.interrupted == _slice.slice_id:
        return False
    used = pipeline._cpu_ns + time.clock_gettime_ns(_slice.clock) - _slice.cpu_start
    if used <= pipeline._cpu_limit_ns:
        return False
    pipeline._cpu_exceeded = True
    _slice.interrupted = _slice.slice_id
    _set_async_exc(_slice.thread, CpuLimitExceeded)
    return True


def live_counts() -> dict[str, int]:
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return dict(_live)


def current_invocation() -> InvocationContext | None:
    """The invocation whose code is running now, or None outside any Worker."""
    slot = _SLOT.get()
    return None if slot is None else slot.current


class WorkerHandle:
    """What the core needs to invoke one Worker: its name, handler and env."""

    __slots__ = ("_name", "_handler", "_is_class", "_fast_init", "env", "_rpc")

    def __init__(self, name: str, handler: Any) -> None:
        self._name = name
        self._handler = handler
        self.env: Any = None
        if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
            self._is_class = True
            # Skipping __new__ and __init__ is only safe when nobody overrode them.
            self._fast_init = (
                handler.__init__ is WorkerEntrypoint.__init__
                and handler.__new__ is object.__new__
                and not inspect.isabstract(handler)
            )
        elif inspect.iscoroutinefunction(handler) or handler is None:
            self._is_class = False
            self._fast_init = False
        else:
            raise TypeError(name)
        self._rpc: dict[str, Any] = {}

    @staticmethod
    def for_target(name: str, env: Any) -> WorkerHandle:
        """A handle for an in-process target that is not a Worker (e.g. a Durable Object)."""
        handle = WorkerHandle(name, None)
        handle.env = env
        return handle

    def has_rpc_method(self, name: str) -> bool:
        """Whether the Worker's class has a public method ``name`` callable over RPC."""
        if name in self._rpc:
            return True
        attr = getattr(self._handler, name, None) if self._is_class else None
        if callable(attr) and not isinstance(attr, type):
            # Only methods that exist: names may come from clients. The value is the
            # plain function behind the method, called with the instance, or None.
            static = inspect.getattr_static(self._handler, name, None)
            self._rpc[name] = static if type(static) is FunctionType else None
            return True
        return False

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

    def __repr__(self) -> str:
        return f"<WorkerHandle {self._name}>"


class SubrequestRecord:
    """One ledger entry: who called what, how deep, when, for how long, and how it ended."""

    __slots__ = (
        "_caller", "_target", "_kind", "_depth", "_start_ns", "_duration_ns", "_outcome", "_cpu_ns",
    )

    def __init__(self, caller: str | None, target: str, kind: str, depth: int) -> None:
        self._caller = caller
        self._target = target
        self._kind = kind
        self._depth = depth
        self._start_ns = _now()
        self._duration_ns = -1
        self._outcome: str | None = None
        self._cpu_ns = -1

    caller = property(lambda self: self._caller)
    target = property(lambda self: self._target)
    kind = property(lambda self: self._kind)
    depth = property(lambda self: self._depth)
    start_ns = property(lambda self: self._start_ns)
    duration_ns = property(lambda self: self._duration_ns)
    outcome = property(lambda self: self._outcome)
    cpu_ns = property(lambda self: self._cpu_ns)

    def _close(self, outcome: str) -> None:
        """Close the entry with ``outcome`` ("ok", "error", "canceled"); later calls do nothing."""
        if self._outcome is None:
            self._duration_ns = _now() - self._start_ns
            self._outcome = outcome

    def as_dict(self) -> dict[str, Any]:
        return {
            "caller": self._caller, "target": self._target, "kind": self._kind,
            "depth": self._depth, "start_ns": self._start_ns,
            "duration_ns": self._duration_ns, "outcome": self._outcome,
            "cpu_ns": self._cpu_ns,
        }

    def __repr__(self) -> str:
        return (
            f"<SubrequestRecord {self._caller}->{self._target} {self._kind} "
            f"depth={self._depth} outcome={self._outcome}>"
        )


class OpenSubrequest:
    """A subrequest in progress (an outbound fetch): ``finish(outcome)`` closes its entry."""

    __slots__ = ("_record",)

    def __init__(self, record: SubrequestRecord) -> None:
        self._record = record

    def finish(self, outcome: str) -> None:
        """Close the entry with ``outcome`` ("ok", "error", "canceled"); later calls do nothing."""
        self._record._close(outcome)


class PipelineContext:
    """One top-level request and everything it reaches: limits, ledger, tasks."""

    __slots__ = (
        "_entry", "_max_depth", "_max_subrequests", "_open_connections",
        "_wait_until_s", "_ledger", "_tasks", "_waiting", "_running", "_closed",
        "_root", "_root_record", "_owner", "_cpu_enabled", "_cpu_limit_ns", "_cpu_ns", "_cpu_exceeded",
        "__weakref__",
    )

    def __init__(self, entry: str, limits: Any, owner: Any = None) -> None:
        self._entry = entry
        self._owner = owner
        self._max_depth = limits.depth
        self._max_subrequests = limits.subrequests
        self._open_connections = limits.open_connections
        self._wait_until_s = limits.wait_until_s
        self._ledger: list[SubrequestRecord] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._running = 0
        self._closed = False
        self._root: InvocationContext | None = None
        self._root_record = SubrequestRecord(None, entry, "request", 1)
        cpu_ms = limits.cpu_ms
        # int64 nanoseconds hold 292 years (the compiled core's range): clamp there.
        self._cpu_limit_ns = -1 if cpu_ms is None else int(min(cpu_ms * 1e6, 9.2e18))
        self._cpu_enabled = cpu_ms is not None or limits.measure_cpu
        self._cpu_ns = 0
        self._cpu_exceeded = False
        _live["pipelines"] += 1

    entry = property(lambda self: self._entry)
    owner = property(lambda self: self._owner)
    max_depth = property(lambda self: self._max_depth)
    max_subrequests = property(lambda self: self._max_subrequests)
    open_connections = property(lambda self: self._open_connections)
    wait_until_s = property(lambda self: self._wait_until_s)
    running = property(lambda self: self._running)
    closed = property(lambda self: self._closed)
    root = property(lambda self: self._root)
    start_ns = property(lambda self: self._root_record._start_ns)
    duration_ns = property(lambda self: self._root_record._duration_ns)
    cpu_enabled = property(lambda self: self._cpu_enabled)
    cpu_limit_ns = property(lambda self: self._cpu_limit_ns)
    cpu_ns = property(lambda self: self._cpu_ns)
    cpu_exceeded = property(lambda self: self._cpu_exceeded)

    @property
    def ledger(self) -> tuple[SubrequestRecord, ...]:
        """Every subrequest of the pipeline so far, in the order they were made."""
        return tuple(self._ledger)

    def root_call(self, handle: WorkerHandle, request: Any) -> BindingCall:
        """The awaitable that runs the top-level Worker at depth 1."""
        if self._root is not None or self._closed:
            raise FastbindError("This pipeline already has its top-level invocation")
        inv = InvocationContext(self, None, handle, 1, _EMPTY_PROPS, self._root_record)
        self._root = inv
        return BindingCall(inv, request, True)

    def adopt(self, task: asyncio.Future[Any]) -> None:
        """Account a task spawned by one of this pipeline's Workers."""
        if self._closed or task in self._tasks or task in self._waiting:
            return
        self._tasks.add(task)
        _live["tasks"] += 1
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        if task in self._tasks:
            self._tasks.discard(task)
        elif task in self._waiting:
            self._waiting.discard(task)
        else:
            return
        _live["tasks"] -= 1

    def keep_alive(self, task: asyncio.Future[Any]) -> None:
        """Move an adopted task to the wait_until set: it outlives the response."""
        if task in self._tasks:
            self._tasks.discard(task)
            self._waiting.add(task)

    @property
    def idle(self) -> bool:
        """True when no task of the pipeline, wait_until work included, is still running."""
        return all(t.done() for t in self._tasks) and all(t.done() for t in self._waiting)

    def take_tasks(self) -> list[asyncio.Future[Any]]:
        """Pending tasks to cancel when the response is done (not wait_until ones)."""
        return [t for t in self._tasks if not t.done()]

    def take_waiting(self) -> list[asyncio.Future[Any]]:
        return [t for t in self._waiting if not t.done()]

    def close(self) -> None:
        """Mark the pipeline ended; it adopts nothing more (and lets ``root`` go: the
        root invocation refers to its pipeline, a cycle only the collector would free)."""
        if not self._closed:
            self._closed = True
            self._root = None
            _live["pipelines"] -= 1

    def charge_fetch(self, caller: InvocationContext, target: str) -> OpenSubrequest:
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller._charge()
        rec = SubrequestRecord(caller._handle._name, target, "fetch", caller._depth)
        self._ledger.append(rec)
        return OpenSubrequest(rec)


class InvocationContext:
    """One run of one Worker: its depth, subrequest budget and ``ctx`` methods."""

    __slots__ = (
        "_pipeline", "_parent", "_handle", "_depth", "_props", "_subrequests",
        "_pass_through", "_record", "_cpu_ns",
    )

    def __init__(
        self,
        pipeline: PipelineContext,
        parent: InvocationContext | None,
        handle: WorkerHandle,
        depth: int,
        props: Any,
        record: SubrequestRecord,
    ) -> None:
        self._pipeline = pipeline
        self._parent = parent
        self._handle = handle
        self._depth = depth
        self._props = props
        self._subrequests = 0
        self._pass_through = False
        self._record = record
        self._cpu_ns = 0

    pipeline = property(lambda self: self._pipeline)
    parent = property(lambda self: self._parent)
    worker = property(lambda self: self._handle._name)
    depth = property(lambda self: self._depth)
    subrequests = property(lambda self: self._subrequests)
    props = property(lambda self: self._props)
    @property
    def env(self) -> Any:
        """This invocation's env, readable only by its own code (not by a child via ``parent``)."""
        if current_invocation() is not self:
            raise AttributeError("An invocation's env is readable only by its own code")
        return self._handle.env
    cpu_ns = property(lambda self: self._cpu_ns)

    def _finish(self, outcome: str) -> None:
        record = self._record
        if record._outcome is None and self._pipeline._cpu_enabled:
            record._cpu_ns = self._cpu_ns
        record._close(outcome)
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
        record = SubrequestRecord(self._handle._name, handle._name, kind, self._depth + 1)
        pipeline._ledger.append(record)
        return InvocationContext(pipeline, self, handle, self._depth + 1, props, record)

    def wait_until(self, awaitable: Any) -> None:
        """Let ``awaitable`` run on after the response, up to ``Limits.wait_until_s``."""
        pipeline = self._pipeline
        if pipeline._closed:
            raise FastbindError("wait_until() called after the pipeline ended")
        slot = _SLOT.get()
        if slot is None:
            raise FastbindError("wait_until() called outside a fastbind invocation")
        previous, slot.current = slot.current, self
        try:
            task = asyncio.ensure_future(awaitable)
        finally:
            slot.current = previous
        pipeline.adopt(task)
        pipeline.keep_alive(task)

    def run(self, awaitable: Any) -> BindingCall:
        """Await ``awaitable`` as this invocation: its code sees this ``ctx`` as current.

        No ledger entry, depth or subrequest is added: it is the same invocation,
        resumed from another task (e.g. the reader of a streamed response body).
        """
        call = BindingCall(self, awaitable, False)
        call._borrowed = True
        return call

    def pass_through_on_exception(self) -> None:
        """On an uncaught exception, forward the request to the Runtime's origin."""
        self._pass_through = True
        root = self._pipeline._root
        if root is not None:
            root._pass_through = True

    def __repr__(self) -> str:
        return f"<InvocationContext {self._handle._name} depth={self._depth}>"


class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place.

    Any other public name is an RPC method of the bound WorkerEntrypoint
    (``await env.USERS.get_user(42)``); its stub is cached in the instance dict so
    later look-ups are plain attribute loads.
    """

    __slots__ = ("_target", "_binding", "_props", "__dict__")

    def __init__(self, target: WorkerHandle, binding: str, props: Any = None) -> None:
        self._target = target
        self._binding = binding
        self._props = _EMPTY_PROPS if not props else MappingProxyType(dict(props))

    def __getattr__(self, name: str) -> RpcMethod:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        method = RpcMethod(self, name)
        if (
            name not in RESERVED_METHODS
            and not name.startswith("_")
            and self._target.has_rpc_method(name)
        ):
            # Only real methods are cached: names can come from clients.
            self.__dict__[name] = method
        return method

    def fetch(
        self, input: Any, *, method: Any = None, headers: Any = None, body: Any = None
    ) -> BindingCall:
        """Run the bound Worker's fetch handler with a Request built as fetch() would."""
        slot = _SLOT.get()
        caller = None if slot is None else slot.current
        if caller is None:
            raise FastbindError(
                f"env.{self._binding}.fetch() was called outside a fastbind invocation"
            )
        if type(input) is Request and method is None and headers is None and body is None:
            request = _forward(input)
        else:
            request = Request(input, method=method, headers=headers, body=body)
        inv = caller._child(self._target, "binding", self._props)
        return BindingCall(inv, request, True)

    def __repr__(self) -> str:
        return f"<Fetcher {self._binding} -> {self._target._name}>"


class RpcMethod:
    """``env.X.name``: calling it runs method ``name`` of the bound Worker in place."""

    __slots__ = ("_fetcher", "_name", "_error")

    def __init__(self, fetcher: Fetcher, name: str) -> None:
        self._fetcher = fetcher
        self._name = name
        # Decided once per binding and name: the class's methods do not change per call.
        if name in RESERVED_METHODS or name.startswith("_"):
            self._error: str | None = reserved_message(name)
        elif not fetcher._target.has_rpc_method(name):
            self._error = unknown_message(name)
        else:
            self._error = None

    def __call__(self, *args: Any, **kwargs: Any) -> BindingCall:
        if self._error is not None:
            raise TypeError(self._error)
        fetcher = self._fetcher
        slot = _SLOT.get()
        caller = None if slot is None else slot.current
        if caller is None:
            raise FastbindError(
                f"env.{fetcher._binding}.{self._name}() was called outside a fastbind invocation"
            )
        for value in args:  # scalars, the usual arguments, pass as they are
            if type(value) not in SCALAR_TYPES:
                args = tuple([isolate(v) for v in args])
                break
        if kwargs:
            kwargs = {k: isolate(v) for k, v in kwargs.items()}
        inv = caller._child(fetcher._target, "rpc", fetcher._props)
        return BindingCall(inv, None, False, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RpcMethod {self._fetcher._binding}.{self._name}>"


def call_child(
    target: WorkerHandle,
    kind: str,
    function: Any,
    args: tuple[Any, ...] = (),
    props: Any = None,
    http: bool = False,
) -> BindingCall:
    """Run ``function(ctx, *args)`` as a child invocation of the running one.

    The child gets depth + 1, counts as one subrequest of ``kind`` of the caller, is
    recorded in the ledger and follows the lifecycle rules, exactly as a binding call;
    ``http`` requires a Response result, otherwise the result is isolated as RPC values.
    """
    slot = _SLOT.get()
    caller = None if slot is None else slot.current
    if caller is None:
        raise FastbindError(f'A call to "{target._name}" was made outside a fastbind invocation')
    props = _EMPTY_PROPS if not props else MappingProxyType(dict(props))
    inv = caller._child(target, kind, props)
    call = BindingCall(inv, None, http, kind, args, None)
    call._custom = function
    return call


class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task."""

    __slots__ = (
        "_inv", "_request", "_http", "_started", "_driver", "_method", "_args", "_kwargs",
        "_immediate", "_custom", "_borrowed",
    )

    def __init__(
        self,
        inv: InvocationContext,
        request: Any,
        http: bool,
        method: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._inv = inv
        self._request = request
        self._http = http
        self._started = False
        self._driver: Any = None
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._immediate: Any = None
        self._custom: Any = None
        self._borrowed = False

    @property
    def invocation(self) -> InvocationContext:
        return self._inv

    # send/throw/close make it a Coroutine (collections.abc), so create_task() takes it.
    def send(self, value: Any) -> Any:
        if self._driver is None:
            self._driver = self.__await__()
        return self._driver.send(value)

    def throw(self, *exc: Any) -> Any:
        if self._driver is None:
            self._driver = self.__await__()
        return self._driver.throw(*exc)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
        elif not self._started:
            self._started = True
            self._request = None
            if not self._borrowed:
                self._inv._finish("canceled")

    def __await__(self) -> Any:
        return self._run()

    def _run(self) -> Any:
        inv = self._inv
        if self._started:
            raise RuntimeError("A binding call can be awaited only once")
        self._started = True
        slot = _SLOT.get()
        slot_token = None
        if slot is None:
            if not self._borrowed:
                inv._finish("error")
                raise FastbindError("A binding call was awaited outside a fastbind invocation")
            # run() from a task that never dispatched (e.g. a server's body writer).
            slot = ExecutionSlot()
            slot_token = _SLOT.set(slot)
        request, self._request = self._request, None
        pipeline = inv._pipeline
        pipeline._running += 1
        _live["invocations"] += 1
        outcome = "error"
        try:
            previous, slot.current = slot.current, inv
            try:
                if self._borrowed:
                    coro = request if inspect.iscoroutine(request) else request.__await__()
                elif self._method is None:
                    coro = inv._handle.invoke(request, inv)
                else:
                    coro = self._call_method(inv)
            finally:
                slot.current = previous
            del request
            if coro is None:  # a synchronous RPC method: its value is already there
                result = self._immediate
                self._immediate = None
                coro = _DONE
            # Drive the child step by step so ``slot.current`` names it while it runs.
            send, throw = coro.send, coro.throw
            value: Any = None
            error: BaseException | None = None
            metered = pipeline._cpu_enabled
            while coro is not _DONE:
                previous = slot.current
                if metered:
                    opened = _meter_enter(slot, previous, pipeline)
                    if opened and pipeline._cpu_exceeded and error is None:
                        error = CpuLimitExceeded()  # stop the pipeline at its next step
                slot.current = inv
                try:
                    future = send(value) if error is None else throw(error)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    if metered:
                        _meter_exit(slot, inv, pipeline, opened)
                    slot.current = previous
                try:
                    value, error = (yield future), None
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # thrown in by the task: pass it down
                    value, error = None, exc
            if self._borrowed:
                pass
            elif self._http:
                if not isinstance(result, Response):
                    raise TypeError(
                        f'Worker "{inv._handle._name}" fetch handler returned '
                        f"{type(result).__name__}, expected a Response"
                    )
            else:
                result = isolate(result)
            outcome = "ok"
            return result
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "canceled"
            raise
        finally:
            pipeline._running -= 1
            _live["invocations"] -= 1
            if not self._borrowed:
                inv._finish(outcome)
            elif slot_token is not None:
                try:
                    _SLOT.reset(slot_token)
                except ValueError:  # finished from another context (e.g. closed by the GC)
                    pass


    def _call_method(self, inv: InvocationContext) -> Any:
        """Run RPC method ``_method`` on a new instance; its awaitable, or None if sync."""
        args, self._args = self._args, ()
        kwargs, self._kwargs = self._kwargs, None
        if self._custom is not None:
            method = self._custom
            args = (inv, *args)
        else:
            handle = inv._handle
            instance = handle.instantiate(inv)
            method = handle._rpc.get(self._method)  # type: ignore[arg-type]
            if method is not None:  # a plain function: called unbound, no bound method
                args = (instance, *args)
            else:  # staticmethod, classmethod, callable object: ask the instance
                method = getattr(instance, self._method)  # type: ignore[arg-type]
        result = method(*args, **kwargs) if kwargs else method(*args)
        if inspect.iscoroutine(result):
            return result
        if inspect.isawaitable(result):
            return result.__await__()
        self._immediate = result
        return None


class _Done:
    """Stands for a child that finished before its first step (a sync RPC method)."""

    def send(self, value: Any) -> Any:
        raise StopIteration

    throw = send

    def close(self) -> None:
        pass


_DONE = _Done()


class SliceMeter:
    """Wraps the coroutine of a task spawned by a metered pipeline: meters each step."""

    __slots__ = ("_coro", "_pipeline", "_slot")

    def __init__(self, coro: Any, pipeline: PipelineContext) -> None:
        self._coro = coro
        self._pipeline = pipeline
        self._slot: ExecutionSlot | None = None

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self._step(None, None)

    def send(self, value: Any) -> Any:
        return self._step(value, None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._step(None, typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def _step(self, value: Any, exc: Any) -> Any:
        if self._slot is None:
            self._slot = _SLOT.get()
        slot = self._slot
        pipeline = self._pipeline
        opened = _meter_enter(slot, None, pipeline)  # type: ignore[arg-type]
        if opened and pipeline._cpu_exceeded and exc is None:
            exc = CpuLimitExceeded()
        try:
            if exc is None:
                return self._coro.send(value)
            return self._coro.throw(exc)
        finally:
            _meter_exit(slot, slot.current, pipeline, opened)  # type: ignore[union-attr,arg-type]


class TaskFactory:
    """A loop task factory that accounts new tasks to the spawning invocation.

    Each task spawned inside an invocation runs with its own ExecutionSlot, so two
    tasks never share the ``current`` that binding calls swap.
    """

    __slots__ = ("previous",)
    fastbind_implementation = IMPLEMENTATION

    def __init__(self, previous: Any = None) -> None:
        self.previous = previous

    def __call__(self, loop: Any, coro: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        slot = _SLOT.get() if context is None else context.get(_SLOT)
        inv = None if slot is None else slot.current
        if inv is not None:
            if context is None:
                context = contextvars.copy_context()
            context.run(_SLOT.set, ExecutionSlot(inv))
            kwargs["context"] = context
            if inv._pipeline._cpu_enabled:
                coro = SliceMeter(coro, inv._pipeline)
        previous = self.previous
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if inv is not None:
            inv._pipeline.adopt(task)
        return task


def make_task_factory(previous: Any) -> TaskFactory:
    return TaskFactory(previous)


# --- Top-level dispatch (issue 11): Runtime.dispatch and the raw embedding API -----
# The same steps as the compiled core's DispatchPlan / TopLevelCall, as a coroutine.

_INSIDE_WORKER = (
    "Runtime.dispatch() cannot be called from inside a Worker: call other "
    "Workers through a service binding (env.X.fetch)"
)
_raw: dict[str, Any] = {"request": None, "response": None}


def install_raw(
    raw_request: Any, raw_response: Any, methods: dict[Any, str], names: Any = ()
) -> None:
    """Give the core fastbind.embed's conversions (the twin has no fast path of its own)."""
    _raw["request"] = raw_request
    _raw["response"] = raw_response


class _Driven:
    """Awaits an iterator already obtained from ``__await__``."""

    __slots__ = ("_iterator",)

    def __init__(self, iterator: Any) -> None:
        self._iterator = iterator

    def __await__(self) -> Any:
        return self._iterator


class DispatchPlan:
    """What every top-level request of one Runtime shares, prepared once."""

    __slots__ = (
        "runtime", "_limits", "resolved", "hook", "origin", "_validate", "_lookup", "_finish",
        "_report", "_install_factory", "_watch_hang", "_watch_cpu",
    )

    def __init__(
        self, runtime: Any, limits: Any, *, validate: Any, lookup: Any, finish: Any, report: Any,
        install_factory: Any, watch_hang: Any, watch_cpu: Any,
    ) -> None:
        self.runtime = runtime
        self._limits = limits
        self.resolved = False
        self.hook: Any = None
        self.origin: Any = None
        self._validate = validate
        self._lookup = lookup
        self._finish = finish
        self._report = report
        self._install_factory = install_factory
        self._watch_hang = watch_hang
        self._watch_cpu = watch_cpu

    def call(self, handle: WorkerHandle, request: Any) -> Any:
        """The awaitable of one top-level request: Worker ``handle`` serves ``request``."""
        if not isinstance(request, Request):
            raise TypeError(f"dispatch() needs a fastbind.Request, not {type(request).__name__}")
        return self._run(handle, request, False)

    def raw(self, entry: str, method: Any, url: Any, headers: Any, body: Any = None) -> Any:
        """The awaitable of one raw request (fastbind.embed): ``(status, headers, body)``."""
        if not self.resolved:
            self._validate()
        handle = self._lookup(entry)
        return self._run(handle, _raw["request"](method, url, headers, body), True)

    async def _run(self, handle: WorkerHandle, request: Any, raw: bool) -> Any:
        slot = _SLOT.get()
        if slot is not None and slot.current is not None:
            # A new top-level request would start again at depth 1 with a fresh budget.
            raise FastbindError(_INSIDE_WORKER)
        loop = asyncio.get_running_loop()
        self._install_factory(loop)
        original = None if self.origin is None else self.origin(request)
        pipeline = PipelineContext(handle.name, self._limits, self.runtime)
        call = pipeline.root_call(handle, request)
        del request
        if pipeline.cpu_limit_ns >= 0:
            self._watch_cpu()
        # Awaiting the call's iterator rather than the call tells the hang detector
        # which object holds all of the pipeline's code that runs in this task.
        driver = call.__await__()
        watch = self._watch_hang(loop, pipeline, driver)
        if slot is None:
            # The task keeps this slot after the request (its ``current`` is None
            # between steps): later requests of the task need no new context mapping.
            _SLOT.set(ExecutionSlot())
        response: Any = None
        error: BaseException | None = None
        try:
            response = await _Driven(driver)
        except GeneratorExit as exc:  # closed, not cancelled: end what ends without awaiting
            if watch is not None:
                watch.release(pipeline)
            ending = self._finish(pipeline, original, None, exc, False)
            try:
                ending.send(None)
            except BaseException:  # ended at once (it re-raises the GeneratorExit)
                pass
            else:  # it waits for the pipeline's tasks: the supervisor carries on alone
                ending.close()
            pipeline.close()
            raise
        except BaseException as exc:
            error = exc
        finally:
            hung = watch is not None and pipeline in watch.running and watch.release(pipeline)
        del driver, call
        if (
            error is None and not hung and pipeline.cpu_limit_ns < 0 and not pipeline.cpu_exceeded
            and pipeline.idle and (response.body is None or type(response.body) in (bytes, str))
        ):
            pipeline.close()  # the common ending: nothing left to cancel or wait for
            if self.hook is not None:
                self._report(pipeline, response.status)
        else:
            response = await self._finish(pipeline, original, response, error, hung)
        return _raw["response"](response) if raw else response


class RawEntry:
    """Base of fastbind.embed.RawDispatcher: calling it serves one raw request."""

    __slots__ = ("_runtime", "_entry", "_plan")

    def __init__(self, runtime: Any, entry: str) -> None:
        self._runtime = runtime
        self._entry = entry
        self._plan = runtime._plan

    @property
    def runtime(self) -> Any:
        return self._runtime

    @property
    def entry(self) -> str:
        return self._entry

    def __call__(self, method: Any, url: Any, headers: Any, body: Any = None) -> Any:
        return self._plan.raw(self._entry, method, url, headers, body)
