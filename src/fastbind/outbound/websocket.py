"""Outbound WebSockets: ``fetch(url, headers={"Upgrade": "websocket"})`` on aiohttp.

The answer is ``Response(None, status=101, web_socket=ws)``, as Cloudflare's fetch gives
it: the Worker accepts ``ws`` and talks to the remote server through it. A relay task of
the calling pipeline moves messages between the other end of the pair and aiohttp's
connection, and closes each side when the other closes; when the pipeline ends, the
relay is cancelled and the connection closed. Like any fetch it is one subrequest of the
calling invocation and waits at the pipeline's connection gate while it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import FetchError
from ..headers import Headers
from ..response import Response
from ..websocket import CloseEvent, ErrorEvent, WebSocket, WebSocketPair
from .client import OutboundClient, network_error, new_session
from .gate import Admission

if TYPE_CHECKING:
    import aiohttp

    from ..runtime import Runtime

__all__ = ("wants_websocket", "open_websocket", "connect_websocket")

# Set by aiohttp for the handshake, or describing one hop: never forwarded.
_NOT_FORWARDED = frozenset((
    "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-extensions", "sec-websocket-protocol", "host", "content-length",
    "transfer-encoding", "keep-alive", "te", "trailer",
))


def wants_websocket(headers: Headers) -> bool:
    upgrade = headers.get("upgrade")
    return upgrade is not None and upgrade.strip().lower() == "websocket"


async def open_websocket(
    runtime: Runtime | None, invocation: Any, url: str, headers: Headers, timeout: float,
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> Response:
    """Connect to ``url`` (http(s) or ws(s)) and answer with the Worker's end of the pair.

    ``extra``: headers sent on top of ``headers`` (a remote binding's hop headers)."""
    owned = None
    session = runtime.extension(OutboundClient).session() if runtime is not None else None
    if session is None:
        session = owned = new_session()
    admission = Admission(invocation, url)
    try:
        async with admission:
            response = await connect_websocket(
                session, url, headers, timeout, lambda sent: admission.traced(sent) + list(extra), owned,
            )
            admission.status = 101
    except BaseException:
        if owned is not None:
            await owned.close()
        raise
    return response


async def connect_websocket(
    session: aiohttp.ClientSession, url: str, headers: Headers, timeout: float,
    add_headers: Any = None, owned: aiohttp.ClientSession | None = None,
) -> Response:
    """Open a WebSocket to ``url`` on ``session``; the answer holds the Worker's end.

    ``add_headers(pairs)`` gives the headers to send from those forwarded; ``owned``
    is a session to close with the connection. A relay task of the calling pipeline
    carries the messages.
    """
    import aiohttp  # when first needed, as the rest of the outbound client

    target = "ws" + url[4:] if url.startswith("http") else url
    protocols = [p.strip() for v in headers.get_all("sec-websocket-protocol") for p in v.split(",") if p.strip()]
    forwarded = [(n, v) for n, v in headers if n not in _NOT_FORWARDED]
    sent = forwarded if add_headers is None else add_headers(forwarded)
    try:
        connection = await session.ws_connect(
            target, headers=sent or None, protocols=protocols, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=timeout), max_msg_size=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise FetchError(
            f"WebSocket connection to {url} failed: the server answered {exc.status} "
            "instead of switching protocols."
        ) from exc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise network_error(exc, target, timeout) from exc
    worker_end, relay_end = WebSocketPair()
    worker_end.protocol = connection.protocol or ""
    relay_end.accept()
    # A task of the calling pipeline: the remote connection lives while the pipeline does.
    asyncio.get_running_loop().create_task(_relay(connection, relay_end, owned))
    answer_headers = Headers([("sec-websocket-protocol", connection.protocol)] if connection.protocol else None)
    return Response(None, status=101, headers=answer_headers, web_socket=worker_end)


async def _relay(
    connection: aiohttp.ClientWebSocketResponse, end: WebSocket, owned: aiohttp.ClientSession | None
) -> None:
    """Move messages between ``connection`` and ``end`` (the Worker holds the other end)."""
    import aiohttp

    async def to_remote() -> None:
        while True:
            event = await end.receive()
            if isinstance(event, CloseEvent):
                code = 1011 if event.code in (1005, 1006) else event.code
                await connection.close(code=code, message=event.reason.encode())
                return
            if isinstance(event, ErrorEvent):
                continue
            if isinstance(event, str):
                await connection.send_str(event)
            else:
                await connection.send_bytes(event)

    sender = asyncio.ensure_future(to_remote())
    kinds = aiohttp.WSMsgType
    try:
        while end.ready_state == 1:
            message = await connection.receive()
            if message.type is kinds.TEXT or message.type is kinds.BINARY:
                end.send(message.data)
            elif message.type is kinds.CLOSE:
                end.relay_close(message.data, message.extra or "")
            elif message.type is kinds.ERROR:
                error = message.data if isinstance(message.data, BaseException) else ConnectionError(str(message.data))
                end.fail(error)
            elif message.type in (kinds.CLOSED, kinds.CLOSING):
                end.fail(ConnectionResetError("the remote server went away without a close frame"))
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(sender, 5)
    finally:
        sender.cancel()
        if not connection.closed:
            await connection.close()
        if owned is not None:
            await owned.close()
