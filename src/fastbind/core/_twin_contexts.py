"""Pure twin, part 1: the execution slot, CPU metering, the pipeline with its ledger,
the invocation contexts, and the awaitable that runs an invocation in its caller's task.

The same behaviour as ``_contexts.pxi``, ``_metering.pxi`` and the BindingCall of
``_binding.pxi`` in the compiled core.
The state of a pipeline, an invocation and a task's slot lives in a slot whose
descriptor is taken off its class (``hidden_field``): only the twin reaches it, so
Python code cannot raise a limit or reset a counter through an attribute.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from ..errors import (
    CpuLimitExceeded,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerCpuLimitError,
)
from ..redirects import REDIRECT_STATUSES
from ..response import Response
from ._twin_call_limits import (
    EXCEEDED_CPU,
    CallLimits,
    LimitScope,
    charge_scope,
    close_scope,
    scope_cpu,
    scope_exceeded,
    scope_past,
)
from .binding_fetch import redirect_follower
from .python_workers_values import check_python_workers_value
from .rpc_values import hand_over_response, isolate

__all__ = (
    "ExecutionSlot",
    "SubrequestRecord",
    "OpenSubrequest",
    "PipelineContext",
    "InvocationContext",
    "BindingCall",
    "current_invocation",
    "live_counts",
    "watchdog_wait",
    "watchdog_tick",
    "interrupt_slice",
    "slice_open",
    "slice_close",
    "cpu_limit_ns",
)

_now = time.perf_counter_ns

# Counters that must return to zero once every pipeline has ended.
LIVE = {"pipelines": 0, "invocations": 0, "tasks": 0}


def hidden_field(cls: type, name: str) -> tuple[Callable[[Any], Any], Callable[[Any, Any], None]]:
    """Take slot ``name``'s descriptor off ``cls``; return its getter and setter.

    Instances keep the field (it is part of their layout), but no attribute reaches it
    any more, ``object.__setattr__`` included: only the functions returned do.
    """
    descriptor = cls.__dict__[name]
    delattr(cls, name)
    return descriptor.__get__, descriptor.__set__


class ReadOnly:
    """A read-only attribute whose refusal says so as the compiled core's does."""

    __slots__ = ("_name", "_get")

    def __init__(self, name: str, get: Callable[[Any], Any]) -> None:
        self._name = name
        self._get = get

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else self._get(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"attribute '{self._name}' of '{type(obj).__name__}' objects is not writable"
        )

    def __delete__(self, obj: Any) -> None:
        self.__set__(obj, None)


def refuse_construction(cls: type) -> None:
    raise TypeError(f"{cls.__name__} is created by the runtime only")


class ExecutionSlot:
    """Which invocation the code of one task is running now (read-only from Python).

    The contextvar below holds one slot per task (the task factory gives each spawned
    task its own); a binding call swaps ``current`` around each step of its child.
    """

    __slots__ = ("_current", "_segment_start")

    def __init__(self) -> None:
        refuse_construction(ExecutionSlot)


slot_current, set_slot_current = hidden_field(ExecutionSlot, "_current")
slot_segment_start, set_slot_segment_start = hidden_field(ExecutionSlot, "_segment_start")
ExecutionSlot.current = ReadOnly("current", slot_current)  # type: ignore[attr-defined]


def new_slot(current: Any = None) -> ExecutionSlot:
    slot = object.__new__(ExecutionSlot)
    set_slot_current(slot, current)
    set_slot_segment_start(slot, 0)
    return slot


SLOT: ContextVar[ExecutionSlot | None] = ContextVar("fastbind.execution_slot", default=None)


def current_invocation() -> Any:
    """The invocation whose code is running now, or None outside any Worker."""
    slot = SLOT.get()
    return None if slot is None else slot_current(slot)


def live_counts() -> dict[str, int]:
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return dict(LIVE)


