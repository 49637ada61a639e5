"""The typed public surface: __all__, mypy --strict on the examples and revealed types, _core.pyi."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fastbind
from fastbind import core as cores

ROOT = Path(__file__).resolve().parent.parent
CHECK_FILE = ROOT / "tests" / "typing" / "check_public_api.py"
EXPECTED = re.compile(r"reveal_type\(.*\)\s+# R: (?P<type>.+)$")
REVEALED = re.compile(r'^(?P<file>[^:]+):(?P<line>\d+): note: Revealed type is "(?P<type>.+)"$')


def test_all_lists_every_public_name() -> None:
    for name in fastbind.__all__:
        assert hasattr(fastbind, name), name
    public = {
        name for name, value in vars(fastbind).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and name != "annotations" and name != "TYPE_CHECKING"
    }
    assert public == set(fastbind.__all__)
    for name in fastbind.__all__:
        assert inspect.getdoc(getattr(fastbind, name)), f"fastbind.{name} has no docstring"


def run_mypy(tmp_path: Path, *targets: Path) -> str:
    pytest.importorskip("mypy", reason="mypy is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         *map(str, targets)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_examples_and_revealed_types_under_mypy_strict(tmp_path: Path) -> None:
    output = run_mypy(tmp_path, CHECK_FILE, ROOT / "examples")
    revealed = {}
    for line in output.splitlines():
        match = REVEALED.match(line)
        if match and Path(match["file"]).name == CHECK_FILE.name:
            # mypy before 2.0 spelled builtins in full: compare the short form.
            revealed[int(match["line"])] = match["type"].replace("builtins.", "")
    expected = {}
    for number, line in enumerate(CHECK_FILE.read_text().splitlines(), start=1):
        match = EXPECTED.search(line)
        if match:
            expected[number] = match["type"].strip()
    assert expected, "no reveal_type expectations found"
    assert revealed == expected


def test_the_package_passes_mypy_strict(tmp_path: Path) -> None:
    run_mypy(tmp_path, ROOT / "src" / "fastbind")


def test_core_stub_matches_the_compiled_core() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed")
    if cores.compiled is None:
        pytest.skip("the compiled core is not built")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastbind.core._core",
         "--allowlist", str(ROOT / "tests" / "typing" / "stubtest_allowlist.txt")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
