"""The compiled core is what loads, unless a pure run was asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastbind import Runtime
from fastbind import core as cores


@pytest.mark.skipif(bool(os.environ.get("FASTBIND_NO_EXTENSIONS")), reason="pure run asked for")
def test_compiled_core_is_loaded() -> None:
    assert cores.compiled is not None, "fastbind._core did not build or import"
    assert cores.impl is cores.compiled
    assert cores.compiled.IMPLEMENTATION == "c"
    assert cores.compiled.__file__.endswith((".so", ".pyd"))
    assert Runtime().implementation == "c"


@pytest.mark.skipif(not os.environ.get("FASTBIND_NO_EXTENSIONS"), reason="only in the pure run")
def test_pure_run_uses_the_twin() -> None:
    assert cores.impl.IMPLEMENTATION == "py"
    assert Runtime().implementation == "py"


def test_both_cores_expose_the_same_names(core) -> None:
    from fastbind import core as cores

    for name in cores.twin.__all__:
        assert hasattr(core, name), name


def test_import_does_not_load_the_http_client() -> None:
    # aiohttp is imported by the first outbound fetch: a process that only dispatches
    # (an embedder, the CLI's check) does not pay the ~120 ms it takes to import.
    code = "import sys, fastbind; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "False"
