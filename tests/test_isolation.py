"""Isolation (docs/design.md, "Isolation") on both cores: a Worker reaches only what is bound to it and cannot lift its limits."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from fastbind import (
    ConfigError,
    FastbindError,
    Headers,
    Limits,
    Request,
    Response,
    Runtime,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerEntrypoint,
)

Run = Callable[[Any], Any]


async def ok(request: Request, env: Any, ctx: Any) -> Response:
    return Response("ok")


def serve_one(run: Run, rt: Runtime, worker: str, url: str = "https://example.com/") -> Any:
    """Dispatch one request and return its body read as JSON."""

    async def main() -> Any:
        return await (await rt.dispatch(worker, Request(url))).json()

    return run(main())


# -- what a Worker can reach ---------------------------------------------------------------------


def test_env_holds_only_the_workers_own_bindings_and_vars(core: Any, run: Run) -> None:
    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        out: dict[str, Any] = {"names": sorted(env), "get": env.get("VAULT"), "contains": "VAULT" in env}
        for reach in (lambda: env.VAULT, lambda: env["VAULT"], lambda: env.KEY):
            with pytest.raises(AttributeError) as info:
                reach()
            out.setdefault("errors", []).append(str(info.value))
        with pytest.raises(KeyError):  # env["X"] is also a KeyError, as a mapping's would be
            env["VAULT"]
        for change in (lambda: setattr(env, "VAULT", env.AUTH), lambda: delattr(env, "AUTH")):
            with pytest.raises(AttributeError, match="read-only"):
                change()
        return Response.json(out)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"}, vars={"MODE": "prod"})
    rt.add_worker("auth", ok, vars={"KEY": "auth-secret"})
    rt.add_worker("vault", ok, vars={"KEY": "vault-secret"})
    out = serve_one(run, rt, "gateway")
    assert out["names"] == ["AUTH", "MODE"] and out["get"] is None and out["contains"] is False
    assert out["errors"] == [
        'Worker "gateway" has no binding or var named "VAULT".',
        'Worker "gateway" has no binding or var named "VAULT".',
        'Worker "gateway" has no binding or var named "KEY".',
    ]


def test_one_vars_dict_given_to_two_workers_is_not_shared(core: Any, run: Run) -> None:
    shared = {"TAGS": ["a"], "LIMITS": {"n": 1}}

    async def writer(request: Any, env: Any, ctx: Any) -> Response:
        env.TAGS.append("written")
        env.LIMITS["n"] = 99
        return Response.json([env.TAGS, env.LIMITS])

    async def reader(request: Any, env: Any, ctx: Any) -> Response:
        return Response.json([env.TAGS, env.LIMITS])

    rt = Runtime()
    rt.add_worker("writer", writer, vars=shared)
    rt.add_worker("reader", reader, vars=shared)

    async def main() -> list[Any]:
        written = await (await rt.dispatch("writer", Request("https://e/"))).json()
        read = await (await rt.dispatch("reader", Request("https://e/"))).json()
        return [written, read]

    assert run(main()) == [[["a", "written"], {"n": 99}], [["a"], {"n": 1}]]
    assert shared == {"TAGS": ["a"], "LIMITS": {"n": 1}}  # nor the caller's dict


def test_a_var_that_cannot_be_copied_is_a_config_error(core: Any) -> None:
    async def worker(request: Any, env: Any, ctx: Any) -> Response:
        return Response(None)

    with pytest.raises(ConfigError, match='Worker "w" var "LOCK" cannot be copied'):
        Runtime().add_worker("w", worker, vars={"LOCK": threading.Lock()})


def test_a_child_gets_its_own_env_not_its_callers(core: Any, run: Run) -> None:
    async def child(request: Request, env: Any, ctx: Any) -> Response:
        assert ctx.env is env
        return Response.json({"names": sorted(env), "mode": env.get("MODE"), "secret": env.get("SECRET")})

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        return await env.CHILD.fetch(request)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"CHILD": "child", "VAULT": "vault"}, vars={"SECRET": "s"})
    rt.add_worker("child", child, vars={"MODE": "child"})
    rt.add_worker("vault", ok)
    assert serve_one(run, rt, "gateway") == {"names": ["MODE"], "mode": "child", "secret": None}


def reachable_envs(start: Any, core: Any) -> list[Any]:
    """Every Env reached from ``start`` through public attributes of core objects and env values."""
    core_types = (core.InvocationContext, core.PipelineContext, core.Fetcher, core.SubrequestRecord)
    found, seen, todo = [], set(), [start]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, core.Env):
            found.append(obj)
            todo.extend(obj[name] for name in obj)
        elif isinstance(obj, (tuple, list)):
            todo.extend(obj)
        elif isinstance(obj, core_types):
            for name in dir(obj):
                if not name.startswith("_"):
                    value = getattr(obj, name, None)
                    if not callable(value):
                        todo.append(value)
    return found


def _envs_seen_by(core: Any, run: Run, worker: str) -> tuple[Any, list[Any]]:
    seen: dict[str, Any] = {}

    async def probe(request: Request, env: Any, ctx: Any) -> Response:
        seen[ctx.worker] = (env, reachable_envs(ctx, core))
        return Response("{}")

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        await probe(request, env, ctx)
        return await env.CHILD.fetch(request)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"CHILD": "child", "VAULT": "vault"}, vars={"SECRET": "s"})
    rt.add_worker("child", probe)
    rt.add_worker("vault", ok)
    serve_one(run, rt, "gateway")
    return seen[worker]


def test_a_gateways_bindings_do_not_expose_the_bound_workers_env(core: Any, run: Run) -> None:
    own, reachable = _envs_seen_by(core, run, "gateway")
    assert reachable == [own]


def test_a_child_reaches_no_env_but_its_own_from_ctx(core: Any, run: Run) -> None:
    own, reachable = _envs_seen_by(core, run, "child")
    assert reachable == [own]


# -- limits and counters ---------------------------------------------------------------------------


def test_limits_and_counters_cannot_be_changed_from_a_worker(core: Any, run: Run) -> None:
    outcome: dict[str, Any] = {}

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        pipeline = ctx.pipeline
        attempts = [(ctx, name, 10**6) for name in ("depth", "subrequests", "props", "parent", "pipeline", "worker", "env")]
        attempts += [(pipeline, name, 10**6) for name in (
            "max_depth", "max_subrequests", "open_connections", "wait_until_s", "ledger", "root",
            "closed", "running", "cpu_limit_ns",
        )]
        refused = 0
        for target, name, value in attempts:
            with pytest.raises(AttributeError):
                setattr(target, name, value)
            with pytest.raises((AttributeError, TypeError)):
                delattr(target, name)
            refused += 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            rt.limits.depth = 10**6  # type: ignore[misc]
        with pytest.raises(AttributeError):
            rt.limits = Limits(depth=10**6)  # type: ignore[misc]
        outcome["refused"] = refused
        # The limits still hold: recurse through a self-binding until the depth limit,
        # and spend more than the subrequest budget.
        n = int(request.url.rsplit("/", 1)[1])
        if n == 0:
            try:
                await env.SELF.fetch("https://x/1")
            except SubrequestDepthError:
                outcome["depth_error_at"] = ctx.depth
            for _ in range(3):
                await (await env.SELF.fetch("https://x/99")).aclose()
            with pytest.raises(TooManySubrequestsError):  # the fifth of a budget of four
                await env.SELF.fetch("https://x/99")
            return Response("done")
        if n == 99:
            return Response(None)
        try:
            return await env.SELF.fetch(f"https://x/{n + 1}")
        except SubrequestDepthError:
            outcome.setdefault("deepest", ctx.depth)  # where it was raised, not where it passed
            raise

    rt = Runtime(limits=Limits(depth=4, subrequests=4))
    rt.add_worker("w", worker, services={"SELF": "w"})

    async def main() -> int:
        return (await rt.dispatch("w", Request("https://x/0"))).status

    assert run(main()) == 200
    assert outcome == {"refused": 16, "deepest": 4, "depth_error_at": 1}


def test_no_back_door_to_the_counters(core: Any, run: Run) -> None:
    out: dict[str, Any] = {}

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        for target, names in ((ctx, ("depth", "subrequests", "_depth", "_subrequests")),
                              (ctx.pipeline, ("max_depth", "max_subrequests", "_max_depth"))):
            assert not hasattr(target, "__dict__")
            for name in names:
                with pytest.raises(AttributeError):
                    object.__setattr__(target, name, 10**6)
        slots = [v for v in contextvars.copy_context().values() if isinstance(v, core.ExecutionSlot)]
        assert len(slots) == 1 and slots[0].current is ctx
        for change in (lambda: setattr(slots[0], "current", None),
                       lambda: object.__setattr__(slots[0], "current", ctx.parent)):
            with pytest.raises(AttributeError, match="not writable"):
                change()
        for cls in (core.ExecutionSlot, core.InvocationContext):
            with pytest.raises(TypeError, match="created by the runtime only"):
                cls()
        with pytest.raises(TypeError, match="reserved"):
            env.SELF._target()  # names with "_" are RPC stubs that refuse, not the handle
        out["depth"] = ctx.depth
        return Response(None)

    rt = Runtime()
    rt.add_worker("w", worker, services={"SELF": "w"})
    assert run(rt.dispatch("w", Request("https://x/"))).status == 200
    assert out == {"depth": 1}


def test_spawned_tasks_keep_the_depth_of_the_invocation_that_spawned_them(core: Any, run: Run) -> None:
    async def depth(request: Request, env: Any, ctx: Any) -> Response:
        return Response(str(ctx.depth))

    async def middle(request: Request, env: Any, ctx: Any) -> Response:
        async def call() -> str:
            return await (await env.LEAF.fetch("https://x/")).text()

        loop = asyncio.get_running_loop()
        spawned = await asyncio.gather(call(), asyncio.ensure_future(call()), loop.create_task(call()))
        # A task run in a blank context does not belong to any invocation: it cannot
        # make binding calls at all, rather than making them from depth 1.
        with pytest.raises(FastbindError, match="outside a fastbind invocation"):
            await asyncio.create_task(call(), context=contextvars.Context())
        sequential = [await call() for _ in range(3)]
        return Response.json({"mine": ctx.depth, "children": spawned + sequential})

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        return await env.MIDDLE.fetch(request)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"MIDDLE": "middle"})
    rt.add_worker("middle", middle, services={"LEAF": "leaf"})
    rt.add_worker("leaf", depth)
    assert serve_one(run, rt, "gateway") == {"mine": 2, "children": ["3"] * 6}


def test_dispatching_again_from_inside_a_worker_does_not_reset_depth(core: Any, run: Run) -> None:
    depths: list[int] = []

    async def recurse(request: Request, env: Any, ctx: Any) -> Response:
        n = int(request.url.rsplit("/", 1)[1])
        depths.append(ctx.depth)
        if n == 10:
            return Response("bottom")
        return await rt.dispatch("recurse", Request(f"https://x/{n + 1}"))

    rt = Runtime(limits=Limits(depth=4))
    rt.add_worker("recurse", recurse)

    async def main() -> None:
        response = await rt.dispatch("recurse", Request("https://x/0"))
        await response.aclose()

    try:
        run(main())
    except FastbindError:
        pass  # refusing a nested dispatch outright is one acceptable fix
    assert len(depths) <= 4, f"ran {len(depths)} Workers deep with Limits(depth=4), each at depth {set(depths)}"


# -- pipelines and ledgers -------------------------------------------------------------------------


def test_each_pipeline_sees_only_its_own_ledger(core: Any, run: Run) -> None:
    seen: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
    reports: list[Any] = []

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        n = int(request.url.rsplit("/", 1)[1])
        target = env.A if n % 2 else env.B
        for _ in range(n % 3 + 1):
            await (await target.fetch(request.url)).aclose()
            await asyncio.sleep(0)  # let the other pipelines run between calls
        ledger = ctx.pipeline.ledger
        with pytest.raises(AttributeError):
            ledger[0].outcome = "forged"
        seen[n] = (ctx.pipeline, [(r.caller, r.target) for r in ledger])
        return Response(None)

    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("gateway", gateway, services={"A": "a", "B": "b"})
    rt.add_worker("a", ok)
    rt.add_worker("b", ok)

    async def main() -> None:
        await asyncio.gather(*(rt.dispatch("gateway", Request(f"https://x/{n}")) for n in range(30)))

    run(main())
    assert len({id(pipeline) for pipeline, _ in seen.values()}) == 30
    for n, (_, ledger) in seen.items():
        assert ledger == [("gateway", "a" if n % 2 else "b")] * (n % 3 + 1)
    assert sorted(len(r.subrequests) for r in reports) == sorted(n % 3 + 1 for n in range(30))
    for report in reports:
        assert len({record.target for record in report.subrequests}) == 1


# -- strings from a client -------------------------------------------------------------------------

INJECTIONS = ["1\r\nx-admin: yes", "1\nx-admin: yes", "1\rx-admin: yes", "1\0x-admin: yes"]


@pytest.mark.parametrize("value", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
def test_a_client_string_cannot_add_headers_to_a_binding_request(core: Any, run: Run, value: str) -> None:
    reached: list[Request] = []
    refused: list[str] = []

    async def admin(request: Request, env: Any, ctx: Any) -> Response:
        reached.append(request)
        return Response("admin")

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        # The ways a gateway puts a client's string into a request it forwards.
        attempts = [
            lambda: env.ADMIN.fetch("https://x/", headers={"x-forwarded-for": value}),
            lambda: env.ADMIN.fetch("https://x/", headers=[("x-forwarded-for", value)]),
            lambda: env.ADMIN.fetch(Request(request, headers={"x-user": value})),
        ]
        for attempt in attempts:
            with pytest.raises((ValueError, TypeError)) as info:
                await attempt()
            refused.append(type(info.value).__name__)
        # In a URL, the URL standard removes CR and LF and percent-encodes the rest:
        # the request arrives, with nothing that could end a header line.
        await env.ADMIN.fetch(f"https://x/?q={value}")
        await env.ADMIN.fetch(f"https://x/{value}")
        headers = Headers()
        for change in (lambda: headers.set("x-user", value), lambda: headers.append("x-user", value)):
            with pytest.raises(ValueError, match="Invalid header value"):
                change()
        return Response(None)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"ADMIN": "admin"})
    rt.add_worker("admin", admin)
    assert run(rt.dispatch("gateway", Request("https://x/"))).status == 200
    assert refused == ["ValueError"] * 3 and len(reached) == 2
    for request in reached:
        assert not any(c in request.url for c in "\r\n\0 ") and list(request.headers) == []


def test_rpc_names_from_clients_do_not_grow_a_binding(core: Any, run: Run) -> None:
    class Api(WorkerEntrypoint):
        async def get(self) -> str:
            return "got"

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        name = request.url.rsplit("/", 1)[1]  # an RPC gateway: the method is named by the client
        try:
            return Response(await getattr(env.API, name)())
        except TypeError:  # not a method of Api: 'The RPC receiver does not implement ...'
            return Response(None, status=404)

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"API": "api"})
    rt.add_worker("api", Api)

    async def serve(names: list[str]) -> None:
        for name in names:
            await rt.dispatch("gateway", Request(f"https://x/{name}"))

    run(serve([f"warm{i}" for i in range(500)] + ["get"]))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(serve([f"m{i}" for i in range(10_000)]))
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 10,000 names: even 50 bytes kept per name would be half a megabyte.
    assert retained < 500_000, f"{retained:,} bytes kept after 10,000 distinct unknown names"
