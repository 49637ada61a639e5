"""Durable Object namespaces, storage, input gate and eviction (issue 9), on both cores."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import stat
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fastbind import (
    ConfigError,
    FastbindError,
    Limits,
    Request,
    Response,
    Runtime,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerEntrypoint,
)
from fastbind.durable import (
    SUBREQUEST_KIND,
    DurableObject,
    DurableObjectId,
    DurableObjectNamespace,
    namespace_specs_from_config,
)
from fastbind.errors import DEPTH_MESSAGE
from fastbind.durable.storage import MAX_TRANSACTION_ATTEMPTS, TransactionConflictError

Job = Callable[[Any, Any], Awaitable[Any]]
_urls = itertools.count()


class Harness:
    """A Runtime whose Worker "gw" declares ``objects`` and runs test code as its handler."""

    def __init__(
        self, objects: dict[str, type], *, services: Any = None, vars: Any = None, **options: Any
    ) -> None:
        self.jobs: dict[str, Job] = {}
        self.reports: list[Any] = []
        self.env: Any = None
        self.rt = Runtime(on_pipeline_end=self.reports.append, **options)
        self.rt.add_worker(
            "gw", self._handler, durable_objects=objects, services=services,
            vars={"BUILT": [], **(vars or {})},
        )

    @property
    def built(self) -> list[str]:
        """str(state.id) of every object built, in order (the objects append to their
        Worker's own copy of the var BUILT)."""
        return [] if self.env is None else list(self.env["BUILT"])

    async def _handler(self, request: Request, env: Any, ctx: Any) -> Response:
        self.env = env
        return Response.json(await self.jobs[request.url](env, ctx))

    async def inside(self, job: Job, worker: str = "gw") -> Any:
        """``await job(env, ctx)`` as one top-level request of ``worker``; its JSON result."""
        url = f"https://gw/{next(_urls)}"
        self.jobs[url] = job
        try:
            response = await self.rt.dispatch(worker, Request(url))
        finally:
            del self.jobs[url]
        assert response.status == 200, await response.text()
        return await response.json()

    async def namespace(self, binding: str = "COUNTERS", worker: str = "gw") -> DurableObjectNamespace:
        found: list[DurableObjectNamespace] = []

        async def grab(env: Any, ctx: Any) -> None:
            found.append(env[binding])

        await self.inside(grab, worker)
        return found[0]


async def nothing(request: Request, env: Any, ctx: Any) -> Response:
    return Response(None)


class Counter(DurableObject):
    def __init__(self, state: Any, env: Any) -> None:
        super().__init__(state, env)
        env.BUILT.append(str(state.id))

    async def increment(self, by: int = 1) -> int:
        # Storage never suspends, so nothing runs between this get and put.
        n = (await self.state.storage.get("n") or 0) + by
        await self.state.storage.put("n", n)
        return n

    async def read(self) -> int:
        return await self.state.storage.get("n") or 0

    async def fetch(self, request: Request) -> Response:
        n = await self.increment(int(request.headers.get("x-by") or 1))
        return Response.json({"n": n, "method": request.method, "body": await request.text()})


def bump(name: str = "main", by: int = 1) -> Job:
    async def job(env: Any, ctx: Any) -> int:
        return await env.COUNTERS.get_by_name(name).increment(by)

    return job


def test_counter_counts_a_thousand_concurrent_requests_exactly(core, run) -> None:
    h = Harness({"COUNTERS": Counter})

    async def by_fetch(env: Any, ctx: Any) -> int:
        stub = env.COUNTERS.get(env.COUNTERS.id_from_name("main"))
        response = await stub.fetch("https://room/", method="POST", body="hi")
        data = await response.json()
        assert data["method"] == "POST" and data["body"] == "hi"
        return data["n"]

    async def main() -> tuple[list[int], int]:
        jobs = [by_fetch if i % 2 else bump() for i in range(1000)]
        counts = await asyncio.gather(*(h.inside(job) for job in jobs))
        final = await h.inside(lambda env, ctx: env.COUNTERS.get_by_name("main").read())
        await h.rt.aclose()
        return counts, final

    counts, final = run(main())
    assert sorted(counts) == list(range(1, 1001)) and final == 1000
    assert len(h.built) == 1  # one live instance served every call


def test_state_survives_closing_and_reopening_the_runtime_with_a_directory(core, run, tmp_path) -> None:
    async def session(directory: Any, times: int) -> list[int]:
        h = Harness({"COUNTERS": Counter}, durable_dir=directory)
        try:
            return [await h.inside(bump("lobby")) for _ in range(times)]
        finally:
            await h.rt.aclose()

    assert run(session(tmp_path, 3)) == [1, 2, 3]
    assert [p.name for p in tmp_path.glob("*.sqlite3")] == ["gw.Counter.sqlite3"]
    assert run(session(tmp_path, 2)) == [4, 5]
    assert run(session(None, 1)) == [1]  # no directory: memory, gone with the Runtime


def test_storage_files_are_the_servers_users_alone(core, run, tmp_path) -> None:
    directory = tmp_path / "state" / "objects"  # neither folder exists yet

    async def session() -> int:
        h = Harness({"COUNTERS": Counter}, durable_dir=directory)
        try:
            return await h.inside(bump("lobby"))  # type: ignore[no-any-return]
        finally:
            await h.rt.aclose()

    old_mask = os.umask(0o022)  # the usual umask: files 0644, folders 0755 unless asked
    try:
        assert run(session()) == 1
    finally:
        os.umask(old_mask)
    files = list(directory.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), files
    for folder in (tmp_path / "state", directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_ids_are_deterministic_per_name_and_tagged_with_their_namespace(core, run) -> None:
    h = Harness({"COUNTERS": Counter})
    h.rt.add_worker("other", h._handler, durable_objects={"COUNTERS": Counter})

    async def main() -> None:
        ns = await h.namespace()
        a, b = ns.id_from_name("lobby"), ns.id_from_name("lobby")
        assert a == b and hash(a) == hash(b) and a.name == "lobby"
        assert len(str(a)) == 64 and int(str(a), 16) >= 0
        assert ns.id_from_name("kitchen") != a
        unique = {str(ns.new_unique_id()) for _ in range(100)}
        assert len(unique) == 100
        again = ns.id_from_string(str(a))
        assert again == a and again.name is None and isinstance(again, DurableObjectId)
        assert ns.get(a).id == a and ns.get(a).name == "lobby"

        other_ns = await h.namespace(worker="other")  # another Worker: another namespace
        assert other_ns is not ns and other_ns.id_from_name("lobby") != a
        with pytest.raises(ValueError, match=r'is not an id of namespace COUNTERS \(class Counter of Worker "gw"\)'):
            ns.id_from_string(str(other_ns.id_from_name("lobby")))
        with pytest.raises(ValueError, match=r"COUNTERS.get\(\) was given id .* of namespace other/Counter"):
            ns.get(other_ns.id_from_name("lobby"))

    run(main())


def test_bad_ids_and_stub_calls_give_clear_errors(core, run) -> None:
    h = Harness({"COUNTERS": Counter})

    async def main() -> None:
        ns = await h.namespace()
        with pytest.raises(ValueError, match=r"Invalid Durable Object id 'nope': an id is 64 hexadecimal digits"):
            ns.id_from_string("nope")
        with pytest.raises(ValueError, match="Invalid Durable Object id"):
            ns.id_from_string("zz" * 32)
        with pytest.raises(ValueError, match="is not an id of namespace"):
            ns.id_from_string("ab" * 32)  # well formed, but not made by this namespace
        with pytest.raises(TypeError, match="id_from_string\\(\\) takes a str, not int"):
            ns.id_from_string(42)
        with pytest.raises(TypeError, match=r"COUNTERS.get\(\) takes a DurableObjectId, not str; make one with id_from_name"):
            ns.get("lobby")
        stub = ns.get_by_name("lobby")
        with pytest.raises(FastbindError, match="outside a fastbind invocation"):
            stub.increment()

        async def calls(env: Any, ctx: Any) -> str:
            stub = env.COUNTERS.get_by_name("lobby")
            with pytest.raises(TypeError, match="'fetch' is a reserved method and cannot be called over RPC."):
                await stub.__getattr__("fetch")()  # stub.fetch itself is the HTTP entry
            with pytest.raises(TypeError, match="'_secret' is a reserved method"):
                await stub._secret()
            with pytest.raises(TypeError, match='The RPC receiver does not implement the method "missing".'):
                await stub.missing()
            with pytest.raises(TypeError, match="Cannot pass a value of type object over RPC"):
                await stub.increment(object())
            return "ok"

        assert await h.inside(calls) == "ok"

    run(main())


class Plain:
    """A Durable Object need not subclass DurableObject."""

    def __init__(self, state: Any, env: Any) -> None:
        self.state = state

    def echo(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # sync methods work too
        return {"args": list(args), "kwargs": kwargs}


def test_rpc_through_a_stub_isolates_values_and_propagates_errors(core, run) -> None:
    kept: dict[str, Any] = {}

    class Store(DurableObject):
        async def keep(self, data: dict[str, Any]) -> dict[str, Any]:
            data["seen"] = True  # a copy: the caller's dict does not change
            kept["data"] = data
            return data

        async def fail(self) -> None:
            raise KeyError("no such room")

        async def read_body(self, request: Request) -> str:
            return await request.text()

    h = Harness({"STORE": Store, "PLAIN": Plain})

    async def job(env: Any, ctx: Any) -> Any:
        store = env.STORE.get_by_name("s")
        mine = {"items": [1, 2]}
        back = await store.keep(mine)
        assert mine == {"items": [1, 2]} and back == {"items": [1, 2], "seen": True}
        back["items"].append(3)
        assert kept["data"]["items"] == [1, 2]  # the result was isolated too
        with pytest.raises(KeyError, match="no such room"):
            await store.fail()
        request = Request("https://e/", method="POST", body=b"payload")
        assert await store.read_body(request) == "payload"
        assert request.body_used  # handed over, as through a binding
        with pytest.raises(TypeError, match="The RPC receiver does not implement the method \"fetch_nothing\""):
            await env.PLAIN.get_by_name("p").fetch_nothing()
        with pytest.raises(TypeError, match="Durable Object class Plain does not implement fetch"):
            await env.PLAIN.get_by_name("p").fetch("https://p/")
        return await env.PLAIN.get_by_name("p").echo(1, "two", three=[3])

    assert run(h.inside(job)) == {"args": [1, "two"], "kwargs": {"three": [3]}}


def test_fetch_hands_the_request_over_like_a_binding(core, run) -> None:
    seen: dict[str, Any] = {}
    payload = memoryview(b"zero copy")

    class Echo(DurableObject):
        async def fetch(self, request: Request) -> Response:
            seen["same body"] = request.body is payload
            request.headers.set("x-changed", "1")
            return Response("ok")

    h = Harness({"ECHO": Echo})

    async def job(env: Any, ctx: Any) -> Any:
        request = Request("https://e/", method="PUT", body=payload, headers={"x-a": "1"})
        await env.ECHO.get_by_name("e").fetch(request)
        return [request.body_used, request.headers.get("x-changed")]

    assert run(h.inside(job)) == [True, None]
    assert seen == {"same body": True}


def test_an_object_calls_service_bindings_from_the_declaring_workers_env(core, run) -> None:
    class Auth(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            return Response(None, headers={"x-user": "42", "x-depth": str(self.ctx.depth)})

    class Room(DurableObject):
        async def who(self) -> list[Any]:
            response = await self.env.AUTH.fetch("https://auth/check")
            return [response.headers.get("x-user"), response.headers.get("x-depth"), self.env.MODE]

    h = Harness({"ROOMS": Room}, services={"AUTH": "auth"}, vars={"MODE": "prod"})
    h.rt.add_worker("auth", Auth)

    async def job(env: Any, ctx: Any) -> Any:
        return await env.ROOMS.get_by_name("lobby").who()

    async def room_id(env: Any, ctx: Any) -> str:
        return str(env.ROOMS.id_from_name("lobby"))

    assert run(h.inside(job)) == ["42", "3", "prod"]
    room_id = run(h.inside(room_id))
    ledger = [(r.caller, r.target, r.kind, r.depth, r.outcome) for r in h.reports[0].subrequests]
    assert ledger == [
        ("gw", f"Room:{room_id}", SUBREQUEST_KIND, 2, "ok"),
        (f"Room:{room_id}", "auth", "binding", 3, "ok"),
    ]


def test_depth_limit_holds_through_objects(core, run) -> None:
    depths: list[int] = []

    class Diver(DurableObject):
        async def dive(self) -> None:
            from fastbind import current_invocation

            depths.append(current_invocation().depth)
            # Calling itself does not deadlock: awaiting a call opens the input gate.
            await self.env.DIVERS.get(self.state.id).dive()

    h = Harness({"DIVERS": Diver}, limits=Limits(depth=5))

    async def job(env: Any, ctx: Any) -> str:
        with pytest.raises(SubrequestDepthError) as raised:
            await env.DIVERS.get_by_name("d").dive()
        return str(raised.value)

    assert run(h.inside(job)) == DEPTH_MESSAGE
    assert depths == [2, 3, 4, 5]


def test_subrequest_limit_holds_for_callers_and_for_objects(core, run) -> None:
    class Fan(DurableObject):
        async def ping(self) -> str:
            return "pong"

        async def fan_out(self, n: int) -> int:
            stub = self.env.FANS.get_by_name("leaf")
            for i in range(n):
                await stub.ping()  # each is one subrequest of this call
            return n

    h = Harness({"FANS": Fan}, limits=Limits(subrequests=3))

    async def job(env: Any, ctx: Any) -> list[str]:
        stub = env.FANS.get_by_name("root")
        assert await stub.fan_out(3) == 3  # the object's own budget: 3 of 3
        with pytest.raises(TooManySubrequestsError):
            await stub.fan_out(4)  # the caller's third; the object's fourth fails
        await stub.ping()
        with pytest.raises(TooManySubrequestsError, match="Too many subrequests."):
            await stub.ping()  # the caller's fourth: the object never sees it
        return ["ok"]

    assert run(h.inside(job)) == ["ok"]


def test_input_gate_admits_calls_in_arrival_order_while_blocked(core, run) -> None:
    log: list[str] = []
    events: dict[str, asyncio.Event] = {}

    class Room(DurableObject):
        def __init__(self, state: Any, env: Any) -> None:
            super().__init__(state, env)
            log.append("build")
            state.block_concurrency_while(self.load)  # not awaited: holds the first call too

        async def load(self) -> None:
            await events["loaded"].wait()
            log.append("loaded")

        async def record(self, i: int) -> None:
            log.append(f"start {i}")
            if i == 3:
                assert await self.state.block_concurrency_while(self.pause()) == "paused"
            log.append(f"end {i}")

        async def pause(self) -> str:
            for _ in range(3):
                await asyncio.sleep(0)
            log.append("paused")
            return "paused"

    h = Harness({"ROOMS": Room})

    def record(i: int) -> Job:
        return lambda env, ctx: env.ROOMS.get_by_name("r").record(i)

    async def main() -> None:
        events["loaded"] = asyncio.Event()
        calls = [asyncio.create_task(h.inside(record(i))) for i in range(6)]
        for _ in range(5):  # let every call reach the gate
            await asyncio.sleep(0)
        assert log == ["build"]
        events["loaded"].set()
        calls.append(asyncio.create_task(h.inside(record(6))))  # arrives behind the queue
        await asyncio.gather(*calls)

    run(main())
    order = ["build", "loaded"]
    for i in range(7):
        order += [f"start {i}", "paused", f"end {i}"] if i == 3 else [f"start {i}", f"end {i}"]
    assert log == order


def test_input_gate_lets_the_next_call_in_only_when_a_call_awaits_other_io(core, run) -> None:
    log: list[str] = []

    class Room(DurableObject):
        async def storage_only(self, i: int) -> None:
            log.append(f"start {i}")
            await self.state.storage.put("last", i)
            await self.state.storage.get("last")
            log.append(f"end {i}")

        async def sleeps(self, i: int) -> None:
            log.append(f"start {i}")
            await asyncio.sleep(0)  # not storage: the gate opens
            log.append(f"end {i}")

    h = Harness({"ROOMS": Room})

    def call(method: str, i: int) -> Job:
        return lambda env, ctx: getattr(env.ROOMS.get_by_name("r"), method)(i)

    async def main() -> None:
        await asyncio.gather(*(h.inside(call("storage_only", i)) for i in range(2)))
        await asyncio.gather(*(h.inside(call("sleeps", i)) for i in range(2, 4)))

    run(main())
    assert log == ["start 0", "end 0", "start 1", "end 1", "start 2", "start 3", "end 2", "end 3"]


def test_calling_the_object_from_its_own_blocking_callback_is_refused(core, run, caplog) -> None:
    class Room(DurableObject):
        async def outer(self) -> None:
            await self.state.block_concurrency_while(self.inner)

        async def inner(self) -> None:
            await self.env.ROOMS.get(self.state.id).ping()

        async def ping(self) -> str:
            return "pong"

    h = Harness({"ROOMS": Room})

    async def job(env: Any, ctx: Any) -> str:
        with pytest.raises(FastbindError, match=r"was called from its own block_concurrency_while\(\) callback") as raised:
            await env.ROOMS.get_by_name("r").outer()
        assert str(raised.value).startswith("Durable Object Room:")
        return await env.ROOMS.get_by_name("r").ping()

    with caplog.at_level(logging.WARNING, "fastbind"):
        assert run(h.inside(job)) == "pong"
    assert "was reset" in caplog.text  # the failed callback reset the object


def test_a_failed_blocking_callback_resets_the_object(core, run, caplog) -> None:
    class Room(DurableObject):
        def __init__(self, state: Any, env: Any) -> None:
            super().__init__(state, env)
            env.BUILT.append(str(state.id))
            state.block_concurrency_while(self.load)

        async def load(self) -> None:
            if len(self.env.BUILT) == 1:
                raise ValueError("corrupt snapshot")

        async def ping(self) -> int:
            return len(self.env.BUILT)

    h = Harness({"ROOMS": Room})

    async def job(env: Any, ctx: Any) -> list[Any]:
        with pytest.raises(FastbindError, match=r"was reset: its block_concurrency_while\(\) callback raised ValueError") as raised:
            await env.ROOMS.get_by_name("r").ping()
        assert isinstance(raised.value.__cause__, ValueError)
        return [await env.ROOMS.get_by_name("r").ping()]

    with caplog.at_level(logging.WARNING, "fastbind"):
        assert run(h.inside(job)) == [2]  # built again, and this time it loaded


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # bounded: at most about 5 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_idle_objects_are_evicted_and_rebuilt_from_storage(core, run) -> None:
    h = Harness({"COUNTERS": Counter}, durable_idle_s=0.02)

    async def main() -> list[int]:
        ns = await h.namespace()
        values = [await h.inside(bump("a")), await h.inside(bump("a"))]
        assert ns.live_count == 1
        await _until(lambda: ns.live_count == 0, "the idle object to leave memory")
        values.append(await h.inside(bump("a")))
        await h.rt.aclose()
        return values

    assert run(main()) == [1, 2, 3]
    assert len(h.built) == 2 and h.built[0] == h.built[1]


def test_an_object_with_a_call_in_progress_is_not_evicted(core, run) -> None:
    events: dict[str, asyncio.Event] = {}

    class Room(DurableObject):
        async def hold(self) -> str:
            events["holding"].set()
            await events["release"].wait()
            return "released"

    h = Harness({"ROOMS": Room}, durable_idle_s=0.01)

    async def main() -> None:
        events.update(holding=asyncio.Event(), release=asyncio.Event())
        ns = await h.namespace("ROOMS")
        call = asyncio.create_task(h.inside(lambda env, ctx: env.ROOMS.get_by_name("r").hold()))
        await events["holding"].wait()
        await asyncio.sleep(0.05)  # several idle periods pass while the call waits
        assert ns.live_count == 1
        events["release"].set()
        assert await call == "released"
        await _until(lambda: ns.live_count == 0, "the object to leave memory once idle")
        await h.rt.aclose()

    run(main())


def test_aclose_drops_live_objects_and_cancels_their_timers(core, run) -> None:
    h = Harness({"COUNTERS": Counter}, durable_idle_s=3600)

    async def main() -> None:
        ns = await h.namespace()
        await asyncio.gather(*(h.inside(bump(name)) for name in "abc"))
        timers = [live.timer for live in ns._live.values()]
        assert len(timers) == 3 and all(t is not None and not t.cancelled() for t in timers)
        await h.rt.aclose()
        assert ns.live_count == 0 and all(t.cancelled() for t in timers)
        # The Runtime can serve again: a fresh in-memory database.
        assert await h.inside(bump("a")) == 1
        await h.rt.aclose()

    run(main())


def test_cancelling_the_caller_cancels_the_objects_call(core, run) -> None:
    events: dict[str, asyncio.Event] = {}
    outcome: list[str] = []

    class Room(DurableObject):
        async def wait_forever(self) -> None:
            events["started"].set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        async def ping(self) -> str:
            return "pong"

    h = Harness({"ROOMS": Room})

    async def main() -> str:
        events["started"] = asyncio.Event()
        call = asyncio.create_task(h.inside(lambda env, ctx: env.ROOMS.get_by_name("r").wait_forever()))
        await events["started"].wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return await h.inside(lambda env, ctx: env.ROOMS.get_by_name("r").ping())

    assert run(main()) == "pong"
    assert outcome == ["cancelled"]


class Vault(DurableObject):
    async def exercise(self) -> dict[str, Any]:
        s = self.state.storage
        await s.put("a", {"x": [1, 2], "t": (3, 4)})
        await s.put({"b": 2, "c": "three", "blob": b"\x00\xff", "p/1": 1, "p/2": 2, "q": None})
        result: dict[str, Any] = {
            "a": await s.get("a"),
            "missing": await s.get("missing"),
            "many": await s.get(["c", "b", "missing"]),
            "blob": await s.get("blob") == b"\x00\xff",
            "q": await s.get(["q"]),
            "prefix": await s.list(prefix="p/"),
            "range": list(await s.list(start="b", end="p")),
            "after": list(await s.list(start_after="b", limit=2)),
            "reverse": list(await s.list(reverse=True, limit=2)),
        }
        result["deleted one"] = await s.delete("c")
        result["deleted absent"] = await s.delete("c")
        result["deleted many"] = await s.delete(["p/1", "p/2", "nope"])
        result["left"] = list(await s.list())
        await s.delete_all()
        result["after delete_all"] = await s.list()
        return result

    async def bad_inputs(self) -> str:
        s = self.state.storage
        with pytest.raises(TypeError, match='Cannot store the value of key "k" in Durable Object storage: Type is not JSON serializable: set'):
            await s.put("k", {1, 2})
        with pytest.raises(TypeError, match="Type is not JSON serializable: bytes"):
            await s.put({"nested": {"blob": b"x"}})
        with pytest.raises(TypeError, match="Durable Object storage keys must be str, not int"):
            await s.put(1, "one")
        with pytest.raises(TypeError, match="takes a key \\(str\\) or a list of keys, not set"):
            await s.get({"a"})
        with pytest.raises(TypeError, match="put\\(\\) takes a key and a value"):
            await s.put("only a key")
        with pytest.raises(ValueError, match="list\\(\\) takes start or start_after, not both"):
            await s.list(start="a", start_after="b")
        with pytest.raises(ValueError, match="list\\(\\) limit must be a positive int, not 0"):
            await s.list(limit=0)
        assert await s.list() == {}  # nothing was stored by the failed calls
        return "ok"


def test_storage_get_put_delete_list(core, run) -> None:
    h = Harness({"VAULTS": Vault})
    result = run(h.inside(lambda env, ctx: env.VAULTS.get_by_name("v").exercise()))
    assert result == {
        "a": {"x": [1, 2], "t": [3, 4]},  # JSON data: a tuple comes back as a list
        "missing": None,
        "many": {"b": 2, "c": "three"},
        "blob": True,
        "q": {"q": None},
        "prefix": {"p/1": 1, "p/2": 2},
        "range": ["b", "blob", "c"],
        "after": ["blob", "c"],
        "reverse": ["q", "p/2"],
        "deleted one": True,
        "deleted absent": False,
        "deleted many": 2,
        "left": ["a", "b", "blob", "q"],
        "after delete_all": {},
    }


def test_storage_keeps_bytes_as_bytes(core, run) -> None:
    seen: list[Any] = []

    class Blobs(DurableObject):
        async def roundtrip(self) -> None:
            await self.state.storage.put("blob", bytearray(b"\x00\xff"))
            seen.append(await self.state.storage.get("blob"))

    h = Harness({"BLOBS": Blobs})
    run(h.inside(lambda env, ctx: env.BLOBS.get_by_name("b").roundtrip()))
    assert seen == [b"\x00\xff"] and type(seen[0]) is bytes


def test_storage_bad_inputs_give_clear_errors(core, run) -> None:
    h = Harness({"VAULTS": Vault})
    assert run(h.inside(lambda env, ctx: env.VAULTS.get_by_name("v").bad_inputs())) == "ok"


def test_transactions_commit_all_or_nothing(core, run) -> None:
    class Ledger(DurableObject):
        async def run_all(self) -> dict[str, Any]:
            s = self.state.storage

            async def move(txn: Any) -> dict[str, Any]:
                await txn.put({"from": 90, "to": 10})
                assert await txn.get("from") == 90  # sees its own writes
                assert await s.get("from") == 100  # others do not, yet
                await txn.delete("note")
                return await txn.list()

            await s.put({"from": 100, "to": 0, "note": "n"})
            seen = await s.transaction(move)

            async def fails(txn: Any) -> None:
                await txn.put("from", 0)
                raise RuntimeError("abort")

            with pytest.raises(RuntimeError, match="abort"):
                await s.transaction(fails)

            async def rolled_back(txn: Any) -> str:
                await txn.put("from", -1)
                txn.rollback()
                return "rolled back"

            result = await s.transaction(rolled_back)
            return {"seen": seen, "result": result, "stored": await s.list()}

    h = Harness({"LEDGERS": Ledger})
    assert run(h.inside(lambda env, ctx: env.LEDGERS.get_by_name("l").run_all())) == {
        "seen": {"from": 90, "to": 10},
        "result": "rolled back",
        "stored": {"from": 90, "to": 10},
    }


def test_a_transaction_whose_reads_were_overwritten_runs_again(core, run) -> None:
    events: dict[str, asyncio.Event] = {}
    attempts: list[int] = []

    class Room(Counter):
        async def add_in_transaction(self, by: int) -> int:
            async def add(txn: Any) -> int:
                attempts.append(1)
                n = (await txn.get("n") or 0) + by
                if len(attempts) == 1:
                    events["read"].set()
                    await events["written"].wait()  # another call writes "n" meanwhile
                await txn.put("n", n)
                return n

            return await self.state.storage.transaction(add)

        async def conflict_forever(self) -> None:
            async def rewrite(txn: Any) -> None:
                await txn.get("n")
                await self.state.storage.put("n", 0)  # not through txn: always a conflict

            await self.state.storage.transaction(rewrite)

    h = Harness({"COUNTERS": Room})

    async def main() -> list[Any]:
        events.update(read=asyncio.Event(), written=asyncio.Event())
        slow = asyncio.create_task(
            h.inside(lambda env, ctx: env.COUNTERS.get_by_name("c").add_in_transaction(10))
        )
        await events["read"].wait()
        first = await h.inside(bump("c"))
        events["written"].set()

        async def forever(env: Any, ctx: Any) -> str:
            with pytest.raises(TransactionConflictError, match=f"run {MAX_TRANSACTION_ATTEMPTS} times"):
                await env.COUNTERS.get_by_name("c").conflict_forever()
            return "gave up"

        return [first, await slow, len(attempts), await h.inside(forever)]

    assert run(main()) == [1, 11, 2, "gave up"]


def test_declarations_and_options_are_checked(core) -> None:
    rt = Runtime()
    with pytest.raises(ConfigError, match='Worker "w" Durable Object binding "ROOMS" must be a class, built as cls\\(state, env\\)'):
        rt.add_worker("w", nothing, durable_objects={"ROOMS": len})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match='Worker "w" defines "ROOMS" both as a Durable Object namespace and as a binding or var.'):
        rt.add_worker("w", nothing, durable_objects={"ROOMS": Counter}, vars={"ROOMS": 1})
    with pytest.raises(ConfigError, match="has a Durable Object binding with an invalid name ''"):
        rt.add_worker("w", nothing, durable_objects={"": Counter})
    with pytest.raises(ValueError, match="durable_idle_s must be a positive number of seconds or None, not 0"):
        Runtime(durable_idle_s=0)
    with pytest.raises(TypeError, match="durable_dir must be a path or None, not int"):
        Runtime(durable_dir=3)  # type: ignore[arg-type]

    other = type("Counter", (DurableObject,), {})  # same name, another class
    rt.add_worker("w", nothing, durable_objects={"A": Counter, "B": other})
    with pytest.raises(ConfigError, match='Worker "w" declares two Durable Object classes named "Counter"'):
        rt.validate()


def test_namespace_specs_from_config_resolves_classes_from_the_workers_module() -> None:
    module = types.ModuleType("chat_worker")
    module.Room = Counter  # type: ignore[attr-defined]
    module.helper = len  # type: ignore[attr-defined]
    entries = [{"binding": "ROOMS", "class_name": "Room"}]
    assert namespace_specs_from_config("chat", entries, module) == {"ROOMS": Counter}
    by_name = [{"binding": "BASE", "class_name": "DurableObject"}]
    assert namespace_specs_from_config("chat", by_name, "fastbind.durable") == {"BASE": DurableObject}

    def error(entries: Any, module: Any = module) -> str:
        with pytest.raises(ConfigError) as raised:
            namespace_specs_from_config("chat", entries, module, source="fastbind.toml")
        return str(raised.value)

    assert error([{"binding": "ROOMS", "class_name": "Lobby"}]) == (
        'fastbind.toml: Worker "chat" Durable Object binding "ROOMS" refers to class "Lobby", '
        'but module "chat_worker" has no such class.'
    )
    assert "no such class" in error([{"binding": "ROOMS", "class_name": "helper"}])
    assert "must be a list like" in error({"binding": "ROOMS"})
    assert "entry 1 has unknown keys kind; expected binding and class_name." in error(
        [{"binding": "ROOMS", "class_name": "Room", "kind": 1}]
    )
    assert "script_name" in error([{"binding": "ROOMS", "class_name": "Room", "script_name": "x"}])
    assert "entry 1 needs a binding name" in error([{"class_name": "Room"}])
    assert 'binding "ROOMS" needs a class_name' in error([{"binding": "ROOMS"}])
    assert 'declares the Durable Object binding "ROOMS" twice' in error(entries * 2)
    assert 'module "no_such_module_xyz", which cannot be imported' in error(entries, "no_such_module_xyz")


def test_objects_are_rebuilt_from_storage_when_another_loop_drives_the_runtime(core, run) -> None:
    h = Harness({"COUNTERS": Counter})
    assert run(h.inside(bump("a"))) == 1
    assert run(h.inside(bump("a"))) == 2  # a new loop: the object is built again
    assert len(h.built) == 2
    run(h.rt.aclose())


def test_objects_of_one_namespace_keep_separate_storage(core, run) -> None:
    h = Harness({"COUNTERS": Counter})

    async def job(env: Any, ctx: Any) -> list[int]:
        first, second = env.COUNTERS.new_unique_id(), env.COUNTERS.new_unique_id()
        a, b = env.COUNTERS.get(first), env.COUNTERS.get(second)
        return [await a.increment(5), await b.increment(1), await a.read(), await b.read()]

    assert run(h.inside(job)) == [5, 1, 5, 1]


def test_a_blocking_callback_that_runs_too_long_resets_the_object(core, run, caplog, monkeypatch) -> None:
    from fastbind.durable import namespace

    monkeypatch.setattr(namespace, "BLOCK_CONCURRENCY_TIMEOUT_S", 0.01)

    class Room(DurableObject):
        async def stuck(self) -> None:
            await self.state.block_concurrency_while(asyncio.Event().wait)

    h = Harness({"ROOMS": Room})

    async def job(env: Any, ctx: Any) -> str:
        with pytest.raises(FastbindError, match=r"block_concurrency_while\(\) of Durable Object Room:\w+ did not finish within 0.01 s"):
            await env.ROOMS.get_by_name("r").stuck()
        return "ok"

    with caplog.at_level(logging.WARNING, "fastbind"):
        assert run(h.inside(job)) == "ok"
    assert "was reset" in caplog.text


def test_state_wait_until_outlives_the_call(core, run) -> None:
    done: list[str] = []

    class Room(DurableObject):
        async def later(self) -> str:
            async def flush() -> None:
                await asyncio.sleep(0)
                await self.state.storage.put("flushed", True)
                done.append("flushed")

            self.state.wait_until(flush())
            return "answered"

    h = Harness({"ROOMS": Room})

    async def main() -> str:
        answer = await h.inside(lambda env, ctx: env.ROOMS.get_by_name("r").later())
        await _until(lambda: bool(done), "the wait_until work")
        return answer

    assert run(main()) == "answered" and done == ["flushed"]


def test_storage_errors_name_the_namespace(core, run, tmp_path) -> None:
    kept: list[Any] = []

    class Room(DurableObject):
        async def keep(self) -> None:
            kept.append(self.state.storage)
            await self.state.storage.get("k")  # the database opens on first use

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    h = Harness({"ROOMS": Room}, durable_dir=not_a_directory)

    async def job(env: Any, ctx: Any) -> str:
        with pytest.raises(FastbindError, match=r'Cannot open the storage of Durable Object namespace ROOMS \(class Room of Worker "gw"\) at .*file/gw.Room.sqlite3'):
            await env.ROOMS.get_by_name("r").keep()
        return "ok"

    assert run(h.inside(job)) == "ok"

    h = Harness({"ROOMS": Room})

    async def main() -> None:
        await h.inside(lambda env, ctx: env.ROOMS.get_by_name("r").keep())
        await h.rt.aclose()
        with pytest.raises(FastbindError, match="was closed with its Runtime"):
            await kept[-1].get("k")

    run(main())


def test_a_storage_directory_has_one_owning_runtime_at_a_time(core, run, tmp_path) -> None:
    first = Harness({"COUNTERS": Counter}, durable_dir=tmp_path)
    second = Harness({"COUNTERS": Counter}, durable_dir=tmp_path)

    async def refused(env: Any, ctx: Any) -> str:
        with pytest.raises(FastbindError, match="database is locked by another Runtime or process"):
            await env.COUNTERS.get_by_name("a").increment()
        return "refused"

    async def main() -> list[Any]:
        results = [await first.inside(bump("a")), await second.inside(refused)]
        await first.rt.aclose()  # releases the file
        results.append(await second.inside(bump("a")))
        await second.rt.aclose()
        return results

    assert run(main()) == [1, "refused", 2]
