"""Hang detection (fastbind.lifecycle, "Hang"): proven hangs end with a 500, anything else runs on."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fastbind import Request, Response, Runtime, hangwatch
from fastbind.hangwatch import HANG_MESSAGE, WorkerHangError

URL = "https://example.com/"
NOTHING_LIVE = {"pipelines": 0, "invocations": 0, "tasks": 0}
Wait = Callable[[], Awaitable[Any]]


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hangwatch.settings, "interval_s", 0.02)


def serve(leaf: Any, reports: list[Any] | None = None) -> Runtime:
    """root -> CHILD (leaf): the hang, if any, is one binding call down."""

    async def root(request, env, ctx):
        return await env.CHILD.fetch(request)

    rt = Runtime(on_pipeline_end=None if reports is None else reports.append)
    rt.add_worker("root", root, services={"CHILD": "child"})
    rt.add_worker("child", leaf)
    return rt


async def dispatch(rt: Runtime) -> Response:
    return await asyncio.wait_for(rt.dispatch("root", Request(URL)), 10)


# Waits that nothing but the pipeline's own code could ever end.


async def event_nobody_sets() -> None:
    await asyncio.Event().wait()


async def queue_nobody_fills() -> None:
    await asyncio.Queue().get()


async def lock_held_by_itself() -> None:
    lock = asyncio.Lock()
    async with lock:
        await lock.acquire()


async def bare_future() -> None:
    await asyncio.get_running_loop().create_future()


async def condition_nobody_notifies() -> None:
    cond = asyncio.Condition()
    async with cond:
        await cond.wait()


async def tasks_waiting_on_each_other() -> None:
    first_done = asyncio.Event()
    second_done = asyncio.Event()

    async def first() -> None:
        await second_done.wait()
        first_done.set()

    async def second() -> None:
        await first_done.wait()
        second_done.set()

    await asyncio.gather(first(), second())


async def a_task_waiting_forever() -> None:
    await asyncio.create_task(event_nobody_sets())


HANGS = [
    event_nobody_sets, queue_nobody_fills, lock_held_by_itself, bare_future,
    condition_nobody_notifies, tasks_waiting_on_each_other, a_task_waiting_forever,
]


@pytest.mark.parametrize("wait", HANGS, ids=[w.__name__ for w in HANGS])
def test_a_proven_hang_ends_with_a_500(core, run, caplog, wait: Wait) -> None:
    seen: list[tuple[Any, ...]] = []
    reports: list[Any] = []

    async def leaf(request, env, ctx):
        try:
            await wait()
        except asyncio.CancelledError as exc:
            seen.append(exc.args)
            raise
        return Response("never")

    async def main() -> None:
        resp = await dispatch(serve(leaf, reports))
        assert resp.status == 500 and await resp.text() == HANG_MESSAGE
        assert core.live_counts() == NOTHING_LIVE

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert seen == [(HANG_MESSAGE,)]  # the child saw the runtime cancel it
    assert [r.getMessage() for r in caplog.records] == [f'{HANG_MESSAGE} (Worker "root")']
    [report] = reports
    assert report.status == 500 and isinstance(report.error, WorkerHangError)
    assert [r.outcome for r in report.subrequests] == ["canceled"]


def test_a_hang_with_wait_until_work_blocked_too(core, run) -> None:
    async def leaf(request, env, ctx):
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()

        ctx.wait_until(work())
        await asyncio.Event().wait()

    async def main() -> None:
        resp = await dispatch(serve(leaf))
        assert resp.status == 500
        # The pipeline ended; its wait_until work is still allowed to run (and then cancelled).

    run(main())


# Waits that look stuck for a while but that something else will end: never a hang.


def after(ticks: int) -> float:
    return hangwatch.settings.interval_s * ticks


async def sleeps() -> str:
    await asyncio.sleep(after(6))
    return "slept"


async def times_out() -> str:
    try:
        async with asyncio.timeout(after(6)):
            await asyncio.Event().wait()
    except TimeoutError:
        return "timed out"
    return "never"


async def waits_for() -> str:
    try:
        await asyncio.wait_for(asyncio.Event().wait(), after(6))
    except TimeoutError:
        return "timed out"
    return "never"


async def set_by_a_timer_it_did_not_keep() -> str:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(after(6), event.set)
    await event.wait()
    return "set"


async def set_by_its_own_task_later() -> str:
    event = asyncio.Event()

    async def setter() -> None:
        await asyncio.sleep(after(6))
        event.set()

    asyncio.create_task(setter())
    await event.wait()
    return "set"


async def set_by_wait_until_work() -> str:
    from fastbind import current_invocation

    event = asyncio.Event()

    async def setter() -> None:
        await asyncio.sleep(after(6))
        event.set()

    current_invocation().wait_until(setter())
    await event.wait()
    return "set"


async def set_in_an_executor_thread() -> str:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def blocking() -> None:
        import time

        time.sleep(after(6))
        loop.call_soon_threadsafe(event.set)

    loop.run_in_executor(None, blocking)  # the thread holds the event; nothing else does
    await event.wait()
    return "set"


SHARED: dict[str, Any] = {}


async def set_by_someone_else() -> str:
    SHARED["event"] = event = asyncio.Event()  # a global: anyone may set it
    await event.wait()
    return "set"


WEAK: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


async def found_through_a_weak_reference() -> str:
    future = asyncio.get_running_loop().create_future()
    WEAK["future"] = future  # held weakly only: yet anyone may look it up and resolve it
    return await future


def helped(target: str) -> Callable[[], Awaitable[None]]:
    async def helper() -> None:
        await asyncio.sleep(after(6))
        if target == "event":
            SHARED.pop("event").set()
        else:
            WEAK["future"].set_result("resolved")

    return helper


NOT_HANGS: list[tuple[Wait, str, Any]] = [
    (sleeps, "slept", None),
    (times_out, "timed out", None),
    (waits_for, "timed out", None),
    (set_by_a_timer_it_did_not_keep, "set", None),
    (set_by_its_own_task_later, "set", None),
    (set_by_wait_until_work, "set", None),
    (set_in_an_executor_thread, "set", None),
    (set_by_someone_else, "set", helped("event")),
    (found_through_a_weak_reference, "resolved", helped("future")),
]


@pytest.mark.parametrize(
    "wait, answer, helper", NOT_HANGS, ids=[w.__name__ for w, _, _ in NOT_HANGS]
)
def test_a_wait_that_something_can_end_is_not_a_hang(core, run, wait, answer, helper) -> None:
    async def leaf(request, env, ctx):
        return Response(await wait())

    async def main() -> None:
        if helper is not None:
            help_task = asyncio.create_task(helper())
        resp = await dispatch(serve(leaf))
        assert (resp.status, await resp.text()) == (200, answer)
        if helper is not None:
            await help_task

    run(main())


def test_a_hang_after_the_worker_swallowed_the_cancel_is_still_a_500(core, run) -> None:
    async def leaf(request, env, ctx):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return Response("carried on")  # a Worker must not do this; the verdict stands

    async def main() -> None:
        task = asyncio.current_task()
        resp = await dispatch(serve(leaf))
        assert resp.status == 500 and await resp.text() == HANG_MESSAGE
        assert task is not None and task.cancelling() == 0

    run(main())


def test_a_caller_cancelled_along_with_the_verdict_sees_its_cancel(core, run) -> None:
    async def leaf(request, env, ctx):
        await asyncio.Event().wait()

    async def main() -> None:
        rt = serve(leaf)
        caller = asyncio.create_task(rt.dispatch("root", Request(URL)))

        def cancel_too() -> None:
            # Cancel the caller as soon as the verdict has cancelled it.
            if caller.cancelling():
                caller.cancel()
            else:
                asyncio.get_running_loop().call_soon(cancel_too)

        cancel_too()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 10)

    run(main())


def test_no_verdict_when_the_proof_runs_over_its_budget(core, run, caplog, monkeypatch) -> None:
    monkeypatch.setattr(hangwatch.settings, "graph_budget", 50)
    reached = asyncio.Event()

    async def leaf(request, env, ctx):
        ballast = [[i] for i in range(200)]  # more objects than the proof may visit
        reached.set()
        await asyncio.Event().wait()
        return Response(str(len(ballast)))

    async def main() -> None:
        caller = asyncio.create_task(serve(leaf).dispatch("root", Request(URL)))
        await asyncio.wait_for(reached.wait(), 5)
        await asyncio.sleep(after(10))
        assert not caller.done()  # a hang, but not proven: it is left to the caller
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    with caplog.at_level(logging.ERROR, logger="fastbind"):
        run(main())
    assert caplog.records == []


def test_the_check_stops_when_no_pipeline_runs(core, run) -> None:
    async def leaf(request, env, ctx):
        return Response("ok")

    async def main() -> None:
        await dispatch(serve(leaf))
        loop = asyncio.get_running_loop()
        await asyncio.sleep(after(3))
        assert not hangwatch.checking(loop)

    run(main())


def test_waiting_on_the_network_is_not_a_hang(core, run) -> None:
    from aiohttp import web

    from fastbind import fetch

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(after(6))  # before the headers
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(after(6))  # and before the body
        await response.write(b"slow")
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]

        async def leaf(request, env, ctx):
            upstream = await fetch(f"http://127.0.0.1:{port}/")
            return Response(await upstream.text())

        rt = serve(leaf)
        try:
            resp = await dispatch(rt)
            assert (resp.status, await resp.text()) == (200, "slow")
        finally:
            await rt.aclose()
            await runner.cleanup()

    run(main())
