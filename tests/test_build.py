"""The build is honest: a compile that fails fails the install, naming the way out, and a
build never ships what an earlier build left in its directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WAY_OUT = "FASTBIND_NO_EXTENSIONS=1 pip install fastbind"


def _source_tree(tmp: Path) -> Path:
    """The project's sources in ``tmp``: the build below writes there, not in the checkout.

    The C files Cython generated for the checkout come along (with their times), so the
    copy is not cythonized again.
    """
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.egg-info"))
    return tree


def _pip(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("FASTBIND_NO_EXTENSIONS", "CC", "LDSHARED")}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-build-isolation", "--no-deps", "--no-index", "-q"],
        cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="/bin/false stands for a broken compiler")
def test_a_failing_compiler_fails_the_install_with_the_way_out(tmp_path: Path) -> None:
    pytest.importorskip("Cython", reason="the build needs Cython (pip install '.[test]')")
    if sys.implementation.name != "cpython":
        pytest.skip("interpreters other than CPython always get the pure-Python core")
    tree = _source_tree(tmp_path)
    target = tmp_path / "installed"
    proc = _pip(["install", "--target", str(target), str(tree)], tmp_path,
                CC="/bin/false", LDSHARED="/bin/false")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "fastbind: building the compiled core (fastbind.core._core) failed" in out
    assert WAY_OUT in out
    assert not (target / "fastbind").exists()


def test_a_pure_build_ships_nothing_an_earlier_build_left(tmp_path: Path) -> None:
    tree = _source_tree(tmp_path)
    # What an earlier build of another version (or of the compiled core) left behind.
    plat = f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for lib in ("lib", plat):
        stale = tree / "build" / lib / "fastbind"
        (stale / "core").mkdir(parents=True)
        (stale / "core" / f"_core{suffix}").write_bytes(b"not a library")
        (stale / "old_module.py").write_text("raise ImportError('a module of an old build')\n")
    dist = tmp_path / "dist"
    proc = _pip(["wheel", "-w", str(dist), str(tree)], tmp_path, FASTBIND_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = dist.glob("fastbind-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastbind/core/_twin.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd")) or "old_module" in n], names
    # The license is an SPDX expression (PEP 639; the table form stops building in 2027).
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    lines = zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
    assert "License-Expression: Apache-2.0" in lines

