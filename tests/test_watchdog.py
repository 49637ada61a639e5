"""The CPU watchdog's book of Runtimes: owners that die at any moment (fastbind/watchdog.py)."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from fastbind import Limits, Request, Response, Runtime
from fastbind.watchdog import watchdog


class Owner:
    """Stands for a Runtime's policy: what the watchdog holds a weak reference to."""


class LetsGoWhenTested:
    """A limit whose truth test drops the last reference to another owner, so that the
    owner's weak-reference callback runs in the middle of the watchdog's loop over the
    owners it guards (as a garbage collection inside that loop does)."""

    def __init__(self, holder: list[Owner]) -> None:
        self.holder = holder

    def __bool__(self) -> bool:
        self.holder.clear()
        return False


def test_an_owner_that_dies_while_the_watchdog_retunes(core: Any) -> None:
    gc.collect()  # Runtimes of earlier tests: their limits no longer count
    base = watchdog.interval
    holder = [Owner()]
    watchdog.guard(holder[0], core, 0.04)  # a short limit: the shortest tick
    assert watchdog.interval == 0.002
    survivor, later = Owner(), Owner()
    watchdog.guard(survivor, core, LetsGoWhenTested(holder))  # type: ignore[arg-type]
    assert holder == []  # the first owner died during that guard, without an error
    watchdog.guard(later, core, None)
    assert watchdog.interval >= base  # its short limit went with it


def burn(ms: float) -> None:
    end = time.thread_time_ns() + int(ms * 1e6)
    while time.thread_time_ns() < end:
        pass


def test_a_pipeline_of_short_steps_is_stopped_when_the_watchdog_was_idle(core: Any, run: Any) -> None:
    # Short steps with a poll of the loop between them: the loop's thread lets the GIL
    # go at each poll and takes it back at once, so a thread waiting for the GIL waits
    # for seconds. The watchdog, idle when the pipeline starts (no Runtime guarded),
    # must still look at it: its looks must not wait for the GIL.
    gc.collect()  # Runtimes of earlier tests: the watchdog has nothing to guard
    time.sleep(3 * 0.1)  # ... and has seen so (its longest tick)
    steps: list[int] = []

    async def hog(request, env, ctx):
        for i in range(1500):  # 1.5 s of CPU in 1 ms steps
            steps.append(i)
            burn(1)
            await asyncio.sleep(0)
        return Response("finished")

    limited = Runtime(limits=Limits(cpu_ms=50))
    limited.add_worker("hog", hog)

    async def main() -> tuple[int, str]:
        response = await limited.dispatch("hog", Request("https://e/"))
        return response.status, await response.text()

    assert run(main()) == (503, "Worker exceeded CPU time limit.")
    assert len(steps) < 1500
