"""What a Runtime decides about its top-level requests, for the core that runs them.

The core (``DispatchPlan``) owns the rule of how a pipeline ends once its Response is
known (``DispatchPlan.conclude``). This policy is the rest, the parts that belong to
the Runtime: the Response an exception, a hang or the CPU limit becomes (``answer``),
the report of a finished pipeline (``report``), and the lifecycle's mechanics that the
rule calls (``end``: cancel what is left and supervise wait_until work; ``stream``: end
when a streamed body is consumed; ``hold``: end when a WebSocket closes).
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from . import hangwatch
from .errors import (
    CPU_LIMIT_MESSAGE,
    BodyReadError,
    CpuLimitExceeded,
    ResourceLimitError,
    SubrequestDepthError,
)
from .lifecycle import PipelineStream, end_in_background, end_pipeline, logger
from .response import Response
from .watchdog import watchdog

if TYPE_CHECKING:
    from .extension import Rescuer
    from .runtime import Runtime

__all__ = ("DispatchPolicy", "PipelineReport", "PipelineObserver")

_TEXT = {"content-type": "text/plain; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class PipelineReport:
    """What one finished pipeline did: given to ``Runtime(on_pipeline_end=...)``."""

    entry: str
    status: int | None
    start_ns: int
    duration_ns: int
    subrequests: tuple[Any, ...]  # SubrequestRecord: caller, target, kind, depth, ...
    error: BaseException | None
    cpu_ns: int | None = None  # the pipeline's CPU, when measured (Limits.measure_cpu, or a call with a CPU limit ran)
    # The same in every process a pipeline crosses through remote bindings and forwarded
    # Durable Object calls; ``depth`` is its top-level invocation's (1 unless continued).
    pipeline_id: str | None = None
    depth: int = 1


class PipelineObserver:
    """Something told of every pipeline of a Runtime: ``Runtime.add_observer(observer)``.

    ``opened`` runs as a pipeline opens, before its top-level Worker, with the
    top-level request; what it returns is the observer's state for that pipeline, given
    back to ``ended`` with the pipeline's report and to ``outbound_headers`` when one of
    its Workers fetches (tracing sends ``traceparent`` that way, metrics count open
    pipelines). A Runtime without observers calls nothing.
    """

    def opened(self, pipeline: Any, request: Any) -> Any:
        return None

    def ended(self, report: PipelineReport, state: Any) -> None:
        pass

    def outbound_headers(self, state: Any, pipeline: Any, index: int) -> list[tuple[str, str]]:
        """Headers to send with outbound fetch ``index`` of the pipeline's ledger."""
        return []


def observed_headers(pipeline: Any, index: int) -> list[tuple[str, str]]:
    """What the observers of ``pipeline`` add to its outbound fetch ``index``."""
    observed = pipeline.observed
    if not observed:
        return []
    headers: list[tuple[str, str]] = []
    for observer, state in observed:
        headers += observer.outbound_headers(state, pipeline, index)
    return headers


def _has_factory(factory: Any, implementation: str) -> bool:
    while factory is not None:
        if getattr(factory, "fastbind_implementation", None) == implementation:
            return True
        factory = getattr(factory, "previous", None)
    return False


