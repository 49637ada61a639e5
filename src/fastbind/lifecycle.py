"""How a pipeline ends: cancel what is left, let wait_until work finish (DESIGN.md 2.7)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ("end_pipeline", "PipelineStream", "WAIT_UNTIL_MESSAGE", "logger")

logger = logging.getLogger("fastbind")

WAIT_UNTIL_MESSAGE = (
    "waitUntil() tasks did not complete within the allowed time after invocation end "
    "and have been cancelled."
)


async def _cancel_and_wait(tasks: list[asyncio.Future[Any]], msg: str | None = None) -> None:
    for task in tasks:
        task.cancel(msg)
    # Await each to its end; a task that swallows the cancel is asked again.
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel(msg)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # mark retrieved: the pipeline is over, nobody awaits it


async def _wait_until_deadline(pipeline: Any, done: Callable[[], None]) -> None:
    try:
        waiting = pipeline.take_waiting()
        deadline = asyncio.get_running_loop().time() + pipeline.wait_until_s
        while waiting:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                logger.warning(WAIT_UNTIL_MESSAGE)
                await _cancel_and_wait(waiting, WAIT_UNTIL_MESSAGE)
                break
            await asyncio.wait(waiting, timeout=timeout)
            # wait_until work may register more wait_until work.
            waiting = pipeline.take_waiting()
        for task in pipeline.take_tasks():  # spawned by wait_until work, not awaited
            task.cancel()
        leftover = pipeline.take_tasks()
        if leftover:
            await _cancel_and_wait(leftover)
    finally:
        pipeline.close()
        done()


_supervisors: set[asyncio.Task[Any]] = set()


async def end_pipeline(pipeline: Any, done: Callable[[], None], cancelled: bool = False) -> None:
    """End ``pipeline``: cancel its leftover tasks, then supervise wait_until work.

    ``done`` runs once nothing of the pipeline is left running. When the caller went
    away (``cancelled``), wait_until work is cancelled too, as the contract says.
    """
    tasks = pipeline.take_tasks()
    if cancelled:
        tasks += pipeline.take_waiting()
    if tasks:
        await _cancel_and_wait(tasks)
    if pipeline.take_waiting():
        sup = asyncio.get_running_loop().create_task(_wait_until_deadline(pipeline, done))
        _supervisors.add(sup)
        sup.add_done_callback(_supervisors.discard)
        return
    pipeline.close()
    done()


class PipelineStream:
    """Wraps a streamed top-level body: the pipeline ends when it is read or closed."""

    __slots__ = ("_source", "_end", "_ended")

    def __init__(self, source: Any, end: Callable[[], Any]) -> None:
        self._source = source.__aiter__()
        self._end = end
        self._ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        try:
            return await self._source.__anext__()
        except StopAsyncIteration:
            await self._finish()
            raise
        except BaseException:
            await self._finish()
            raise

    async def aclose(self) -> None:
        if self._ended:
            return
        closer = getattr(self._source, "aclose", None)
        try:
            if closer is not None:
                await closer()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            await self._end()
