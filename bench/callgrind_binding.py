"""Instructions per call of a binding round trip, an RPC call and their floors, counted by callgrind.

Timings on a small shared VM move by tens of percent from one run to the next;
instruction counts do not. Each case runs in a process of its own under
``valgrind --tool=callgrind``: one warm-up dispatch, then one dispatch of a timing
parent that makes N calls (the same parents as ``fastbind bench``: ``await
env.CHILD.fetch(request)`` or ``await child(request, env, ctx)``, same Request, same
child; ``await env.CHILD.value(7)`` or ``await instance.value(7)`` on one existing
instance of the same WorkerEntrypoint class, and their sync twins). Every case runs twice, with N = --calls and N = 5 x --calls, and the
difference of the two totals over the difference of N is the count per call: start-up,
imports, the Runtime and the dispatches themselves cancel out.

    python bench/callgrind_binding.py [--calls 1000] [--json FILE] [--only CASE ...]

Needs valgrind on PATH; takes a few minutes (the interpreter runs about 50 times slower).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import callgrind_count  # bench/: the script's own directory is on sys.path

CASES = {  # name: (core, timing parent); the parents of fastbind.benchmark
    "direct await": ("c", "floor"),
    "binding [c]": ("c", "binding"),
    "binding [py]": ("py", "binding"),
    "direct method call": ("c", "method"),
    "rpc [c]": ("c", "rpc"),
    "rpc [py]": ("py", "rpc"),
    "direct sync method call": ("c", "sync_method"),
    "rpc sync [c]": ("c", "rpc_sync"),
}
RATIOS = (  # (case, reference): printed when both were counted
    ("binding [c]", "direct await"),
    ("binding [py]", "binding [c]"),
    ("rpc [c]", "direct method call"),
    ("rpc [py]", "rpc [c]"),
    ("rpc sync [c]", "direct sync method call"),
)
RPC_WORKERS = frozenset(("method", "rpc", "sync_method", "rpc_sync"))


def run_case(core: str, worker: str, calls: int) -> None:
    """The process callgrind watches: a warm-up batch, then one batch of ``calls``."""
    import uvloop

    from fastbind import core as cores
    from fastbind.benchmark import round_trip_runtime, rpc_runtime, timed_dispatch

    make_runtime = rpc_runtime if worker in RPC_WORKERS else round_trip_runtime
    rt = make_runtime(cores.compiled if core == "c" else cores.twin)

    async def batches() -> None:
        await timed_dispatch(rt, worker, 100)
        await timed_dispatch(rt, worker, calls)

    uvloop.run(batches())


def instructions(case: str, calls: int, workdir: Path) -> int:
    core, worker = CASES[case]
    return callgrind_count.instructions(
        __file__, [core, worker, str(calls)], workdir / f"callgrind.{worker}.{core}.{calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--only", nargs="+", metavar="CASE", choices=list(CASES),
                        help="count these cases only (default: all)")
    parser.add_argument("--run", nargs=3, metavar=("CORE", "WORKER", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        core, worker, calls = args.run
        run_case(core, worker, int(calls))
        return
    if not 1 <= 5 * args.calls <= 10_000:  # one invocation's subrequest budget
        parser.error("--calls must be 1..2000: the second run makes 5 x --calls calls")
    callgrind_count.require_valgrind()
    low, high = args.calls, 5 * args.calls
    per_call: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.only or CASES:
            counts = [instructions(case, n, Path(tmp)) for n in (low, high)]
            per_call[case] = (counts[1] - counts[0]) / (high - low)
            print(f"{case:24s} {per_call[case]:9,.0f} instructions per call", flush=True)
    for case, ref in RATIOS:
        if case in per_call and ref in per_call:
            print(f"{case} / {ref}: {per_call[case] / per_call[ref]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"unit": "instructions per call", "calls": [low, high], "cases": per_call}, indent=2) + "\n")


if __name__ == "__main__":
    main()