class DispatchPolicy:
    """The Runtime's side of top-level dispatch; ``plan`` is the core's side."""

    __slots__ = (
        "runtime", "core", "plan", "hook", "rescuer", "watch_hang", "watch_cpu", "observers",
        "observed_ever", "__weakref__",
    )

    def __init__(self, runtime: Runtime, core: Any) -> None:
        self.runtime = runtime
        self.core = core
        self.hook: Callable[[PipelineReport], Any] | None = None
        self.observers: tuple[PipelineObserver, ...] = ()
        self.observed_ever = False  # pipelines opened with observers still report when they end
        self.rescuer: Rescuer | None = None
        # Called by the core as they are (no method of this class in between).
        self.watch_hang = hangwatch.watch
        self.watch_cpu = partial(watchdog.watch, core)  # a call with a CPU limit (CallLimits)
        self.plan = core.DispatchPlan(self, runtime.limits)
        # The CPU limit is the watchdog's, for as long as this Runtime lives: nothing per request.
        cpu_ms = runtime.limits.cpu_ms
        watchdog.guard(self, core, cpu_ms / 1000 if cpu_ms else None)

    def set_hook(self, hook: Callable[[PipelineReport], Any] | None) -> None:
        self.hook = hook
        self.plan.reports = hook is not None or self.observed_ever

    def set_observers(self, observers: tuple[PipelineObserver, ...]) -> None:
        self.observers = observers
        self.observed_ever = self.observed_ever or bool(observers)
        self.plan.observe = self._opened if observers else None
        self.plan.reports = self.hook is not None or self.observed_ever

    def _opened(self, pipeline: Any, request: Any) -> tuple[tuple[PipelineObserver, Any], ...]:
        # Each observer with its state: observers added later see later pipelines only.
        states = []
        for observer in self.observers:
            try:
                states.append((observer, observer.opened(pipeline, request)))
            except Exception:
                logger.exception("pipeline observer %r failed as a pipeline opened", observer)
        return tuple(states)

    def call_limits(self, cpu_ms: float | None, subrequests: int | None) -> Any:
        """The core's CallLimits, with the CPU watchdog watching the calls that have ``cpu_ms``."""
        return self.core.CallLimits(cpu_ms, subrequests, self.watch_cpu, watchdog.unwatch)

    def set_rescuer(self, rescuer: Rescuer | None) -> None:
        self.rescuer = rescuer
        self.plan.snapshot = None if rescuer is None else rescuer.snapshot

    # -- what the core calls -------------------------------------------------------------

    def validate(self) -> None:
        self.runtime.validate()

    def install_task_factory(self, loop: asyncio.AbstractEventLoop) -> None:
        current = loop.get_task_factory()
        if not _has_factory(current, self.core.IMPLEMENTATION):
            loop.set_task_factory(self.core.make_task_factory(current))

    async def answer(
        self, pipeline: Any, original: Any, response: Response | None, exc: BaseException | None,
        hung: bool,
    ) -> Response:
        """The Response of a top-level request that did not end with one of its own.

        ``response`` is what the root invocation returned, or ``exc`` what it raised;
        ``hung`` is the hang detector's verdict. Ends the pipeline by the core's rule
        and returns the Response, or raises the caller's cancellation.
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
            response = _cpu_exceeded(name, exc)
        elif isinstance(exc, ResourceLimitError):  # a Worker it called went past its own limits
            error = exc
            response = _limit_exceeded(name, exc)
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
                response = Response(hangwatch.HANG_MESSAGE, status=500, headers=_TEXT)
            elif gone is None:  # the caller cancelled too, and the Worker swallowed it
                gone = asyncio.CancelledError()
        if gone is not None:
            await self.plan.conclude(pipeline, None, gone)
            raise gone
        assert response is not None
        if pipeline.cpu_exceeded and error is None:  # over budget in its last step
            error = CpuLimitExceeded()
            response = _cpu_exceeded(name, None)
        ending = self.plan.conclude(pipeline, response, error)
        if ending is not None:
            await ending
        return response

    def report(self, pipeline: Any, status: int | None, error: BaseException | None) -> None:
        """A pipeline has ended: give the hook its report."""
        hook = self.hook
        observed = pipeline.observed
        if hook is None and not observed:
            return
        report = PipelineReport(
            pipeline.entry, status, pipeline.start_ns, pipeline.duration_ns,
            pipeline.ledger, error, pipeline.cpu_ns if pipeline.cpu_measured else None,
            pipeline.pipeline_id, pipeline.root_depth,
        )
        for observer, state in observed or ():
            try:
                observer.ended(report, state)
            except Exception:
                logger.exception("pipeline observer %r failed as a pipeline ended", observer)
        if hook is None:
            return
        try:
            hook(report)
        except Exception:
            logger.exception("on_pipeline_end hook raised")

    def end(
        self, pipeline: Any, status: int | None, error: BaseException | None, cancel_wait_until: bool,
    ) -> Coroutine[Any, Any, None]:
        """Cancel what is left of ``pipeline``, supervise its wait_until work, then report."""
        return end_pipeline(
            pipeline, partial(self.report, pipeline, status, error), cancel_wait_until=cancel_wait_until
        )

    def stream(self, pipeline: Any, response: Response, status: int, error: BaseException | None) -> None:
        """``response``'s body is a stream: the pipeline ends once it is read or closed."""
        done = partial(self.report, pipeline, status, error)
        response.body = PipelineStream(
            response.body, lambda: end_pipeline(pipeline, done), pipeline.root
        )

    def hold(self, pipeline: Any, response: Response, status: int, error: BaseException | None) -> None:
        """``response`` answers a WebSocket upgrade: the pipeline ends when its socket closes."""
        done = partial(self.report, pipeline, status, error)
        web_socket = response.web_socket
        assert web_socket is not None
        web_socket.when_closed(partial(end_in_background, pipeline, done))

    # -- the Responses of failures -------------------------------------------------------------

    async def _uncaught(self, pipeline: Any, name: str, original: Any, exc: Exception) -> Response:
        root = pipeline.root
        rescuer = self.rescuer
        if rescuer is not None and original is not None and root is not None and root.passes_through_on_exception:
            logger.warning('Worker "%s" raised %r; passing the request through to the origin', name, exc)
            return await rescuer.rescue(original, exc)
        if isinstance(exc, SubrequestDepthError):
            # One entry: the limit, the chain of Workers, the traceback's repeats collapsed
            # (a Worker calling itself would otherwise log the same frame 32 times).
            logger.error('Uncaught exception in Worker "%s": %s\n%s', name, exc.describe(),
                         collapsed_traceback(exc))
        elif isinstance(exc, BodyReadError):
            # The client's doing (it went away, went silent or sent too much), not a
            # fault of the Worker: no traceback, not an error of this server.
            logger.warning('Worker "%s" could not read its request body: %s', name, exc)
        else:
            logger.error('Uncaught exception in Worker "%s"', name, exc_info=exc)
        return Response("Internal Server Error", status=500, headers=_TEXT)


