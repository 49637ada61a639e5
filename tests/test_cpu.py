"""The shared CPU budget of a pipeline (Limits.cpu_ms), on both cores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from fastbind import Limits, Request, Response, Runtime

BURN_MS = 30


def burn(ms: float) -> None:
    """Use ``ms`` milliseconds of this thread's CPU."""
    end = time.thread_time_ns() + int(ms * 1e6)
    while time.thread_time_ns() < end:
        pass


def test_three_workers_are_charged_the_sum(core, run) -> None:
    reports: list[Any] = []

    async def leaf(request, env, ctx):
        burn(BURN_MS)
        return Response(None)

    async def middle(request, env, ctx):
        burn(BURN_MS)
        await asyncio.sleep(0)  # a second slice
        await env.LEAF.fetch(request)
        return Response(None)

    async def top(request, env, ctx):
        burn(BURN_MS)
        await env.MIDDLE.fetch(request)
        return Response(None)

    rt = Runtime(limits=Limits(measure_cpu=True), on_pipeline_end=reports.append)
    rt.add_worker("top", top, services={"MIDDLE": "middle"})
    rt.add_worker("middle", middle, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    assert run(rt.dispatch("top", Request("https://e/"))).status == 200
    (report,) = reports
    expected = 3 * BURN_MS * 1e6
    assert 0.8 * expected <= report.cpu_ns <= 1.2 * expected
    # Each invocation's own share: binding calls split a slice between invocations
    # with the monotonic clock, which can only read more than the CPU used (the
    # thread may be preempted), so only the lower bound is exact.
    shares = {r.target: r.cpu_ns for r in report.subrequests}
    assert shares.keys() == {"middle", "leaf"}
    for share in shares.values():
        assert share >= 0.8 * BURN_MS * 1e6


def test_unmetered_pipelines_report_no_cpu(core, run) -> None:
    reports: list[Any] = []

    async def top(request, env, ctx):
        return Response(None)

    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("top", top)
    run(rt.dispatch("top", Request("https://e/")))
    assert reports[0].cpu_ns is None


def test_over_budget_pipeline_stops_while_another_completes(core, run, caplog) -> None:
    progress: list[int] = []

    async def hog(request, env, ctx):
        for _ in range(1000):  # 1 s of CPU in small cooperative steps
            burn(1)
            await asyncio.sleep(0)
        return Response("finished")

    async def polite(request, env, ctx):
        for i in range(50):
            progress.append(i)
            await asyncio.sleep(0)
        return Response("done")

    limited = Runtime(limits=Limits(cpu_ms=50))
    limited.add_worker("hog", hog)
    free = Runtime()
    free.add_worker("polite", polite)

    async def main():
        hog_resp, polite_resp = await asyncio.gather(
            limited.dispatch("hog", Request("https://e/")),
            free.dispatch("polite", Request("https://e/")),
        )
        return hog_resp.status, await hog_resp.text(), polite_resp.status, await polite_resp.text()

    assert run(main()) == (503, "Worker exceeded CPU time limit.", 200, "done")
    assert len(progress) == 50
    assert any("Worker exceeded CPU time limit." in r.getMessage() for r in caplog.records)


def test_the_default_limit_meters_a_pipeline_once_the_watchdog_sees_it(core, run) -> None:
    # Every pipeline has the default 30 s limit; none is metered from its start (no clock
    # is read per step). A step the watchdog finds running is metered from that tick on.
    seen: dict[str, Any] = {}

    async def long(request, env, ctx):
        burn(300)  # several of the watchdog's ticks (100 ms at a 30 s limit)
        await asyncio.sleep(0)
        pipeline = ctx.pipeline
        seen.update(limit=pipeline.cpu_limit_ns, metered=pipeline.cpu_enabled, cpu=pipeline.cpu_ns)
        return Response(None)

    assert Limits().cpu_ms == 30_000
    rt = Runtime()
    rt.add_worker("long", long)
    assert run(rt.dispatch("long", Request("https://e/"))).status == 200
    assert seen["limit"] == 30_000 * 1_000_000
    assert seen["metered"] is True
    assert 100e6 <= seen["cpu"] <= 400e6


def test_cpu_ms_0_or_none_means_no_limit(core, run) -> None:
    seen: list[int] = []

    async def worker(request, env, ctx):
        seen.append(ctx.pipeline.cpu_limit_ns)
        return Response(None)

    for cpu_ms in (0, None):
        rt = Runtime(limits=Limits(cpu_ms=cpu_ms))
        rt.add_worker("w", worker)
        run(rt.dispatch("w", Request("https://e/")))
    assert seen == [-1, -1]


def test_tasks_spawned_by_the_pipeline_are_charged(core, run) -> None:
    reports: list[Any] = []

    async def top(request, env, ctx):
        async def background():
            burn(BURN_MS)

        await asyncio.gather(asyncio.create_task(background()), asyncio.create_task(background()))
        return Response(None)

    rt = Runtime(limits=Limits(measure_cpu=True), on_pipeline_end=reports.append)
    rt.add_worker("top", top)
    run(rt.dispatch("top", Request("https://e/")))
    assert reports[0].cpu_ns >= 0.8 * 2 * BURN_MS * 1e6


BUSY_LOOP = """
import asyncio, sys, time
import fastbind
from fastbind import Limits, Request, Response, Runtime

async def spin(request, env, ctx):
    while True:
        pass

async def ok(request, env, ctx):
    return Response("still serving")

async def main():
    rt = Runtime(limits=Limits(cpu_ms=100))
    rt.add_worker("spin", spin)
    rt.add_worker("ok", ok)
    resp = await rt.dispatch("spin", Request("https://e/"))
    after = await rt.dispatch("ok", Request("https://e/"))
    print(rt.implementation, resp.status, await resp.text(), await after.text())

asyncio.run(main())
"""


def test_a_busy_loop_without_await_is_interrupted(core) -> None:
    env = dict(os.environ)
    if core.IMPLEMENTATION == "py":
        env["FASTBIND_NO_EXTENSIONS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", BUSY_LOOP], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(None, 2) == [
        core.IMPLEMENTATION, "503", "Worker exceeded CPU time limit. still serving\n"
    ] or out.stdout.strip() == f"{core.IMPLEMENTATION} 503 Worker exceeded CPU time limit. still serving"
