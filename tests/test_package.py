"""The package's shape: its layers hold, every module imports alone, no import hides in a function."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fastbind

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(fastbind.__file__).resolve().parent


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] != "__main__":  # (running it is its import)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    if fastbind.core.compiled is not None:
        names += ["fastbind.core._core", "fastbind.http._raw"]
    return names


def test_the_layers_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install '.[test]')")
    command = Path(sys.executable).with_name("lint-imports")  # import-linter's command
    proc = subprocess.run([str(command), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    # An import circle hidden by the order in which fastbind/__init__.py imports its
    # parts shows up when a module is the first one imported.
    def first_import(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                              text=True, timeout=60)
        return name, proc.returncode, proc.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(first_import, _modules()))
    failed = [f"{name}:\n{err}" for name, code, err in results if code != 0]
    assert not failed, "\n".join(failed)
    assert len(results) > 40


def test_no_module_imports_fastbind_inside_a_function() -> None:
    # Such an import is how a cycle hides; a library imported late to keep start-up
    # cheap (aiohttp) is another matter.
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fastbind")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("fastbind") for a in node.names):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def test_no_file_refers_to_a_document_outside_the_repository() -> None:
    # Every Markdown file that a source, doc or config file names is one of the
    # repository's own: the docs stand alone.
    files = []
    for path in ROOT.rglob("*"):
        inside = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in ("build", "dist") or p.endswith(".egg-info") for p in inside):
            continue  # (virtual environments, caches, build output)
        if path.is_file():
            files.append(path)
    ours = {path.name for path in files if path.suffix == ".md"}
    outside = []
    for path in files:
        if path.suffix in (".py", ".pyx", ".pxi", ".pxd", ".pyi", ".h", ".md", ".toml", ".txt", ".sh"):
            for name in set(re.findall(r"\b[\w-]+\.md\b", path.read_text(errors="replace"))):
                if name not in ours:
                    outside.append(f"{path.relative_to(ROOT)}: {name}")
    assert not outside, outside
