"""Per-call limits in the core (core.CallLimits on a Fetcher), on both cores (docs/design.md)."""

from __future__ import annotations

from typing import Any

import pytest

from fastbind import Request, Response, Runtime, TooManySubrequestsError, WorkerEntrypoint
from fastbind.watchdog import watchdog


class Counter(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("leaf")

    async def spend(self, n):
        made = 0
        try:
            for _ in range(n):
                await self.env.LEAF.fetch("https://leaf/")
                made += 1
        except TooManySubrequestsError:
            pass
        return made


async def leaf(request, env, ctx):
    return Response("leaf")


def limited(rt: Runtime, worker: str, cpu_ms: Any = None, subrequests: Any = None) -> Any:
    rt.validate()
    handle = rt.core.WorkerHandle(worker, Counter)
    handle.env = rt.core.Env(worker, {"LEAF": rt.resolve_binding(worker, "LEAF", "leaf")})
    return rt.core.Fetcher(handle, worker, None, rt.call_limits(cpu_ms=cpu_ms, subrequests=subrequests))


def test_rpc_through_a_limited_binding_and_nested_scopes_charge_both(core: Any, run: Any) -> None:
    rt = Runtime()
    rt.add_worker("leaf", leaf)
    outer = None
    inner = None

    async def top(request, env, ctx):
        # outer allows 5 in all; inside it, a call allowing 3 of its own.
        first = await outer.spend(10)
        return Response(f"{first}")

    class Middle(WorkerEntrypoint):
        async def spend(self, n):
            own = await inner.spend(n)  # 1 subrequest of the outer scope, then 3 inside
            more = 0
            try:
                for _ in range(n):
                    await self.env.LEAF.fetch("https://leaf/")
                    more += 1
            except TooManySubrequestsError:
                pass
            return own * 10 + more

    rt.add_worker("top", top)
    rt.validate()
    inner = limited(rt, "inner", subrequests=3)
    middle = rt.core.WorkerHandle("middle", Middle)
    middle.env = rt.core.Env("middle", {"LEAF": rt.resolve_binding("middle", "LEAF", "leaf")})
    outer = rt.core.Fetcher(middle, "middle", None, rt.call_limits(subrequests=5))
    response = run(rt.dispatch("top", Request("https://e/")))
    # 1 (the call to inner) + 3 (inner's) = 4 of outer's 5: one more for middle itself.
    assert run(response.text()) == "31"


def test_call_limits_are_checked(core: Any) -> None:
    for cpu_ms, subrequests in ((0, None), (-1, None), (float("inf"), None), (True, None),
                                (None, -1), (None, 1.5), (None, True)):
        with pytest.raises(ValueError):
            core.CallLimits(cpu_ms, subrequests)
    assert core.CallLimits(None, 0).subrequests == 0
    rt = Runtime()
    with pytest.raises(TypeError):
        core.Fetcher(core.WorkerHandle("w", Counter), "W", None, {"cpu_ms": 5})
    assert "cpu_ms=5" in repr(rt.call_limits(cpu_ms=5))


def test_the_watchdog_is_let_go_when_limited_calls_end(core: Any, run: Any) -> None:
    rt = Runtime()
    rt.add_worker("leaf", leaf)
    fetcher = limited(rt, "counter", cpu_ms=1000)

    async def top(request, env, ctx):
        await fetcher.fetch(request)
        never = fetcher.fetch(request)  # made, never awaited: closed
        never.close()
        return Response(str(await fetcher.spend(2)))

    rt.add_worker("top", top)
    before = watchdog.open_calls
    assert run(run_text(rt.dispatch("top", Request("https://e/")))) == "2"
    assert watchdog.open_calls == before


async def run_text(awaitable: Any) -> str:
    return str(await (await awaitable).text())
