"""How pipelines end (docs/design.md, "Lifecycle" and "Shared execution"): wait_until, leftover tasks, streams, disconnects."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fastbind import (
    FastbindError,
    Limits,
    Request,
    Response,
    Runtime,
    TooManySubrequestsError,
    current_invocation,
)
from fastbind import lifecycle
from fastbind.lifecycle import PIPELINE_ENDED_MESSAGE, WAIT_UNTIL_MESSAGE

URL = "https://example.com/"


class Reports:
    """An ``on_pipeline_end`` hook that can be awaited."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._arrived = asyncio.Event()

    def __call__(self, report: Any) -> None:
        self.items.append(report)
        self._arrived.set()

    async def first(self) -> Any:
        await asyncio.wait_for(self._arrived.wait(), 5)
        return self.items[0]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, at most ``timeout`` seconds, for ``predicate`` to hold."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def live(core: Any) -> dict[str, int]:
    return dict(core.live_counts())


NOTHING_LIVE = {"pipelines": 0, "invocations": 0, "tasks": 0}


# --- wait_until ---------------------------------------------------------------


def test_wait_until_work_runs_on_after_the_response(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        gate = asyncio.Event()
        done: list[str] = []

        async def work() -> None:
            await gate.wait()
            done.append("work")

        async def worker(request, env, ctx):
            ctx.wait_until(work())
            return Response("ok")

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker)
        resp = await rt.dispatch("w", Request(URL))
        assert await resp.text() == "ok"
        assert done == [] and reports.items == []
        assert live(core)["pipelines"] == 1  # the work holds the pipeline open
        gate.set()
        report = await reports.first()
        assert done == ["work"] and report.status == 200 and report.error is None
        assert live(core) == NOTHING_LIVE

    run(main())


def test_wait_until_past_its_allowance_is_cancelled_with_the_message(core, run, caplog) -> None:
    async def main() -> None:
        reports = Reports()
        never = asyncio.Event()
        seen: list[tuple[Any, ...]] = []

        async def work() -> None:
            try:
                await never.wait()
            except asyncio.CancelledError as exc:
                seen.append(exc.args)
                raise

        async def worker(request, env, ctx):
            ctx.wait_until(work())
            return Response("ok")

        rt = Runtime(limits=Limits(wait_until_s=0.2), on_pipeline_end=reports)
        rt.add_worker("w", worker)
        resp = await rt.dispatch("w", Request(URL))
        assert resp.status == 200
        await reports.first()
        assert seen == [(WAIT_UNTIL_MESSAGE,)]

    with caplog.at_level(logging.WARNING, logger="fastbind"):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.name == "fastbind"] == [WAIT_UNTIL_MESSAGE]