# --- CPU metering: the rules of the compiled core (_metering.pxi) --------------------
# One difference: the compiled core meters a CPU-limited pipeline from the moment its
# watchdog, looking without the GIL, finds it running. Pure Python cannot look without
# the GIL (it would only ever look between steps), so the twin meters every step of a
# CPU-limited pipeline from its start; the limit is enforced the same way.
class _SliceState:
    pipeline: Any = None
    cpu_start = 0
    watch_start = 0
    slice_id = 0
    interrupted = 0
    thread = 0
    clock = time.CLOCK_THREAD_CPUTIME_ID
    # Per-call limits (_twin_call_limits): the scope of the code running in the open
    # slice, since when, and whether the watchdog's exception for it is pending.
    running_scope: LimitScope | None = None
    segment_start = 0
    scope_interrupted = False


_slice = _SliceState()
# The watchdog reads the loop thread's CPU clock where the platform names it; elsewhere
# (macOS) the process's, as the compiled core does.
_thread_clock = getattr(time, "pthread_getcpuclockid", None)


def cpu_limit_ns(cpu_ms: Any) -> int:
    """Limits.cpu_ms in ns; -1 for no limit (0 or None), clamped as the compiled core's int64."""
    return -1 if not cpu_ms else int(min(cpu_ms * 1e6, 9.2e18))


def _async_exc(thread: int, exc: Any) -> None:
    """PyThreadState_SetAsyncExc through ctypes: what only the watchdog needs.

    Where ctypes cannot reach the C API (interpreters other than CPython), a pipeline
    past its CPU budget is stopped at its next step rather than interrupted.
    """
    try:
        import ctypes

        set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except (ImportError, AttributeError):
        return
    set_async.argtypes = (ctypes.c_ulong, ctypes.py_object if exc is not None else ctypes.c_void_p)
    set_async(thread, exc)


def slice_open(pipeline: Any) -> bool:
    """Start metering a slice of ``pipeline``; True if this step opened it."""
    if _slice.pipeline is not None:
        return False
    _slice.pipeline = pipeline
    _slice.slice_id += 1
    _slice.thread = threading.get_ident()
    _slice.cpu_start = time.thread_time_ns()
    if _thread_clock is not None:
        _slice.clock = _thread_clock(_slice.thread)
        _slice.watch_start = _slice.cpu_start
    else:
        _slice.clock = time.CLOCK_PROCESS_CPUTIME_ID
        _slice.watch_start = time.clock_gettime_ns(_slice.clock)
    return True


def slice_close(pipeline: Any) -> None:
    state = pipeline_state(pipeline)
    state.cpu_ns += time.thread_time_ns() - _slice.cpu_start
    if state.cpu_limit_ns >= 0 and state.cpu_ns > state.cpu_limit_ns:
        state.cpu_exceeded = True
    if _slice.interrupted == _slice.slice_id or _slice.scope_interrupted:
        # The slice ended before the watchdog's exception was raised: withdraw it.
        _async_exc(_slice.thread, None)
        _slice.interrupted = 0
        _slice.scope_interrupted = False
    _slice.pipeline = None
    _slice.running_scope = None


def meter_enter(slot: ExecutionSlot, leaving: Any, pipeline: Any) -> bool:
    opened = slice_open(pipeline)
    now = _now()
    if leaving is not None and not opened:
        charge_cpu(invocation_state(leaving), now - slot_segment_start(slot))
    set_slot_segment_start(slot, now)
    _slice.segment_start = now
    return opened


def meter_exit(slot: ExecutionSlot, leaving: Any, pipeline: Any, opened: bool) -> None:
    now = _now()
    if leaving is not None:
        charge_cpu(invocation_state(leaving), now - slot_segment_start(slot))
    set_slot_segment_start(slot, now)
    _slice.segment_start = now
    if opened:
        slice_close(pipeline)


def charge_cpu(state: Any, ns: int) -> None:
    state.cpu_ns += ns
    if state.scope is not None:
        scope_cpu(state.scope, ns)


