"""Pure twin, part 3: top-level requests (the same steps as ``_dispatch.pxi``, as a coroutine)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import FastbindError
from ..request import Request
from .props import EMPTY_PROPS
from ._twin_binding_call import BindingCall
from ._twin_contexts import (
    SLOT,
    PipelineContext,
    new_invocation,
    new_slot,
    pipeline_state,
    slot_current,
)

__all__ = ("DispatchPlan", "Entry")

_PLAIN_BODIES = (bytes, str, bytearray, memoryview)
_INSIDE_WORKER = (
    "Runtime.dispatch() cannot be called from inside a Worker: call other "
    "Workers through a service binding (env.X.fetch)"
)


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
        "_owner", "_limits", "resolved", "reports", "snapshot", "observe", "_validate", "_install_factory",
        "_watch_hang", "_answer", "_report", "_end", "_stream", "_hold",
    )

    def __init__(self, policy: Any, limits: Any) -> None:
        self._owner = policy.runtime
        self._limits = limits
        self.resolved = False
        self.reports = False
        self.snapshot: Callable[[Request], Any] | None = None
        self.observe: Callable[[PipelineContext, Request], Any] | None = None
        self._validate = policy.validate
        self._install_factory = policy.install_task_factory
        self._watch_hang = policy.watch_hang
        self._answer = policy.answer
        self._report = policy.report
        self._end = policy.end
        self._stream = policy.stream
        self._hold = policy.hold

    def entry(self, handle: Any) -> Entry:
        """The entry point of top-level requests served by Worker ``handle``."""
        entry = object.__new__(Entry)
        entry._plan = self
        entry._handle = handle
        return entry

    def conclude(self, pipeline: PipelineContext, response: Any, error: Any = None) -> Any:
        """How a pipeline ends, once its final Response is known (see _dispatch.pxi)."""
        if response is None:  # the caller went away
            return self._end(pipeline, None, error, not isinstance(error, asyncio.CancelledError))
        status = response.status
        body = response.body
        if body is None or isinstance(body, _PLAIN_BODIES):
            if getattr(response, "_web_socket", None) is not None:
                self._hold(pipeline, response, status, error)
                return None
            if not pipeline.idle:
                return self._end(pipeline, status, error, False)
            pipeline.close()
            if self.reports:
                self._report(pipeline, status, error)
            return None
        self._stream(pipeline, response, status, error)
        return None

    async def run(
        self, handle: Any, request: Request, convert: Any, continued: tuple[int, str, int] | None = None,
    ) -> Any:
        """One top-level request of Worker ``handle``; its answer is ``convert(response)``.

        ``continued``: (depth, pipeline id, CPU budget in ns or -1) of a pipeline of
        another process that this request goes on with (``Entry.continued``).
        """
        slot = SLOT.get()
        if slot is not None and slot_current(slot) is not None:
            # A new top-level request would start again at depth 1 with a fresh budget.
            raise FastbindError(_INSIDE_WORKER)
        loop = asyncio.get_running_loop()
        self._install_factory(loop)
        original = None if self.snapshot is None else self.snapshot(request)
        pipeline = PipelineContext(handle.name, self._limits, self._owner)
        state = pipeline_state(pipeline)
        depth = 1
        if continued is not None:
            depth, state.pipeline_id, budget = continued
            if budget >= 0 and (state.cpu_limit_ns < 0 or budget < state.cpu_limit_ns):
                state.cpu_limit_ns = budget
                state.cpu_enabled = True  # the twin meters a CPU-limited pipeline from its start
        state.root_depth = depth
        root = new_invocation(pipeline, None, handle, depth, EMPTY_PROPS, state.root_record)
        state.root = root
        if self.observe is not None:  # tracing: what it keeps of the pipeline from its start
            state.observed = self.observe(pipeline, request)
        call = BindingCall(root, request, True)
        del request
        # Awaiting the call's iterator rather than the call tells the hang detector
        # which object holds all of the pipeline's code that runs in this task.
        driver = call.__await__()
        watch = self._watch_hang(loop, pipeline, driver)
        if slot is None:
            # The task keeps this slot after the request (its ``current`` is None
            # between steps): later requests of the task need no new context mapping.
            SLOT.set(new_slot())
        response: Any = None
        error: BaseException | None = None
        try:
            response = await _Driven(driver)
        except GeneratorExit as exc:  # closed, not cancelled: end what ends without awaiting
            if watch is not None:
                watch.release(pipeline)
            ending = self._answer(pipeline, original, None, exc, False)
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
        if error is None and not hung and not state.cpu_exceeded:
            ending = self.conclude(pipeline, response)
            if ending is not None:
                await ending
        else:
            response = await self._answer(pipeline, original, response, error, hung)
        return response if convert is None else convert(response)


class Entry:
    """One Worker's entry point for top-level requests: ``await entry(request)``."""

    __slots__ = ("_plan", "_handle")
    _plan: DispatchPlan
    _handle: Any

    def __init__(self) -> None:
        raise TypeError("Entry is made by Runtime.entry() only")

    @property
    def worker(self) -> str:
        """The name of the Worker that serves this entry's requests."""
        return str(self._handle.name)

    def __call__(self, request: Request) -> Any:
        return self.converted(request, None)

    def converted(self, request: Request, convert: Any) -> Any:
        """The awaitable of one request whose answer is ``convert(response)``."""
        if not isinstance(request, Request):
            raise TypeError(f"dispatch() needs a fastbind.Request, not {type(request).__name__}")
        plan = self._plan
        if not plan.resolved:
            plan._validate()
        return plan.run(self._handle, request, convert)

    def continued(self, request: Request, depth: int, pipeline_id: str, cpu_ms: float | None = None) -> Any:
        """The awaitable of one request that goes on with a pipeline of another process.

        Its root invocation runs at ``depth`` (the remote caller's depth + 1), the
        pipeline keeps ``pipeline_id``, and its CPU budget is at most ``cpu_ms``
        (what the caller's pipeline had left; None: the caller had no limit).
        """
        plan = self._plan
        depth = int(depth)
        if not 1 <= depth <= plan._limits.depth:
            raise ValueError(f"a continued pipeline's depth must be 1..{plan._limits.depth}, not {depth}")
        if not isinstance(pipeline_id, str):
            raise TypeError(f"pipeline_id must be a str, not {type(pipeline_id).__name__}")
        if not pipeline_id:
            raise ValueError("a continued pipeline needs a pipeline id")
        if not isinstance(request, Request):
            raise TypeError(f"dispatch() needs a fastbind.Request, not {type(request).__name__}")
        if not plan.resolved:
            plan._validate()
        budget = -1 if cpu_ms is None else int(min(max(cpu_ms, 0.0) * 1e6, 9.2e18))
        return plan.run(self._handle, request, None, (depth, pipeline_id, budget))

    def __repr__(self) -> str:
        return f"<Entry {self._handle.name}>"

