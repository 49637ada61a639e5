"""RPC values (native and Python Workers' rules), reserved names, ctx.props, workers.Response over RPC."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from http import HTTPStatus
from typing import Any

import pytest

from fastbind import Request, Response, Runtime, WorkerEntrypoint, service, workers
from fastbind.core.python_workers_values import DataCloneError
from fastbind.core.rpc_values import reserved_message


class Echo(WorkerEntrypoint):
    async def echo(self, value: Any) -> Any:
        return value

    async def props(self) -> Any:
        return [self.ctx.props.clientId, self.ctx.props["clientId"], "clientId" in self.ctx.props]

    async def alarm(self) -> None: ...

    async def webSocketMessage(self, ws: Any, message: Any) -> None: ...  # noqa: N802

    async def web_socket_close(self) -> None: ...


class PyEcho(workers.WorkerEntrypoint):
    async def echo(self, value: Any) -> Any:
        return value

    async def give(self, kind: str) -> Any:
        return {"tuple": (1, 2), "complex": 1j, "list": [1, {"a": bytearray(b"x")}]}[kind]

    async def reply(self) -> workers.Response:
        return workers.Response("made", HTTPStatus.CREATED, "Made It")


class Thing:
    pass


@dataclasses.dataclass(frozen=True)
class Point:
    x: int


def serve(run: Any, caller: Any) -> None:
    """Dispatch one request to ``caller``, bound to Echo (NATIVE, ADMIN with props) and PyEcho (PY)."""
    rt = Runtime()
    rt.add_worker("caller", caller, services={"NATIVE": "native", "PY": "py",
                                              "ADMIN": service("native", props={"clientId": "c-7"})})
    rt.add_worker("native", Echo)
    rt.add_worker("py", PyEcho)
    response = run(rt.dispatch("caller", Request("https://x/")))
    assert response.status == 200


def test_native_rules_pass_dates_tuples_and_more(core, run) -> None:
    now, today = datetime.datetime.now(datetime.timezone.utc), datetime.date(2024, 2, 29)

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        for value in (now, today, (1, (2, 3)), bytearray(b"ab"), 1j, Point(1), [now, {"d": today}]):
            got = await env.NATIVE.echo(value)
            assert got == value or (isinstance(value, bytearray) and got == value)
        assert await env.NATIVE.echo(now) is now  # immutable: handed over as it is
        with pytest.raises(TypeError, match="Cannot pass a value of type Thing over RPC"):
            await env.NATIVE.echo(Thing())
        return Response(None)

    serve(run, caller)


def test_python_workers_refuse_what_cloudflare_refuses_with_its_messages(core, run) -> None:
    class Caller(workers.WorkerEntrypoint):
        async def fetch(self, request: Any) -> Any:
            env = self.env
            refusals = [
                ((1, 2), TypeError, "<class 'tuple'> cannot be sent over RPC."),
                (bytearray(b"x"), TypeError, "<class 'bytearray'> cannot be sent over RPC."),
                ({"test": (1, 2, 3)}, TypeError, "<class 'tuple'> cannot be sent over RPC."),
                ([(1, 2, 3)], TypeError, "<class 'tuple'> cannot be sent over RPC."),
                (1j, DataCloneError, 'DataCloneError: Could not serialize object of type "complex".'),
                (Thing(), DataCloneError, 'DataCloneError: Could not serialize object of type "Thing".'),
                (range(3), DataCloneError, 'DataCloneError: Could not serialize object of type "range".'),
            ]
            for value, kind, message in refusals:
                for binding in (env.NATIVE, env.PY):  # the caller's rules, whoever is called
                    with pytest.raises(kind) as info:
                        await binding.echo(value)
                    assert str(info.value).startswith(message)
            for value in (None, True, 3, 1.5, "s", b"b", [1, "a"], {"k": [1]}, {1, 2},
                          datetime.datetime(2024, 1, 1)):
                assert await env.PY.echo(value) == value
            return workers.Response("ok")

    serve(run, Caller)


def test_python_workers_results_follow_their_rules_and_a_workers_response_arrives_as_one(core, run) -> None:
    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        with pytest.raises(TypeError, match=r"^<class 'tuple'> cannot be sent over RPC\.$"):
            await env.PY.give("tuple")
        with pytest.raises(DataCloneError):
            await env.PY.give("complex")
        with pytest.raises(TypeError, match="bytearray"):
            await env.PY.give("list")
        # A native caller may send a tuple; the Python Worker returning it may not.
        with pytest.raises(TypeError, match=r"^<class 'tuple'> cannot be sent over RPC\.$"):
            await env.PY.echo((1, 2))
        assert await env.NATIVE.echo((1, 2)) == (1, 2)
        reply = await env.PY.reply()
        assert type(reply) is workers.Response and reply.status_text == "Made It"
        assert (reply.status, await reply.text()) == (201, "made")
        return Response(None)

    serve(run, caller)


def test_alarm_and_websocket_handlers_are_reserved_names(core, run) -> None:
    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        for name in ("alarm", "webSocketMessage", "webSocketClose", "webSocketError",
                     "web_socket_message", "web_socket_close", "web_socket_error"):
            with pytest.raises(TypeError) as info:
                await getattr(env.NATIVE, name)()
            assert str(info.value) == reserved_message(name) == (
                f"'{name}' is a reserved method and cannot be called over RPC."
            )
        return Response(None)

    serve(run, caller)


def test_ctx_props_read_as_attributes_and_keys_and_stay_read_only(core, run) -> None:
    class Reader(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            props = self.ctx.props
            with pytest.raises(TypeError, match="read-only"):
                props.clientId = "other"
            with pytest.raises(TypeError, match="read-only"):
                props["clientId"] = "other"  # type: ignore[index]
            with pytest.raises(AttributeError):
                props.missing  # noqa: B018
            return Response.json([props.clientId, props["clientId"], dict(props)])

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        assert await env.ADMIN.props() == ["c-7", "c-7", True]
        response = await env.READER.fetch(request)
        assert await response.json() == ["r-1", "r-1", {"clientId": "r-1"}]
        return Response(None)

    rt = Runtime()
    rt.add_worker("caller", caller, services={
        "ADMIN": service("native", props={"clientId": "c-7"}),
        "READER": service("reader", props={"clientId": "r-1"}),
    })
    rt.add_worker("native", Echo)
    rt.add_worker("reader", Reader)
    assert run(rt.dispatch("caller", Request("https://x/"))).status == 200


def test_workers_response_json_writes_what_json_dumps_writes() -> None:
    data = {"a": [1, 2.5, None], "b": "caf\xe9"}
    body = asyncio.run(workers.Response.json(data).text())
    assert body == json.dumps(data)
    assert asyncio.run(Response.json(data).text()) == '{"a":[1,2.5,null],"b":"caf\xe9"}'  # orjson's
    assert workers.Response.json(data).headers.get("content-type") == "application/json"
