"""RPC over bindings (DESIGN.md section 6), on both cores."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fastbind import (
    ConfigError,
    Limits,
    Request,
    Response,
    Runtime,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerEntrypoint,
    service,
)


@dataclasses.dataclass
class Point:
    x: int
    tags: list[str]


class Users(WorkerEntrypoint):
    instances: list[Any] = []

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        Users.instances.append(self)

    async def get_user(self, user_id: int) -> dict[str, Any]:
        return {"id": user_id, "region": self.env.REGION, "depth": self.ctx.depth}

    def add(self, a: int, b: int = 0) -> int:  # sync methods work too
        return a + b

    async def mutate(self, data: dict[str, Any], items: list[int], point: Point) -> str:
        data["changed"] = True
        items.append(99)
        point.tags.append("callee")
        return "done"

    async def keep(self) -> dict[str, list[int]]:
        self.kept = {"values": [1, 2]}
        return self.kept

    async def read_body(self, request: Request) -> str:
        return await request.text()

    async def fail(self) -> None:
        raise KeyError("no such user")

    async def recurse(self) -> int:
        return await self.env.SELF.recurse()

    async def fan(self, n: int) -> int:
        for _ in range(n):
            await self.env.SELF.add(1)
        return n

    async def whoami(self) -> dict[str, Any]:
        return dict(self.ctx.props)

    def _private(self) -> None:  # pragma: no cover - must never be reachable
        raise AssertionError


class Admin(WorkerEntrypoint):
    async def role(self) -> str:
        with pytest.raises(TypeError):
            self.ctx.props["role"] = "rw"  # read-only
        return str(self.ctx.props["role"])


def make(limits: Limits | None = None) -> Runtime:
    rt = Runtime(limits=limits)
    rt.add_worker(
        "users", Users, vars={"REGION": "eu"},
        services={"SELF": "users"},
    )
    return rt


def call(run, rt: Runtime, body) -> Any:
    async def gateway(request, env, ctx):
        return Response.json(await body(env))

    rt.add_worker("gateway", gateway, services={
        "USERS": "users",
        "ADMIN": service("users", entrypoint="Admin", props={"role": "ro"}),
    })

    async def main():
        resp = await rt.dispatch("gateway", Request("https://e/"))
        return resp.status, await resp.json()

    return run(main())


def test_async_and_sync_methods_with_a_new_instance_per_call(core, run) -> None:
    Users.instances.clear()

    async def body(env):
        a = await env.USERS.get_user(42)
        b = await env.USERS.add(2, b=3)
        return [a, b]

    status, out = call(run, make(), body)
    assert status == 200
    assert out == [{"id": 42, "region": "eu", "depth": 2}, 5]
    assert len(Users.instances) == 2 and Users.instances[0] is not Users.instances[1]


def test_named_entrypoint_and_read_only_props(core, run) -> None:
    async def body(env):
        return await env.ADMIN.role()

    assert call(run, make(), body) == (200, "ro")


def test_missing_named_entrypoint_is_a_config_error(core, run) -> None:
    async def gateway(request, env, ctx):
        return Response(None)

    rt = make()
    rt.add_worker("gateway", gateway, services={"USERS": service("users", entrypoint="Nope")})
    with pytest.raises(ConfigError) as info:
        rt.validate()
    assert str(info.value) == (
        'Worker "gateway" binding "USERS" refers to service "users" with a named '
        'entrypoint "Nope", but "users" has no such named entrypoint.'
    )


@pytest.mark.parametrize("name", ["connect", "dup", "constructor", "_private", "_x"])
def test_reserved_names(core, run, name: str) -> None:
    async def body(env):
        with pytest.raises(TypeError) as info:
            await getattr(env.USERS, name)()
        return str(info.value)

    assert call(run, make(), body) == (200, f"'{name}' is a reserved method and cannot be called over RPC.")


def test_unknown_method(core, run) -> None:
    async def body(env):
        with pytest.raises(TypeError) as info:
            await env.USERS.nope(1)
        return str(info.value)

    assert call(run, make(), body) == (200, 'The RPC receiver does not implement the method "nope".')


def test_rpc_on_a_function_worker_is_unknown(core, run) -> None:
    async def fn(request, env, ctx):
        return Response(None)

    rt = make()
    rt.add_worker("fn", fn)

    async def gateway(request, env, ctx):
        with pytest.raises(TypeError, match='does not implement the method "get"'):
            await env.FN.get()
        return Response("ok")

    rt.add_worker("gateway", gateway, services={"FN": "fn"})
    assert run(rt.dispatch("gateway", Request("https://e/"))).status == 200


def test_mutations_by_the_callee_are_not_seen_by_the_caller(core, run) -> None:
    async def body(env):
        data: dict[str, Any] = {"changed": False}
        items = [1]
        point = Point(1, ["caller"])
        assert await env.USERS.mutate(data, items, point) == "done"
        kept = await env.USERS.keep()
        kept["values"].append(3)  # the callee's copy is untouched
        return [data, items, point.tags, kept]

    status, out = call(run, make(), body)
    assert out == [{"changed": False}, [1], ["caller"], {"values": [1, 2, 3]}]
    assert status == 200


def test_request_is_handed_over_and_other_objects_refused(core, run) -> None:
    async def body(env):
        req = Request("https://e/", method="POST", body=b"hello")
        text = await env.USERS.read_body(req)
        assert req.body_used
        with pytest.raises(TypeError, match="type object"):
            await env.USERS.add(object())
        return text

    assert call(run, make(), body) == (200, "hello")


def test_exceptions_propagate(core, run) -> None:
    async def body(env):
        with pytest.raises(KeyError, match="no such user"):
            await env.USERS.fail()
        return "ok"

    assert call(run, make(), body) == (200, "ok")


def test_rpc_depth_subrequests_and_ledger(core, run) -> None:
    reports: list[Any] = []
    rt = Runtime(limits=Limits(depth=4, subrequests=5), on_pipeline_end=reports.append)
    rt.add_worker("users", Users, vars={"REGION": "eu"}, services={"SELF": "users"})

    async def gateway(request, env, ctx):
        with pytest.raises(SubrequestDepthError):
            await env.USERS.recurse()
        with pytest.raises(TooManySubrequestsError):
            await env.USERS.fan(6)  # the callee's own budget of 5
        assert await env.USERS.fan(5) == 5
        return Response(None)

    rt.add_worker("gateway", gateway, services={"USERS": "users"})
    assert run(rt.dispatch("gateway", Request("https://e/"))).status == 200
    ledger = reports[0].subrequests
    assert {r.kind for r in ledger} == {"rpc"}
    assert max(r.depth for r in ledger) == 4
    assert [r.outcome for r in ledger if r.caller == "gateway"] == ["error", "error", "ok"]
