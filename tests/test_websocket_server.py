"""WebSockets through `fastbind serve`, a real process on 127.0.0.1, with real clients
(the websockets library's and aiohttp's), on both cores. Every wait is bounded."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

websockets = pytest.importorskip("websockets", reason="the websockets library is not installed")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.client import ClientProtocol  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402

from fastbind import core as cores  # noqa: E402
from served import Served  # noqa: E402

APP = Path(__file__).resolve().parent / "ws_app" / "fastbind.toml"
FLOOD = 400  # messages the "flood" routes send (ws_app_workers.FLOOD)
CORES = ["c", "py"] if cores.compiled is not None else ["py"]
T = 10.0


def start(core: str, *args: str, config: Path = APP) -> Served:
    """A server on the compiled core ("c") or the pure twin ("py")."""
    return Served(config, args, env={"FASTBIND_NO_EXTENSIONS": "1"} if core == "py" else {}, timeout=T)


def ws_url(server: Served, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}/{path}"


@pytest.fixture(scope="module", params=CORES)
def server(request: pytest.FixtureRequest) -> Iterator[Served]:
    served = start(request.param, "--ws-max-message", "65536", "--ws-ping-interval", "0.3",
                    "--ws-send-queue", "1M")
    yield served
    served.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_echo_through_a_gateway_and_a_binding(server: Served) -> None:
    async def main() -> list[Any]:
        async with connect(ws_url(server, "echo"), subprotocols=["chat", "other"]) as ws:
            await ws.send("hello")
            got: list[Any] = [await ws.recv(), ws.subprotocol]
            await ws.send(b"\x00\xff" * 1000)
            got.append(await ws.recv())
            await ws.send(["frag", "mented ", "text"])  # one message in three frames
            got.append(await ws.recv())
            pong = await ws.ping(b"between")  # a ping interleaved with messages
            await ws.send([b"a", b"b"])
            await asyncio.wait_for(pong, T)
            got.append(await ws.recv())
            await asyncio.sleep(0.7)  # quiet longer than the server's ping interval
            await ws.send("still here")
            got.append(await ws.recv())
        return got + [ws.close_code]

    assert run(main()) == ["hello", "chat", b"\x00\xff" * 1000, "fragmented text", b"ab", "still here", 1000]


def test_aiohttp_client_through_the_gateway(server: Served) -> None:
    async def main() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(server, "echo"), compress=15) as ws:
                await ws.send_str("compressed")
                first = await ws.receive_str(timeout=T)
                await ws.send_bytes(b"z" * 50_000)
                second = await ws.receive_bytes(timeout=T)
                extensions = ws._response.headers.get("Sec-WebSocket-Extensions", "")
                await ws.close()
                return [first, len(second), "permessage-deflate" in extensions, ws.close_code]

    assert run(main()) == ["compressed", 50_000, True, 1000]


def test_invalid_utf8_text_closes_with_1007(server: Served) -> None:
    async def main() -> int | None:
        async with connect(ws_url(server, "echo")) as ws:
            # A text frame whose payload is not UTF-8, written with the library's framing.
            frame = Frame(Opcode.TEXT, b"\xff\xfe invalid")
            ws.transport.write(frame.serialize(mask=True, extensions=[]))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            return ws.close_code

    assert run(main()) == 1007


def test_a_message_over_the_limit_closes_with_1009(server: Served) -> None:
    async def main() -> int | None:
        async with connect(ws_url(server, "echo"), max_size=None) as ws:
            await ws.send(b"x" * 70_000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            return ws.close_code

    assert run(main()) == 1009


def read_late(port: int, path: str) -> tuple[list[bytes | str], int | None]:
    """A client that reads nothing for half a second, then everything: the websockets
    library's sans-I/O client over a socket with a small receive buffer, so the server's
    writes back up (a client library's own reader would keep reading meanwhile).
    Returns the messages and the close code."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(T)
    sock.connect(("127.0.0.1", port))
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/{path}"), max_size=None)
    try:
        client.send_request(client.connect())
        sock.sendall(b"".join(client.data_to_send()))
        time.sleep(0.5)
        messages: list[bytes | str] = []
        while client.close_rcvd is None:
            data = sock.recv(1 << 20)
            if not data:
                client.receive_eof()
                break
            client.receive_data(data)
            for event in client.events_received():
                if isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    payload = bytes(event.data)
                    messages.append(payload.decode() if event.opcode is Opcode.TEXT else payload)
        return messages, client.close_rcvd.code if client.close_rcvd else None
    finally:
        sock.close()


def test_a_client_that_reads_late_gets_every_message_in_order(server: Served) -> None:
    # The kernel's buffers fill, the server stops writing, the Worker's drain() waits;
    # then everything arrives, in order, and the Worker's close.
    messages, code = read_late(server.port, "flood")
    assert [m[:5] for m in messages] == [f"{n:05d}".encode() for n in range(FLOOD)] + ["done"]
    assert code == 1000


def test_a_worker_that_floods_a_client_that_does_not_read_is_closed_with_1011(server: Served) -> None:
    # 13 MB sent at once, no drain(): past --ws-send-queue (1M) the socket is closed with
    # 1011 (what was already queued is still written before the close).
    messages, code = read_late(server.port, "flood-unchecked")
    assert code == 1011
    assert 0 < len(messages) < FLOOD


def test_a_durable_object_room_with_three_clients(server: Served) -> None:
    async def main() -> list[Any]:
        url = ws_url(server, "room/lobby?user=")
        async with connect(url + "ada") as ada, connect(url + "bob") as bob, connect(url + "eve") as eve:
            await ada.send("hi all")
            heard = [await asyncio.wait_for(ws.recv(), T) for ws in (ada, bob, eve)]
            await eve.send(b"\x01")
            heard += [await asyncio.wait_for(ws.recv(), T) for ws in (ada, bob, eve)]
            # eve goes away without a close frame: the room hears a 1006
            eve.transport.abort()
            heard += [await asyncio.wait_for(ws.recv(), T) for ws in (ada, bob)]
            return heard

    assert run(main()) == (["ada: hi all"] * 3 + ["eve: b'\\x01'"] * 3 + ["eve left (1006)"] * 2)


def test_an_upgrade_answered_with_plain_http_is_plain_http(server: Served) -> None:
    async def main() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(ws_url(server, "plain"))
            except aiohttp.WSServerHandshakeError as refused:
                status = refused.status
            async with session.get(ws_url(server, "wrong").replace("ws:", "http:")) as wrong:
                return [status, wrong.status]

    assert run(main()) == [200, 500]


@pytest.mark.parametrize("core", CORES)
def test_wss_over_tls(core: str, tmp_path: Path) -> None:
    # The same echo over TLS (--ssl-certfile): a wss:// client that trusts a made-up CA.
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    served = start(core, "--ssl-certfile", str(tmp_path / "server.pem"))
    try:
        async def main() -> list[Any]:
            async with connect(f"wss://127.0.0.1:{served.port}/echo", ssl=client) as ws:
                await ws.send("over tls")
                got = [await asyncio.wait_for(ws.recv(), T)]
                await ws.send(b"\x01" * 100_000)
                got.append(len(await asyncio.wait_for(ws.recv(), T)))
            return got + [ws.close_code]

        assert run(main()) == ["over tls", 100_000, 1000]
    finally:
        assert served.stop() == 0


@pytest.mark.parametrize("core", CORES)
def test_sigterm_closes_open_sockets_with_1001(core: str) -> None:
    served = start(core)

    async def main() -> list[Any]:
        async with connect(ws_url(served, "echo")) as ws:
            await ws.send("before")
            first = await ws.recv()
            served.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            return [first, ws.close_code]

    try:
        assert run(main()) == ["before", 1001]
        assert served.proc.wait(timeout=T) == 0  # the shutdown ended cleanly
    finally:
        served.stop(signal.SIGKILL)


@pytest.mark.parametrize("core", CORES)
def test_a_remote_binding_carries_a_websocket(core: str, tmp_path: Path) -> None:
    backend = start(core)
    front = None
    config = tmp_path / "fastbind.toml"
    config.write_text(
        "[[workers]]\nname = \"front\"\nmain = \"ws_app_workers:gateway\"\n"
        f"services = [{{ binding = \"ECHO\", url = \"http://127.0.0.1:{backend.port}\" }}]\n"
        "durable_objects = [{ binding = \"ROOMS\", class_name = \"Room\" }]\n"
    )
    (tmp_path / "ws_app_workers.py").write_text((APP.parent / "ws_app_workers.py").read_text())

    async def main() -> list[Any]:
        assert front is not None
        async with connect(ws_url(front, "echo")) as ws:
            await ws.send("across processes")
            return [await asyncio.wait_for(ws.recv(), T)]

    try:
        front = start(core, config=config)
        assert run(main()) == ["across processes"]
    finally:
        for server in (front, backend):
            if server is not None:
                server.close()


def test_nothing_is_left_listening(server: Served) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=T):
        pass
