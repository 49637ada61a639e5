"""Instructions per call of the raw embedding round trip, of ``Runtime.dispatch`` and of a
binding round trip, counted by callgrind (the cases of ``bench_embed.py``).

Each case runs in a process of its own under ``valgrind --tool=callgrind``, twice: with
N = --calls and N = 5 x --calls calls after a warm-up; the difference of the two totals
over the difference of N is the count per call (start-up and imports cancel out).

    python bench/callgrind_embed.py [--calls 1000] [--core c|py] [--worker json|minimal]

Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import callgrind_count  # bench/: the script's own directory is on sys.path

CASES = ("binding", "raw", "dispatch")


def run_case(case: str, calls: int, worker: str) -> None:
    """The process callgrind watches: a warm-up batch, then one batch of ``calls``."""
    import asyncio

    import uvloop

    from fastbind import Limits, Request, Runtime
    from fastbind.embed import RawDispatcher

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_embed import URL, WORKERS

    leaf_worker, raw_headers = WORKERS[worker]

    rt = Runtime(limits=Limits(subrequests=10 * calls + 1000))
    raw = RawDispatcher(rt, "leaf")
    prebuilt = Request(URL, headers=[(n.decode(), v.decode()) for n, v in raw_headers])

    async def caller(request, env, ctx):  # type: ignore[no-untyped-def]
        forward = Request(URL, headers=[(n.decode(), v.decode()) for n, v in raw_headers])
        fetch = env.LEAF.fetch
        for _ in range(int(request.headers.get("x-calls"))):
            await fetch(forward)
        from fastbind import Response

        return Response(None)

    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf_worker)

    async def batch(n: int) -> None:
        if case == "binding":
            await rt.dispatch("caller", Request(URL, headers={"x-calls": str(n)}))
        elif case == "raw":
            for _ in range(n):
                await raw(b"GET", URL, raw_headers, b"")
        else:
            for _ in range(n):
                await rt.dispatch("leaf", prebuilt)

    async def main() -> None:
        await batch(200)
        await batch(calls)

    uvloop.run(main())
    del asyncio


def instructions(case: str, calls: int, workdir: Path, core: str, worker: str) -> int:
    env = {"FASTBIND_NO_EXTENSIONS": "1"} if core == "py" else None
    return callgrind_count.instructions(
        __file__, [case, str(calls), worker], workdir / f"callgrind.{case}.{core}.{calls}", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--core", choices=("c", "py"), default="c")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker", choices=("json", "minimal"), default="json",
                        help="the Worker both sides reach (bench_embed.py's --worker)")
    parser.add_argument("--run", nargs=3, metavar=("CASE", "CALLS", "WORKER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_case(args.run[0], int(args.run[1]), args.run[2])
        return
    callgrind_count.require_valgrind()
    low, high = args.calls, 5 * args.calls
    per_call: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            counts = [instructions(case, n, Path(tmp), args.core, args.worker) for n in (low, high)]
            per_call[case] = (counts[1] - counts[0]) / (high - low)
            print(f"{case:9s} {per_call[case]:9,.0f} instructions per call", flush=True)
    if "binding" in per_call:
        for case in ("raw", "dispatch"):
            if case in per_call:
                print(f"{case} / binding: {per_call[case] / per_call['binding']:.2f}x")


if __name__ == "__main__":
    main()
