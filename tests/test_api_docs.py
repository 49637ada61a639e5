"""The API reference builds from the docstrings (docs/build_api.sh, pdoc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_builds(tmp_path: Path) -> None:
    pytest.importorskip("pdoc", reason="pdoc is not installed (pip install '.[docs]')")
    out = tmp_path / "api"
    proc = subprocess.run(
        ["sh", str(ROOT / "docs" / "build_api.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    package = (out / "fastbind.html").read_text()
    for name in ("Runtime", "WorkerEntrypoint", "RawDispatcher", "SubrequestDepthError"):
        assert f'id="{name}"' in package, name
    assert 'id="RawDispatcher"' in (out / "fastbind" / "embed.html").read_text()
    assert 'id="load"' in (out / "fastbind" / "workers.html").read_text()
