"""One call from a Worker to another: a binding and an RPC call on each core, their floors and the peers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fastbind import core as cores
from fastbind import benchmark as fb
from fastbind.benchmark import Batch, Opener


@pytest.mark.benchmark(group="round trip")
def test_binding(benchmark: Any, core: Any, run_batches: Any) -> None:
    """``await env.CHILD.fetch(request)``: the same GET Request (one header) forwarded each time."""
    rt = fb.round_trip_runtime(core)
    run_batches(lambda calls: fb.timed_dispatch(rt, "binding", calls))


@pytest.mark.benchmark(group="round trip")
def test_floor_direct_await(benchmark: Any, run_batches: Any) -> None:
    """``await child(request, env, ctx)``: the same child and Request, in the same kind of parent."""
    rt = fb.round_trip_runtime(cores.impl)
    run_batches(lambda calls: fb.timed_dispatch(rt, "floor", calls))


@pytest.mark.benchmark(group="rpc")
def test_rpc(benchmark: Any, core: Any, run_batches: Any) -> None:
    """``await env.CHILD.value(7)``: a new RpcChild per call, its async method returning the int."""
    rt = fb.rpc_runtime(core)
    run_batches(lambda calls: fb.timed_dispatch(rt, "rpc", calls))


@pytest.mark.benchmark(group="rpc")
def test_floor_direct_method_call(benchmark: Any, run_batches: Any) -> None:
    """``await instance.value(7)``: the same async method on one existing RpcChild."""
    rt = fb.rpc_runtime(cores.impl)
    run_batches(lambda calls: fb.timed_dispatch(rt, "method", calls))


@pytest.mark.benchmark(group="round trip")
@pytest.mark.parametrize(("opener", "rounds"), [
    pytest.param(fb.open_raw_asgi, 30, id="raw-asgi-by-hand"),
    pytest.param(fb.open_httpx, 10, id="httpx-asgi-transport"),
    pytest.param(fb.open_aiohttp, 10, id="aiohttp-loopback"),
])
def test_peer(benchmark: Any, open_peer: Callable[[Opener], Batch], run_batches: Any,
              opener: Opener, rounds: int) -> None:
    """The same round trip through the HTTP stacks users have today, in this process."""
    run_batches(open_peer(opener), rounds=rounds)
