"""Scale checks: memory per in-flight pipeline, and the cost of a chain against its depth.

1. **Memory per pipeline.** ``--pipelines`` (100,000) top-level requests in flight at
   once, each a two-Worker pipeline: ``parent`` calls ``child`` through a binding and
   the child waits on one shared ``asyncio.Event``. Once every child waits, the Event is
   set and all of them finish. tracemalloc gives the bytes allocated while they are all
   in flight and at the peak of the whole run, per pipeline; the same is measured for
   the direct-await version of the pipeline (a task running ``parent`` that awaits
   ``child``, same Request and Event). Target: at most 2 KB per pipeline on top of the
   direct version (its task and coroutine frames).
2. **Linear depth.** A call through a chain of 32 nested binding calls against a
   call of depth 1, timed in turns (``fastbind.benchmark.measure``). Target: at most
   32 times the depth-1 call.

    python bench/scale_check.py [--pipelines 100000] [--rounds 15] [--json FILE]

Exits with status 1 if a target is not met.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import uvloop
from workloads import chain_runtime

from fastbind import Request, Response, _core_py, _impl
from fastbind.benchmark import URL, Case, dispatcher, machine, measure, runtime_on

BYTES_PER_PIPELINE = 2048  # on top of the direct version
MAX_DEPTH_RATIO = 32.0


class Gate:
    """Where every child waits: counts the waiting, releases them all at once."""

    def __init__(self) -> None:
        self.waiting = 0
        self.release = asyncio.Event()


async def parent(request: Request, env: Any, ctx: Any) -> Response:
    return await env.CHILD.fetch(request)


def waiting_child(gate: Gate) -> Callable[[Request, Any, Any], Coroutine[Any, Any, Response]]:
    async def child(request: Request, env: Any, ctx: Any) -> Response:
        gate.waiting += 1
        await gate.release.wait()
        return Response("ok")

    return child


async def in_flight_bytes(start: Callable[[], Coroutine[Any, Any, Any]], gate: Gate, count: int) -> dict[str, float]:
    """Bytes per pipeline with ``count`` of them in flight, and at the peak of the run."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.create_task(start()) for _ in range(count)]
        while gate.waiting < count:
            await asyncio.sleep(0)
        in_flight = tracemalloc.get_traced_memory()[0] - base
        gate.release.set()
        for task in tasks:
            await task
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del tasks
    return {"in_flight": in_flight / count, "peak": peak / count}


async def memory_per_pipeline(core: ModuleType, count: int) -> dict[str, dict[str, float]]:
    request = Request(URL, headers={"x-bench": "1"})
    gate = Gate()
    rt = runtime_on(core)
    rt.add_worker("parent", parent, services={"CHILD": "child"})
    rt.add_worker("child", waiting_child(gate))
    fastbind = await in_flight_bytes(lambda: rt.dispatch("parent", request), gate, count)

    gate = Gate()
    child = waiting_child(gate)

    async def direct_parent(request: Request, env: Any, ctx: Any) -> Response:
        return await child(request, env, ctx)

    direct = await in_flight_bytes(lambda: direct_parent(request, None, None), gate, count)
    return {"fastbind": fastbind, "direct": direct}


# (what is chained, its depth-1 case, its depth-32 case): the direct chain is the reference.
CHAINS = (
    ("direct await", "direct chain 1", "direct chain 32"),
    ("binding [c]", "chain 1 [c]", "chain 32 [c]"),
    ("binding [py]", "chain 1 [py]", "chain 32 [py]"),
)


def chain_case(name: str, core: ModuleType | None, depth: int, worker: str) -> Case:
    return Case(name, "floor" if worker == "direct" else "fastbind",
                dispatcher(lambda: chain_runtime(core, depth), worker))


def chain_cases() -> list[Case]:
    return [chain_case(f"direct chain {d}", _impl.core, d, "direct") for d in (1, 32)] + [
        chain_case(f"chain {d} [{label}]", core, d, "chain")
        for label, core in (("c", _impl.compiled), ("py", _core_py)) for d in (1, 32)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "pipelines": args.pipelines, "memory": {}, "depth": {}}
    failed = False

    print(f"{args.pipelines:,} two-Worker pipelines in flight (tracemalloc, bytes per pipeline)")
    for label, core in (("c", _impl.compiled), ("py", _core_py)):
        if core is None:
            print(f"  [{label}] skipped: the compiled core is not built")
            continue
        figures = uvloop.run(memory_per_pipeline(core, args.pipelines))
        extra = figures["fastbind"]["peak"] - figures["direct"]["peak"]
        met = extra <= BYTES_PER_PIPELINE
        failed |= not met
        report["memory"][label] = {**figures, "extra_peak": extra, "met": met}
        print(f"  [{label}] fastbind {figures['fastbind']['in_flight']:,.0f} in flight, "
              f"{figures['fastbind']['peak']:,.0f} peak; direct {figures['direct']['in_flight']:,.0f} "
              f"in flight, {figures['direct']['peak']:,.0f} peak; extra at peak {extra:,.0f} "
              f"(target <= {BYTES_PER_PIPELINE:,}): {'met' if met else 'NOT met'}")

    results = {r.name: r for r in uvloop.run(measure(chain_cases(), 1000, args.rounds, 20_000_000))}
    print(f"a call through 32 nested calls against depth 1 (ns per call, median of {args.rounds} rounds)")
    for what, one_name, deep_name in CHAINS:
        one, deep = results[one_name], results[deep_name]
        if one.skipped or deep.skipped:
            print(f"  {what:13s} skipped: {one.skipped or deep.skipped}")
            continue
        ratio = deep.median / one.median
        entry: dict[str, Any] = {"depth_1": one.median, "depth_32": deep.median, "ratio": ratio}
        line = f"  {what:13s} depth 1 {one.median:9,.0f}  depth 32 {deep.median:9,.0f}  {ratio:5.1f}x"
        if one.role == "fastbind":
            entry["met"] = ratio <= MAX_DEPTH_RATIO
            failed |= not entry["met"]
            line += f" (target <= {MAX_DEPTH_RATIO:.0f}x): {'met' if entry['met'] else 'NOT met'}"
        report["depth"][what] = entry
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
