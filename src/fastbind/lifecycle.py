"""How a pipeline ends: cancel what is left, let wait_until work finish, detect hangs (docs/design.md, "Lifecycle").

The rules, as ``Runtime.dispatch`` applies them:

* **End.** A pipeline ends when its top-level Response's body is consumed: at once
  when it is None, bytes-like or str (before ``dispatch`` returns), else when the
  stream is read to its end, fails, or is closed (``await resp.aclose()``). A
  streamed body dropped unread is closed when it is garbage collected, with a
  ResourceWarning. The code that makes the stream (say an async generator of the
  top-level Worker) runs in the reader's task as the top-level invocation
  (``InvocationContext.run``): its binding calls, fetches and tasks are the pipeline's.
* **Cancel.** When it ends, every task a Worker of the pipeline started (with
  ``create_task``, ``ensure_future`` or ``gather``, from a Worker or from such a task)
  that is still running is cancelled and awaited to its end, and with it every child
  invocation it runs. Then the pipeline is closed: its tasks, contexts and ledger are
  no longer held by fastbind. Tasks not started through the running loop's task
  factory are not known and not cancelled.
* **wait_until.** Work given to ``ctx.wait_until()`` runs on after the end, for at
  most ``Limits.wait_until_s`` seconds; past that it is cancelled with
  ``WAIT_UNTIL_MESSAGE``, which is also logged on the ``fastbind`` logger. Tasks the
  work starts live while it runs and are cancelled when it is over. The
  ``on_pipeline_end`` report comes once all of that has ended.
* **Disconnect.** If the task awaiting ``dispatch`` is cancelled (the client went
  away), the cancellation runs down the chain of binding calls in that task, so
  every child on the way sees ``asyncio.CancelledError``, and the pipeline then ends
  as above: its tasks are cancelled, its wait_until work keeps its allowance (as
  Cloudflare's ``waitUntil()`` does), and ``dispatch`` re-raises the cancellation.
  Cancelling the awaiting task again while it ends the pipeline does not stop the
  ending, which carries on by itself.
* **Hang.** A pipeline is *hung* when none of its code can ever run again before it
  has a response: its top-level invocation has not returned, and every live task of
  the pipeline (the task awaiting ``dispatch``, every task its Workers started,
  wait_until work included) is suspended on

  - another task of the pipeline, or a ``gather()`` of them; or
  - a plain ``asyncio.Future`` (what ``Event.wait``, ``Queue.get``, ``Lock.acquire``,
    ``Condition.wait`` or ``loop.create_future`` await) whose only done-callbacks
    are the wake-ups of the pipeline's own waiting tasks, and which is *closed*:
    every reference to it, and to every object through which the pipeline's code
    reaches it, comes from the pipeline's own suspended code (its coroutines'
    frames and what they hold), none is weak, and no pending timer or callback
    handle is reachable from that code.

  A closed future can be resolved only by code of the pipeline, and none of it can
  run: the response can never come. The check is proven, not guessed: it counts
  references (``sys.getrefcount`` against a walk with ``gc.get_referents`` from the
  pipeline's coroutines), so anything else that holds the future or a container of
  it (a timer, a transport or protocol, another request, a module global, a thread's
  local, a weak dictionary) keeps the pipeline from being called hung. Waits it does
  not cover (``shield``, ``wrap_future``, any other future type, a walk over
  ``hangwatch.settings.graph_budget`` objects) are never called hung.

  Cost: nothing per binding call. ``dispatch`` registers the pipeline while its
  top-level invocation runs, from its first suspension (a dict insert and delete; a
  top-level invocation that returns without suspending cannot hang and is never
  registered); one timer per loop looks every
  ``hangwatch.settings.interval_s`` (1 s) at each registered pipeline's tasks, and
  only a stall seen unchanged at two looks (the same tasks on the same pending
  futures) is proven, once. A hung pipeline's dispatching task is cancelled with
  ``hangwatch.HANG_MESSAGE`` (children see ``CancelledError``), the message is
  logged, ``dispatch`` returns a 500 carrying it and the pipeline ends as above.
  Blind spot: a pipeline task cancelled by a callback the pipeline scheduled
  without keeping its handle (``loop.call_later(5, task.cancel)``) is not seen;
  ``asyncio.timeout()`` and ``wait_for()`` keep theirs and are. The check needs
  CPython's exact reference counts: it is off on other interpreters and on
  free-threaded builds (``hangwatch.SUPPORTED``).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextvars import Context
from typing import Any

__all__ = (
    "end_pipeline",
    "end_in_background",
    "PipelineStream",
    "WAIT_UNTIL_MESSAGE",
    "PIPELINE_ENDED_MESSAGE",
    "logger",
)

logger = logging.getLogger("fastbind")

WAIT_UNTIL_MESSAGE = (
    "waitUntil() tasks did not complete within the allowed time after invocation end "
    "and have been cancelled."
)
PIPELINE_ENDED_MESSAGE = (
    "The top-level response of this task's pipeline is done; tasks still running "
    "have been cancelled."
)

# A cancelled task gets its cancellation again this often until it ends: one that
# catches CancelledError and carries on must not keep its pipeline open forever.
_RECANCEL_S = 1.0

# Tasks that end pipelines, kept here because the event loop holds tasks weakly.
_supervisors: set[asyncio.Task[Any]] = set()


def _spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # An empty context: the task factory must not account the supervisor to a
    # pipeline (dispatch may run inside another pipeline's Worker).
    task = loop.create_task(coro, context=Context())
    _supervisors.add(task)
    task.add_done_callback(_supervisors.discard)
    return task


def _leftovers(pipeline: Any, wait_until_too: bool) -> list[asyncio.Future[Any]]:
    tasks = pipeline.take_tasks()
    if wait_until_too:
        tasks += pipeline.take_waiting()
    current = asyncio.current_task()
    return [task for task in tasks if task is not current]


def _close(pipeline: Any, done: Callable[[], None]) -> None:
    pipeline.close()
    done()


async def _cancel_and_wait(tasks: list[asyncio.Future[Any]], msg: str) -> None:
    for task in tasks:
        task.cancel(msg)
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
        for task in pending:
            logger.warning("%r did not end when cancelled; cancelling it again", task)
            task.cancel(msg)
    for task in tasks:
        if task.cancelled():
            continue
        error = task.exception()  # retrieved here: nobody else will await it
        if error is not None:
            logger.warning("%r raised while its pipeline ended", task, exc_info=error)


async def end_pipeline(
    pipeline: Any, done: Callable[[], None], *, cancel_wait_until: bool = False
) -> None:
    """End ``pipeline``: cancel its running tasks and await them, then supervise wait_until work.

    Returns once every task of the pipeline but its wait_until work has ended. That
    work runs on for at most ``wait_until_s`` seconds under a supervisor task; once
    nothing of the pipeline runs, the pipeline is closed and ``done`` is called.
    ``cancel_wait_until`` cancels the wait_until work now too (the process is going
    down). If the awaiting task is cancelled meanwhile, the ending carries on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + pipeline.wait_until_s
    if _leftovers(pipeline, cancel_wait_until):
        ending = _spawn(loop, _end(pipeline, done, deadline, cancel_wait_until))
        await asyncio.shield(ending)
    elif pipeline.take_waiting():
        _spawn(loop, _supervise_wait_until(pipeline, done, deadline))
    else:
        _close(pipeline, done)