def enter_scope(scope: LimitScope | None) -> None:
    """A metered step runs code of ``scope`` (None: outside any) from now on."""
    _slice.running_scope = scope


def leave_scope(now_running: Any) -> None:
    """A metered step hands the thread back to ``now_running``'s code: if the watchdog's
    exception for the scope left has not been raised yet, withdraw it (the scope is
    marked exceeded: its code is stopped at its next step)."""
    _slice.running_scope = None if now_running is None else invocation_state(now_running).scope
    if _slice.scope_interrupted:
        _async_exc(_slice.thread, None)
        _slice.scope_interrupted = False


def watchdog_wait(seconds: float) -> bool:
    """Sleep ``seconds``; True: ``watchdog_tick`` should look (the compiled core looks
    first without the GIL)."""
    time.sleep(seconds)
    return True


def watchdog_tick() -> bool:
    """Interrupt the running slice if its pipeline is past ``cpu_ms`` (see _metering.pxi)."""
    pipeline = _slice.pipeline
    if pipeline is None or _slice.interrupted == _slice.slice_id:
        return False
    state = pipeline_state(pipeline)
    if state.cpu_limit_ns >= 0:
        used = state.cpu_ns + time.clock_gettime_ns(_slice.clock) - _slice.watch_start
        if used > state.cpu_limit_ns:
            state.cpu_exceeded = True
            _slice.interrupted = _slice.slice_id
            _slice.scope_interrupted = False  # the pipeline's exception stops the scope's code too
            _async_exc(_slice.thread, CpuLimitExceeded)
            return True
    # The scope whose code runs now (per-call limits).
    if _slice.running_scope is None or _slice.scope_interrupted:
        return False
    past = scope_past(_slice.running_scope, _now() - _slice.segment_start)
    if past is None:
        return False
    past.cpu_exceeded = True
    _slice.scope_interrupted = True
    _async_exc(_slice.thread, CpuLimitExceeded)
    return True


def interrupt_slice(exc: Any) -> bool:
    """Raise ``exc`` into the slice running now, whatever its budget (see _metering.pxi)."""
    if _slice.pipeline is None or _slice.interrupted == _slice.slice_id:
        return False
    _slice.interrupted = _slice.slice_id
    _async_exc(_slice.thread, exc)
    return True


# --- the ledger ---------------------------------------------------------------------


class SubrequestRecord:
    """One ledger entry: who called what, how deep, when, for how long, and how it ended.

    ``index`` is its place in the ledger, ``parent`` the index of the entry whose
    invocation made it (-1: the top-level one).
    """

    __slots__ = (
        "_index", "_parent", "_caller", "_target", "_kind", "_depth", "_start_ns", "_duration_ns",
        "_outcome", "_cpu_ns", "_status",
    )

    def __init__(
        self, caller: str | None, target: str, kind: str, depth: int, index: int = -1, parent: int = -1,
    ) -> None:
        self._index = index
        self._parent = parent
        self._caller = caller
        self._target = target
        self._kind = kind
        self._depth = depth
        self._start_ns = _now()
        self._duration_ns = -1
        self._outcome: str | None = None
        self._cpu_ns = -1
        self._status: int | None = None

    index = property(lambda self: self._index)
    parent = property(lambda self: self._parent)
    status = property(lambda self: self._status)
    caller = property(lambda self: self._caller)
    target = property(lambda self: self._target)
    kind = property(lambda self: self._kind)
    depth = property(lambda self: self._depth)
    start_ns = property(lambda self: self._start_ns)
    duration_ns = property(lambda self: self._duration_ns)
    outcome = property(lambda self: self._outcome)
    cpu_ns = property(lambda self: self._cpu_ns)

    def close(self, outcome: str, cpu_ns: int = -1, status: int | None = None) -> None:
        """Close the entry with ``outcome`` ("ok", "error", "canceled"); later calls do nothing."""
        if self._outcome is None:
            self._duration_ns = _now() - self._start_ns
            self._outcome = outcome
            self._cpu_ns = cpu_ns
            self._status = status

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self._index, "parent": self._parent,
            "caller": self._caller, "target": self._target, "kind": self._kind,
            "depth": self._depth, "start_ns": self._start_ns,
            "duration_ns": self._duration_ns, "outcome": self._outcome,
            "cpu_ns": self._cpu_ns, "status": self._status,
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

    @property
    def index(self) -> int:
        """Its place in the pipeline's ledger (``SubrequestRecord.index``)."""
        return int(self._record.index)

    def finish(self, outcome: str, status: int | None = None) -> None:
        """Close the entry with ``outcome`` ("ok", "error", "canceled") and the response's
        HTTP ``status`` if there is one; later calls do nothing."""
        if status is not None and not 100 <= int(status) <= 999:
            raise ValueError(f"not an HTTP status: {status!r}")
        self._record.close(outcome, -1, None if status is None else int(status))


