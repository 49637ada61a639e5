"""Bodies through binding calls: 1 MB and 100 MB through hops (time and memory), JSON with orjson."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from workloads import MB, body_runtime, json_runtime

from fastbind import Runtime, _impl
from fastbind.benchmark import timed_dispatch

SIZES = [pytest.param(1 * MB, id="1MB"), pytest.param(100 * MB, id="100MB")]
_bodies: dict[int, bytes] = {}


def body_of(size: int) -> bytes:
    """One body per size for the whole run: building 100 MB is not what is timed."""
    if size not in _bodies:
        _bodies[size] = bytes(size)
    return _bodies[size]


def peak_growth(loop: asyncio.AbstractEventLoop, rt: Runtime, calls: int) -> int:
    """Bytes allocated at the peak of one batch, above what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop.run_until_complete(timed_dispatch(rt, "body", calls))
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("hops", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_body_through_hops(benchmark: Any, core: Any, loop: asyncio.AbstractEventLoop,
                           run_batches: Any, size: int, hops: int) -> None:
    """A POST whose body goes through ``hops`` binding calls to an echo and comes back, uncopied."""
    benchmark.group = f"body {size // MB} MB"
    rt = body_runtime(core, hops, body_of(size))
    # Memory first, in a batch of its own: tracemalloc slows down what it watches.
    benchmark.extra_info["peak_growth_bytes"] = peak_growth(loop, rt, 10)
    run_batches(lambda calls: timed_dispatch(rt, "body", calls))


@pytest.mark.benchmark(group="json")
def test_json(benchmark: Any, core: Any, run_batches: Any) -> None:
    """POST an orjson body through a binding; the child parses it and answers ``Response.json``."""
    rt = json_runtime(core)
    run_batches(lambda calls: timed_dispatch(rt, "json", calls))


@pytest.mark.benchmark(group="json")
def test_json_floor(benchmark: Any, run_batches: Any) -> None:
    """The same Requests, JSON and child, called with a direct await."""
    rt = json_runtime(_impl.core)
    run_batches(lambda calls: timed_dispatch(rt, "direct", calls))
