"""The coarse clock of the dispatch fast path (core/_coarse_clock.pxi, namespaces/ticker.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest

from fastbind import core as cores
from fastbind.namespaces.ticker import ticker


def test_the_ticker_is_the_compiled_clock_where_the_core_is_built() -> None:
    expected = cores.twin if cores.compiled is None else cores.compiled
    assert type(ticker) is expected.CoarseClock


@pytest.mark.skipif(cores.compiled is None, reason="the compiled core is not built")
def test_the_compiled_clock_moves_on_while_the_loop_runs_short_steps(run: Any) -> None:
    # The loop's thread lets the GIL go at each poll and takes it back at once: a Python
    # thread waiting for the GIL would wait for seconds. The compiled clock's never takes it.
    clock = cores.compiled.CoarseClock()
    clock.start()

    async def short_steps() -> int:
        start, deadline = clock.tick, time.monotonic() + 10
        while clock.tick < start + 2 and time.monotonic() < deadline:
            spin_until = time.thread_time() + 0.001
            while time.thread_time() < spin_until:
                pass
            await asyncio.sleep(0)
        return clock.tick - start

    assert run(short_steps()) >= 2


FORKED = """
import os, sys, time
from fastbind.namespaces.ticker import ticker

ticker.start()
pid = os.fork()
if pid == 0:  # the child: the parent's thread was not copied; start() makes one
    code = 1
    try:
        ticker.start()
        start, deadline = ticker.tick, time.monotonic() + 10
        while ticker.tick < start + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        code = 0 if ticker.tick > start else 3
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_gets_a_clock_of_its_own() -> None:
    # In a process of its own: forking pytest's (threads and all) is not this test's business.
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKED],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
