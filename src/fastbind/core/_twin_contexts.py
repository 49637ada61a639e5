"""Pure twin, part 1: the execution slot, the pipeline with its ledger, and the
invocation contexts: the same behaviour as ``_contexts.pxi`` in the compiled core.

The state of a pipeline, an invocation and a task's slot lives in a slot whose
descriptor is taken off its class (``hidden_field``): only the twin reaches it, so
Python code cannot raise a limit or reset a counter through an attribute. The metering
(``_twin_metering``) and the awaitable that runs an invocation (``_twin_binding_call``)
build on this module.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from ..errors import FastbindError, SubrequestDepthError, TooManySubrequestsError
from ._twin_call_limits import CallLimits, LimitScope, charge_scope, close_scope

__all__ = (
    "ExecutionSlot",
    "SubrequestRecord",
    "OpenSubrequest",
    "PipelineContext",
    "InvocationContext",
    "current_invocation",
    "live_counts",
    "cpu_limit_ns",
    "register_borrowed_call",
)

# The clock of the ledger's entries and of the metering's segments (_twin_metering).
now_ns = time.perf_counter_ns

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


def cpu_limit_ns(cpu_ms: Any) -> int:
    """Limits.cpu_ms in ns (a rule of the metering, _metering.pxi, that a pipeline applies as it
    is made); -1 for no limit (0 or None), clamped as the compiled core's int64."""
    return -1 if not cpu_ms else int(min(cpu_ms * 1e6, 9.2e18))


# InvocationContext.run's awaitable is a BindingCall, whose module (_twin_binding_call)
# builds on this one: it hands in its maker as it is imported (the compiled core's parts
# share one module, and need no such step).
_borrowed_call: Callable[[InvocationContext, Any], Awaitable[Any]]


def register_borrowed_call(make: Callable[[InvocationContext, Any], Awaitable[Any]]) -> None:
    """Make ``make`` the maker of ``InvocationContext.run``'s awaitable."""
    global _borrowed_call
    _borrowed_call = make


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
        self._start_ns = now_ns()
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
            self._duration_ns = now_ns() - self._start_ns
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
        state.cpu_enabled = state.cpu_measured or state.cpu_limit_ns >= 0  # (see _twin_metering)
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

    def run(self, awaitable: Any) -> Awaitable[Any]:
        """Await ``awaitable`` as this invocation: its code sees this ``ctx`` as current.

        No ledger entry, depth or subrequest is added: it is the same invocation,
        resumed from another task (e.g. the reader of a streamed response body). The
        awaitable is a BindingCall (``_twin_binding_call.borrowed_call``).
        """
        return _borrowed_call(self, awaitable)

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
