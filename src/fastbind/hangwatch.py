"""Hang detection: end a pipeline whose Workers wait on what nothing can ever resolve."""

# The rule, and why it can be trusted, is documented in lifecycle.py.
# In short: every task of a pipeline is suspended on a future that only the pipeline's
# own suspended code holds, so nothing can wake any of them. It is checked by one timer
# per event loop, never on a binding call.

from __future__ import annotations

import asyncio
import builtins
import gc
import sys
import types
import weakref
from collections import deque
from contextvars import Context
from typing import Any

from .errors import FastbindError
from .lifecycle import logger

__all__ = (
    "HANG_MESSAGE",
    "WorkerHangError",
    "LoopWatch",
    "watch",
    "is_closed_wait",
    "checking",
    "settings",
    "SUPPORTED",
)

HANG_MESSAGE = (
    "The Workers runtime canceled this request because it detected that your Worker's "
    "code had hung and would never generate a response."
)


class WorkerHangError(FastbindError):
    """The pipeline was declared hung (given to ``on_pipeline_end`` as the error)."""

    def __init__(self, message: str = HANG_MESSAGE) -> None:
        super().__init__(message)


class _Settings:
    """Knobs of the detector; tests lower ``interval_s`` to see a verdict sooner."""

    __slots__ = ("interval_s", "graph_budget")

    def __init__(self) -> None:
        # A hang is declared after two checks that see the same stall: within
        # 2 * interval_s of its start.
        self.interval_s = 1.0
        # The most objects the proof may visit for one pipeline; past it the pipeline
        # is not declared hung (the proof is abandoned, never guessed).
        self.graph_budget = 10_000


settings = _Settings()

# The proof compares reference counts with what the collector sees: that needs
# CPython's exact counts (with the GIL; a free-threaded build defers some counts).
SUPPORTED = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()

_PLAIN_FUTURES = frozenset({asyncio.Future, getattr(asyncio.futures, "_PyFuture", asyncio.Future)})
_GATHERING_FUTURE: type = getattr(asyncio.tasks, "_GatheringFuture", type(None))
_BUILTINS = vars(builtins)


def _handle_types() -> tuple[type, ...]:
    found: list[type] = [asyncio.Handle]
    try:
        import uvloop.loop as uv
    except ImportError:
        pass
    else:
        found += [getattr(uv, "Handle"), getattr(uv, "TimerHandle")]  # not in uvloop's stubs
    return tuple(found)


_HANDLES = _handle_types()
# Objects the proof does not walk into: code, classes and modules are shared by every
# pipeline, a loop or a task has its own owners, and a Context is reached only by the
# task or callback running in it. A future reachable only through one of them is not
# proven closed (its reference from there is not counted), so stopping is always safe.
_BOUNDARIES = (
    type, types.ModuleType, types.CodeType, types.MethodDescriptorType,
    types.WrapperDescriptorType, asyncio.AbstractEventLoop, asyncio.Task, Context, weakref.ref,
)


class _Sighting:
    """What the check saw of a pipeline found stalled (kept for stalled pipelines only)."""

    __slots__ = ("stall", "disproved", "hung")

    def __init__(self, stall: frozenset[tuple[int, int]]) -> None:
        self.stall = stall  # which task waited on which future, by id
        self.disproved: frozenset[tuple[int, int]] | None = None
        self.hung = False


