"""Bodies through binding calls: 1 MB and 100 MB through hops (time and memory), JSON with orjson."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from workloads import MB, body_of, body_runtime, json_runtime, peak_growth

from fastbind import core as cores
from fastbind.benchmark import timed_dispatch

SIZES = [pytest.param(1 * MB, id="1MB"), pytest.param(100 * MB, id="100MB")]


@pytest.mark.parametrize("hops", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_body_through_hops(benchmark: Any, core: Any, loop: asyncio.AbstractEventLoop,
                           run_batches: Any, size: int, hops: int) -> None:
    """A POST whose body goes through ``hops`` binding calls to an echo and comes back, uncopied."""
    benchmark.group = f"body {size // MB} MB"
    rt = body_runtime(core, hops, body_of(size))
    # Memory first, in a batch of its own: tracemalloc slows down what it watches.
    benchmark.extra_info["peak_growth_bytes"] = loop.run_until_complete(peak_growth(rt, "body", 10))
    run_batches(lambda calls: timed_dispatch(rt, "body", calls))


@pytest.mark.benchmark(group="json")
def test_json(benchmark: Any, core: Any, run_batches: Any) -> None:
    """POST an orjson body through a binding; the child parses it and answers ``Response.json``."""
    rt = json_runtime(core)
    run_batches(lambda calls: timed_dispatch(rt, "json", calls))


@pytest.mark.benchmark(group="json")
def test_json_floor(benchmark: Any, run_batches: Any) -> None:
    """The same Requests, JSON and child, called with a direct await."""
    rt = json_runtime(cores.impl)
    run_batches(lambda calls: timed_dispatch(rt, "direct", calls))
