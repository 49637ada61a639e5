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


CTYPES_LESS = """
import sys
sys.modules["ctypes"] = None  # an interpreter whose ctypes cannot reach the C API
import asyncio, time
from fastbind import Limits, Request, Response, Runtime, core_info

async def spin(request, env, ctx):
    deadline = time.thread_time() + 0.3
    while time.thread_time() < deadline:  # past the budget, and no step to stop at
        pass
    await asyncio.sleep(0)  # the next step: the pipeline is stopped here
    return Response("too late")

async def gateway(request, env, ctx):
    return await env.LEAF.fetch(request)

async def leaf(request, env, ctx):
    return Response("ok")

rt = Runtime(limits=Limits(cpu_ms=50))
rt.add_worker("gateway", gateway, services={"LEAF": "leaf"})
rt.add_worker("leaf", leaf)
rt.add_worker("spin", spin)

async def main():
    ok = await rt.dispatch("gateway", Request("https://example.com/"))
    stopped = await rt.dispatch("spin", Request("https://example.com/"))
    return ok.status, await ok.text(), stopped.status

print(core_info()["core"], *asyncio.run(main()))
"""


def test_the_pure_core_runs_where_ctypes_cannot_reach_the_c_api() -> None:
    # On such an interpreter a busy loop past its CPU budget cannot be interrupted; it
    # is stopped at its next step instead.
    env = {**os.environ, "FASTBIND_NO_EXTENSIONS": "1"}
    done = subprocess.run([sys.executable, "-c", CTYPES_LESS], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pure", "200", "ok", "503"]
