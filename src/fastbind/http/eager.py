"""A request's task, started eagerly where the interpreter can: no turn of the loop for a
request answered at once.

Most requests are answered without waiting for anything (a Worker that computes its
answer, a binding to a Worker that does). On Python 3.12 and later the request's task
runs its first step at once (``asyncio.eager_task_factory``): such a request is answered
before the protocol's callback returns, and its task is never scheduled. A task there
must be: Workers' code sees ``asyncio.current_task()`` (``asyncio.timeout``, aiohttp and
the hang detector need it), and no public API of Python 3.11 runs a step as a task's
without scheduling the task; there it starts at the loop's next turn, as any task does.

Request tasks are created directly: the loop's task factory (the runtime's) is for
tasks that Workers start, and a request is not started inside any Worker.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ("EAGER", "new_task")

#: Whether a request's task runs its first step at once (Python 3.12 and later).
EAGER = sys.version_info >= (3, 12)


def _scheduled(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.Task(coro, loop=loop)


#: ``new_task(loop, coro)``: the task of a request's coroutine; where EAGER, its first
#: step has run when this returns (the task may be done).
new_task: Callable[[asyncio.AbstractEventLoop, Coroutine[Any, Any, None]], asyncio.Task[None]] = (
    getattr(asyncio, "eager_task_factory") if EAGER else _scheduled
)
