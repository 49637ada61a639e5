"""The binding round trip over a direct await, timed in strictly alternating short batches.

``fastbind bench`` samples each of its nine cases for 20 ms in turn, so the two samples
of a ratio are taken tens of milliseconds apart. Here the two cases alone take turns
batch by batch (``--calls`` calls each, about a millisecond), and the ratio is the
median of the ratios of each pair: what the machine does to one batch it does to its
neighbour too. Pin it to one CPU on a shared machine:

    taskset -c 1 python bench/paired_binding.py [--pairs 1001] [--calls 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics

import uvloop

from fastbind import core as cores
from fastbind.benchmark import round_trip_runtime, timed_dispatch


async def paired_ratio(pairs: int, calls: int) -> float:
    rt = round_trip_runtime(cores.compiled)  # raises PeerMissing without the compiled core
    for worker in ("floor", "binding"):  # warm-up
        await timed_dispatch(rt, worker, calls)
    ratios = []
    for _ in range(pairs):
        floor = await timed_dispatch(rt, "floor", calls)
        binding = await timed_dispatch(rt, "binding", calls)
        ratios.append(binding / floor)
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1001)
    parser.add_argument("--calls", type=int, default=500, help="calls per batch (at most 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="separate medians to show the spread")
    args = parser.parse_args()
    if not 1 <= args.calls <= 10_000 or args.pairs < 1 or args.runs < 1:
        parser.error("--calls must be 1..10,000, --pairs and --runs at least 1")
    results = [uvloop.run(paired_ratio(args.pairs, args.calls)) for _ in range(args.runs)]
    print(f"binding [c] / direct await, median of {args.pairs} paired batches of {args.calls} calls: "
          + ", ".join(f"{r:.3f}x" for r in results))


if __name__ == "__main__":
    main()