def end_in_background(pipeline: Any, done: Callable[[], None]) -> None:
    """``end_pipeline`` in a supervisor task of its own (nobody awaits the end)."""
    loop = asyncio.get_running_loop()
    _spawn(loop, end_pipeline(pipeline, done))


async def _end(pipeline: Any, done: Callable[[], None], deadline: float, wait_until_too: bool) -> None:
    try:
        # Cancelled tasks may start others while they unwind: repeat until none is left.
        while tasks := _leftovers(pipeline, wait_until_too):
            await _cancel_and_wait(tasks, PIPELINE_ENDED_MESSAGE)
    except BaseException:  # the loop is shutting down and cancelled us
        _close(pipeline, done)
        raise
    if pipeline.take_waiting():
        _spawn(asyncio.get_running_loop(), _supervise_wait_until(pipeline, done, deadline))
    else:
        _close(pipeline, done)


async def _supervise_wait_until(pipeline: Any, done: Callable[[], None], deadline: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        # wait_until work may register more wait_until work: wait until none is left.
        while waiting := pipeline.take_waiting():
            timeout = deadline - loop.time()
            if timeout <= 0:
                logger.warning(WAIT_UNTIL_MESSAGE)
                await _cancel_and_wait(waiting, WAIT_UNTIL_MESSAGE)
                break
            await asyncio.wait(waiting, timeout=timeout)
        # Tasks the wait_until work started and did not await.
        while tasks := pipeline.take_tasks():
            await _cancel_and_wait(tasks, PIPELINE_ENDED_MESSAGE)
    finally:
        _close(pipeline, done)


class PipelineStream:
    """A streamed top-level body: the pipeline ends when it is read to its end, fails or is closed."""

    __slots__ = ("_source", "_end", "_ended", "_loop", "_owner")

    def __init__(
        self, source: Any, end: Callable[[], Awaitable[None]], owner: Any = None
    ) -> None:
        self._ended = True  # until built: __del__ has nothing to end if __aiter__ raises
        self._source = source.__aiter__()
        self._end = end
        # The top-level invocation: the body's code runs as it, in the reader's task,
        # so its binding calls, fetches and tasks belong to the pipeline.
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        try:
            owner = self._owner
            if owner is None:
                return await self._source.__anext__()
            return await owner.run(self._source.__anext__())
        except GeneratorExit:  # this coroutine itself is being closed: it may not await
            raise
        except BaseException:  # its end, an error, or the reader was cancelled
            await self._finish()
            raise

    async def aclose(self) -> None:
        """Close the source (its ``finally`` blocks run) and end the pipeline."""
        if self._ended:
            return
        closer = getattr(self._source, "aclose", None)
        try:
            if closer is not None:
                await (closer() if self._owner is None else self._owner.run(closer()))
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            await self._end()

    def __del__(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._loop.is_closed():
            return  # its tasks went with the loop
        warnings.warn(
            "A streamed top-level response body was dropped unread and unclosed; its "
            "pipeline ends now. Read the body or call `await response.aclose()`.",
            ResourceWarning,
            source=self,
        )
        # The collector may run in any thread, and inside another pipeline's code.
        self._loop.call_soon_threadsafe(
            _end_abandoned, self._loop, self._source, self._end, context=Context()
        )


def _end_abandoned(
    loop: asyncio.AbstractEventLoop, source: Any, end: Callable[[], Awaitable[None]]
) -> None:
    async def close_and_end() -> None:
        try:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            await end()

    _spawn(loop, close_and_end())
