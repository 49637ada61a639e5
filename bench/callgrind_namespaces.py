"""Instructions per call of a dispatch through a namespace and of a plain binding round
trip, counted by callgrind (the in-process cases of ``bench_namespaces.py``).

Each case runs in a process of its own under ``valgrind --tool=callgrind``, twice: with
N = --calls and N = 5 x --calls calls after a warm-up that loads every tenant; the
difference of the two totals over the difference of N is the count per call (start-up,
imports and loading cancel out).

    python bench/callgrind_namespaces.py [--calls 1000] [--core c|py] [--tenants 1000]

Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import callgrind_count  # bench/: the script's own directory is on sys.path

CASES = ("binding", "dispatch", "dispatch+sub", "dispatch+cpu")
RATIOS = (("dispatch", "binding"), ("dispatch+sub", "binding"), ("dispatch+cpu", "binding"))


def run_case(case: str, calls: int, tenants: int) -> None:
    """The process callgrind watches: a warm-up round that loads every tenant, then ``calls``."""
    import uvloop

    from fastbind import Request
    from fastbind.namespaces import tenants as in_process
    from fastbind.namespaces import ticker

    # Each tenant's files are looked at once a second, and the coarse clock ticks twice a
    # second. The program runs about 50 times slower under callgrind, so both would come
    # 50 times as often per call as in real time: scaled by 60, the count is what a
    # second of real time costs.
    in_process.RELOAD_CHECK_S = 60.0
    ticker.ticker.period = 30.0

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_namespaces import URL, make_runtime, tenant_directory

    with tempfile.TemporaryDirectory() as tmp:
        names = tenant_directory(Path(tmp), tenants)
        rt = make_runtime(Path(tmp), 10 * calls)

        async def batch(n: int) -> None:
            headers = {"x-case": case, "x-calls": str(n), "x-names": ",".join(names)}
            await rt.dispatch("caller", Request(URL, headers=headers))

        async def main() -> None:
            await batch(max(tenants, 200))
            await batch(calls)

        uvloop.run(main())


def instructions(case: str, calls: int, workdir: Path, core: str, tenants: int) -> int:
    env = {"FASTBIND_NO_EXTENSIONS": "1"} if core == "py" else None
    return callgrind_count.instructions(
        __file__, [case, str(calls), str(tenants)], workdir / f"callgrind.{case}.{core}.{calls}", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--core", choices=("c", "py"), default="c")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--run", nargs=3, metavar=("CASE", "CALLS", "TENANTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_case(args.run[0], int(args.run[1]), int(args.run[2]))
        return
    callgrind_count.require_valgrind()
    low, high = args.calls, 5 * args.calls
    per_call: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            counts = [instructions(case, n, Path(tmp), args.core, args.tenants) for n in (low, high)]
            per_call[case] = (counts[1] - counts[0]) / (high - low)
            print(f"{case:13s} {per_call[case]:9,.0f} instructions per call", flush=True)
    for case, ref in RATIOS:
        if case in per_call and ref in per_call:
            print(f"{case} / {ref}: {per_call[case] / per_call[ref]:.2f}x")


if __name__ == "__main__":
    main()
