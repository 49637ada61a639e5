"""Which loop is running: each top-level request checks the task factory of that loop.

The compiled core reads the running loop where asyncio keeps it, in the thread state's
dict (a holder with a pid on CPython 3.11, the loop itself on 3.12), rather
than calling asyncio.get_running_loop(), which on 3.11 makes a getpid() system call each
time (_running_loop.h). These tests hold it to asyncio's answers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

import fastbind
import uvloop

from fastbind import Request, Response, Runtime
from fastbind import core as cores

URL = "https://h.test/"


def test_each_loop_in_turn_gets_the_task_factory(core) -> None:
    # One Runtime, loops of two kinds one after the other in this thread: each request
    # adopts the task its Worker spawns, so the factory is on the loop that runs it.
    spawned: list[asyncio.Task[None]] = []

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        spawned.append(asyncio.create_task(asyncio.Event().wait()))
        return Response("ok")

    rt = Runtime()
    rt.add_worker("w", worker)

    async def main() -> tuple[int, bool]:
        response = await rt.dispatch("w", Request(URL))
        await asyncio.sleep(0)  # the pipeline's end cancels the task it adopted
        return response.status, spawned[-1].cancelled()

    for loop_run in (uvloop.run, asyncio.run, uvloop.run, asyncio.run):
        assert loop_run(main()) == (200, True)
    assert len(spawned) == 4


def test_loops_in_two_threads_at_once_each_get_the_factory(core) -> None:
    # The running loop is per thread: two threads, each with its own loop and Runtime,
    # dispatching at the same time, each adopt the task their Worker spawns.
    import threading

    results: dict[str, tuple[int, bool]] = {}
    both_running = threading.Barrier(2, timeout=10)

    def serve(name: str, loop_run: Any) -> None:
        spawned: list[asyncio.Task[None]] = []

        async def worker(request: Request, env: Any, ctx: Any) -> Response:
            spawned.append(asyncio.create_task(asyncio.Event().wait()))
            await asyncio.sleep(0.05)  # both loops are inside a request now
            return Response("ok")

        rt = Runtime()
        rt.add_worker("w", worker)

        async def main() -> tuple[int, bool]:
            await asyncio.get_running_loop().run_in_executor(None, both_running.wait)
            response = await rt.dispatch("w", Request(URL))
            await asyncio.sleep(0)
            return response.status, spawned[-1].cancelled()

        results[name] = loop_run(main())

    threads = [threading.Thread(target=serve, args=("uvloop", uvloop.run)),
               threading.Thread(target=serve, args=("asyncio", asyncio.run))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"uvloop": (200, True), "asyncio": (200, True)}


FORK_SCRIPT = """
import os, sys
import uvloop
from fastbind import Request, Response, Runtime

async def worker(request, env, ctx):
    return Response("ok")

rt = Runtime()
rt.add_worker("w", worker)
assert rt.implementation == sys.argv[1], rt.implementation

async def main():
    assert (await rt.dispatch("w", Request("https://h.test/"))).status == 200  # holder known
    pid = os.fork()
    if pid == 0:  # the child, still inside its parent's running loop
        code = 3
        try:
            rt.dispatch("w", Request("https://h.test/")).send(None)
        except RuntimeError as exc:
            code = 0 if "no running event loop" in str(exc) else 2
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

sys.exit(uvloop.run(main()))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_see_its_parents_running_loop(core) -> None:
    # asyncio tells a forked child that no loop is running (the holder's pid is the
    # parent's); the compiled core, which does not ask getpid(), must say the same.
    # In a process of its own: this one has threads, and fork() should not copy them.
    implementation = "c" if core is cores.compiled else "py"
    env = dict(os.environ)
    env.pop("FASTBIND_NO_EXTENSIONS", None)
    if implementation == "py":
        env["FASTBIND_NO_EXTENSIONS"] = "1"
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, implementation], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(cores.compiled is None, reason="the compiled core is not built")
@pytest.mark.skipif(sys.version_info >= (3, 13), reason="asyncio keeps the loop in the thread state")
@pytest.mark.skipif(not fastbind.core_info()["fast_paths"], reason="a fast path (FASTBIND_FAST_PATHS=0)")
def test_the_compiled_core_reads_the_running_loop_where_asyncio_keeps_it() -> None:
    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        return Response("ok")

    rt = Runtime()  # the compiled core unless FASTBIND_NO_EXTENSIONS
    rt.add_worker("w", worker)
    if rt.implementation != "c":
        pytest.skip("pure run")
    assert uvloop.run(rt.dispatch("w", Request(URL))).status == 200
    # 3.11 keeps a holder with a pid, 3.12 the loop itself: both are read
    # from the thread state's dict once checked against asyncio's answer.
    assert cores.compiled._running_loop_is_read_directly() is True