class PipelineState:
    """What a PipelineContext holds, reachable by the twin only."""

    __slots__ = (
        "entry", "owner", "max_depth", "max_subrequests", "open_connections", "wait_until_s",
        "ledger", "tasks", "waiting", "running", "closed", "root", "root_record",
        "cpu_enabled", "cpu_measured", "cpu_limit_ns", "cpu_ns", "cpu_exceeded", "observed", "pipeline_id",
        "root_depth",
    )
    entry: str
    owner: Any
    max_depth: int
    max_subrequests: int
    open_connections: int
    wait_until_s: float
    ledger: list[SubrequestRecord]
    tasks: set[asyncio.Future[Any]]
    waiting: set[asyncio.Future[Any]]
    running: int
    closed: bool
    root: Any
    root_record: SubrequestRecord
    cpu_enabled: bool  # every step metered (the twin: from the start when CPU-limited)
    cpu_measured: bool  # steps split between invocations and reported: measure_cpu, or a CPU-limited call
    cpu_limit_ns: int
    cpu_ns: int
    cpu_exceeded: bool
    observed: Any
    pipeline_id: str | None  # made when first read, or given by a continued pipeline
    root_depth: int  # the top-level invocation's depth: 1, more when continued


class PipelineContext:
    """One top-level request and everything it reaches: limits, ledger, tasks."""

    __slots__ = ("_state", "__weakref__")

    def __init__(self, entry: str, limits: Any, owner: Any = None) -> None:
        state = PipelineState()
        state.entry = entry
        state.owner = owner
        state.max_depth = limits.depth
        state.max_subrequests = limits.subrequests
        state.open_connections = limits.open_connections
        state.wait_until_s = limits.wait_until_s
        state.ledger = []
        state.tasks = set()
        state.waiting = set()
        state.running = 0
        state.closed = False
        state.root = None
        state.root_record = SubrequestRecord(None, entry, "request", 1)
        state.cpu_limit_ns = cpu_limit_ns(limits.cpu_ms)
        state.cpu_measured = limits.measure_cpu
        state.cpu_enabled = state.cpu_measured or state.cpu_limit_ns >= 0  # (see the metering part)
        state.cpu_ns = 0
        state.cpu_exceeded = False
        state.observed = None
        state.pipeline_id = None
        state.root_depth = 1
        set_pipeline_state(self, state)
        LIVE["pipelines"] += 1

    @property
    def pipeline_id(self) -> str:
        """The pipeline's id: 32 hex digits, made when first read, or the id of the
        pipeline of another process that this one continues (a remote binding's hop)."""
        state = pipeline_state(self)
        if state.pipeline_id is None:
            state.pipeline_id = os.urandom(16).hex()
        return str(state.pipeline_id)

    @property
    def start_ns(self) -> int:
        return int(pipeline_state(self).root_record.start_ns)

    @property
    def duration_ns(self) -> int:
        return int(pipeline_state(self).root_record.duration_ns)

    @property
    def ledger(self) -> tuple[SubrequestRecord, ...]:
        """Every subrequest of the pipeline so far, in the order they were made."""
        return tuple(pipeline_state(self).ledger)

    def subrequest(self, index: int) -> SubrequestRecord:
        """The ledger's entry ``index`` as it is now (IndexError past the last)."""
        ledger: list[SubrequestRecord] = pipeline_state(self).ledger
        if not 0 <= index < len(ledger):
            raise IndexError(f"ledger index {index} out of range (0..{len(ledger) - 1})")
        return ledger[index]

    def adopt(self, task: asyncio.Future[Any]) -> None:
        """Account a task spawned by one of this pipeline's Workers."""
        state = pipeline_state(self)
        if state.closed or task in state.tasks or task in state.waiting:
            return
        state.tasks.add(task)
        LIVE["tasks"] += 1
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        state = pipeline_state(self)
        if task in state.tasks:
            state.tasks.discard(task)
        elif task in state.waiting:
            state.waiting.discard(task)
        else:
            return
        LIVE["tasks"] -= 1

    def keep_alive(self, task: asyncio.Future[Any]) -> None:
        """Move an adopted task to the wait_until set: it outlives the response."""
        state = pipeline_state(self)
        if task in state.tasks:
            state.tasks.discard(task)
            state.waiting.add(task)

    @property
    def idle(self) -> bool:
        """True when no task of the pipeline, wait_until work included, is still running."""
        state = pipeline_state(self)
        return all(t.done() for t in state.tasks) and all(t.done() for t in state.waiting)

    def take_tasks(self) -> list[asyncio.Future[Any]]:
        """Pending tasks to cancel when the response is done (not wait_until ones)."""
        return [t for t in pipeline_state(self).tasks if not t.done()]

    def take_waiting(self) -> list[asyncio.Future[Any]]:
        return [t for t in pipeline_state(self).waiting if not t.done()]

    def close(self) -> None:
        """Mark the pipeline ended; it adopts nothing more (and lets ``root`` go: the
        root invocation refers to its pipeline, a cycle only the collector would free)."""
        state = pipeline_state(self)
        if not state.closed:
            state.closed = True
            state.root = None
            LIVE["pipelines"] -= 1

    def charge_fetch(self, caller: Any, target: str) -> OpenSubrequest:
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller_state = invocation_state(caller)
        charge(caller_state)
        ledger = pipeline_state(self).ledger
        record = SubrequestRecord(
            caller_state.handle.name, target, "fetch", caller_state.depth, len(ledger), caller_state.record.index,
        )
        ledger.append(record)
        return OpenSubrequest(record)


