"""WebSocketPair in process: the two ends, closing, limits, listeners, and an upgrade's
answer through bindings and RPC, with its pipeline open until the socket closes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fastbind import DurableObject, Request, Response, Runtime, WebSocket, WebSocketPair, WorkerEntrypoint
from fastbind.durable import DurableObjects
from fastbind.websocket import CLOSED, CLOSING, LOW_WATER, OPEN, CloseEvent, MessageEvent

NOT_ACCEPTED = (
    "You must call one of accept() or state.acceptWebSocket() on this WebSocket before "
    "sending messages."
)


def test_what_one_end_sends_the_other_receives_in_order(run) -> None:
    async def main() -> list[Any]:
        client, server = WebSocketPair()
        client.accept()
        server.accept()
        server.send("hello")
        server.send(b"\x00\xff")
        server.send(bytearray(b"ab"))
        server.close(1000, "bye")
        got = [message async for message in client]
        return [got, client.close_code, client.close_reason, client.ready_state, server.ready_state]

    assert run(main()) == [["hello", b"\x00\xff", b"ab"], 1000, "bye", CLOSED, CLOSED]


def test_an_end_must_be_accepted_and_open_to_send() -> None:
    client, server = WebSocketPair()
    with pytest.raises(TypeError) as refused:
        server.send("x")
    assert str(refused.value) == NOT_ACCEPTED
    server.accept()
    server.close()
    with pytest.raises(TypeError, match=r"^Can't call WebSocket send\(\) after close\(\)\.$"):
        server.send("x")
    with pytest.raises(TypeError, match="made by WebSocketPair"):
        WebSocket()
    other, _ = WebSocketPair()
    other.accept()
    with pytest.raises(TypeError, match=r"must be str \(text\) or bytes-like"):
        other.send(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("code, reason", [(999, ""), (1001, ""), (2999, ""), (5000, ""), (1000, "x" * 124)])
def test_a_close_a_worker_may_not_send_is_refused(code: int, reason: str) -> None:
    _, server = WebSocketPair()
    server.accept()
    with pytest.raises(ValueError):
        server.close(code, reason)
    assert server.ready_state == OPEN


def test_a_half_open_end_answers_a_close_only_when_it_closes(run) -> None:
    async def main() -> list[Any]:
        client, server = WebSocketPair()
        client.accept()
        server.accept(allow_half_open=True)
        client.close(3001, "done")
        states = [client.ready_state, server.ready_state]
        server.close(3002, "me too")
        return states + [client.ready_state, server.ready_state, client.close_code, server.close_code]

    assert run(main()) == [CLOSING, CLOSING, CLOSED, CLOSED, 3002, 3001]  # each hears the other's


def test_listeners_get_every_message_then_the_close(run) -> None:
    async def main() -> list[Any]:
        client, server = WebSocketPair()
        seen: list[Any] = []
        closed = asyncio.Event()

        async def on_message(event: MessageEvent) -> None:
            await asyncio.sleep(0)
            seen.append(event.data)

        def on_close(event: CloseEvent) -> None:
            seen.append((event.code, event.reason, event.was_clean))
            closed.set()

        server.add_event_listener("message", on_message)
        server.add_event_listener("close", on_close)
        server.accept()
        client.accept()
        client.send("a")
        client.send(b"b")
        client.close(1000, "")
        await asyncio.wait_for(closed.wait(), 5)
        return seen

    assert run(main()) == ["a", b"b", (1000, "", True)]


def test_a_reader_that_stalls_closes_the_pair_with_1011_past_its_queue_limit(run, caplog) -> None:
    async def main() -> list[Any]:
        client, server = WebSocketPair()
        client.accept()
        server.accept()
        client.queue_limit = 100_000  # what may wait unread at the client end
        chunk = b"x" * 10_000
        sent = 0
        while server.ready_state == OPEN:
            server.send(chunk)
            sent += 1
        return [sent, server.close_code, client.close_code, client.was_clean]

    with caplog.at_level(logging.WARNING, "fastbind"):
        assert run(main()) == [11, 1011, 1011, False]
    assert "send queue over 100000 bytes" in caplog.text


def test_drain_waits_until_the_other_end_has_read(run) -> None:
    async def main() -> list[Any]:
        client, server = WebSocketPair()
        client.accept()
        server.accept()
        server.send(b"x" * (LOW_WATER * 3))
        drained = asyncio.ensure_future(server.drain())
        await asyncio.sleep(0)
        waiting = not drained.done()
        reader = aiter(client)
        await anext(reader)
        await asyncio.wait_for(drained, 5)
        return [waiting, server.buffered_amount]

    assert run(main()) == [True, 0]


def test_an_attachment_is_json_and_small() -> None:
    _, server = WebSocketPair()
    server.serialize_attachment({"user": "ada", "room": 7})
    assert server.deserialize_attachment() == {"user": "ada", "room": 7}
    with pytest.raises(ValueError, match="at most 2,048 bytes"):
        server.serialize_attachment("x" * 3000)
    with pytest.raises(TypeError, match="JSON"):
        server.serialize_attachment(object())


def test_a_101_response_carries_the_socket_and_nothing_else() -> None:
    client, server = WebSocketPair()
    response = Response(None, status=101, web_socket=client)
    assert response.status == 101 and response.web_socket is client and response.body is None
    assert Response("x").web_socket is None
    with pytest.raises(ValueError, match="web_socket=client"):
        Response(None, status=101)
    with pytest.raises(ValueError, match="status 101 and no body"):
        Response("body", status=101, web_socket=client)
    with pytest.raises(TypeError, match="cannot be cloned"):
        response.clone()


def _echo_backend() -> Any:
    async def backend(request: Request, env: Any, ctx: Any) -> Response:
        client, server = WebSocketPair()
        server.accept()

        async def echo() -> None:
            async for message in server:
                server.send(message)
            server.close(1000, "echoed")

        asyncio.ensure_future(echo())  # a task of this pipeline: it lives while the socket does
        return Response(None, status=101, web_socket=client)

    return backend


def test_an_upgrade_answer_travels_through_bindings_and_holds_its_pipeline(core, run) -> None:
    reports: list[Any] = []

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        return await env.MIDDLE.fetch(request)

    async def middle(request: Request, env: Any, ctx: Any) -> Response:
        response = await env.BACKEND.fetch(request)
        assert response.status == 101 and response.web_socket is not None
        return response

    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("gateway", gateway, services={"MIDDLE": "middle"})
    rt.add_worker("middle", middle, services={"BACKEND": "backend"})
    rt.add_worker("backend", _echo_backend())

    async def main() -> list[Any]:
        response = await rt.dispatch("gateway", Request("https://example.com/chat", headers={"upgrade": "websocket"}))
        ws = response.web_socket
        assert ws is not None
        ws.accept()
        ws.send("ping")
        ws.send(b"\x01")
        got = [await anext(aiter(ws)), await anext(aiter(ws))]
        open_while_talking = rt.live_counts()["pipelines"]
        ws.close(1000, "bye")
        for _ in range(100):
            if reports:
                break
            await asyncio.sleep(0)
        return [got, open_while_talking, ws.close_code, [r.status for r in reports],
                [(s.kind, s.caller, s.target, s.depth) for s in reports[0].subrequests]]

    got, open_while_talking, code, statuses, ledger = run(main())
    assert got == ["ping", b"\x01"] and open_while_talking == 1 and code == 1000
    assert statuses == [101]
    assert ledger == [("binding", "gateway", "middle", 2), ("binding", "middle", "backend", 3)]
    assert rt.live_counts() == {"pipelines": 0, "invocations": 0, "tasks": 0}


def test_an_rpc_result_that_answers_an_upgrade_keeps_its_socket(core, run) -> None:
    class Sockets(WorkerEntrypoint):
        async def open_socket(self) -> Response:
            client, server = WebSocketPair()
            server.accept()
            server.send("welcome")
            server.close(1000, "")
            return Response(None, status=101, web_socket=client)

    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        return await env.SOCKETS.open_socket()

    rt = Runtime()
    rt.add_worker("gateway", gateway, services={"SOCKETS": "sockets"})
    rt.add_worker("sockets", Sockets)

    async def main() -> list[Any]:
        response = await rt.dispatch("gateway", Request("https://example.com/"))
        ws = response.web_socket
        assert ws is not None
        ws.accept()
        return [response.status, [m async for m in ws], ws.ready_state]

    assert run(main()) == [101, ["welcome"], CLOSED]


class Room(DurableObject):
    """A chat room: every message goes to every socket of the room, tagged by user."""

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        user = request.url.rsplit("=", 1)[1]
        self.ctx.accept_websocket(server, [user, "everyone"])
        server.serialize_attachment({"user": user})
        return Response(None, status=101, web_socket=client)

    async def websocket_message(self, ws: WebSocket, message: Any) -> None:
        user = ws.deserialize_attachment()["user"]
        for other in self.ctx.get_websockets("everyone"):
            other.send(f"{user}: {message}")

    async def websocket_close(self, ws: WebSocket, code: int, reason: str, was_clean: bool) -> None:
        for other in self.ctx.get_websockets():
            if other is not ws:
                other.send(f"{ws.deserialize_attachment()['user']} left ({code})")


def test_a_durable_object_room_relays_between_its_sockets(core, run) -> None:
    async def gateway(request: Request, env: Any, ctx: Any) -> Response:
        return await env.ROOMS.get_by_name("lobby").fetch(request)

    rt = Runtime(durable_idle_s=0.01)
    rt.add_worker("gateway", gateway, durable_objects={"ROOMS": Room})

    async def join(user: str) -> WebSocket:
        response = await rt.dispatch("gateway", Request(f"https://chat/?user={user}"))
        ws = response.web_socket
        assert response.status == 101 and ws is not None
        ws.accept()
        return ws

    async def main() -> list[Any]:
        ada, bob, eve = [await join(u) for u in ("ada", "bob", "eve")]
        ada.send("hi")
        heard = [await asyncio.wait_for(ws.receive(), 5) for ws in (ada, bob, eve)]
        await asyncio.sleep(0.05)  # longer than the idle time: the room holds sockets
        bob.send("yo")
        heard += [await asyncio.wait_for(ws.receive(), 5) for ws in (ada, bob, eve)]
        eve.close(1000)
        heard += [await asyncio.wait_for(ws.receive(), 5) for ws in (ada, bob)]
        live = rt.extension(DurableObjects)._namespaces[("gateway", "Room")].live_count
        ada.close(1000)
        bob.close(1000)
        for _ in range(200):
            if rt.live_counts()["pipelines"] == 0:
                break
            await asyncio.sleep(0.005)
        return [heard, live]

    heard, live = run(main())
    assert heard == ["ada: hi"] * 3 + ["bob: yo"] * 3 + ["eve left (1000)"] * 2
    assert live == 1
    assert rt.live_counts() == {"pipelines": 0, "invocations": 0, "tasks": 0}
