"""The CPU watchdog's book of Runtimes: owners that die at any moment (fastbind/watchdog.py)."""

from __future__ import annotations

import gc
from typing import Any

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