pipeline_state, set_pipeline_state = hidden_field(PipelineContext, "_state")

def _state_reader(state_of: Callable[[Any], Any], name: str) -> ReadOnly:
    def read(obj: Any) -> Any:
        return getattr(state_of(obj), name)

    return ReadOnly(name, read)


for _name in (
    "entry", "owner", "max_depth", "max_subrequests", "open_connections", "wait_until_s",
    "running", "closed", "root", "cpu_enabled", "cpu_measured", "cpu_limit_ns", "cpu_ns", "cpu_exceeded", "observed",
    "root_depth",
):
    setattr(PipelineContext, _name, _state_reader(pipeline_state, _name))
del _name


def charge(state: Any) -> None:
    """One more subrequest of the invocation whose state is ``state``, or TooManySubrequestsError."""
    if state.subrequests >= pipeline_state(state.pipeline).max_subrequests:
        raise TooManySubrequestsError()
    if state.scope is not None:  # a call with per-call limits is above (_twin_call_limits)
        charge_scope(state.scope)
    state.subrequests += 1



# --- invocations ----------------------------------------------------------------------


class InvocationState:
    """What an InvocationContext holds, reachable by the twin only."""

    __slots__ = (
        "pipeline", "parent", "handle", "depth", "props", "subrequests", "pass_through",
        "record", "cpu_ns", "scope", "owns_scope",
    )
    pipeline: PipelineContext
    parent: Any
    handle: Any
    depth: int
    props: Any
    subrequests: int
    pass_through: bool
    record: SubrequestRecord
    cpu_ns: int
    scope: LimitScope | None  # None unless a call with CallLimits is above (or is) this one
    owns_scope: bool  # this invocation's call opened ``scope``


