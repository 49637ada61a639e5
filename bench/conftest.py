"""Fixtures of the pytest-benchmark suite: the core under test, a uvloop loop, batch timing.

Run with ``python -m pytest bench -q --benchmark-only`` (not part of the default run).
A pytest-benchmark "op" is one batch of ``CALLS`` calls (1000), shown in microseconds:
read them as nanoseconds per call. ``extra_info["ns_per_call"]`` holds the median time per call
measured inside the Worker, without the dispatch of the batch around it.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import uvloop

from fastbind import core as cores
from fastbind.benchmark import CALLS, Batch, Opener, PeerMissing

CORES = [pytest.param(cores.twin, id="py")]
if cores.compiled is not None:
    CORES.insert(0, pytest.param(cores.compiled, id="c"))
else:
    CORES.insert(0, pytest.param(None, id="c", marks=pytest.mark.skip("compiled core not built")))

RunBatches = Callable[..., None]


def pytest_benchmark_scale_unit(config: pytest.Config, unit: str, **_: Any) -> tuple[str, float] | None:
    # Every op is a batch of 1000 calls: in microseconds per batch, it reads as ns per call.
    if unit == "seconds" and config.getoption("benchmark_time_unit", None) in (None, "auto"):
        return "u", 1e6
    return None  # the plugin's own scaling


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> Any:
    """The core a case's Runtime is built on: the compiled core (``c``) or the pure twin (``py``)."""
    return request.param


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh uvloop loop per case: only the task factory of the core under test is installed."""
    loop = uvloop.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def open_peer(loop: asyncio.AbstractEventLoop) -> Iterator[Callable[[Opener], Batch]]:
    """Open a peer (``fastbind.benchmark.open_httpx`` ...) on ``loop``; skip the case if it is missing."""
    stack = AsyncExitStack()

    def open_(opener: Opener) -> Batch:
        try:
            return loop.run_until_complete(opener(stack))
        except PeerMissing as missing:
            pytest.skip(str(missing))

    yield open_
    loop.run_until_complete(stack.aclose())


@pytest.fixture
def run_batches(benchmark: Any, loop: asyncio.AbstractEventLoop) -> RunBatches:
    """Time ``batch(calls)`` with ``benchmark.pedantic``, one batch per round, on ``loop``."""

    def run(batch: Callable[[int], Awaitable[int]], calls: int = CALLS, rounds: int = 30) -> None:
        inside: list[int] = []

        def one_batch() -> None:
            inside.append(loop.run_until_complete(batch(calls)))

        benchmark.pedantic(one_batch, rounds=rounds, warmup_rounds=2, iterations=1)
        benchmark.extra_info["calls_per_batch"] = calls
        benchmark.extra_info["ns_per_call"] = statistics.median(inside[2:] or inside) / calls

    return run
