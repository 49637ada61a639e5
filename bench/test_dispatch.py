"""Top-level dispatch: a whole pipeline per request, with and without ``ctx.wait_until``."""

from __future__ import annotations

from typing import Any

import pytest
from workloads import dispatch_runtime, timed_top_level


@pytest.mark.parametrize("worker", ["plain", "wait_until"])
def test_dispatch(benchmark: Any, core: Any, run_batches: Any, worker: str) -> None:
    """1000 ``await rt.dispatch(...)`` of a Worker answering "ok", until every pipeline has ended."""
    benchmark.group = "dispatch"
    rt = dispatch_runtime(core)
    run_batches(lambda calls: timed_top_level(rt, worker, calls), rounds=20)
