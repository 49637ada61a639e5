"""A request's Task, started eagerly where the interpreter can: no turn of the loop for a
request answered at once.

Most requests are answered without waiting for anything (a Worker that computes its
answer, a binding to a Worker that does). On Python 3.12 and later the request's Task
runs its first step at once (``asyncio.eager_task_factory``): such a request is answered
before the protocol's callback returns, and its Task is never scheduled. A Task there is
must be: Workers' code sees ``asyncio.current_task()`` (``asyncio.timeout``, aiohttp and
the hang detector need it), and no public API of Python 3.11 lets a step run as a Task's
without one being scheduled; there the Task starts at the loop's next turn, as before.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ("start", "EAGER")

#: Whether a request's Task runs its first step at once (Python 3.12 and later).
EAGER = sys.version_info >= (3, 12)

_Task = asyncio.Task
_eager = getattr(asyncio, "eager_task_factory", None)


def start(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    """The Task of a request's coroutine; on 3.12+, its first step has run when it returns.

    Created directly: the loop's task factory (the runtime's) is for tasks that Workers
    start, and a request is not started inside any Worker.
    """
    if _eager is not None:
        return _eager(loop, coro)  # type: ignore[no-any-return]
    return _Task(coro, loop=loop)