def test_wait_until_from_a_child_and_from_a_task_of_the_worker(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        gate = asyncio.Event()
        done: list[str] = []

        async def work(name: str) -> None:
            await gate.wait()
            done.append(name)

        async def child(request, env, ctx):
            ctx.wait_until(work("child"))
            return Response("child")

        async def root(request, env, ctx):
            async def spawned() -> None:
                current_invocation().wait_until(work("task"))

            await asyncio.create_task(spawned())
            return await env.CHILD.fetch(request)

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("root", root, services={"CHILD": "child"})
        rt.add_worker("child", child)
        resp = await rt.dispatch("root", Request(URL))
        assert await resp.text() == "child" and done == []
        gate.set()
        await reports.first()
        assert sorted(done) == ["child", "task"]

    run(main())


def test_wait_until_work_may_add_more_and_its_own_tasks_end_with_it(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        never = asyncio.Event()
        stray_cancelled: list[tuple[Any, ...]] = []
        done: list[str] = []

        async def stray() -> None:
            try:
                await never.wait()
            except asyncio.CancelledError as exc:
                stray_cancelled.append(exc.args)
                raise

        async def second() -> None:
            await asyncio.sleep(0)
            done.append("second")

        async def first(ctx: Any) -> None:
            asyncio.create_task(stray())  # started by wait_until work, never awaited
            await asyncio.sleep(0)
            ctx.wait_until(second())
            done.append("first")

        async def worker(request, env, ctx):
            ctx.wait_until(first(ctx))
            return Response("ok")

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker)
        await rt.dispatch("w", Request(URL))
        await reports.first()
        assert done == ["first", "second"]
        assert stray_cancelled == [(PIPELINE_ENDED_MESSAGE,)]

    run(main())


def test_wait_until_takes_a_task_the_worker_started(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        gate = asyncio.Event()

        async def work() -> str:
            await gate.wait()
            return "done"

        async def worker(request, env, ctx):
            task = asyncio.create_task(work())
            ctx.wait_until(task)  # no longer a leftover: it outlives the response
            kept.append(task)
            return Response("ok")

        kept: list[asyncio.Task[str]] = []
        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker)
        await rt.dispatch("w", Request(URL))
        assert not kept[0].done()
        gate.set()
        await reports.first()
        assert kept[0].result() == "done"

    run(main())


def test_wait_until_after_the_pipeline_ended_raises(core, run) -> None:
    async def main() -> None:
        kept: list[Any] = []

        async def worker(request, env, ctx):
            kept.append(ctx)
            return Response("ok")

        rt = Runtime()
        rt.add_worker("w", worker)
        await rt.dispatch("w", Request(URL))
        late = asyncio.sleep(0)
        with pytest.raises(FastbindError, match="after the pipeline ended"):
            kept[0].wait_until(late)
        late.close()

    run(main())


# --- the end of a pipeline cancels what is left ---------------------------------


def test_leftover_tasks_and_their_children_are_cancelled_before_dispatch_returns(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        never = asyncio.Event()
        started = asyncio.Event()
        seen: dict[str, tuple[Any, ...]] = {}
        tasks: list[asyncio.Task[Any]] = []

        async def leaf(request, env, ctx):
            started.set()
            try:
                await never.wait()
            except asyncio.CancelledError as exc:
                seen["leaf"] = exc.args
                raise
            return Response("never")

        async def grandchild_task() -> None:
            try:
                await never.wait()
            except asyncio.CancelledError as exc:
                seen["grandchild task"] = exc.args
                raise

        async def child_task(env: Any) -> None:
            tasks.append(asyncio.create_task(grandchild_task()))  # a task of a task
            await env.LEAF.fetch(URL)

        async def root(request, env, ctx):
            tasks.append(asyncio.create_task(child_task(env)))  # dropped: never awaited
            await started.wait()
            return Response("ok")

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("root", root, services={"LEAF": "leaf"})
        rt.add_worker("leaf", leaf)
        resp = await rt.dispatch("root", Request(URL))
        # dispatch returned a plain body: everything has ended already.
        assert all(task.done() for task in tasks)
        assert seen == {"leaf": (PIPELINE_ENDED_MESSAGE,), "grandchild task": (PIPELINE_ENDED_MESSAGE,)}
        assert live(core) == NOTHING_LIVE
        assert resp.status == 200
        report = await reports.first()
        assert [(r.caller, r.target, r.depth, r.outcome) for r in report.subrequests] == [
            ("root", "leaf", 2, "canceled")
        ]

    run(main())


def test_tasks_are_accounted_to_the_invocation_that_started_them(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        seen: list[tuple[str, int]] = []

        def note() -> None:
            inv = current_invocation()
            seen.append((inv.worker, inv.depth))

        async def leaf(request, env, ctx):
            note()
            return Response("leaf")

        async def child(request, env, ctx):
            async def task() -> Response:
                note()
                return await env.LEAF.fetch(request.url)

            return await asyncio.create_task(task())

        async def root(request, env, ctx):
            async def task_of_task() -> Response:
                note()
                return await env.CHILD.fetch(URL)

            async def task() -> list[Response]:
                note()
                return await asyncio.gather(task_of_task(), env.CHILD.fetch(URL))

            first = await env.CHILD.fetch(URL)
            # The budget of 3 is root's, shared by every task it started.
            responses = await asyncio.create_task(task())
            with pytest.raises(TooManySubrequestsError):
                await asyncio.create_task(env.CHILD.fetch(URL))
            return Response(str(len(responses) + 1) + (await first.text()))

        rt = Runtime(limits=Limits(subrequests=3), on_pipeline_end=reports)
        rt.add_worker("root", root, services={"CHILD": "child"})
        rt.add_worker("child", child, services={"LEAF": "leaf"})
        rt.add_worker("leaf", leaf)
        resp = await rt.dispatch("root", Request(URL))
        assert await resp.text() == "3leaf"
        assert ("root", 1) in seen and ("child", 2) in seen and ("leaf", 3) in seen
        assert {worker for worker, _ in seen} == {"root", "child", "leaf"}
        report = await reports.first()
        pairs = sorted((r.caller, r.target, r.depth) for r in report.subrequests)
        assert pairs == [("child", "leaf", 3)] * 3 + [("root", "child", 2)] * 3

    run(main())


def test_a_task_that_ignores_its_cancellation_is_cancelled_again(core, run, monkeypatch) -> None:
    monkeypatch.setattr(lifecycle, "_RECANCEL_S", 0.05)

    async def main() -> None:
        never = asyncio.Event()
        cancels: list[int] = []

        async def stubborn() -> None:
            while True:
                try:
                    await never.wait()
                except asyncio.CancelledError:
                    cancels.append(1)
                    if len(cancels) == 3:
                        raise

        async def worker(request, env, ctx):
            asyncio.create_task(stubborn())
            await asyncio.sleep(0)
            return Response("ok")

        rt = Runtime()
        rt.add_worker("w", worker)
        await rt.dispatch("w", Request(URL))
        assert len(cancels) == 3 and live(core) == NOTHING_LIVE

    run(main())


# --- streamed bodies --------------------------------------------------------------


def keeper_and_stream(events: list[str], gate: asyncio.Event | None = None, fail: bool = False):
    """A Worker that starts a task running forever and answers with a streamed body."""

    async def keeper() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("keeper cancelled")
            raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            if gate is not None:
                await gate.wait()
            if fail:
                raise ValueError("the stream broke")
            yield b"b"
        finally:
            events.append("stream closed")

    async def worker(request, env, ctx):
        asyncio.create_task(keeper())
        await asyncio.sleep(0)
        return Response(chunks())

    return worker


def test_a_streamed_body_keeps_the_pipeline_alive_until_read(core, run) -> None:
    async def main() -> None:
        events: list[str] = []
        reports = Reports()
        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", keeper_and_stream(events))
        resp = await rt.dispatch("w", Request(URL))
        await asyncio.sleep(0.01)
        assert events == [] and live(core) == {"pipelines": 1, "invocations": 0, "tasks": 1}
        assert await resp.bytes() == b"ab"
        assert events == ["stream closed", "keeper cancelled"]
        assert live(core) == NOTHING_LIVE and (await reports.first()).status == 200

    run(main())


def test_aclose_closes_the_stream_and_ends_the_pipeline(core, run) -> None:
    async def main() -> None:
        events: list[str] = []
        rt = Runtime()
        rt.add_worker("w", keeper_and_stream(events))
        resp = await rt.dispatch("w", Request(URL))
        assert await resp.body.__anext__() == b"a"
        await resp.aclose()
        assert events == ["stream closed", "keeper cancelled"] and live(core) == NOTHING_LIVE
        await resp.aclose()  # twice is harmless

    run(main())


def test_a_stream_made_by_a_child_flows_through_and_ends_the_pipeline(core, run) -> None:
    async def main() -> None:
        events: list[str] = []

        async def root(request, env, ctx):
            return await env.CHILD.fetch(request)

        rt = Runtime()
        rt.add_worker("root", root, services={"CHILD": "child"})
        rt.add_worker("child", keeper_and_stream(events))
        resp = await rt.dispatch("root", Request(URL))
        assert events == []
        assert await resp.text() == "ab"
        assert events == ["stream closed", "keeper cancelled"] and live(core) == NOTHING_LIVE

    run(main())


def test_a_failing_stream_ends_the_pipeline(core, run) -> None:
    async def main() -> None:
        events: list[str] = []
        rt = Runtime()
        rt.add_worker("w", keeper_and_stream(events, fail=True))
        resp = await rt.dispatch("w", Request(URL))
        with pytest.raises(ValueError, match="the stream broke"):
            await resp.bytes()
        assert events == ["stream closed", "keeper cancelled"] and live(core) == NOTHING_LIVE

    run(main())


def test_a_reader_that_goes_away_mid_stream_ends_the_pipeline(core, run) -> None:
    async def main() -> None:
        events: list[str] = []
        gate = asyncio.Event()
        rt = Runtime()
        rt.add_worker("w", keeper_and_stream(events, gate=gate))
        resp = await rt.dispatch("w", Request(URL))
        reader = asyncio.create_task(resp.bytes())
        await until(lambda: gate._waiters)  # the stream waits for its second chunk
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert events == ["stream closed", "keeper cancelled"] and live(core) == NOTHING_LIVE

    run(main())


def test_a_stream_dropped_unread_ends_its_pipeline_when_collected(core, run) -> None:
    async def main() -> None:
        events: list[str] = []
        rt = Runtime()
        rt.add_worker("w", keeper_and_stream(events))
        resp = await rt.dispatch("w", Request(URL))
        with pytest.warns(ResourceWarning, match="dropped unread"):
            del resp
            gc.collect()
        await until(lambda: live(core) == NOTHING_LIVE)
        assert "keeper cancelled" in events

    run(main())


# --- the caller goes away -------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5, 32])
def test_a_caller_that_goes_away_cancels_the_pipeline_at_every_depth(core, run, depth) -> None:
    async def main() -> None:
        reports = Reports()
        reached = asyncio.Event()
        never = asyncio.Event()
        cancelled: list[int] = []
        task_cancelled: list[int] = []

        async def spawned(level: int) -> None:
            try:
                await never.wait()
            except asyncio.CancelledError:
                task_cancelled.append(level)
                raise

        async def worker(request, env, ctx):
            level = ctx.depth
            asyncio.create_task(spawned(level))  # one dropped task per level
            try:
                if level < depth:
                    return await env.SELF.fetch(request)
                reached.set()
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(level)
                raise
            return Response("never")

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker, services={"SELF": "w"})
        caller = asyncio.create_task(rt.dispatch("w", Request(URL)))
        await asyncio.wait_for(reached.wait(), 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        levels = list(range(1, depth + 1))
        assert cancelled == levels[::-1]  # from the deepest child up
        assert sorted(task_cancelled) == levels
        assert live(core) == NOTHING_LIVE
        report = await reports.first()
        assert report.status is None and isinstance(report.error, asyncio.CancelledError)
        assert [r.outcome for r in report.subrequests] == ["canceled"] * (depth - 1)

    run(main())


def test_wait_until_work_keeps_its_allowance_when_the_caller_goes_away(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        reached = asyncio.Event()
        gate = asyncio.Event()
        done: list[str] = []

        async def work() -> None:
            await gate.wait()
            done.append("work")

        async def worker(request, env, ctx):
            ctx.wait_until(work())
            reached.set()
            await asyncio.Event().wait()

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker)
        caller = asyncio.create_task(rt.dispatch("w", Request(URL)))
        await asyncio.wait_for(reached.wait(), 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert live(core)["pipelines"] == 1
        gate.set()
        await reports.first()
        assert done == ["work"] and live(core) == NOTHING_LIVE

    run(main())


def test_cancelling_the_caller_again_does_not_stop_the_ending(core, run) -> None:
    async def main() -> None:
        reports = Reports()
        reached = asyncio.Event()
        unwinding = asyncio.Event()
        release = asyncio.Event()

        async def slow_to_end() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                unwinding.set()
                await release.wait()  # cleanup that takes a while
                raise

        async def worker(request, env, ctx):
            asyncio.create_task(slow_to_end())
            reached.set()
            await asyncio.Event().wait()

        rt = Runtime(on_pipeline_end=reports)
        rt.add_worker("w", worker)
        caller = asyncio.create_task(rt.dispatch("w", Request(URL)))
        await asyncio.wait_for(reached.wait(), 5)
        caller.cancel()
        await asyncio.wait_for(unwinding.wait(), 5)
        caller.cancel()  # impatient: the caller is cancelled again while the pipeline ends
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert live(core)["pipelines"] == 1  # still ending, on its own
        release.set()
        await reports.first()
        assert live(core) == NOTHING_LIVE

    run(main())


def test_a_caller_cancelled_before_the_worker_ran_leaves_nothing(core, run) -> None:
    async def main() -> None:
        ran: list[str] = []

        async def worker(request, env, ctx):
            ran.append("w")
            return Response("ok")

        rt = Runtime()
        rt.add_worker("w", worker)
        caller = asyncio.create_task(rt.dispatch("w", Request(URL)))
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert ran == [] and live(core) == NOTHING_LIVE

    run(main())


def test_a_body_the_client_did_not_send_is_a_500_logged_as_a_warning(core, run, caplog) -> None:
    # BodyReadError is the client's doing (it went away mid-body): no ERROR, no traceback.
    from fastbind.errors import BodyReadError

    async def reader(request: Request, env: Any, ctx: Any) -> Response:
        raise BodyReadError("The client went away before sending the whole body")

    async def broken(request: Request, env: Any, ctx: Any) -> Response:
        raise ValueError("a bug")

    rt = Runtime()
    rt.add_worker("reader", reader)
    rt.add_worker("broken", broken)
    with caplog.at_level(logging.INFO, logger="fastbind"):
        assert run(rt.dispatch("reader", Request("https://h.test/"))).status == 500
        assert run(rt.dispatch("broken", Request("https://h.test/"))).status == 500
    records = [(r.levelno, r.exc_info is not None) for r in caplog.records if r.name == "fastbind"]
    assert records == [(logging.WARNING, False), (logging.ERROR, True)]
    assert "could not read its request body" in caplog.records[0].getMessage()


def test_a_runtime_does_not_keep_a_finished_loop_alive(core, run) -> None:
    # A Runtime outlives the loops it dispatched on (asyncio.run() after asyncio.run()):
    # the loop it last saw is remembered weakly, so a closed loop is freed.
    import weakref

    seen: list[Any] = []

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        seen.append(weakref.ref(asyncio.get_running_loop()))
        await asyncio.sleep(0)  # suspends: the hang check's timer is pending when the loop closes
        return Response("ok")

    rt = Runtime()
    rt.add_worker("w", worker)
    for _ in range(2):
        assert run(rt.dispatch("w", Request("https://h.test/"))).status == 200
    gc.collect()
    assert len(seen) == 2 and seen[0]() is None and seen[1]() is None