class InvocationContext:
    """One run of one Worker: its depth, subrequest budget and ``ctx`` methods."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        refuse_construction(InvocationContext)

    @property
    def worker(self) -> str:
        return str(invocation_state(self).handle.name)

    @property
    def python_workers(self) -> bool:
        """Whether the running Worker follows Python Workers' RPC rules (the workers module)."""
        return bool(invocation_state(self).handle.python_workers)

    @property
    def env(self) -> Any:
        """This invocation's env, readable only by its own code (not by a child via ``parent``)."""
        if current_invocation() is not self:
            raise AttributeError("An invocation's env is readable only by its own code")
        return invocation_state(self).handle.env

    @property
    def passes_through_on_exception(self) -> bool:
        return bool(invocation_state(self).pass_through)

    def wait_until(self, awaitable: Any) -> None:
        """Let ``awaitable`` run on after the response, up to ``Limits.wait_until_s``."""
        pipeline = invocation_state(self).pipeline
        if pipeline_state(pipeline).closed:
            raise FastbindError("wait_until() called after the pipeline ended")
        slot = SLOT.get()
        if slot is None:
            raise FastbindError("wait_until() called outside a fastbind invocation")
        previous = slot_current(slot)
        set_slot_current(slot, self)
        try:
            task = asyncio.ensure_future(awaitable)
        finally:
            set_slot_current(slot, previous)
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
        state = invocation_state(self)
        state.pass_through = True
        root = pipeline_state(state.pipeline).root
        if root is not None:
            invocation_state(root).pass_through = True

    @property
    def ledger_index(self) -> int:
        """Its entry in the pipeline's ledger; -1 for the top-level invocation."""
        return int(invocation_state(self).record.index)

    def __repr__(self) -> str:
        state = invocation_state(self)
        return f"<InvocationContext {state.handle.name} depth={state.depth}>"


invocation_state, set_invocation_state = hidden_field(InvocationContext, "_state")
for _name in ("pipeline", "parent", "depth", "props", "subrequests", "cpu_ns"):
    setattr(InvocationContext, _name, _state_reader(invocation_state, _name))
del _name


def new_invocation(
    pipeline: PipelineContext, parent: Any, handle: Any, depth: int, props: Any,
    record: SubrequestRecord,
) -> InvocationContext:
    state = InvocationState()
    state.pipeline = pipeline
    state.parent = parent
    state.handle = handle
    state.depth = depth
    state.props = props
    state.subrequests = 0
    state.pass_through = False
    state.record = record
    state.cpu_ns = 0
    state.scope = None
    state.owns_scope = False
    inv = object.__new__(InvocationContext)
    set_invocation_state(inv, state)
    return inv


def child_of(caller: InvocationContext, handle: Any, kind: str, props: Any) -> InvocationContext:
    """A child invocation of ``caller`` (depth + 1, one subrequest, a ledger entry)."""
    state = invocation_state(caller)
    pipeline = state.pipeline
    pstate = pipeline_state(pipeline)
    if state.depth >= pstate.max_depth:
        raise _depth_error(caller, handle, pstate.max_depth)
    charge(state)
    record = SubrequestRecord(
        state.handle.name, handle.name, kind, state.depth + 1, len(pstate.ledger), state.record.index,
    )
    pstate.ledger.append(record)
    child = new_invocation(pipeline, caller, handle, state.depth + 1, props, record)
    if state.scope is not None:
        invocation_state(child).scope = state.scope
    return child


