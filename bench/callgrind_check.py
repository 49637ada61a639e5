"""Instruction counts of the three hot paths against the figures recorded in the repository.

Counts, under ``valgrind --tool=callgrind`` (CPython 3.11 is where the figures were
recorded), the instructions per call of a binding round trip and an RPC call
(``callgrind_binding.py``'s cases) and of a raw embedding round trip
(``callgrind_embed.py``'s), and fails when one is more than 3% above its figure in
``results/instructions.json``. Without valgrind it says so and passes (exit 0).

    python bench/callgrind_check.py                 # check (the CI step)
    python bench/callgrind_check.py --record        # write the figures measured now
    python bench/callgrind_check.py --fast-paths 0  # the public-C-API path (report only)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import callgrind_count  # bench/: the script's own directory is on sys.path

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "results" / "instructions.json"
TOLERANCE = 1.03
# name: (script, arguments after --run, with {n} for the number of calls)
CASES = {
    "binding round trip": ("callgrind_binding.py", ["c", "binding", "{n}"]),
    "rpc call": ("callgrind_binding.py", ["c", "rpc", "{n}"]),
    "raw round trip": ("callgrind_embed.py", ["raw", "{n}", "json"]),
}


def per_call(case: str, calls: int, fast_paths: str, workdir: Path) -> float:
    script, args = CASES[case]
    env = {"FASTBIND_FAST_PATHS": fast_paths}
    counts = []
    for n in (calls, 5 * calls):
        run_args = [a.format(n=n) for a in args]
        out = workdir / f"callgrind.{script}.{'-'.join(run_args)}.{fast_paths}"
        counts.append(callgrind_count.instructions(str(HERE / script), run_args, out, env))
    return (counts[1] - counts[0]) / (4 * calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--fast-paths", choices=("0", "1"), default="1")
    parser.add_argument("--record", action="store_true", help="write the figures measured now")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("callgrind_check: valgrind is not installed; nothing checked")
        return 0
    key = "fast_paths_on" if args.fast_paths == "1" else "fast_paths_off"
    recorded = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    measured: dict[str, float] = {}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            measured[case] = value = per_call(case, args.calls, args.fast_paths, Path(tmp))
            figure = recorded.get(key, {}).get(case)
            if figure is None:
                print(f"{case:20s} {value:9,.0f} instructions per call (no recorded figure)")
                continue
            ratio = value / figure
            verdict = "ok"
            if ratio > TOLERANCE and args.fast_paths == "1" and not args.record:
                verdict, failed = f"MORE THAN {TOLERANCE - 1:.0%} ABOVE", True
            print(f"{case:20s} {value:9,.0f} instructions per call, recorded {figure:,.0f} "
                  f"({ratio:.3f}x): {verdict}", flush=True)
    if args.record:
        recorded.setdefault(key, {}).update({k: round(v) for k, v in measured.items()})
        recorded["python"] = sys.version.split()[0]
        FIGURES.write_text(json.dumps(recorded, indent=2) + "\n")
        print(f"recorded in {FIGURES}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