class LoopWatch:
    """The pipelines of one event loop whose top-level invocation runs, checked by one timer.

    A dispatch whose top-level invocation suspends costs one dict insert and one
    delete (one that returns at its first step is never registered); the timer runs
    while the dict is not empty.
    """

    # The loop is held weakly: this object is the value of a WeakKeyDictionary keyed
    # by the loop, and would otherwise keep its own key alive. For the same reason the
    # timer's handle (which holds the loop) is not kept, only whether one is pending:
    # a loop closed with the timer pending would otherwise never be freed.
    __slots__ = ("loop_ref", "running", "sightings", "timer", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        # pipeline -> (the task awaiting dispatch, the iterator of its root binding call,
        # which holds all of the pipeline's code that runs in that task)
        self.running: dict[Any, tuple[asyncio.Task[Any], Any]] = {}
        self.sightings: dict[Any, _Sighting] = {}
        self.timer = False  # the check is scheduled

    def release(self, pipeline: Any) -> bool:
        """Stop watching ``pipeline``; True if it was declared hung (its task was cancelled)."""
        del self.running[pipeline]
        if not self.sightings:
            return False
        sighting = self.sightings.pop(pipeline, None)
        return sighting is not None and sighting.hung

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        # An empty context: the check must not run inside (or be accounted to) a pipeline.
        loop.call_later(settings.interval_s, self.tick, context=Context())
        self.timer = True

    def tick(self) -> None:
        self.timer = False
        loop = self.loop_ref()
        if loop is None or not self.running:
            return  # idle: the next watch() starts the timer again
        for pipeline, (task, driver) in tuple(self.running.items()):
            sighting = self.sightings.get(pipeline)
            if sighting is not None and sighting.hung:
                continue
            if self._check(pipeline, task, driver, sighting):
                self.sightings[pipeline].hung = True
                _declare_hung(pipeline, task)
        self.start(loop)

    def _check(self, pipeline: Any, task: asyncio.Task[Any], driver: Any, seen: _Sighting | None) -> bool:
        """One look at ``pipeline``: True once the same closed stall is seen twice."""
        stall = _stall(pipeline, task)
        if stall is None:
            if seen is not None:
                del self.sightings[pipeline]
            return False
        tasks, waited, key = stall
        if seen is None or key != seen.stall:  # a new stall: look again at the next tick
            self.sightings[pipeline] = _Sighting(key)
            return False
        if key == seen.disproved:  # already proven open; nothing changed since
            return False
        roots = [driver]
        roots += [t.get_coro() for t in tasks[1:]]
        del tasks, stall
        if is_closed_wait(roots, waited):
            return True
        seen.disproved = key
        return False


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatch] = weakref.WeakKeyDictionary()
_last: LoopWatch | None = None  # the one loop a process usually has: no weakref made per call


def watch(loop: asyncio.AbstractEventLoop, pipeline: Any, driver: Any) -> LoopWatch | None:
    """Watch ``pipeline`` while the current task awaits ``driver``, its root call's iterator.

    Returns the loop's watch, whose ``release(pipeline)`` must follow; None when hangs
    are not checked here.
    """
    global _last
    if not SUPPORTED:
        return None
    task = asyncio.current_task(loop)
    if task is None:
        return None
    owner = _last
    if owner is None or owner.loop_ref() is not loop:
        owner = _watches.get(loop)
        if owner is None:
            owner = _watches[loop] = LoopWatch(loop)
        _last = owner
    owner.running[pipeline] = (task, driver)
    if not owner.timer:
        owner.start(loop)
    return owner