def open_scope(inv: InvocationContext, limits: CallLimits) -> None:
    """Give ``inv`` (just made by a call with ``limits``) a scope of its own."""
    state = invocation_state(inv)
    scope = LimitScope(state.scope, limits)  # inside the caller's, if it runs in one
    state.scope = scope
    state.owns_scope = True
    if scope.cpu_limit_ns >= 0:
        pstate = pipeline_state(state.pipeline)
        pstate.cpu_enabled = pstate.cpu_measured = True  # counted at metered steps
        if limits._watch is not None:
            try:
                limits._watch()
            except BaseException:
                finish_invocation(inv, "error")
                raise
            scope.unwatch = limits._unwatch


def _depth_error(caller: InvocationContext, target: Any, limit: int) -> SubrequestDepthError:
    """SubrequestDepthError for a call from ``caller`` to ``target``, with the chain of
    Workers that led there (the top-level Worker first)."""
    chain = []
    inv: Any = caller
    while inv is not None:
        state = invocation_state(inv)
        chain.append(state.handle.name)
        inv = state.parent
    chain.reverse()
    root_depth = pipeline_state(invocation_state(caller).pipeline).root_depth
    if root_depth > 1:  # a continued pipeline's callers ran in other processes
        chain.insert(0, f"({root_depth - 1} in other processes)")
    return SubrequestDepthError(chain=tuple(chain), target=target.name, limit=limit)


def finish_invocation(inv: InvocationContext, outcome: str, status: int | None = None) -> None:
    state = invocation_state(inv)
    cpu = state.cpu_ns if pipeline_state(state.pipeline).cpu_measured else -1
    state.record.close(outcome, cpu, status)
    if state.owns_scope:
        close_scope(state.scope)


# --- the awaitable that runs an invocation --------------------------------------------


