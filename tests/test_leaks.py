"""Nothing of a pipeline outlives it: tests/isolated/pipeline_churn.py, run in a subprocess per core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastbind import core as cores

SCRIPT = Path(__file__).with_name("isolated") / "pipeline_churn.py"
# Enough to show a leak of one object or a few bytes per pipeline; the script's
# default, 100,000, is for running it by hand.
PIPELINES = 8_000


def test_pipelines_leave_nothing_behind() -> None:
    names = ["py"] if cores.compiled is None else ["c", "py"]
    # One process per core, side by side: each measures its own heap.
    procs = {
        core: subprocess.Popen(
            [sys.executable, str(SCRIPT), str(PIPELINES), core],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for core in names
    }
    failures = []
    for core, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or not out.strip():
            failures.append(f"[{core}] exit {proc.returncode}\n{out}\n{err[-4000:]}")
            continue
        result = json.loads(out.strip().splitlines()[-1])
        assert result["core"] == core and result["pipelines"] == PIPELINES
        if result["problems"]:
            failures.append(f"[{core}] {json.dumps(result, indent=1)}")
    if failures:
        pytest.fail("\n".join(failures))
