"""A coarse clock for the dispatch fast path: a number that goes up every half second.

``env.DISPATCHER.get(name)`` must notice, at most a second late, that a tenant is due
for a look at its files. Reading ``time.monotonic()`` at every call is a fifth of what
the whole look-up costs; reading this clock's tick costs about half of that (24 ns
against 44), and is compared with the tick a table of tenants is good for. The compiled
core's clock is kept by a thread that never takes the GIL, so it moves on while the
loop's thread is busy (the twin's, where the core is not built, is a Python thread,
which may then lag); it runs whichever event loop serves the Runtime, and again in a
child after a fork.
"""

from __future__ import annotations

import os

from .. import core as cores

__all__ = ("ticker",)

ticker = (cores.twin if cores.compiled is None else cores.compiled).CoarseClock()
os.register_at_fork(after_in_child=ticker.after_fork)