class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task."""

    __slots__ = (
        "_inv", "_request", "_http", "_started", "_driver", "_method", "_args", "_kwargs",
        "_immediate", "_custom", "_borrowed", "_redirect",
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
        # (fetcher, origin, mode, start_call) of a binding's fetch that handles redirects (binding_fetch.py)
        self._redirect: Any = None

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
                finish_invocation(self._inv, "canceled")

    def __await__(self) -> Any:
        return self._run()

    def _run(self) -> Any:
        inv = self._inv
        if self._started:
            raise RuntimeError("A binding call can be awaited only once")
        self._started = True
        slot = SLOT.get()
        slot_token = None
        if slot is None:
            if not self._borrowed:
                finish_invocation(inv, "error")
                raise FastbindError("A binding call was awaited outside a fastbind invocation")
            # run() from a task that never dispatched (e.g. a server's body writer).
            slot = new_slot()
            slot_token = SLOT.set(slot)
        request, self._request = self._request, None
        state = invocation_state(inv)
        pipeline = state.pipeline
        pstate = pipeline_state(pipeline)
        pstate.running += 1
        LIVE["invocations"] += 1
        outcome = "error"
        status = None
        try:
            previous = slot_current(slot)
            set_slot_current(slot, inv)
            try:
                if self._borrowed:
                    coro = request if inspect.iscoroutine(request) else request.__await__()
                elif self._method is None:
                    coro = state.handle.invoke(request, inv)
                else:
                    coro = self._call_method(inv, state.handle)
            finally:
                set_slot_current(slot, previous)
            del request
            if coro is None:  # a synchronous RPC method: its value is already there
                result = self._immediate
                self._immediate = None
                coro = _DONE
            # Drive the child step by step so the slot names it while it runs. A
            # measured pipeline's steps are metered and split between invocations; a
            # CPU-limited one's are metered at the root (see the metering part).
            send, throw = coro.send, coro.throw
            value: Any = None
            error: BaseException | None = None
            split = False
            guarded_root = state.parent is None
            while coro is not _DONE:
                previous = slot_current(slot)
                # Read at each step: a call with a CPU limit turns splitting on (open_scope).
                split = pstate.cpu_measured
                opened = False
                if split:
                    opened = meter_enter(slot, previous, pipeline)
                    if error is None and state.scope is not None and scope_exceeded(state.scope):
                        error = CpuLimitExceeded()  # stop the scope at its next step
                    enter_scope(state.scope)
                elif guarded_root and pstate.cpu_enabled:
                    opened = slice_open(pipeline)
                if opened and pstate.cpu_exceeded and error is None:
                    error = CpuLimitExceeded()  # stop the pipeline at its next step
                set_slot_current(slot, inv)
                try:
                    future = send(value) if error is None else throw(error)
                except StopIteration as stop:
                    result = stop.value
                    break
                except BaseException as exc:
                    if split and self._over_budget(state, exc):
                        outcome = EXCEEDED_CPU
                        raise WorkerCpuLimitError() from None
                    raise
                finally:
                    if split:
                        meter_exit(slot, inv, pipeline, opened)
                        leave_scope(previous)
                    elif opened:
                        slice_close(pipeline)
                    set_slot_current(slot, previous)
                try:
                    value, error = (yield future), None
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # thrown in by the task: pass it down
                    value, error = None, exc
            if split and self._over_budget(state, None):
                outcome = EXCEEDED_CPU
                raise WorkerCpuLimitError()
            if self._borrowed:
                pass
            elif self._http:
                if not isinstance(result, Response):
                    raise TypeError(
                        f'Worker "{state.handle.name}" fetch handler returned '
                        f"{type(result).__name__}, expected a Response"
                    )
                status = _status_of(result)  # the ledger keeps its status
                if state.parent is not None:
                    # A child's Response: the caller gets its own (see the compiled core).
                    result = hand_over_response(result)
            else:
                if state.handle.python_workers:
                    check_python_workers_value(result)
                result = isolate(result)
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "canceled"
            raise
        finally:
            pstate.running -= 1
            LIVE["invocations"] -= 1
            if not self._borrowed:
                finish_invocation(inv, outcome, status)
            elif slot_token is not None:
                try:
                    SLOT.reset(slot_token)
                except ValueError:  # finished from another context (e.g. closed by the GC)
                    pass
        if self._redirect is not None and status in REDIRECT_STATUSES:
            # A redirect from a binding's fetch: followed as the caller, a new call per hop.
            fetcher, origin, mode, start_call = self._redirect
            self._redirect = None
            follower = redirect_follower(fetcher, origin, mode, result, start_call)
            if follower is not None:
                return (yield from follower.__await__())
        return result

    @staticmethod
    def _over_budget(state: Any, error: BaseException | None) -> bool:
        """Whether the child opened a scope that went past its ``cpu_ms``: whatever it
        answered or raised (a cancellation aside), its caller gets WorkerCpuLimitError."""
        return bool(
            state.owns_scope and state.scope.cpu_exceeded
            and not isinstance(error, asyncio.CancelledError)
        )

    def _call_method(self, inv: InvocationContext, handle: Any) -> Any:
        """Run RPC method ``_method`` on a new instance; its awaitable, or None if sync."""
        args, self._args = self._args, ()
        kwargs, self._kwargs = self._kwargs, None
        if self._custom is not None:
            method = self._custom
            args = (inv, *args)
        else:
            instance = handle.instantiate(inv)
            method = handle.rpc_function(self._method)
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


def _status_of(response: Any) -> int | None:
    """A Response's status as the ledger keeps it (as the compiled core's fastbind_status_of)."""
    status = getattr(response, "status", None)
    return status if type(status) is int and 100 <= status <= 999 else None


class _Done:
    """Stands for a child that finished before its first step (a sync RPC method)."""

    def send(self, value: Any) -> Any:
        raise StopIteration

    throw = send

    def close(self) -> None:
        pass


_DONE = _Done()
