"""What the callgrind scripts share: one process under callgrind, its instruction count.

Each script runs itself with ``--run ...`` under ``valgrind --tool=callgrind`` for N and
for 5 x N calls; the difference of the two totals over 4N is the count per call.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")


def instructions(script: str, args: list[str], out: Path, env: dict[str, str] | None = None) -> int:
    """Instructions executed by ``python script --run *args``, its profile kept in ``out``."""
    # A fixed hash seed: the same dict and set layouts, so the same instructions, each run.
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
         "--dump-line=no", sys.executable, script, "--run", *args],
        check=True, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    match = SUMMARY.search(out.read_bytes())
    if match is None:
        raise RuntimeError(f"no summary line in {out}")
    return int(match[1])
