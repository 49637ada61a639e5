"""RPC over bindings (docs/design.md, "RPC"), on both cores."""

from __future__ import annotations

import abc
import dataclasses
import weakref
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


class Plain(WorkerEntrypoint):
    """No __init__: the runtime sets env and ctx on each new instance itself."""

    seen: list[Any] = []

    async def echo(self, *args: Any, **kwargs: Any) -> list[Any]:
        Plain.seen.append(self)
        return [list(args), kwargs, self.env.REGION, self.ctx.depth]

    def echo_sync(self, a: Any = None, b: Any = None) -> list[Any]:
        return [a, b, self.env.REGION]

    async def grow(self, items: list[int]) -> list[int]:
        items.append(len(items))
        return items

    async def remember(self) -> list[Any]:
        self.note = "kept"  # a subclass still has a __dict__ and weak references
        return [self.note, "note" in vars(self), weakref.ref(self)() is self]

    @staticmethod
    def twice(x: int, y: int = 0) -> int:
        return 2 * x + y

    @classmethod
    def named(cls, suffix: str = "") -> str:
        return cls.__name__ + suffix


class Hidden(WorkerEntrypoint):
    env = None  # a class attribute hides the env slot: the runtime sets it as any code would

    async def region(self) -> str:
        return str(self.env.REGION)


class Counted(WorkerEntrypoint):
    made = 0

    def __new__(cls, *args: Any) -> Counted:  # an overridden __new__ runs for each call
        Counted.made += 1
        return super().__new__(cls)

    async def count(self) -> int:
        return Counted.made


def test_arguments_in_every_shape(core, run) -> None:
    Plain.seen.clear()
    Counted.made = 0
    rt = Runtime()
    rt.add_worker("plain", Plain, vars={"REGION": "eu"})
    rt.add_worker("hidden", Hidden, vars={"REGION": "us"})
    rt.add_worker("counted", Counted)

    async def body(env):
        echo = env.PLAIN.echo
        many = list(range(9))  # more than fit on the stack of a call
        items = [0]
        out = [
            await echo(),
            await echo(1),
            await echo(1, "two"),
            await echo(1, "two", None),
            await echo(*many),
            await echo(1, key="k"),
            await env.PLAIN.echo_sync(),
            await env.PLAIN.echo_sync(1),
            await env.PLAIN.echo_sync(1, b=2),
            await env.PLAIN.grow(items),
            items,
            await env.PLAIN.twice(3),
            await env.PLAIN.twice(3, 1),
            await env.PLAIN.named(),
            await env.PLAIN.named("!"),
            await type(echo).__call__(echo, 1, "two"),  # the tuple-and-dict way in
            await type(echo).__call__(echo, 1, key="k"),
            await env.PLAIN.remember(),
            await env.HIDDEN.region(),
            await env.COUNTED.count(),
            await env.COUNTED.count(),
        ]
        return out

    async def gateway(request, env, ctx):
        return Response.json(await body(env))

    rt.add_worker("gateway", gateway, services={"PLAIN": "plain", "HIDDEN": "hidden", "COUNTED": "counted"})

    async def main():
        resp = await rt.dispatch("gateway", Request("https://e/"))
        return resp.status, await resp.json()

    status, out = run(main())
    assert status == 200
    assert out == [
        [[], {}, "eu", 2],
        [[1], {}, "eu", 2],
        [[1, "two"], {}, "eu", 2],
        [[1, "two", None], {}, "eu", 2],
        [list(range(9)), {}, "eu", 2],
        [[1], {"key": "k"}, "eu", 2],
        [None, None, "eu"],
        [1, None, "eu"],
        [1, 2, "eu"],
        [0, 1],
        [0],  # the callee grew its own copy
        6,
        7,
        "Plain",
        "Plain!",
        [[1, "two"], {}, "eu", 2],
        [[1], {"key": "k"}, "eu", 2],
        ["kept", True, True],
        "us",
        1,
        2,
    ]
    assert len(Plain.seen) == 8 and len({id(i) for i in Plain.seen}) == 8  # a new one per call
    assert all(isinstance(i, Plain) and "env" not in vars(i) for i in Plain.seen)


def test_worker_entrypoint_instances_keep_attributes(core) -> None:
    entry = Plain(ctx="the ctx", env="the env")
    entry.extra = 1
    assert (entry.ctx, entry.env, entry.extra) == ("the ctx", "the env", 1)
    assert weakref.ref(entry)() is entry
    base = WorkerEntrypoint("c", "e")
    base.anything = True  # the base class itself takes attributes too
    assert (base.ctx, base.env, base.anything) == ("c", "e", True)


class Abstract(WorkerEntrypoint, metaclass=abc.ABCMeta):
    @abc.abstractmethod
    def missing(self) -> None: ...

    async def value(self) -> int:  # pragma: no cover - the class cannot be instantiated
        return 1


def test_an_abstract_entrypoint_is_not_instantiated(core, run) -> None:
    rt = Runtime()
    rt.add_worker("abstract", Abstract)

    async def gateway(request, env, ctx):
        with pytest.raises(TypeError, match="abstract"):
            await env.ABSTRACT.value()
        return Response("ok")

    rt.add_worker("gateway", gateway, services={"ABSTRACT": "abstract"})
    assert run(rt.dispatch("gateway", Request("https://e/"))).status == 200
