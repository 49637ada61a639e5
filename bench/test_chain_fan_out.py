"""Calls that go deep (a chain of binding calls) and wide (parallel calls gathered)."""

from __future__ import annotations

from typing import Any

import pytest
from workloads import chain_runtime, fan_out_runtime

from fastbind import core as cores
from fastbind.benchmark import timed_dispatch

DEPTHS = [1, 8, 32]
WIDTHS = [1, 10, 100]


@pytest.mark.parametrize("depth", DEPTHS)
def test_chain(benchmark: Any, core: Any, run_batches: Any, depth: int) -> None:
    """A call that runs ``depth`` nested binding calls: parent -> hop1 -> ... -> child."""
    benchmark.group = f"chain depth {depth}"
    rt = chain_runtime(core, depth)
    run_batches(lambda calls: timed_dispatch(rt, "chain", calls))


@pytest.mark.parametrize("depth", DEPTHS)
def test_chain_floor(benchmark: Any, run_batches: Any, depth: int) -> None:
    """The same chain as ``depth`` coroutines awaiting one another."""
    benchmark.group = f"chain depth {depth}"
    rt = chain_runtime(cores.impl, depth)
    run_batches(lambda calls: timed_dispatch(rt, "direct", calls))


@pytest.mark.parametrize("width", WIDTHS)
def test_fan_out(benchmark: Any, core: Any, run_batches: Any, width: int) -> None:
    """1000 binding calls made ``width`` at a time with ``asyncio.gather`` (a task each)."""
    benchmark.group = f"fan-out {width}"
    rt = fan_out_runtime(core, width)
    run_batches(lambda calls: timed_dispatch(rt, "fan_out", calls))


@pytest.mark.parametrize("width", WIDTHS)
def test_fan_out_floor(benchmark: Any, run_batches: Any, width: int) -> None:
    """The same gathers of direct coroutine calls of the child."""
    benchmark.group = f"fan-out {width}"
    rt = fan_out_runtime(cores.impl, width)
    run_batches(lambda calls: timed_dispatch(rt, "direct", calls))