def _cpu_exceeded(name: str, exc: BaseException | None) -> Response:
    where = _stopped_at(exc)
    logger.error('%s (Worker "%s", %s)', CPU_LIMIT_MESSAGE, name,
                 f"stopped at {where}" if where else "over its budget when its last step ended")
    return Response(CPU_LIMIT_MESSAGE, status=503, headers=_TEXT)


def _limit_exceeded(name: str, exc: ResourceLimitError) -> Response:
    logger.error('%s (uncaught in Worker "%s")', exc, name)
    return Response(str(exc), status=503, headers=_TEXT)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _stopped_at(exc: BaseException | None) -> str | None:
    """``file:line in function`` of the Worker's code where ``exc`` stopped it: the
    innermost frame outside fastbind itself (or the innermost of all)."""
    if exc is None or exc.__traceback__ is None:
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    outside = [f for f in frames if not os.path.abspath(f.filename).startswith(_PACKAGE)]
    frame = (outside or frames)[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def collapsed_traceback(exc: BaseException, longest_cycle: int = 4) -> str:
    """``exc``'s traceback with repeated frames (a frame, or a cycle of a few) written once."""
    frames = traceback.extract_tb(exc.__traceback__)
    keys = [(f.filename, f.lineno, f.name) for f in frames]
    lines = ["Traceback (most recent call last):\n"]
    i = 0
    while i < len(frames):
        for size in range(1, longest_cycle + 1):
            block = keys[i:i + size]
            repeats = 1
            while keys[i + repeats * size:i + (repeats + 1) * size] == block:
                repeats += 1
            if repeats > 1:
                break
        else:
            size, repeats = 1, 1
        lines += traceback.format_list(frames[i:i + size])
        if repeats > 1:
            what = "the frame above" if size == 1 else f"the {size} frames above"
            lines.append(f"  [{what}, {repeats - 1} more times]\n")
        i += size * repeats
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")
