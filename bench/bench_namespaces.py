"""Dispatch through a namespace vs. a plain binding round trip, side by side in one process.

Every case is a call from inside a running Worker to a Worker whose fetch handler is
``return Response("ok")``, with one prebuilt GET Request forwarded again and again:

- ``binding``: ``await env.CHILD.fetch(request)``, the plain binding round trip.
- ``binding x1000``: a plain binding round trip to each of 1,000 Workers in turn (the
  same code in a module each, as the tenants): what reaching 1,000 different Workers
  costs in time (their objects do not all stay in the CPU's caches), namespace aside.
- ``dispatch``: ``await env.DISPATCHER.get(name).fetch(request)``, ``name`` taking
  each of 1,000 tenant Workers loaded from a directory in turn (one module each): the
  namespace look-up, its LRU and its once-a-second file check, then the same call.
- ``dispatch+sub``: the same with ``limits={"subrequests": 50}`` on each call (a
  budget of its own per call).
- ``dispatch+cpu``: the same with ``limits={"cpu_ms": 50}`` (the pipeline is metered
  from the first such call: two clock reads per step, and the watchdog is told).
- ``process``: one of 4 tenants with ``isolation = "process"``, each in its own
  process: an HTTP round trip over loopback (reported beside, not in the 1.2x goal).

Each is timed per call over --calls calls on one uvloop loop (the process case over
--calls / 20, its body read), in rounds that take turns in a rotating order after a warm-up round that
loads every tenant; the ratio to the binding round trip is taken in each round, and
the median of those is shown with its 10th-90th percentile spread.

    python bench/bench_namespaces.py [--calls 2000] [--rounds 31] [--tenants 1000]
    FASTBIND_NO_EXTENSIONS=1 python bench/bench_namespaces.py     # on the pure twin

``bench/callgrind_namespaces.py`` counts the instructions of the in-process cases.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from fastbind import Limits, Request, Response, Runtime
from fastbind.namespaces import add_namespace

URL = "https://example.com/"
TENANT = 'from fastbind import Response\n\nasync def fetch(request, env, ctx):\n    return Response("ok")\n'
CASES = ("binding", "binding x1000", "dispatch", "dispatch+sub", "dispatch+cpu", "process")
CALL_LIMITS: dict[str, Any] = {"dispatch+sub": {"subrequests": 50}, "dispatch+cpu": {"cpu_ms": 50}}


async def child(request: Request, env: Any, ctx: Any) -> Response:
    return Response("ok")


def tenant_directory(root: Path, count: int) -> list[str]:
    """``count`` tenant Workers (t0000.py, ...), the same code in a module each."""
    names = [f"t{i:04d}" for i in range(count)]
    for name in names:
        (root / f"{name}.py").write_text(TENANT)
    return names


def make_runtime(directory: Path, calls: int, processes: Path | None = None, workers: int = 0) -> Runtime:
    """The caller Worker, its CHILD, the namespace of ``directory`` and, for the
    ``binding x1000`` case, ``workers`` plain Workers bound as W0000, W0001, ..."""
    rt = Runtime(limits=Limits(subrequests=10 * calls + 1000))
    add_namespace(rt, "customers", directory)
    namespaces = {"DISPATCHER": "customers"}
    if processes is not None:
        add_namespace(rt, "isolated", processes, isolation="process")
        namespaces["ISOLATED"] = "isolated"
    services = {"CHILD": "child"}
    for i in range(workers):
        scope: dict[str, Any] = {}
        exec(compile(TENANT, f"<w{i:04d}>", "exec"), scope)  # code objects of their own
        rt.add_worker(f"w{i:04d}", scope["fetch"])
        services[f"W{i:04d}"] = f"w{i:04d}"
    rt.add_worker("caller", caller, services=services, dispatch_namespaces=namespaces)
    rt.add_worker("child", child)
    return rt


async def caller(request: Request, env: Any, ctx: Any) -> Response:
    """One round of one case: its calls from this invocation; the ns per call in a header.

    The names come from a C iterator (a gateway has its tenant's name from the request):
    what is timed is ``get(name).fetch(request)`` against ``fetch(request)``.
    """
    case = request.headers.get("x-case")
    calls = int(request.headers.get("x-calls") or 0)
    names = request.headers.get("x-names", "").split(",")
    sequence = itertools.islice(itertools.cycle(names), calls)
    forward = Request(URL, headers={"accept": "*/*"})
    if case == "binding":
        fetch = env.CHILD.fetch
        start = time.perf_counter_ns()
        for _ in range(calls):
            await fetch(forward)
    elif case == "binding x1000":
        fetches = [env[f"W{i:04d}"].fetch for i in range(len(names))]
        start = time.perf_counter_ns()
        for fetch in itertools.islice(itertools.cycle(fetches), calls):
            await fetch(forward)
    elif case == "process":
        get = env.ISOLATED.get
        start = time.perf_counter_ns()
        for name in sequence:
            await (await get(name).fetch(forward)).bytes()
    else:
        get = env.DISPATCHER.get
        limits = CALL_LIMITS.get(case or "")
        start = time.perf_counter_ns()
        if limits is None:
            for name in sequence:
                await get(name).fetch(forward)
        else:
            for name in sequence:
                await get(name, limits=limits).fetch(forward)
    took = (time.perf_counter_ns() - start) / max(calls, 1)
    return Response(None, headers={"x-ns": str(took)})


async def main(calls: int, rounds: int, tenants: int, with_processes: bool) -> dict[str, Any]:
    samples: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tenants").mkdir()
        names = tenant_directory(root / "tenants", tenants)
        processes = None
        process_names: list[str] = []
        if with_processes:
            processes = root / "isolated"
            processes.mkdir()
            process_names = tenant_directory(processes, 4)
        rt = make_runtime(root / "tenants", calls, processes, workers=tenants)
        cases = [c for c in CASES if c != "process" or with_processes]

        async def round_of(case: str, n: int) -> float:
            # A whole round is one top-level request of the caller Worker.
            which = process_names if case == "process" else names
            headers = {"x-case": case, "x-calls": str(n), "x-names": ",".join(which)}
            response = await rt.dispatch("caller", Request(URL, headers=headers))
            return float(response.headers.get("x-ns") or "nan")

        for round_ in range(rounds + 1):
            shift = round_ % len(cases)
            for case in cases[shift:] + cases[:shift]:
                n = max(calls // 20, 20) if case == "process" else calls
                if round_ == 0:
                    n = len(process_names) * 5 if case == "process" else max(calls, tenants)
                took = await round_of(case, n)
                if round_:
                    samples[case].append(took)
        await rt.aclose()
        return {"samples": {c: v for c, v in samples.items() if v}, "implementation": rt.implementation,
                "tenants": tenants}


def report(results: dict[str, Any]) -> None:
    samples = results["samples"]
    binding = samples["binding"]
    print(f"core: {results['implementation']}, {results['tenants']} tenants loaded, {len(binding)} rounds; "
          "ratios are the median of each round's ratio (p10-p90)")
    for name, values in samples.items():
        ratios = sorted(v / b for v, b in zip(values, binding))
        n = len(ratios)
        print(f"  {name:13s} {statistics.median(values) / 1000:8.2f} us/call (min {min(values) / 1000:.2f})"
              f"  {statistics.median(ratios):7.2f}x binding ({ratios[n // 10]:.2f}-{ratios[n * 9 // 10]:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--no-processes", action="store_true", help="leave the process case out")
    args = parser.parse_args()
    report(uvloop.run(main(args.calls, args.rounds, args.tenants, not args.no_processes)))