def checking(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the check timer is scheduled on ``loop``."""
    owner = _watches.get(loop)
    return owner is not None and owner.timer


def _declare_hung(pipeline: Any, task: asyncio.Task[Any]) -> None:
    logger.error('%s (Worker "%s")', HANG_MESSAGE, pipeline.entry)
    task.cancel(HANG_MESSAGE)


_Stall = tuple[list[Any], dict[int, list[Any]], frozenset[tuple[int, int]]]


def _stall(pipeline: Any, dispatching: asyncio.Task[Any]) -> _Stall | None:
    """If every task of the pipeline is suspended on a future of a kind the proof covers:
    the tasks, the plain futures they wait on (id -> [future, waiters]) and a key of the
    stall; otherwise None."""
    tasks = [dispatching, *pipeline.take_tasks(), *pipeline.take_waiting()]
    members = {id(task) for task in tasks}
    waited: dict[int, list[Any]] = {}
    pairs = []
    for task in tasks:
        future = getattr(task, "_fut_waiter", None)
        if future is None or future.done():
            return None  # runnable: it will run
        pairs.append((id(task), id(future)))
        if id(future) in members:
            continue  # it waits for another task of the pipeline
        kind = type(future)
        if kind is _GATHERING_FUTURE:
            # gather() of tasks of the pipeline resolves only when they end.
            if all(child.done() or id(child) in members for child in future._children):
                continue
            return None
        if kind not in _PLAIN_FUTURES:
            return None
        # Resolving a future runs its callbacks: one set by outside code can be the
        # only way it was meant to end (shield, wrap_future, ...). Only the wake-up
        # of the pipeline's own waiting tasks is allowed.
        for callback, _ in future._callbacks or ():
            if id(getattr(callback, "__self__", None)) not in members:
                return None
        entry = waited.get(id(future))
        if entry is None:
            waited[id(future)] = [future, 1]
        else:
            entry[1] += 1
    return tasks, waited, frozenset(pairs)


def is_closed_wait(roots: list[Any], waited: dict[int, list[Any]]) -> bool:
    """Whether only the code below ``roots`` can reach the futures in ``waited``.

    Walks the objects reachable from ``roots`` (suspended coroutines and the root
    binding call's iterator), counting the references between them. A waited future, and every
    object on a path from the roots to it, must have exactly as many references as
    that walk found (plus one per task waiting on the future) and no weak reference.
    Any other reference (a timer handle, a protocol, a global, another task, a thread's
    local, a weak dictionary) could be used to resolve it, so the answer is then False;
    so it is when the walk meets a pending callback or timer handle, or runs over
    ``settings.graph_budget`` objects.
    """
    objects: dict[int, Any] = {id(root): root for root in roots}
    parents: dict[int, list[int]] = {}
    queue = deque(roots)
    budget = settings.graph_budget
    while queue:
        obj = queue.popleft()
        if isinstance(obj, _HANDLES) and not obj.cancelled():  # type: ignore[attr-defined]
            return False  # a pending timer or callback of the pipeline will run
        for ref in gc.get_referents(obj):
            if not gc.is_tracked(ref) or isinstance(ref, _BOUNDARIES):
                continue
            if type(ref) is dict and (ref is _BUILTINS or "__builtins__" in ref):
                continue  # a module's globals
            key = id(ref)
            if key in parents:
                parents[key].append(id(obj))
            else:
                parents[key] = [id(obj)]
            if key not in objects:
                if len(objects) >= budget:
                    return False
                objects[key] = ref
                queue.append(ref)
        del obj
    ref = None
    # Every object from which a waited future is reachable, up to the roots.
    root_ids = {id(root) for root in roots}
    on_path: set[int] = set()
    todo = list(waited)
    while todo:
        key = todo.pop()
        if key in on_path or key in root_ids:
            continue
        if key not in objects:
            return False  # the future is not even reachable from the pipeline's code
        on_path.add(key)
        todo += parents.get(key, ())
    # What our own bookkeeping adds to a count, measured on two probes held exactly
    # as a waited future and as any other object are.
    probe_waited: list[Any] = []
    probe_other: list[Any] = []
    objects[id(probe_waited)] = probe_waited
    objects[id(probe_other)] = probe_other
    waited[id(probe_waited)] = [probe_waited, 0]
    del probe_waited, probe_other
    own_waited = own_other = 0
    for key in (*list(waited)[-1:], next(reversed(objects))):
        obj = objects[key]
        if key in waited:
            own_waited = sys.getrefcount(obj)
        else:
            own_other = sys.getrefcount(obj)
        del obj
    for key in on_path:
        obj = objects[key]
        count = sys.getrefcount(obj)
        if key in waited:
            expected = own_waited + len(parents.get(key, ())) + waited[key][1]
        else:
            expected = own_other + len(parents.get(key, ()))
        if count != expected or weakref.getweakrefcount(obj):
            return False
        del obj
    return True
