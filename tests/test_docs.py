"""The README's quick start is examples/quickstart.py, and it runs as the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_start_is_the_example_and_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):readme.index("## What it does")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    example = ROOT / "examples" / "quickstart.py"
    assert code == example.read_text()
    assert "await rt" not in code.split("async def main")[0]  # no top-level await: a program
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "200 {'user': '42', 'roles': ['reader'], 'mode': 'prod', 'note': 'hello'}"
    assert lines[-1] in section  # what the README says it prints
    assert lines[0].startswith("ledger: <SubrequestRecord gateway->auth binding depth=2 outcome=ok>")


def test_the_durable_objects_example_runs_as_documented() -> None:
    doc = (ROOT / "docs" / "durable-objects.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["GET 1", "GET 2", "POST 12", "b 1"]
    assert "`GET 1`, `GET 2`, `POST 12` and `b 1`" in doc
